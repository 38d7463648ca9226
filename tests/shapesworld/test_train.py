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
    from conceptattention.shapesworld.train_data import sample_bank_records

    assert sample_bank_records(5, 4000, workers=2) == sample_bank_records(5, 4000, workers=1)


FAST = ["--precision", "bf16", "--compile", "--compile-backend", "eager", "--lr-scaling", "sqrt",
        "--base-batch-size", "2", "--checkpoint-eval-scenes", "1", "--data-version", "v2"]  # fmt: skip


def test_fast_path_at_tiny_size_and_init_from_round_trip(tmp_path: Path) -> None:
    first = tmp_path / "first"
    assert main([*SMOKE, *FAST, "--minutes", "2", "--out", str(first)]) == 0
    folder = first / PIPELINE_DIR
    log = json.loads((folder / "train_log.json").read_text())
    assert log["fast_path"]["precision"] == "bf16" and log["fast_path"]["compile"] == "eager"
    assert log["fast_path"]["optimizer"] == "AdamW (foreach)"  # fused AdamW is CUDA-only
    assert log["fast_path"]["flops_per_sample"] > 0 and log["fast_path"]["model_flop_utilisation"] is None  # no GPU
    assert log["fast_path"]["effective_lr"] == pytest.approx(log["train_config"]["lr"] * 2**0.5)  # sqrt(4 / 2)
    assert all(row[2] == row[2] and row[2] < 100 for row in log["loss_history"])  # finite bf16 losses
    (metrics,) = log["checkpoint_metrics"]
    assert metrics["step"] == 3 and all(0.0 <= metrics[key] <= 1.0 for key in ("object.auroc", "background.auroc"))
    assert json.loads((folder / "shapesworld.json").read_text())["data"] == {"version": "v2"}

    second = tmp_path / "second"  # another machine: only the fp16 EMA folder travels
    assert main([*SMOKE, "--minutes", "2", "--out", str(second), "--init-from", str(folder)]) == 0
    resumed = json.loads((second / PIPELINE_DIR / "train_log.json").read_text())
    assert resumed["steps"] == 6 and resumed["steps_this_invocation"] == 3 and len(resumed["invocations"]) == 2
    assert resumed["train_config"]["data_version"] == "v2" and resumed["init_from"] == str(folder)
    assert resumed["model_config"] == log["model_config"]
    assert resumed["checkpoint_metrics"] == log["checkpoint_metrics"]  # history carried, no new eval requested
    state = torch.load(second / CHECKPOINT_NAME, map_location="cpu", weights_only=False)
    assert state["optimizer"]["state"][0]["step"] == 3  # lost on resume from a folder: the AdamW moments restart
    assert state["warmup_start"] == 3  # ... so the learning-rate warm-up runs again from the folder's step
    with pytest.raises(TrainingError, match="--init-from"):
        main([*SMOKE, "--minutes", "1", "--out", str(second), "--resume", "--init-from", str(folder)])
    with pytest.raises(TrainingError, match="not a ShapesWorld model folder"):
        main([*SMOKE, "--minutes", "1", "--out", str(tmp_path / "x"), "--init-from", str(tmp_path)])
    assert not (tmp_path / "x").exists()


def test_bf16_autocast_on_cpu_keeps_norms_and_loss_in_fp32() -> None:
    import torch.nn.functional as F

    from conceptattention.shapesworld.model import ModelConfig, build_pipeline
    from conceptattention.shapesworld.train import keep_norms_in_fp32

    pipe = build_pipeline(ModelConfig.preset("tiny"), seed=0)
    generator = torch.Generator().manual_seed(0)
    x0 = torch.randn(2, 256, 12, generator=generator)  # [B, tokens, 4C]
    ids = pipe.tokenizer_2(["a red car"] * 2, padding="max_length", max_length=32, return_tensors="pt").input_ids
    kwargs = {"hidden_states": x0, "pooled_projections": torch.zeros(2, 32), "timestep": torch.full((2,), 0.5),
              "img_ids": pipe._prepare_latent_image_ids(1, 16, 16, "cpu", torch.float32),
              "txt_ids": torch.zeros(32, 3), "return_dict": False}  # fmt: skip

    def loss(autocast: bool) -> torch.Tensor:
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            embeds = pipe.text_encoder_2(ids).last_hidden_state  # [B, L, t5_width]
            prediction = pipe.transformer(encoder_hidden_states=embeds, **kwargs)[0]
        return F.mse_loss(prediction.float(), x0)

    reference = loss(False)
    norms = [m for m in pipe.transformer.modules() if type(m).__name__ in ("RMSNorm", "LayerNorm")]
    with keep_norms_in_fp32([pipe.transformer, pipe.text_encoder_2], "cpu"):
        assert all("forward" in norm.__dict__ for norm in norms)
        value = loss(True)
        value.backward()
        value = value.detach()
    assert value.dtype == torch.float32 and torch.isfinite(value)
    assert abs(value.item() - reference.item()) < 0.05 * reference.item()
    grads = [p.grad for p in pipe.transformer.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)
    assert not any("forward" in norm.__dict__ for norm in norms)  # restored


def test_learning_rate_scaling_rule() -> None:
    from conceptattention.shapesworld.train import TrainConfig

    assert TrainConfig(lr=1e-3, batch_size=1024).effective_lr == 1e-3  # no rule by default
    assert TrainConfig(lr=1e-3, batch_size=1024, lr_scaling="sqrt").effective_lr == pytest.approx(2e-3)
    assert TrainConfig(lr=1e-3, batch_size=1024, lr_scaling="linear").effective_lr == pytest.approx(4e-3)
