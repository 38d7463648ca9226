"""shapesworld_measure (scripts/measure_shapesworld.py): the variants keep their measured meaning; the grid's AUROC and output."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch
from torchmetrics.functional.classification import binary_auroc


SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "measure_shapesworld.py"


@pytest.fixture(scope="module")
def measure():
    from conceptattention.evaluation import shapesworld_measure

    return shapesworld_measure


def test_the_script_is_a_thin_wrapper_of_the_package_module():
    import subprocess

    result = subprocess.run([sys.executable, str(SCRIPT), "--help"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0 and "segment" in result.stdout and "grid" in result.stdout


def test_rank_auroc_matches_torchmetrics(measure):
    generator = torch.Generator().manual_seed(0)
    scores = torch.rand(5, 200, generator=generator)  # continuous: no ties
    mask = torch.rand(200, generator=generator) > 0.7
    expected = torch.stack([binary_auroc(row, mask.long()) for row in scores]).double()
    torch.testing.assert_close(measure.rank_auroc(scores, mask), expected, rtol=1e-6, atol=1e-6)


def test_legacy_variants_are_pinned_and_recommended_ones_follow_the_model(measure):
    variants = measure.VARIANTS
    assert dict(variants["ca"].options)["layers"] == (2, 3, 4, 5) and variants["ca"].caption_length == 512
    assert dict(variants["ca-layer0"].options)["layers"] == (0,)
    assert variants["ca-t5len32"].caption_length == 32
    recommended = variants["ca-recommended"]
    assert "layers" not in dict(recommended.options)
    assert recommended.noise_level is None and recommended.caption_length is None
    assert dict(variants["cross-attention-recommended"].options) == {"space": "cross_attention"}


def test_grid_writes_every_block_and_level_range(measure, tmp_path):
    out = tmp_path / "grid"
    assert measure.main(["grid", "--data", "test:1", "--out", str(out), "--top", "3"]) == 0
    result = json.loads((out / "grid.json").read_text())
    rows = result["combinations"]
    assert len(rows) == 21 * 15  # contiguous ranges of 6 joint blocks x of 5 noise levels
    assert all(0.0 <= row[kind] <= 1.0 for row in rows for kind in ("object", "colour", "background"))
    assert [row["mean"] for row in rows] == sorted((row["mean"] for row in rows), reverse=True)
    assert (out / "grid.md").read_text().count("\n") == 2 + 3
    assert measure.main(["grid", "--data", "test:1", "--out", str(out)]) == 2  # never overwrites a result
