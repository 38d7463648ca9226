"""The ShapesWorld measurements (evaluation.shapesworld_measure; command line cli.measure_shapesworld, wrapped by
scripts/measure_shapesworld.py): the variants keep their measured meaning; the grid's output; segment resumes."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest


SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "measure_shapesworld.py"


@pytest.fixture(scope="module")
def measure():
    from conceptattention.evaluation import shapesworld_measure

    return shapesworld_measure


def test_the_script_is_a_thin_wrapper_of_the_package_module():
    import subprocess

    result = subprocess.run([sys.executable, str(SCRIPT), "--help"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0 and "segment" in result.stdout and "grid" in result.stdout


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
    result = measure.measure_grid("test:1", out, top=3)
    assert json.loads((out / "grid.json").read_text()) == result
    rows = result["combinations"]
    assert len(rows) == 21 * 15  # contiguous ranges of 6 joint blocks x of 5 noise levels
    assert all(0.0 <= row[kind] <= 1.0 for row in rows for kind in ("object", "colour", "background"))
    assert [row["mean"] for row in rows] == sorted((row["mean"] for row in rows), reverse=True)
    assert (out / "grid.md").read_text().count("\n") == 2 + 3
    with pytest.raises(measure.MeasureError, match="exists"):  # never overwrites a result
        measure.measure_grid("test:1", out)


def test_segment_resumes_after_a_torn_line_and_refuses_other_data(measure, tmp_path, capsys):
    from conceptattention.cli.measure_shapesworld import main
    from conceptattention.evaluation.results import RunMismatchError

    out = tmp_path / "segment"
    summary = measure.measure_segment("test:2", ["ca"], out)
    assert summary["variants"]["ca"]["num_scenes"] == 2
    lines = (out / "ca.jsonl").read_text().splitlines(keepends=True)
    (out / "ca.jsonl").write_text(lines[0] + lines[1][: len(lines[1]) // 2])  # killed while writing scene 1
    again = measure.measure_segment("test:2", ["ca"], out)
    assert (out / "ca.jsonl").read_text() == "".join(lines)  # scene 1 recomputed, identical
    assert again["variants"]["ca"]["mean"] == summary["variants"]["ca"]["mean"]
    with pytest.raises(RunMismatchError, match="distractors"):
        measure.measure_segment("test:2", ["ca"], out, distractors=1)
    assert main(["segment", "--data", "test:3", "--variants", "ca", "--out", str(out)]) == 2
    assert "another configuration" in capsys.readouterr().err
    assert main(["segment", "--data", "test:x", "--variants", "ca", "--out", str(tmp_path / "new")]) == 2
    assert not (tmp_path / "new").exists()
