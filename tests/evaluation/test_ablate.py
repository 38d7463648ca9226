"""Ablation sweeps: configurations, per-configuration runner folders, tables, plots and resume."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from conceptattention.evaluation import (
    Method,
    MethodError,
    RunMismatchError,
    build_dataset,
    get_method,
    run_sweep,
    sweep_points,
)
from conceptattention.evaluation.report import format_metric
from conceptattention.outputs import OutputExistsError


BASE = get_method("conceptattention", resolution=32, num_samples=2)
ORIGINAL_COMPUTE_MAPS = Method.compute_maps


@pytest.fixture
def voc(tmp_path: Path, make_voc: Callable[..., Path]) -> Any:
    labels = {}
    for index in range(2):
        label = np.zeros((24, 32), dtype=np.uint8)  # [H, W]
        label[3 : 15 + index, 4:20] = 12 + index
        labels[f"2009_{index:06d}"] = label
    return build_dataset("voc", make_voc(tmp_path / "data", labels), label_size=24)


def count_calls(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    calls = [0]

    def compute_maps(method: Method, pipeline: Any, requests: Any) -> Any:
        calls[0] += 1
        return ORIGINAL_COMPUTE_MAPS(method, pipeline, requests)

    monkeypatch.setattr(Method, "compute_maps", compute_maps)
    return calls


class TestSweepPoints:
    def test_table3_spaces_times_softmax(self) -> None:
        points = sweep_points("table3", BASE)
        assert [(p.method.config.space, p.method.config.softmax) for p in points] == [
            (space, softmax) for space in ("output", "cross_attention", "value") for softmax in (True, False)
        ]
        assert [p.label for p in points][:2] == ["output-softmax", "output-raw"]
        assert all(p.method.num_samples == 2 and p.method.resolution == 32 for p in points)  # base options kept

    def test_table4_and_figure7(self) -> None:
        modes = [p.method.config.concept_attention for p in sweep_points("table4", BASE)]
        assert modes == ["both", "cross", "self", "none"]
        points = sweep_points("figure7", BASE, num_layers=3, noise_levels=(0.25, 0.75))
        assert [p.series for p in points] == ["layer"] * 3 + ["noise"] * 2
        assert [p.method.config.layers for p in points[:3]] == [(0,), (1,), (2,)]
        assert [p.method.noise_level for p in points[3:]] == [0.25, 0.75]
        assert [p.method.config.layers for p in sweep_points("figure7", BASE, layers=[5], noise_levels=())] == [(5,)]

    def test_errors(self) -> None:
        with pytest.raises(MethodError, match="Unknown sweep"):
            sweep_points("table9", BASE)
        with pytest.raises(MethodError, match="daam"):
            sweep_points("table4", get_method("daam"))
        with pytest.raises(MethodError, match="number of joint blocks"):
            sweep_points("figure7", BASE)


class TestRunSweep:
    def test_table4_writes_tables_plots_and_resumes(
        self, pipe: Any, voc: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        calls = count_calls(monkeypatch)
        summary = run_sweep(pipe, voc, "table4", BASE, tmp_path / "table4", progress=False, model_name="tiny")
        assert calls[0] == 4 * 2 and summary is not None
        rows = summary["series"]["attention"]
        assert [row["name"] for row in rows] == ["both", "cross-only", "self-only", "none"]
        for row in rows:  # each row is the report of its own runner folder
            report = json.loads((tmp_path / "table4" / row["name"] / "report.json").read_text())
            assert report["metrics"]["binary"]["miou"] == row["miou"]
            assert (
                report["method"]["config"]["concept_attention"]
                == {
                    "both": "both",
                    "cross-only": "cross",
                    "self-only": "self",
                    "none": "none",
                }[row["name"]]
            )
        assert json.loads((tmp_path / "table4" / "summary.json").read_text()) == summary
        markdown = (tmp_path / "table4" / "table4.md").read_text()
        assert f"| self-only | 2 | {format_metric(rows[2]['pixel_accuracy'])} |" in markdown
        with Image.open(tmp_path / "table4" / "table4.png") as plot:
            assert plot.format == "PNG" and plot.size[0] > 100
        # Different configurations really give different maps.
        assert len({row["map"] for row in rows}) > 1
        again = run_sweep(
            pipe, voc, "table4", BASE, tmp_path / "table4", resume=True, progress=False, model_name="tiny"
        )
        assert calls[0] == 8 and again is not None and again["series"] == summary["series"]  # nothing recomputed
        with pytest.raises(OutputExistsError, match="--resume"):
            run_sweep(pipe, voc, "table4", BASE, tmp_path / "table4", progress=False, model_name="tiny")
        with pytest.raises(RunMismatchError, match="'table4' sweep, not 'table3'"):
            run_sweep(pipe, voc, "table3", BASE, tmp_path / "table4", resume=True, progress=False)
        assert calls[0] == 8

    def test_figure7_series_and_plots(self, pipe: Any, voc: Any, tmp_path: Path) -> None:
        summary = run_sweep(
            pipe, voc, "figure7", BASE, tmp_path / "f7", noise_levels=(0.3, 0.9), limit=1, progress=False
        )
        assert summary is not None
        assert [row["x"] for row in summary["series"]["layer"]] == [0, 1, 2, 3]  # every joint block of the model
        assert [row["x"] for row in summary["series"]["noise"]] == [0.3, 0.9]
        assert all(row["images"] == 1 for rows in summary["series"].values() for row in rows)
        for name in ("figure7_layer.png", "figure7_noise.png", "figure7.md"):
            assert (tmp_path / "f7" / name).is_file()
        report = json.loads((tmp_path / "f7" / "layer-02" / "report.json").read_text())
        assert report["method"]["config"]["layers"] == [2]

    def test_invalid_configuration_fails_before_any_run(self, pipe: Any, voc: Any, tmp_path: Path) -> None:
        with pytest.raises(MethodError, match="out of range"):
            run_sweep(pipe, voc, "figure7", BASE, tmp_path / "f7", layers=[1, 7], progress=False)
        assert not (tmp_path / "f7").exists()
