"""``generate/explain --animate steps|blocks``: animation.gif (+ .mp4), animation_grid.png, the memory guard."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conceptattention.cli.main import main
from conceptattention.testing import tiny_flux_pipeline


HAS_MP4 = all(importlib.util.find_spec(name) is not None for name in ("imageio", "imageio_ffmpeg"))


@pytest.fixture(scope="module")
def photo(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("images") / "photo.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(path)
    return path


def generate(model_dir: Path, out: Path, *extra: str) -> int:
    return main([
        "generate", "--model", str(model_dir), "--prompt", "a dragon on a rock", "--concepts", "dragon", "rock",
        "--height", "32", "--width", "48", "--steps", "3", "--out", str(out), *extra,
    ])


def gif_frames(path: Path) -> int:
    with Image.open(path) as gif:
        return gif.n_frames


def check_animation_files(out: Path, frames: int) -> dict:
    assert gif_frames(out / "animation.gif") == frames
    assert (out / "animation.mp4").is_file() == HAS_MP4
    with Image.open(out / "animation_grid.png") as grid:
        assert grid.width > 0
    settings = json.loads((out / "settings.json").read_text())
    assert settings["files"]["animation_grid"] == "animation_grid.png"
    assert len(settings["animate"]["frames"]) == frames
    return settings


def test_generate_animate_steps_one_frame_per_step(model_dir, tmp_path):
    out = tmp_path / "run"
    assert generate(model_dir, out, "--animate", "steps") == 0
    settings = check_animation_files(out, 3)
    assert settings["animate"]["frames"] == ["step 0", "step 1", "step 2"]
    assert settings["animate"]["kept_on"] == "cpu"
    # 3 steps x 3 layers x 1 image x 2 concepts x (16 x 24 tokens) x 4 bytes
    assert settings["animate"]["estimated_bytes"] == 3 * 3 * 2 * 16 * 24 * 4
    for name in ("image.png", "maps.safetensors", "grid.png"):  # the normal outputs are still there
        assert (out / name).is_file()


def test_generate_animate_blocks_and_selected_timesteps(model_dir, tmp_path):
    out = tmp_path / "blocks"
    assert generate(model_dir, out, "--animate", "blocks", "--layers", "0", "2") == 0
    assert check_animation_files(out, 2)["animate"]["frames"] == ["block 0", "block 2"]
    out = tmp_path / "some-steps"
    assert generate(model_dir, out, "--animate", "steps", "--timesteps", "0", "2") == 0
    assert check_animation_files(out, 2)["animate"]["frames"] == ["step 0", "step 2"]


def test_the_guard_refuses_with_the_estimate_and_writes_nothing(model_dir, tmp_path, capsys):
    out = tmp_path / "refused"
    status = generate(model_dir, out, "--animate", "steps", "--animate-memory-gb", "0.00001")
    assert status == 2
    error = capsys.readouterr().err
    estimate = 3 * 3 * 2 * 16 * 24 * 4
    assert f"{estimate:,} bytes" in error and "--animate-memory-gb" in error
    assert not out.exists()
    assert list(tmp_path.iterdir()) == []  # no temporary folder left either


def test_without_animate_nothing_extra_is_written(model_dir, tmp_path):
    out = tmp_path / "plain"
    assert generate(model_dir, out) == 0
    assert not (out / "animation.gif").exists()
    assert "animate" not in json.loads((out / "settings.json").read_text())


def explain_args(model_dir: Path, photo: Path, out: Path, *extra: str) -> list[str]:
    return ["explain", "--model", str(model_dir), "--image", str(photo), "--concepts", "dragon", "rock",
            "--height", "32", "--width", "32", "--samples", "2", "--out", str(out), *extra]


def test_explain_animate_over_noise_levels_and_blocks(model_dir, photo, tmp_path, capsys):
    out = tmp_path / "levels"
    assert main(explain_args(model_dir, photo, out, "--animate", "steps", "--noise-level", "0.3", "0.6", "0.9")) == 0
    settings = check_animation_files(out, 3)
    assert settings["animate"]["frames"] == ["noise 0.3", "noise 0.6", "noise 0.9"]
    assert settings["animate"]["estimated_bytes"] == 3 * 3 * 2 * 2 * 16 * 16 * 4  # the 2 noise samples count
    out = tmp_path / "blocks"
    assert main(explain_args(model_dir, photo, out, "--animate", "blocks")) == 0
    check_animation_files(out, 3)
    out = tmp_path / "one-level"
    assert main(explain_args(model_dir, photo, out, "--animate", "steps", "--noise-level", "0.5")) == 2
    assert "one frame per noise level" in capsys.readouterr().err
    assert not out.exists()


def test_shipped_model_animation(tmp_path):
    """The shipped ShapesWorld model (default --model): 4 steps, 2 default layers."""
    out = tmp_path / "toy"
    assert main(["generate", "--steps", "4", "--animate", "steps", "--out", str(out)]) == 0
    settings = check_animation_files(out, 4)
    assert settings["method"]["resolved_layers"] == ["transformer_blocks.4", "transformer_blocks.5"]
    out = tmp_path / "toy-blocks"
    assert main(["generate", "--steps", "2", "--animate", "blocks", "--layers", "0", "1", "2", "3", "4", "5",
                 "--out", str(out)]) == 0
    check_animation_files(out, 6)


@pytest.mark.parametrize("family", ["flux", "cogvideox"])
def test_the_estimate_is_the_bytes_actually_kept(family):
    """The guard's estimate (from sizes, before the run) equals the bytes of the kept score tensors after it."""
    from conceptattention import ConceptAttention
    from conceptattention.cli.animate import image_tokens
    from conceptattention.testing import tiny_cogvideox_pipeline
    from conceptattention.timeline import estimate_timeline_bytes

    if family == "flux":
        pipe, size, call = tiny_flux_pipeline(num_layers=3), (32, 48), {"max_sequence_length": 32}
        frames = 1
    else:
        pipe, size, call = tiny_cogvideox_pipeline(), (16, 24), {"num_frames": 9, "max_sequence_length": 16}
        frames = 9
    with ConceptAttention(pipe, ["boat", "sea", "sky"], keep_per_step=True) as attention:
        pipe("a boat", height=size[0], width=size[1], num_inference_steps=3, guidance_scale=2.0, **call)
    kept = sum(tensor.numel() * tensor.element_size() for tensor in attention.per_step_scores.values())
    tokens = image_tokens(pipe, height=size[0], width=size[1], frames=frames)
    assert estimate_timeline_bytes(steps=3, layers=len(attention.layers), concepts=3, image_tokens=tokens) == kept
