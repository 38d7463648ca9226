"""``generate`` / ``explain`` with ``--masks``: masks/<concept>.png, labels.png, legend.json, annotations.json."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conceptattention import ConceptMaps
from conceptattention.cli.main import main
from conceptattention.masks import read_legend


def generate(model_dir: Path, out: Path, *extra: str) -> list[str]:
    return [
        "generate",
        "--model",
        str(model_dir),
        "--prompt",
        "a dragon on a rock",
        "--concepts",
        "dragon",
        "rock",
        "red car",
        "--height",
        "32",
        "--width",
        "48",
        "--steps",
        "2",
        "--out",
        str(out),
        *extra,
    ]


def test_generate_writes_masks_labels_and_annotations(model_dir, tmp_path):
    out = tmp_path / "run"
    assert main(generate(model_dir, out, "--masks", "otsu")) == 0
    maps = ConceptMaps.load(out / "maps.safetensors")
    expected = maps.masks("otsu", size=(32, 48))  # [C, 1, 32, 48]: the image size
    for index, name in enumerate(["dragon", "rock", "red_car"]):
        mask = np.asarray(Image.open(out / "masks" / f"{name}.png"))
        assert mask.shape == (32, 48) and np.array_equal(mask == 255, expected[index, 0].numpy())
    labels = Image.open(out / "labels.png")
    assert labels.mode == "P" and labels.size == (48, 32)
    assert [entry["name"] for entry in read_legend(out / "labels.png")] == [None, "dragon", "rock", "red car"]
    coco = json.loads((out / "annotations.json").read_text())
    assert [c["name"] for c in coco["categories"]] == ["dragon", "rock", "red car"]
    assert sum(a["area"] for a in coco["annotations"]) == int(expected.sum())
    settings = json.loads((out / "settings.json").read_text())
    assert settings["masks"] == {"rule": "otsu", "threshold": None, "none_logit": None}
    assert settings["files"]["masks"]["red car"] == "masks/red_car.png"
    assert settings["files"]["annotations"] == "annotations.json"


def test_without_masks_nothing_extra(model_dir, tmp_path):
    out = tmp_path / "run"
    assert main(generate(model_dir, out)) == 0
    assert not (out / "masks").exists() and not (out / "labels.png").exists()
    assert json.loads((out / "settings.json").read_text())["masks"] is None


def test_explain_threshold_masks_with_none(model_dir, tmp_path):
    photo = tmp_path / "photo.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (40, 56, 3), dtype=np.uint8)).save(photo)
    out = tmp_path / "explained"
    args = ["explain", "--model", str(model_dir), "--image", str(photo), "--concepts", "cat", "sofa", "--samples", "1"]
    args += ["--out", str(out), "--masks", "argmax", "--none-logit", "0.5"]
    assert main(args) == 0
    maps = ConceptMaps.load(out / "maps.safetensors")
    labels = np.asarray(Image.open(out / "labels.png"))  # [40, 56], the input image's size
    expected = maps.masks("argmax", size=(40, 56), none=0.5)
    assert np.array_equal(labels == 0, ~expected.any(dim=0)[0].numpy())
    assert (labels == 0).any()  # the null concept took some pixels


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--masks", "threshold"], "needs --mask-threshold"),
        (["--masks", "mean", "--mask-threshold", "0.3"], "only applies to --masks threshold"),
        (["--none-logit", "1"], "only apply with --masks"),
        (["--masks", "argmax", "--none-logit", "nan"], "finite"),
    ],
)
def test_bad_mask_options_write_nothing(model_dir, tmp_path, capsys, extra, message):
    out = tmp_path / "run"
    assert main(generate(model_dir, out, *extra)) == 2
    assert message in capsys.readouterr().err
    assert not out.exists()


def test_unknown_rule_is_a_usage_error(model_dir, tmp_path, capsys):
    with pytest.raises(SystemExit):
        main(generate(model_dir, tmp_path / "run", "--masks", "median"))
    assert "invalid choice" in capsys.readouterr().err


def test_missing_pycocotools_is_one_error_line(model_dir, tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "pycocotools", None)  # import pycocotools now raises ImportError
    out = tmp_path / "run"
    assert main(generate(model_dir, out, "--masks", "mean")) == 2
    assert "conceptattention[masks]" in capsys.readouterr().err
    assert not out.exists()
