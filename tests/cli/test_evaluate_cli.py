"""``conceptattention evaluate`` and ``conceptattention ablate`` on the command line (tiny random model, offline)."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from conceptattention.cli import main as cli_main
from tests.evaluation.conftest import write_fake_voc

from .conftest import save_tiny_flux, two_process_launch


def test_subcommands_registered() -> None:
    assert {"evaluate", "ablate"} <= set(cli_main.SUBCOMMANDS)


@pytest.fixture(scope="module")
def model_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_tiny_flux(tmp_path_factory, num_layers=4)


@pytest.fixture
def voc_root(tmp_path: Path) -> Path:
    labels = {}
    for index in range(3):
        label = np.zeros((24, 30), dtype=np.uint8)  # [H, W]
        label[2 + index : 16, 5:22] = 3 + index
        labels[f"2010_{index:06d}"] = label
    return write_fake_voc(tmp_path / "data", labels)


def run_cli(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code = cli_main.main(args)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def evaluate_voc(voc_root: Path, out: Path, *extra: str) -> list[str]:
    """``evaluate`` arguments for the fake VOC folder, writing to ``out``, with ``extra`` options."""
    return ["evaluate", "--dataset", "voc", "--data", str(voc_root), "--out", str(out), *extra]


def common(voc_root: Path, model_folder: Path, out: Path) -> list[str]:
    return [
        "--dataset",
        "voc",
        "--data",
        str(voc_root),
        "--model",
        str(model_folder),
        "--device",
        "cpu",
        "--resolution",
        "32",
        "--label-size",
        "32",
        "--no-progress",
        "--out",
        str(out),
    ]


class TestErrors:
    def test_missing_dataset_path(self, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
        code, _, err = run_cli(
            ["evaluate", "--dataset", "voc", "--data", str(tmp_path / "nowhere"), "--out", str(tmp_path / "run")],
            capsys,
        )
        assert code == 2 and "nowhere does not exist" in err and "VOCdevkit" in err
        assert not (tmp_path / "run").exists()

    def test_missing_data_option(self, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
        code, _, err = run_cli(["evaluate", "--dataset", "imagenet-seg", "--out", str(tmp_path / "run")], capsys)
        assert code == 2 and "needs --data" in err and not (tmp_path / "run").exists()

    def test_unknown_method(self, voc_root: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
        code, _, err = run_cli(evaluate_voc(voc_root, tmp_path / "r", "--method", "gradcam"), capsys)
        assert code == 2 and "Unknown method 'gradcam'" in err and "no-softmax" in err
        assert not (tmp_path / "r").exists()

    def test_existing_output_folder(self, voc_root: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
        out = tmp_path / "run"
        out.mkdir()
        (out / "notes.txt").write_text("keep me")
        code, _, err = run_cli(evaluate_voc(voc_root, out), capsys)
        assert code == 2 and "already exists" in err and "--resume" in err and "--overwrite" in err
        assert sorted(path.name for path in out.iterdir()) == ["notes.txt"]
        code, _, err = run_cli(evaluate_voc(voc_root, out, "--resume"), capsys)
        assert code == 2 and "not an evaluation folder" in err

    def test_resume_and_overwrite_exclude_each_other(self, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
        with pytest.raises(SystemExit) as exit_info:
            cli_main.main(["evaluate", "--dataset", "shapesworld", "--out", str(tmp_path), "--resume", "--overwrite"])
        assert exit_info.value.code == 2 and "not allowed with argument" in capsys.readouterr().err

    def test_bad_override(self, voc_root: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
        code, _, err = run_cli(evaluate_voc(voc_root, tmp_path / "r", "--noise-level", "2"), capsys)
        assert code == 2 and "noise_level must be in (0, 1]" in err and not (tmp_path / "r").exists()


class TestEvaluate:
    def test_run_then_resume(
        self, voc_root: Path, model_folder: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        out = tmp_path / "run"
        code, stdout, err = run_cli(["evaluate", *common(voc_root, model_folder, out), "--limit", "2"], capsys)
        assert code == 0, err
        report = json.loads((out / "report.json").read_text())
        assert report["metrics"]["num_images"] == 2 and report["timing"]["new_images"] == 2
        assert report["method"]["resolution"] == 32 and report["dataset"]["label_size"] == 32
        assert "| conceptattention | 2 |" in stdout and "runner overhead" in stdout
        assert report["model"].startswith("FluxPipeline from") and report["model"].endswith("[float32]")
        code, _, err = run_cli(["evaluate", *common(voc_root, model_folder, out), "--resume"], capsys)
        assert code == 0, err
        resumed = json.loads((out / "report.json").read_text())
        assert resumed["metrics"]["num_images"] == 3 and resumed["timing"]["new_images"] == 1
        lines = (out / "results" / "rank-00000.jsonl").read_text().splitlines()
        assert sorted(json.loads(line)["index"] for line in lines) == [0, 1, 2]

    def test_method_overrides_reach_the_run(
        self, voc_root: Path, model_folder: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        out = tmp_path / "run"
        args = ["evaluate", *common(voc_root, model_folder, out), "--method", "value", "--layers", "1", "3"]
        args += ["--samples", "2", "--no-softmax", "--prediction", "mean", "--limit", "1"]
        code, _, err = run_cli(args, capsys)
        assert code == 0, err
        method = json.loads((out / "run.json").read_text())["method"]
        assert method["name"] == "value" and method["num_samples"] == 2 and method["prediction"] == "mean"
        assert method["config"]["space"] == "value" and method["config"]["layers"] == [1, 3]
        assert method["config"]["softmax"] is False

    def test_accelerate_launch_two_cpu_processes(
        self, voc_root: Path, model_folder: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """The documented multi-process command: ``accelerate launch ... -m conceptattention.cli.evaluate``.

        ``--multi_gpu`` makes accelerate start one process per ``--num_processes`` through torchrun; without a GPU
        every process runs on the CPU with a gloo process group. (``--cpu`` would start a single process.)
        """
        code, _, err = run_cli(["evaluate", *common(voc_root, model_folder, tmp_path / "single")], capsys)
        assert code == 0, err
        launcher = two_process_launch("conceptattention.cli.evaluate")
        environment = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HOME": str(tmp_path / "hf"), "HF_HUB_OFFLINE": "1"}
        environment["CUDA_VISIBLE_DEVICES"] = ""  # CPU processes even on a GPU machine
        completed = subprocess.run(
            [*launcher, *common(voc_root, model_folder, tmp_path / "multi")],
            capture_output=True,
            text=True,
            timeout=240,
            env=environment,
        )
        assert completed.returncode == 0, completed.stderr[-3000:]
        single = json.loads((tmp_path / "single" / "report.json").read_text())
        merged = json.loads((tmp_path / "multi" / "report.json").read_text())
        assert merged["timing"]["processes"] == 2
        assert merged["metrics"] == single["metrics"] and merged["per_image"] == single["per_image"]
        assert len(list((tmp_path / "multi" / "results").glob("rank-*.jsonl"))) == 2


class TestAblate:
    def test_table3(
        self, voc_root: Path, model_folder: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        out = tmp_path / "table3"
        code, stdout, err = run_cli(
            ["ablate", "--sweep", "table3", *common(voc_root, model_folder, out), "--limit", "1"], capsys
        )
        assert code == 0, err
        summary: dict[str, Any] = json.loads((out / "summary.json").read_text())
        labels = [row["name"] for row in summary["series"]["space"]]
        assert labels == [f"{s}-{n}" for s in ("output", "cross-attention", "value") for n in ("softmax", "raw")]
        assert (out / "table3.md").is_file() and (out / "table3.png").is_file()
        assert "| value-raw | 1 |" in stdout
        code, _, err = run_cli(["ablate", "--sweep", "table3", *common(voc_root, model_folder, out)], capsys)
        assert code == 2 and "already exists" in err
