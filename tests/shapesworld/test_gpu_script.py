"""scripts/gpu_train_v2.sh: the CPU dry run goes end to end and a second call resumes from the first one's folder."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path


ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "scripts" / "gpu_train_v2.sh"


def _call(tmp_path: Path, name: str, prev: Path) -> Path:
    out = tmp_path / name
    env = {**os.environ, "OUT": str(out), "PREV": str(prev), "WORK": str(tmp_path / f"work-{name}"),
           "PYTHON": sys.executable, "OMP_NUM_THREADS": "1"}  # fmt: skip
    result = subprocess.run(["bash", str(SCRIPT), "--dry-run"], cwd=ROOT, env=env, capture_output=True, text=True,
                            timeout=600)  # fmt: skip
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    return out


def test_dry_run_trains_from_the_shipped_model_then_resumes(tmp_path: Path) -> None:
    first = _call(tmp_path, "call1", tmp_path / "no-previous-call")
    log = json.loads((first / "pipeline" / "train_log.json").read_text())
    shipped = json.loads((ROOT / "src/conceptattention/assets/shapesworld/train_log.json").read_text())
    assert log["steps"] == shipped["steps"] + 2  # continued from the shipped weights
    assert log["train_config"]["data_version"] == "v2" and log["fast_path"]["compile"] == "eager"
    assert log["checkpoint_metrics"][-1]["step"] == log["steps"]
    assert json.loads((first / "pipeline" / "shapesworld.json").read_text())["data"]["version"] == "v2"
    assert "init=src/conceptattention/assets/shapesworld" in (first / "train.log").read_text()
    assert not list(first.rglob("checkpoint.pt"))  # the large checkpoint stays on the machine

    second = _call(tmp_path, "call2", first / "pipeline")
    assert json.loads((second / "pipeline" / "train_log.json").read_text())["steps"] == log["steps"] + 2


def test_unknown_mode_is_refused(tmp_path: Path) -> None:
    result = subprocess.run(["bash", str(SCRIPT), "--fast"], cwd=ROOT, capture_output=True, text=True,
                            env={**os.environ, "OUT": str(tmp_path / "o")})  # fmt: skip
    assert result.returncode == 2 and "usage" in result.stderr
    assert not (tmp_path / "o").exists()
