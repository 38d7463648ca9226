"""Training command: a few CPU steps write a resumable checkpoint, resume continues, bad arguments write nothing."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from conceptattention.shapesworld import load_pipeline
from conceptattention.shapesworld.train import CHECKPOINT_NAME, PIPELINE_DIR, TrainingError, main


SMOKE = [
    "--device",
    "cpu",
    "--preset",
    "tiny",
    "--bank-size",
    "64",
    "--batch-size",
    "4",
    "--max-steps",
    "3",
    "--sample-steps",
    "2",
    "--threads",
    "1",
]


def test_smoke_run_writes_everything_and_resumes(tmp_path: Path) -> None:
    out = tmp_path / "run"
    assert main([*SMOKE, "--minutes", "2", "--out", str(out)]) == 0
    checkpoint = torch.load(out / CHECKPOINT_NAME, map_location="cpu", weights_only=False)
    assert checkpoint["step"] == 3 and len(checkpoint["invocations"]) == 1
    folder = out / PIPELINE_DIR
    for name in ("model_index.json", "shapesworld.json", "train_log.json", "loss_curve.png", "samples.png"):
        assert (folder / name).is_file(), name
    log = json.loads((folder / "train_log.json").read_text())
    assert log["steps"] == 3 and log["seed"] == 0 and log["hardware"] and log["wall_seconds_this_invocation"] > 0
    assert log["loss_history"] and all(len(row) == 3 for row in log["loss_history"])
    weights_before = checkpoint["transformer"]["proj_out.weight"].clone()

    assert main([*SMOKE, "--minutes", "2", "--out", str(out), "--resume"]) == 0
    resumed = torch.load(out / CHECKPOINT_NAME, map_location="cpu", weights_only=False)
    assert resumed["step"] == 6 and len(resumed["invocations"]) == 2
    assert not torch.equal(resumed["transformer"]["proj_out.weight"], weights_before)
    assert resumed["latent_scale"] == checkpoint["latent_scale"]

    pipe = load_pipeline(folder)
    pipe.set_progress_bar_config(disable=True)
    image = pipe("a red car", num_inference_steps=2, output_type="pt", max_sequence_length=32).images
    assert image.shape == (1, 3, 32, 32) and torch.isfinite(image).all()


def test_bad_arguments_fail_before_writing(tmp_path: Path) -> None:
    missing = tmp_path / "nothing"
    with pytest.raises(TrainingError, match="--resume"):
        main([*SMOKE, "--minutes", "1", "--out", str(missing), "--resume"])
    assert not missing.exists()
    occupied = tmp_path / "occupied"
    occupied.mkdir()
    (occupied / "notes.txt").write_text("keep me")
    with pytest.raises(TrainingError, match="not empty"):
        main([*SMOKE, "--minutes", "1", "--out", str(occupied)])
    assert sorted(p.name for p in occupied.iterdir()) == ["notes.txt"]
    with pytest.raises(TrainingError, match="--minutes"):
        main([*SMOKE, "--minutes", "0", "--out", str(tmp_path / "zero")])
    assert not (tmp_path / "zero").exists()


def test_parallel_scene_sampling_matches_serial_sampling() -> None:
    from conceptattention.shapesworld.train import _sample_bank_records

    assert _sample_bank_records(5, 4000, workers=2) == _sample_bank_records(5, 4000, workers=1)
