"""The evaluation runner: records, reports, resume after a kill, multi-process merge, dataset adapters, methods."""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from conceptattention import explain
from conceptattention.evaluation import (
    ImageNetSegEvaluation,
    Method,
    MethodError,
    ResultsFileError,
    RunMismatchError,
    UnknownMethodError,
    build_dataset,
    evaluate,
    get_method,
    load_results,
    per_image_counts,
    process_context,
    score_item,
)
from conceptattention.evaluation.datasets import DatasetFormatError, DatasetNotFoundError
from conceptattention.evaluation.report import format_metric
from conceptattention.evaluation.tasks import EvaluationItem
from conceptattention.outputs import OutputExistsError

from ..conftest import free_port


LABEL_SIZE = 48
METHOD = get_method("conceptattention", resolution=32)


def single_class_labels(count: int) -> dict[str, np.ndarray]:
    """VOC-style palette labels, one object class each (ids ``2007_00000i``), of varied sizes and classes."""
    labels = {}
    for index in range(count):
        label = np.zeros((30 + 2 * index, 40), dtype=np.uint8)  # [H, W]
        label[4 + index : 20, 6 : 26 + index] = 1 + (index * 7) % 20
        label[3 + index, 6:26] = 255  # a void boundary row
        labels[f"2007_{index:06d}"] = label
    return labels


@pytest.fixture
def voc_root(tmp_path: Path, make_voc: Callable[..., Path]) -> Path:
    return make_voc(tmp_path / "data", single_class_labels(5))


@pytest.fixture
def voc(voc_root: Path) -> Any:
    return build_dataset("voc", voc_root, label_size=LABEL_SIZE)


def comparable(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Records without their timing."""
    return [{key: value for key, value in record.items() if key != "seconds"} for record in records]


ORIGINAL_COMPUTE_MAPS = Method.compute_maps


class CountingCalls:
    """Replaces ``Method.compute_maps``: counts calls and can raise after ``fail_after`` calls (a simulated kill)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, fail_after: int | None = None) -> None:
        self.calls = 0
        original = ORIGINAL_COMPUTE_MAPS

        def compute_maps(method: Method, pipeline: Any, requests: Any) -> Any:
            if fail_after is not None and self.calls >= fail_after:
                raise KeyboardInterrupt("simulated kill")
            self.calls += 1
            return original(method, pipeline, requests)

        monkeypatch.setattr(Method, "compute_maps", compute_maps)


class TestRecordsAndReport:
    def test_records_match_a_direct_computation(self, pipe: Any, voc: Any, tmp_path: Path) -> None:
        report = evaluate(pipe, voc, METHOD, tmp_path / "run", progress=False, model_name="tiny flux")
        records = load_results(tmp_path / "run")
        assert [record["index"] for record in records] == list(range(5))
        assert [record["id"] for record in records] == voc.ids()
        # Image 2 scored by hand: explain() with the method's options, bilinear resize, argmax over concepts (VOC).
        item = voc.item(2)
        maps = explain(pipe, item.image, list(item.concepts), caption=f"a {item.class_name}", height=32, width=32)
        resized = torch.nn.functional.interpolate(maps.tensor, size=(LABEL_SIZE, LABEL_SIZE), mode="bilinear")[:, 0]
        target_index = item.concepts.index(item.class_name)
        expected = per_image_counts(
            resized[target_index], item.binary_targets[0][1], prediction=resized.argmax(0) == target_index
        )
        stored = records[2]["binary"][0]
        assert stored["concept"] == item.class_name == records[2]["class_name"]
        assert {key: stored[key] for key in ("tp", "fp", "tn", "fn", "void")} == {
            key: expected[key] for key in ("tp", "fp", "tn", "fn", "void")
        }
        assert stored["average_precision"] == pytest.approx(expected["average_precision"], abs=1e-12)
        assert report is not None and report["settings"]["prediction_rule"] == "argmax"

    def test_report_contents(self, pipe: Any, voc: Any, tmp_path: Path) -> None:
        report = evaluate(pipe, voc, METHOD, tmp_path / "run", progress=False, model_name="tiny flux")
        assert report == json.loads((tmp_path / "run" / "report.json").read_text())
        records = load_results(tmp_path / "run")
        binary = report["metrics"]["binary"]
        totals = {key: sum(record["binary"][0][key] for record in records) for key in ("tp", "fp", "tn", "fn")}
        assert {key: binary[key] for key in totals} == totals
        assert binary["pixel_accuracy"] == (totals["tp"] + totals["tn"]) / sum(totals.values())
        aps = [record["binary"][0]["average_precision"] for record in records]
        assert binary["map"] == pytest.approx(sum(aps) / len(aps), abs=1e-15)
        assert [entry["average_precision"] for entry in report["per_image"]] == aps
        assert report["metrics"]["multiclass"] is None and report["metrics"]["num_images"] == 5
        assert report["method"]["name"] == "conceptattention" and report["method"]["config"]["space"] == "output"
        assert report["dataset"]["name"] == "voc" and report["dataset"]["num_images"] == 5
        assert report["model"] == "tiny flux"
        assert report["versions"]["torch"] == torch.__version__
        import diffusers

        assert report["versions"]["diffusers"] == diffusers.__version__
        try:
            head = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=True).stdout
        except (OSError, subprocess.CalledProcessError):
            head = None
        assert (report["git"] or {}).get("commit") == (head.strip() if head else None)
        assert report["hardware"]["cpu_count"] == os.cpu_count() and report["hardware"]["device"] == "cpu"
        timing = report["timing"]
        assert timing["processes"] == 1 and timing["new_images"] == 5
        assert 0 < timing["model_seconds"] <= timing["image_seconds"] <= timing["wall_seconds"]
        assert 0.0 <= timing["runner_overhead_fraction"] < 1.0
        markdown = (tmp_path / "run" / "report.md").read_text()
        row = (
            f"| conceptattention | 5 | {format_metric(binary['pixel_accuracy'])} | {format_metric(binary['miou'])} "
            f"| {format_metric(binary['map'])} | {format_metric(binary['paper_compatible_miou'])} |"
        )
        assert row in markdown
        assert "runner overhead beyond model forwards" in markdown
        run = json.loads((tmp_path / "run" / "run.json").read_text())
        assert run["method"] == report["method"] and run["dataset"] == report["dataset"]

    def test_limit_selects_the_first_images(self, pipe: Any, voc: Any, tmp_path: Path) -> None:
        report = evaluate(pipe, voc, METHOD, tmp_path / "run", limit=2, progress=False)
        assert report is not None and report["metrics"]["num_images"] == 2
        assert [record["index"] for record in load_results(tmp_path / "run")] == [0, 1]


class TestResume:
    def test_kill_then_resume_counts_every_image_once(
        self, pipe: Any, voc: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        reference = evaluate(pipe, voc, METHOD, tmp_path / "reference", progress=False)
        CountingCalls(monkeypatch, fail_after=3)
        with pytest.raises(KeyboardInterrupt):
            evaluate(pipe, voc, METHOD, tmp_path / "run", progress=False)
        results = tmp_path / "run" / "results" / "rank-00000.jsonl"
        assert len(results.read_text().splitlines()) == 3  # each image is flushed as soon as it is scored
        with open(results, "a") as handle:  # the kill also tore the line being written
            handle.write('{"index": 3, "id": "2007_0000')
        resumed = CountingCalls(monkeypatch)
        report = evaluate(pipe, voc, METHOD, tmp_path / "run", resume=True, progress=False)
        assert resumed.calls == 2  # only the missing images are computed
        lines = [json.loads(line) for line in results.read_text().splitlines()]  # the torn line was cut off
        assert sorted(line["index"] for line in lines) == [0, 1, 2, 3, 4]
        assert report is not None and reference is not None
        assert report["metrics"] == reference["metrics"]
        assert comparable(load_results(tmp_path / "run")) == comparable(load_results(tmp_path / "reference"))
        assert report["timing"]["new_images"] == 2
        # Resuming a finished run computes nothing and reports the same numbers.
        again = evaluate(pipe, voc, METHOD, tmp_path / "run", resume=True, progress=False)
        assert resumed.calls == 2 and again is not None and again["metrics"] == reference["metrics"]

    def test_torn_line_is_ignored_when_reading(self, pipe: Any, voc: Any, tmp_path: Path) -> None:
        evaluate(pipe, voc, METHOD, tmp_path / "run", limit=2, progress=False)
        with open(tmp_path / "run" / "results" / "rank-00001.jsonl", "w") as handle:
            handle.write('{"index": 4, "id": "2007_000004", "bin')
        assert [record["index"] for record in load_results(tmp_path / "run")] == [0, 1]

    def test_failure_before_any_result_leaves_no_folder(
        self, pipe: Any, voc: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        CountingCalls(monkeypatch, fail_after=0)
        with pytest.raises(KeyboardInterrupt):
            evaluate(pipe, voc, METHOD, tmp_path / "run", progress=False)
        assert not (tmp_path / "run").exists()

    def test_existing_folder_needs_resume_or_overwrite(
        self, pipe: Any, voc: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        evaluate(pipe, voc, METHOD, tmp_path / "run", limit=2, progress=False)
        with pytest.raises(OutputExistsError, match="--resume.*--overwrite"):
            evaluate(pipe, voc, METHOD, tmp_path / "run", limit=2, progress=False)
        with pytest.raises(ValueError, match="exclude each other"):
            evaluate(pipe, voc, METHOD, tmp_path / "run", resume=True, overwrite=True, progress=False)
        counter = CountingCalls(monkeypatch)
        report = evaluate(pipe, voc, METHOD, tmp_path / "run", limit=2, overwrite=True, progress=False)
        assert counter.calls == 2 and report is not None and report["metrics"]["num_images"] == 2

    def test_resume_refuses_another_configuration(self, pipe: Any, voc: Any, tmp_path: Path) -> None:
        evaluate(pipe, voc, METHOD, tmp_path / "run", limit=1, progress=False)
        before = (tmp_path / "run" / "results" / "rank-00000.jsonl").read_text()
        with pytest.raises(RunMismatchError, match="method"):
            evaluate(pipe, voc, METHOD.replace(noise_level=0.3), tmp_path / "run", resume=True, progress=False)
        assert (tmp_path / "run" / "results" / "rank-00000.jsonl").read_text() == before

    def test_corrupt_line_in_the_middle_is_an_error(self, pipe: Any, voc: Any, tmp_path: Path) -> None:
        evaluate(pipe, voc, METHOD, tmp_path / "run", limit=2, progress=False)
        results = tmp_path / "run" / "results" / "rank-00000.jsonl"
        lines = results.read_text().splitlines()
        results.write_text("\n".join(["{not json", *lines]) + "\n")
        with pytest.raises(ResultsFileError, match="rank-00000.jsonl:1"):
            evaluate(pipe, voc, METHOD, tmp_path / "run", resume=True, progress=False)


def _distributed_worker(rank: int, port: int, pipe: Any, voc_root: Path, out: Path) -> None:
    """One of two forked CPU processes: the environment ``accelerate launch --cpu`` would set, then the runner."""
    os.environ.update(
        WORLD_SIZE="2",
        RANK=str(rank),
        LOCAL_RANK=str(rank),
        LOCAL_WORLD_SIZE="2",
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
        ACCELERATE_USE_CPU="true",
        OMP_NUM_THREADS="1",
    )
    torch.set_num_threads(1)
    context = process_context()
    assert (context.rank, context.world_size) == (rank, 2)
    dataset = build_dataset("voc", voc_root, label_size=LABEL_SIZE)
    evaluate(pipe, dataset, METHOD, out, progress=False, model_name="tiny flux", context=context)


class TestMultiProcess:
    def test_two_processes_merge_to_the_single_process_result(self, pipe: Any, voc_root: Path, tmp_path: Path) -> None:
        single = evaluate(
            pipe,
            build_dataset("voc", voc_root, label_size=LABEL_SIZE),
            METHOD,
            tmp_path / "single",
            progress=False,
            model_name="tiny flux",
        )
        torch.multiprocessing.start_processes(
            _distributed_worker,
            args=(free_port(), pipe, voc_root, tmp_path / "multi"),
            nprocs=2,
            start_method="fork",
        )
        merged = json.loads((tmp_path / "multi" / "report.json").read_text())
        assert single is not None and merged["metrics"] == single["metrics"]
        assert merged["per_image"] == single["per_image"]
        assert merged["timing"]["processes"] == 2
        files = sorted((tmp_path / "multi" / "results").glob("rank-*.jsonl"))
        assert [path.name for path in files] == ["rank-00000.jsonl", "rank-00001.jsonl"]
        shards = [{json.loads(line)["index"] for line in path.read_text().splitlines()} for path in files]
        assert shards == [{0, 2, 4}, {1, 3}]  # disjoint, round-robin
        assert comparable(load_results(tmp_path / "multi")) == comparable(load_results(tmp_path / "single"))

    def test_single_process_context_without_launcher(self) -> None:
        context = process_context()
        assert (context.rank, context.world_size, context.is_main) == (0, 1, True)


class TestScoring:
    def _item(self, class_target: np.ndarray | None = None) -> EvaluationItem:
        target = np.array([[1, 1, 0, 0], [1, 1, 0, -1]], dtype=np.int8)  # [2, 4], one void pixel
        return EvaluationItem(
            index=0,
            id="x",
            image=None,  # type: ignore[arg-type]  # scoring never looks at the image
            concepts=("dog", "grass"),
            caption="a dog",
            binary_targets=(("dog", target),),
            class_target=class_target,
            concept_classes=(3, 1) if class_target is not None else None,
        )

    def test_mean_threshold_and_argmax_rules(self) -> None:
        maps = torch.tensor(
            [[[0.9, 0.8, 0.6, 0.1], [0.7, 0.3, 0.2, 0.0]], [[0.1, 0.2, 0.5, 0.9], [0.3, 0.7, 0.8, 1.0]]]
        )  # [2 concepts, 2, 4]
        item = self._item()
        mean_rule = score_item(item, maps, prediction_rule="mean", upsample="nearest")["binary"][0]
        # dog map over valid pixels: mean = 3.6 / 7; > mean at 0.9, 0.8, 0.6, 0.7 -> tp 3, fp 1, tn 2, fn 1.
        assert [mean_rule[key] for key in ("tp", "fp", "tn", "fn", "void")] == [3, 1, 2, 1, 1]
        argmax_rule = score_item(item, maps, prediction_rule="argmax", upsample="nearest")["binary"][0]
        # dog wins at 0.9/0.1, 0.8/0.2, 0.6/0.5, 0.7/0.3 -> the same cells here, and not at 0.3/0.7.
        assert [argmax_rule[key] for key in ("tp", "fp", "tn", "fn")] == [3, 1, 2, 1]
        assert mean_rule["average_precision"] == argmax_rule["average_precision"]

    def test_multiclass_target_maps_concepts_to_classes(self) -> None:
        maps = torch.tensor([[[1.0, 0.0], [1.0, 0.0]], [[0.0, 1.0], [0.0, 1.0]]])  # [2, 2, 2]: dog left, grass right
        class_target = np.array([[3, 1], [1, -1]], dtype=np.int64)  # classes: 1 grass, 3 dog
        item = EvaluationItem(
            index=0,
            id="x",
            image=None,  # type: ignore[arg-type]
            concepts=("dog", "grass"),
            caption="",
            binary_targets=(("dog", np.array([[1, 0], [0, -1]], dtype=np.int8)),),
            class_target=class_target,
            concept_classes=(3, 1),
        )
        scored = score_item(item, maps, prediction_rule="argmax", num_classes=4, upsample="nearest")
        assert scored["multiclass"]["intersection"] == [0, 1, 0, 1]
        assert scored["multiclass"]["labelled"] == [0, 2, 0, 1]
        assert scored["multiclass"]["predicted"] == [0, 1, 0, 2]
        assert scored["multiclass"]["void"] == 1

    def test_wrong_number_of_maps_and_degenerate_argmax(self) -> None:
        with pytest.raises(ValueError, match=r"\[2, h, w\]"):
            score_item(self._item(), torch.zeros(3, 2, 2), prediction_rule="mean")
        single = EvaluationItem(0, "x", None, ("dog",), "", (("dog", np.zeros((2, 2), np.int8)),))  # type: ignore[arg-type]
        with pytest.raises(ValueError, match="--prediction mean"):
            score_item(single, torch.zeros(1, 2, 2), prediction_rule="argmax")
        assert score_item(single, torch.rand(1, 2, 2), prediction_rule="mean")["binary"][0]["void"] == 0


class TestDatasetAdapters:
    def test_imagenet_adapter(self, tmp_path: Path, make_gtsegs: Callable[..., Path], fake_entry_type: Any) -> None:
        image = np.random.default_rng(0).integers(0, 256, size=(6, 8, 3), dtype=np.uint8)
        mask = np.zeros((6, 8), dtype=np.uint8)
        mask[1:4, 2:6] = 1
        path = make_gtsegs(tmp_path / "gtsegs_ijcv.mat", [fake_entry_type("n02085620_7", image, [mask])])
        dataset = build_dataset("imagenet-seg", path, class_names={"n02085620": "dog"}, label_size=16)
        assert isinstance(dataset, ImageNetSegEvaluation) and dataset.protocol == "mean"
        item = dataset.item(0)
        assert item.concepts[0] == "dog" and item.caption == "a dog" and item.label_size() == (16, 16)
        assert dataset.describe()["class_names_sha256"] is not None
        names = tmp_path / "names.tsv"
        names.write_text("n02085620\tdog\n")
        assert build_dataset("imagenet-seg", path, class_names=str(names)).item(0).class_name == "dog"
        with pytest.warns(UserWarning, match="wnids"):
            build_dataset("imagenet-seg", path)

    def test_shapesworld_adapter_runs_multiclass(self, pipe: Any, tmp_path: Path) -> None:
        dataset = build_dataset("shapesworld", "test:2:0")
        item = dataset.item(0)
        assert dataset.protocol == "argmax" and item.label_size() == (32, 32)
        assert 0 <= item.class_target.min() and item.class_target.max() < len(dataset.class_names)
        for concept, target in item.binary_targets:  # every object is scored fg/bg against its exact mask
            assert target.any()
            concept_class = item.concept_classes[item.concepts.index(concept)]
            assert dataset.class_names[concept_class] == concept
            assert (item.class_target[target == 1] == concept_class).all()
        report = evaluate(pipe, dataset, METHOD, tmp_path / "run", progress=False)
        assert report is not None
        multiclass = report["metrics"]["multiclass"]
        assert set(multiclass["per_class_iou"]) == set(dataset.class_names)
        assert multiclass["num_valid_pixels"] == 2 * 32 * 32

    def test_bad_dataset_arguments(self, tmp_path: Path) -> None:
        with pytest.raises(DatasetFormatError, match="Unknown dataset"):
            build_dataset("coco", tmp_path)
        with pytest.raises(DatasetNotFoundError):
            build_dataset("voc", tmp_path / "missing")
        with pytest.raises(DatasetFormatError, match="needs --data"):
            build_dataset("imagenet-seg", None)
        with pytest.raises(DatasetFormatError, match="SPLIT"):
            build_dataset("shapesworld", "test:many")


class TestMethods:
    def test_builtin_methods_are_configurations(self) -> None:
        assert get_method("no-softmax").config.softmax is False
        assert get_method("cross-attention").config.space == "cross_attention"
        assert get_method("value").config.space == "value"
        assert [get_method(name).config.concept_attention for name in ("cross-only", "self-only", "none")] == [
            "cross",
            "self",
            "none",
        ]
        assert get_method("daam").kind == "daam" and get_method("daam").prediction_rule("argmax") == "mean"
        assert get_method("conceptattention").prediction_rule("argmax") == "argmax"
        assert get_method("conceptattention", prediction="mean").prediction_rule("argmax") == "mean"
        method = get_method("conceptattention", layers=(1, 2), num_samples=3, space="value")
        assert (method.config.layers, method.num_samples, method.config.space) == ((1, 2), 3, "value")

    def test_errors(self, pipe: Any) -> None:
        with pytest.raises(UnknownMethodError, match="choose one of: all-background, colour-prior, conceptattention"):
            get_method("gradcam")
        with pytest.raises(MethodError, match="noise_level"):
            get_method("conceptattention", noise_level=0.0)
        with pytest.raises(MethodError, match="Unknown method option"):
            get_method("conceptattention", colour="red")
        with pytest.raises(MethodError, match="UNet pipeline"):
            get_method("daam").check_pipeline(pipe)
        with pytest.raises(MethodError, match="out of range"):
            get_method("conceptattention", layers=(9,)).check_pipeline(pipe)

    def test_blur_is_a_normalised_gaussian(self) -> None:
        delta = torch.zeros(1, 5, 5)
        delta[0, 2, 2] = 1.0
        blurred = get_method("conceptattention", blur_sigma=1.0)._blur(delta)
        weights = torch.exp(-torch.tensor([1.0, 0.0, 1.0]) / 2.0)
        expected = torch.outer(weights, weights) / weights.sum() ** 2
        assert torch.allclose(blurred[0, 1:4, 1:4], expected) and blurred.sum().item() == pytest.approx(1.0)
        assert torch.equal(get_method("conceptattention")._blur(delta), delta)
