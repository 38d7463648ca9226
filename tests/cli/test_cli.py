"""The command line: outputs, the local-folder model path, and bad inputs (clear error, no partial output)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from conceptattention import ConceptMaps
from conceptattention.cli.main import main


@pytest.fixture(scope="module")
def photo(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("images") / "photo.png"
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (40, 56, 3), dtype=np.uint8)).save(path)
    return path


def generate_args(model_dir: Path, out: Path, *extra: str) -> list[str]:
    return [
        "generate", "--model", str(model_dir), "--prompt", "a dragon on a rock", "--concepts", "dragon", "rock",
        "red car", "--height", "32", "--width", "48", "--steps", "2", "--out", str(out), *extra,
    ]


class TestGenerate:
    def test_writes_complete_run_folder(self, model_dir, tmp_path):
        out = tmp_path / "run"
        assert main(generate_args(model_dir, out)) == 0
        names = {p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file()}
        assert {"image.png", "maps.safetensors", "grid.png", "segmentation.png", "settings.json"} <= names
        assert {"heatmaps/dragon.png", "overlays/red_car.png"} <= names
        settings = json.loads((out / "settings.json").read_text())
        assert settings["concepts"] == ["dragon", "rock", "red car"]
        assert settings["pipeline_kwargs"]["num_inference_steps"] == 2
        assert settings["method"]["resolved_layers"] == ["transformer_blocks.0", "transformer_blocks.1", "transformer_blocks.2"]
        maps = ConceptMaps.load(out / "maps.safetensors")
        assert maps.tensor.shape == (3, 1, 16, 24)
        assert Image.open(out / "image.png").size == (48, 32)
        assert not list(tmp_path.glob(".*"))  # no temporary folders left behind

    def test_same_seed_same_maps(self, model_dir, tmp_path):
        for name in ("a", "b"):
            assert main(generate_args(model_dir, tmp_path / name, "--seed", "3")) == 0
        first = ConceptMaps.load(tmp_path / "a" / "maps.safetensors")
        second = ConceptMaps.load(tmp_path / "b" / "maps.safetensors")
        assert torch.equal(first.tensor, second.tensor)

    def test_existing_output_is_kept_without_overwrite(self, model_dir, tmp_path, capsys):
        out = tmp_path / "run"
        assert main(generate_args(model_dir, out, "--seed", "1")) == 0
        before = (out / "maps.safetensors").read_bytes()
        assert main(generate_args(model_dir, out)) == 2
        assert "--overwrite" in capsys.readouterr().err
        assert (out / "maps.safetensors").read_bytes() == before
        assert main(generate_args(model_dir, out, "--overwrite")) == 0
        assert (out / "maps.safetensors").read_bytes() != before and (out / "grid.png").exists()

    def test_folder_with_user_files_is_never_overwritten(self, model_dir, tmp_path, capsys):
        out = tmp_path / "run"
        out.mkdir()
        (out / "mine.txt").write_text("precious")
        for extra in ([], ["--overwrite"]):
            assert main(generate_args(model_dir, out, *extra)) == 2
            error = capsys.readouterr().err
            assert "not written by conceptattention" in error and "pass --overwrite" not in error
        assert [p.name for p in out.iterdir()] == ["mine.txt"] and (out / "mine.txt").read_text() == "precious"

    @pytest.mark.parametrize(
        "extra, message",
        [
            (["--height", "31"], "multiple of 2"),
            (["--steps", "0"], "at least 1"),
            (["--layers", "9"], "out of range"),
        ],
    )
    def test_bad_options(self, model_dir, tmp_path, capsys, extra, message):
        out = tmp_path / "run"
        try:
            status = main(generate_args(model_dir, out) + extra)
        except SystemExit as exit_info:  # refused by argparse
            status = exit_info.code
        assert status == 2
        assert message in capsys.readouterr().err
        assert not out.exists()

    @pytest.mark.parametrize(
        "concepts, message",
        [(["dog", "dog"], "twice"), (["dog", " "], "empty"), (["x" * 400], "characters long"),
         (["x" * 400], "tokens long")],
    )
    def test_bad_concepts(self, model_dir, tmp_path, capsys, monkeypatch, concepts, message):
        if message == "tokens long":  # the text encoder's own limit, behind the command line's length limit
            monkeypatch.setattr("conceptattention.cli.common.MAX_CONCEPT_CHARS", 10_000)
        out = tmp_path / "run"
        args = ["generate", "--model", str(model_dir), "--prompt", "p", "--height", "32", "--width", "32",
                "--steps", "1", "--out", str(out), "--concepts", *concepts]
        assert main(args) == 2
        assert message in capsys.readouterr().err
        assert not out.exists()

    def test_single_concept_warns_and_runs(self, model_dir, tmp_path):
        out = tmp_path / "run"
        args = ["generate", "--model", str(model_dir), "--prompt", "p", "--height", "32", "--width", "32",
                "--steps", "1", "--out", str(out), "--concepts", "dog"]
        with pytest.warns(UserWarning, match="single concept"):
            assert main(args) == 0
        assert json.loads((out / "settings.json").read_text())["method"]["effective_softmax"] is False

    @pytest.mark.parametrize("model", ["./no/such/folder", "/definitely/missing/model"])
    def test_missing_model_path(self, tmp_path, capsys, model):
        out = tmp_path / "run"
        assert main(["generate", "--model", model, "--prompt", "p", "--concepts", "a", "b", "--out", str(out)]) == 2
        assert "No model folder" in capsys.readouterr().err
        assert not out.exists()

    def test_folder_without_model_index(self, tmp_path, capsys):
        (tmp_path / "empty").mkdir()
        out = tmp_path / "run"
        assert main(["generate", "--model", str(tmp_path / "empty"), "--prompt", "p", "--concepts", "a", "b",
                     "--out", str(out)]) == 2
        assert "model_index.json" in capsys.readouterr().err


class TestExplain:
    def explain_args(self, model_dir: Path, image: Path, out: Path, *extra: str) -> list[str]:
        return ["explain", "--model", str(model_dir), "--image", str(image), "--concepts", "dog", "sky",
                "--height", "32", "--width", "32", "--samples", "2", "--out", str(out), *extra]

    def test_writes_run_folder(self, model_dir, photo, tmp_path):
        out = tmp_path / "run"
        assert main(self.explain_args(model_dir, photo, out)) == 0
        settings = json.loads((out / "settings.json").read_text())
        assert settings["method"]["num_samples"] == 2 and settings["method"]["path"] == "explain"
        assert ConceptMaps.load(out / "maps.safetensors").tensor.shape == (2, 1, 16, 16)

    @pytest.mark.parametrize("kind", ["L", "RGBA", "I;16", "P"])
    def test_image_modes_accepted(self, model_dir, tmp_path, kind):
        rng = np.random.default_rng(1)
        if kind == "I;16":
            image = Image.fromarray(rng.integers(0, 65535, (24, 24), dtype=np.uint16))
        else:
            image = Image.fromarray(rng.integers(0, 255, (24, 24, 3), dtype=np.uint8)).convert(kind)
        path = tmp_path / f"image_{kind.replace(';', '')}.png"
        image.save(path)
        assert main(self.explain_args(model_dir, path, tmp_path / "run")) == 0

    def test_corrupt_image(self, model_dir, tmp_path, capsys):
        path = tmp_path / "broken.png"
        path.write_bytes(b"\x89PNG\r\n\x1a\n" + b"garbage" * 10)
        out = tmp_path / "run"
        assert main(self.explain_args(model_dir, path, out)) == 2
        assert "broken.png" in capsys.readouterr().err
        assert not out.exists()

    def test_missing_image(self, model_dir, tmp_path, capsys):
        out = tmp_path / "run"
        assert main(self.explain_args(model_dir, tmp_path / "nope.jpg", out)) == 2
        assert "nope.jpg" in capsys.readouterr().err
        assert not out.exists()

    @pytest.mark.parametrize("levels", [["0"], ["0.3", "0.3"], ["0.5", "1.5"]])
    def test_bad_noise_level(self, model_dir, photo, tmp_path, capsys, levels):
        out = tmp_path / "run"
        assert main(self.explain_args(model_dir, photo, out, "--noise-level", *levels)) == 2
        assert "noise" in capsys.readouterr().err
        assert not out.exists()

    def test_several_noise_levels_are_recorded(self, model_dir, photo, tmp_path):
        out = tmp_path / "run"
        assert main(self.explain_args(model_dir, photo, out, "--noise-level", "0.3", "0.7")) == 0
        settings = json.loads((out / "settings.json").read_text())
        assert settings["method"]["noise_level"] == [0.3, 0.7]


def test_env_lists_supported_models(capsys):
    assert main(["env"]) == 0
    output = capsys.readouterr().out
    assert "FluxTransformer2DModel" in output and "torch" in output


def test_help_lists_commands(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--help"])
    assert exit_info.value.code == 0
    output = capsys.readouterr().out
    for command in ("generate", "explain", "env"):
        assert command in output


@pytest.fixture(scope="module")
def sd3_dir(tmp_path_factory) -> Path:
    from conceptattention.testing import tiny_sd3_pipeline

    folder = tmp_path_factory.mktemp("models") / "tiny-sd3"
    tiny_sd3_pipeline().save_pretrained(folder)
    return folder

@pytest.fixture(scope="module")
def cogvideox_dir(tmp_path_factory) -> Path:
    from conceptattention.testing import tiny_cogvideox_pipeline

    folder = tmp_path_factory.mktemp("models") / "tiny-cogvideox"
    tiny_cogvideox_pipeline().save_pretrained(folder)
    return folder


class TestOtherFamilies:
    """`generate`/`explain --model <folder>` for the SD3 and CogVideoX families (tiny save_pretrained folders)."""

    def test_sd3_generate_and_explain(self, sd3_dir, photo, tmp_path):
        out = tmp_path / "gen"
        assert main(["generate", "--model", str(sd3_dir), "--prompt", "a house", "--concepts", "house", "sea",
                     "--height", "32", "--width", "32", "--steps", "2", "--guidance-scale", "2.0", "--out", str(out)]) == 0
        settings = json.loads((out / "settings.json").read_text())
        assert settings["method"]["architecture"] == "sd3"
        out = tmp_path / "explain"
        assert main(["explain", "--model", str(sd3_dir), "--image", str(photo), "--concepts", "house", "sea",
                     "--height", "32", "--width", "32", "--samples", "2", "--out", str(out)]) == 0
        assert ConceptMaps.load(out / "maps.safetensors").num_concepts == 2

    def test_cogvideox_generate_writes_videos(self, cogvideox_dir, tmp_path):
        out = tmp_path / "video"
        assert main(["generate", "--model", str(cogvideox_dir), "--prompt", "a boat", "--concepts", "boat", "sea",
                     "--height", "16", "--width", "24", "--frames", "9", "--steps", "2", "--guidance-scale", "2.0",
                     "--max-sequence-length", "16", "--out", str(out)]) == 0
        for name in ("video.gif", "video.mp4", "overlays/boat.gif", "overlays/sea.mp4", "frames_grid.png"):
            assert (out / name).is_file(), name
        maps = ConceptMaps.load(out / "maps.safetensors")
        assert maps.num_frames == 3


def test_train_toy_forwards_to_the_trainer(tmp_path):
    out = tmp_path / "toy"
    status = main(["train-toy", "--device", "cpu", "--minutes", "1", "--out", str(out), "--preset", "tiny",
                   "--max-steps", "2", "--eval-captions", "0", "--threads", "1", "--bank-size", "64"])
    assert status == 0
    assert (out / "pipeline" / "model_index.json").is_file()


FAMILY_OPTIONS = {
    "chroma": ["--height", "32", "--width", "48", "--steps", "2", "--max-sequence-length", "32"],
    "flux2_klein": ["--height", "32", "--width", "48", "--steps", "2", "--max-sequence-length", "64"],
    "qwenimage": ["--height", "32", "--width", "48", "--steps", "2", "--max-sequence-length", "64"],
    "auraflow": ["--height", "16", "--width", "24", "--steps", "2", "--max-sequence-length", "32"],
    "hunyuan_video": ["--height", "16", "--width", "16", "--frames", "9", "--steps", "2"],
}


@pytest.mark.parametrize("family", sorted(FAMILY_OPTIONS))
def test_generate_and_explain_other_families(family, tmp_path, photo):
    """`generate` (and `explain` for image models) with a tiny save_pretrained folder of each family, offline."""
    from conceptattention import testing

    folder = tmp_path / family
    getattr(testing, f"tiny_{family}_pipeline")().save_pretrained(folder)
    out = tmp_path / "gen"
    assert main(["generate", "--model", str(folder), "--prompt", "a house", "--concepts", "house", "sea",
                 "--out", str(out), *FAMILY_OPTIONS[family]]) == 0
    maps = ConceptMaps.load(out / "maps.safetensors")
    assert maps.num_concepts == 2 and torch.isfinite(maps.tensor).all()
    if family == "hunyuan_video":
        assert (out / "video.mp4").is_file() and (out / "overlays" / "house.gif").is_file()
        return
    size = FAMILY_OPTIONS[family][:4]
    out = tmp_path / "explain"
    assert main(["explain", "--model", str(folder), "--image", str(photo), "--concepts", "house", "sea",
                 "--samples", "2", "--out", str(out), *size]) == 0
    assert ConceptMaps.load(out / "maps.safetensors").num_concepts == 2
