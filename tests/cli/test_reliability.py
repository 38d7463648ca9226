"""The command line refuses what would lose data, hang or mislead, with one clear line (issue 16, items 1 and 3-7).

Each test names the defect it guards against; every bad input must exit with status 2 (130 after Ctrl+C), print one
``conceptattention: error: ...`` (or argparse) line without a traceback, and leave no output behind.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from conceptattention.cli import generate as generate_module
from conceptattention.cli.main import main
from conceptattention.outputs import MARKER_NAME

from .conftest import save_tiny_flux


SRC = Path(__file__).resolve().parents[2] / "src"


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_tiny_flux(tmp_path_factory, num_layers=2)


@pytest.fixture(scope="module")
def photo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("images") / "photo.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(path)
    return path


def generate(model_dir: Path, out: Path, *extra: str) -> list[str]:
    return ["generate", "--model", str(model_dir), "--prompt", "a dragon", "--concepts", "dragon", "rock",
            "--height", "32", "--width", "32", "--steps", "2", "--out", str(out), *extra]


def explain(model_dir: Path, image: Path | str, out: Path, *extra: str) -> list[str]:
    return ["explain", "--model", str(model_dir), "--image", str(image), "--concepts", "dog", "sky",
            "--height", "32", "--width", "32", "--samples", "2", "--out", str(out), *extra]


def refused(args: list[str], capsys: pytest.CaptureFixture[str], *, status: int = 2) -> str:
    """Run the CLI, expect ``status`` (argparse errors exit through SystemExit), return stderr."""
    try:
        code = main(args)
    except SystemExit as exit_info:
        code = exit_info.code
    error = capsys.readouterr().err
    assert code == status, error
    assert "Traceback" not in error
    return error


# ----- item 1: --overwrite only replaces folders this program wrote ----------------------------------------------


class TestOverwriteSafety:
    @pytest.mark.parametrize("which", ["home", "cwd", "ancestor"])
    def test_protected_folders_are_refused(self, model_dir, tmp_path, monkeypatch, capsys, which):
        home, work = tmp_path / "home", tmp_path / "home" / "projects" / "work"
        work.mkdir(parents=True)
        (home / "thesis.tex").write_text("precious")
        monkeypatch.setenv("HOME", str(home))
        monkeypatch.chdir(work)
        target = {"home": home, "cwd": work, "ancestor": home / "projects"}[which]
        reason = {"home": "home folder", "cwd": "current directory", "ancestor": "contains the current directory"}
        error = refused(generate(model_dir, target.resolve(), "--overwrite"), capsys)
        assert reason[which] in error
        assert (home / "thesis.tex").read_text() == "precious" and work.is_dir()
        assert sorted(p.name for p in home.iterdir() if not p.name.startswith(".")) == ["projects", "thesis.tex"]

    def test_filesystem_root_is_refused(self, model_dir, capsys):
        assert "filesystem root" in refused(generate(model_dir, Path("/"), "--overwrite"), capsys)

    @pytest.mark.parametrize("overwrite", [[], ["--overwrite"]])
    def test_existing_file_is_not_an_output_folder(self, model_dir, tmp_path, capsys, overwrite):
        path = tmp_path / "notes.txt"
        path.write_text("mine")
        error = refused(generate(model_dir, path, *overwrite), capsys)
        assert "is a file, not a folder" in error and "--overwrite" not in error
        assert path.read_text() == "mine"

    @pytest.mark.skipif(not Path("/dev/null").exists(), reason="POSIX")
    def test_dev_null_is_not_an_output_folder(self, model_dir, capsys):
        error = refused(generate(model_dir, Path("/dev/null"), "--overwrite"), capsys)
        assert "is a file, not a folder" in error and "pass --overwrite" not in error

    def test_run_folder_with_an_added_file_is_not_replaced(self, model_dir, tmp_path, capsys):
        out = tmp_path / "run"
        assert main(generate(model_dir, out)) == 0
        assert (out / MARKER_NAME).is_file()
        (out / "my-notes.txt").write_text("mine")
        assert "my-notes.txt" in refused(generate(model_dir, out, "--overwrite"), capsys)
        assert (out / "my-notes.txt").read_text() == "mine"

    def test_run_folder_of_an_earlier_version_is_recognised_by_its_settings(self, model_dir, tmp_path, capsys):
        """Folders written before the marker existed (``make demo`` reruns) are recognised by their settings.json."""
        out = tmp_path / "run"
        assert main(generate(model_dir, out)) == 0
        (out / MARKER_NAME).unlink()  # as written by the previous version
        assert main(generate(model_dir, out, "--overwrite")) == 0
        (out / MARKER_NAME).unlink()
        (out / "heatmaps" / "mine.png").write_bytes(b"mine")
        assert "'heatmaps/mine.png'" in refused(generate(model_dir, out, "--overwrite"), capsys)
        settings = json.loads((out / "settings.json").read_text())
        settings["environment"].pop("conceptattention")
        (out / "heatmaps" / "mine.png").unlink()
        (out / "settings.json").write_text(json.dumps(settings))
        assert "not written by conceptattention" in refused(generate(model_dir, out, "--overwrite"), capsys)

    def test_explain_and_evaluate_and_ablate_refuse_foreign_folders(self, model_dir, photo, tmp_path, capsys):
        foreign = tmp_path / "data"
        foreign.mkdir()
        (foreign / "keep.csv").write_text("1,2")
        assert "not written by conceptattention" in refused(explain(model_dir, photo, foreign, "--overwrite"), capsys)
        common = ["--dataset", "shapesworld", "--data", "test:2", "--model", str(model_dir), "--device", "cpu",
                  "--out", str(foreign), "--overwrite"]
        assert "has no valid run.json" in refused(["evaluate", *common], capsys)
        assert "has no valid sweep.json" in refused(["ablate", "--sweep", "table3", *common], capsys)
        assert [p.name for p in foreign.iterdir()] == ["keep.csv"]

    def test_evaluate_refuses_home_even_with_a_run_json(self, model_dir, tmp_path, monkeypatch, capsys):
        home = tmp_path / "home"
        home.mkdir()
        (home / "run.json").write_text(json.dumps({"dataset": {}, "method": {}}))
        (home / "results").mkdir()
        (home / "results" / "thesis.tex").write_text("precious")
        monkeypatch.setenv("HOME", str(home))
        args = ["evaluate", "--dataset", "shapesworld", "--data", "test:2", "--model", str(model_dir),
                "--device", "cpu", "--out", str(home), "--overwrite"]
        assert "home folder" in refused(args, capsys)
        assert (home / "results" / "thesis.tex").read_text() == "precious"

    def test_unwritable_location_is_one_clean_line(self, model_dir, tmp_path, monkeypatch, capsys):
        from conceptattention import outputs

        real_access = os.access
        monkeypatch.setattr(outputs.os, "access", lambda path, mode: False if Path(path) == tmp_path else real_access(path, mode))
        error = refused(generate(model_dir, tmp_path / "run"), capsys)
        assert "no permission" in error and ".tmp-" not in error
        assert not (tmp_path / "run").exists()

    def test_train_toy_refuses_a_file_as_out(self, tmp_path, capsys):
        path = tmp_path / "file.txt"
        path.write_text("x")
        error = refused(["train-toy", "--device", "cpu", "--minutes", "1", "--out", str(path)], capsys)
        assert "is a file, not a folder" in error


# ----- item 3: unavailable devices ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "device, available",
    [("cuda", torch.cuda.is_available()), ("cuda:0", torch.cuda.is_available()), ("mps", False), ("gpu", False)],
)
def test_unavailable_device_is_one_line(model_dir, tmp_path, capsys, device, available):
    if available:
        pytest.skip(f"{device} exists on this machine")
    if device == "mps" and getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        pytest.skip("mps exists on this machine")
    error = refused(generate(model_dir, tmp_path / "run", "--device", device), capsys)
    assert device in error and "--device cpu" in error or "Unknown device" in error
    assert len(error.strip().splitlines()) == 1
    assert not (tmp_path / "run").exists()


# ----- item 4: memory guard --------------------------------------------------------------------------------------


class TestMemoryGuard:
    def test_huge_height_is_refused_with_the_estimate(self, model_dir, tmp_path, capsys):
        error = refused(generate(model_dir, tmp_path / "run", "--height", "100000"), capsys)
        assert "This run needs about" in error and "--max-memory-gb" in error and "16 GB" in error

    def test_huge_explain_input_is_refused_before_the_model_loads(self, model_dir, photo, tmp_path, monkeypatch, capsys):
        from conceptattention.cli import explain as explain_module

        def no_loading(args):
            raise AssertionError("the model must not load for a run that is refused by its size alone")

        monkeypatch.setattr(explain_module, "load_model_from_args", no_loading)
        args = explain(model_dir, photo, tmp_path / "run")
        args[args.index("--height") + 1] = args[args.index("--width") + 1] = "50000"
        assert "TB" in refused(args, capsys)

    def test_many_samples_are_refused(self, model_dir, photo, tmp_path, capsys):
        args = explain(model_dir, photo, tmp_path / "run")
        args[args.index("--samples") + 1] = "100000"
        assert "This run needs about" in refused(args, capsys)

    def test_the_limit_is_settable(self, model_dir, tmp_path, capsys):
        assert "0.0001 GB" in refused(generate(model_dir, tmp_path / "run", "--max-memory-gb", "0.0001"), capsys)
        assert main(generate(model_dir, tmp_path / "run", "--max-memory-gb", "2")) == 0


# ----- item 5: the toy model's vocabulary ------------------------------------------------------------------------


class TestVocabulary:
    @pytest.mark.parametrize(
        "concepts, shown",
        [(["dragon", "sea"], "'dragon'"), (["\N{DRAGON}", "sea"], "'\N{DRAGON}'"), (["boat,sea,sky"], "--concepts boat sea sky")],
    )
    def test_shipped_model_refuses_unknown_words(self, tmp_path, capsys, concepts, shown):
        out = tmp_path / "run"
        error = refused(["generate", "--steps", "1", "--out", str(out), "--concepts", *concepts], capsys)
        assert "does not know" in error and shown in error and "it knows only:" in error
        assert not out.exists()

    def test_shipped_model_refuses_unknown_words_in_explain(self, photo, tmp_path, capsys):
        out = tmp_path / "run"
        error = refused(["explain", "--image", str(photo), "--concepts", "dragon", "sea", "--out", str(out)], capsys)
        assert "'dragon'" in error and not out.exists()

    @pytest.mark.filterwarnings("ignore:Glyph .* missing from font")
    def test_real_models_accept_any_word(self, model_dir, tmp_path):
        out = tmp_path / "run"
        args = generate(model_dir, out)
        args[args.index("--concepts") + 1 : args.index("--concepts") + 3] = ["\N{DRAGON}", "boat,sea,sky"]
        assert main(args) == 0
        assert json.loads((out / "settings.json").read_text())["concepts"] == ["\N{DRAGON}", "boat,sea,sky"]


# ----- item 6: messages instead of tracebacks; Ctrl+C --------------------------------------------------------------


class TestNumbersAndInterrupts:
    @pytest.mark.parametrize(
        "extra, message",
        [
            (["--max-sequence-length", "-5"], "--max-sequence-length: must be at least 1"),
            (["--max-sequence-length", "0"], "--max-sequence-length: must be at least 1"),
            (["--seed", str(2**64)], "--seed: must be at most"),
            (["--seed", "-1"], "--seed: must be 0 or more"),
            (["--guidance-scale", "nan"], "not a finite number"),
            (["--guidance-scale", "inf"], "not a finite number"),
            (["--steps", "0"], "--steps: must be at least 1"),
        ],
    )
    def test_bad_numbers_are_refused_by_argparse(self, model_dir, tmp_path, capsys, extra, message):
        assert message in refused(generate(model_dir, tmp_path / "run", *extra), capsys)
        assert not (tmp_path / "run").exists()

    @pytest.mark.parametrize("extra", [["--noise-level", "nan"], ["--seed", str(2**63)], ["--samples", "0"]])
    def test_bad_explain_numbers(self, model_dir, photo, tmp_path, capsys, extra):
        refused(explain(model_dir, photo, tmp_path / "run", *extra), capsys)

    @pytest.mark.parametrize("extra, option", [(["--noise-level", "nan"], "--noise-level"), (["--seed", "-3"], "--seed")])
    def test_options_of_the_evaluation_methods_are_checked_too(self, model_dir, tmp_path, capsys, extra, option):
        args = ["evaluate", "--dataset", "shapesworld", "--data", "test:2", "--model", str(model_dir), "--device",
                "cpu", "--out", str(tmp_path / "run"), *extra]
        assert option in refused(args, capsys)
        assert not (tmp_path / "run").exists()

    def test_ctrl_c_while_running_exits_130(self, model_dir, tmp_path, monkeypatch, capsys):
        def interrupt(args):
            raise KeyboardInterrupt

        monkeypatch.setattr(generate_module, "load_model_from_args", interrupt)
        error = refused(generate(model_dir, tmp_path / "run"), capsys, status=130)
        assert error.startswith("conceptattention: interrupted") and len(error.strip().splitlines()) == 1
        assert not (tmp_path / "run").exists()

    def test_ctrl_c_during_start_up_is_one_line_and_exits_130(self, tmp_path):
        """A real SIGINT while the command imports its subcommand modules (in a subprocess, to see the status)."""
        script = (
            "import importlib, os, signal, sys\n"
            "from conceptattention.cli import main\n"
            "real_import = importlib.import_module\n"
            "def interrupting(name, *args, **kwargs):\n"
            "    os.kill(os.getpid(), signal.SIGINT)\n"
            "    return real_import(name, *args, **kwargs)\n"
            "main.importlib.import_module = interrupting\n"
            f"sys.exit(main.main(['generate', '--out', {str(tmp_path / 'run')!r}]))\n"
        )
        env = {**os.environ, "PYTHONPATH": str(SRC), "HF_HUB_OFFLINE": "1"}
        result = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=120)
        assert result.returncode == 130, result.stderr
        assert result.stderr.strip() == "conceptattention: interrupted."
        assert not (tmp_path / "run").exists()


# ----- item 7: silent or misleading acceptance -----------------------------------------------------------------------


class TestMisleadingAcceptance:
    def test_frames_on_an_image_model(self, model_dir, tmp_path, capsys):
        assert "--frames is for video models" in refused(generate(model_dir, tmp_path / "run", "--frames", "9"), capsys)

    def test_timesteps_out_of_range(self, model_dir, tmp_path, capsys):
        error = refused(generate(model_dir, tmp_path / "run", "--timesteps", "0", "99"), capsys)
        assert "--timesteps 99 is out of range" in error and "2 denoising steps" in error and "with" not in error

    @pytest.mark.parametrize("url", ["https://example.com/cat.png", "http://host/x.jpg", "s3://bucket/cat.png"])
    def test_url_as_image(self, model_dir, tmp_path, capsys, url):
        error = refused(explain(model_dir, url, tmp_path / "run"), capsys)
        assert "URLs are not supported; download the file first" in error and url in error

    @pytest.mark.parametrize("concepts", [["Sea", "sea "], ["red car", "Red  Car"]])
    def test_duplicates_ignore_case_and_spaces(self, model_dir, tmp_path, capsys, concepts):
        args = generate(model_dir, tmp_path / "run")
        args[args.index("--concepts") + 1 : args.index("--concepts") + 3] = concepts
        assert "given twice" in refused(args, capsys)

    def test_very_long_concept_is_refused(self, model_dir, tmp_path, capsys):
        args = generate(model_dir, tmp_path / "run")
        args[args.index("--concepts") + 1] = "a" * 1000
        assert "1000 characters long" in refused(args, capsys)


def test_the_app_gets_the_same_duplicate_check_from_the_library(tmp_path):
    """The library's concept validation refuses "Sea" and "sea " as one concept given twice, for the app too."""
    from conceptattention.app import MapService
    from conceptattention.models import load_model

    service = MapService(load_model(), work_dir=tmp_path / "app")
    with pytest.raises(ValueError, match="given twice"):
        service.generate(prompt="a boat on the sea", concepts="Sea, sea ", steps=1)
    assert not list((tmp_path / "app").glob("run-*"))
