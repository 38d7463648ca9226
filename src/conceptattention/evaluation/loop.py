"""The evaluation loop: one method over one dataset, resumable, sharded over processes, with a report.

:func:`evaluate` writes an output folder (layout, resume and run identity: :mod:`conceptattention.evaluation.results`)
with one JSON line per image and a final report (:func:`conceptattention.evaluation.report.build_report`).
How a run is carried out (``limit``, ``batch_size``, ``resume`` ...) is one :class:`RunOptions`, shared with the
ablation sweeps (:func:`conceptattention.evaluation.ablate.run_sweep`).

* **Several processes** (``accelerate launch --num_processes N -m conceptattention.cli.evaluate ...``; on CPUs
  add ``--multi_gpu``, since accelerate's ``--cpu`` starts one process; :mod:`conceptattention.evaluation.distributed`):
  the images not yet done are dealt round-robin to the processes; each writes its own results file; after a barrier
  the main process merges all files. Per-image records hold integer counts and one AP each, and the dataset metrics
  are sums and an exactly rounded mean (``math.fsum``) of them, so the merged metrics are identical to a
  one-process run.
* **Speed and timing**: the next image is loaded and the previous one scored and written in two worker threads
  while the model runs. Every record stores the seconds spent in the model (``explain`` / DAAM: encoding,
  noising, forward) and the main thread's seconds for that image (waiting for its data, the model, waiting for the
  previous image's scoring); their sums give the runner's overhead beyond the model, ``1 - model / image``, in the
  report (with the wall-clock variant of the main process).
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from conceptattention.evaluation.datasets import DatasetFormatError
from conceptattention.evaluation.distributed import ProcessContext
from conceptattention.evaluation.methods import MapRequest, Method
from conceptattention.evaluation.report import build_report, write_report
from conceptattention.evaluation.results import (
    RUN_FORMAT,
    RUN_FORMAT_VERSION,
    ResultsFileError,
    RunMismatchError,
    check_run_folder,
    has_results,
    load_results,
    prepare_run_folder,
    removed_on_failure,
    results_file,
)
from conceptattention.evaluation.tasks import EvaluationDataset, EvaluationItem, score_item


__all__ = ["AP_SCORES", "RunOptions", "evaluate"]

AP_SCORES: tuple[str, ...] = ("normalized", "raw")
"""Which maps AP ranks: ``"normalized"`` (standard) or ``"raw"`` (the official VOC script's AP on raw maps)."""


@dataclass(frozen=True)
class RunOptions:
    """How a run is carried out: the options shared by :func:`evaluate` and the ablation sweeps.

    Attributes:
        limit: Evaluate only the first ``limit`` images (``None``: all).
        batch_size: Images per model forward for methods that batch images (DAAM); ConceptAttention methods run
            one forward per image with all its noise samples batched.
        resume: Continue the run in an existing folder (same configuration), skipping images already done.
        overwrite: Delete the results of an existing run in the folder first.
        ap_scores: One of :data:`AP_SCORES`.
        model_name: Description of the model (part of the run's identity and the report).
        progress: Show a progress bar (main process only).
        context: The process context (default: a single process; see
            :func:`~conceptattention.evaluation.distributed.process_context`).

    Raises:
        ValueError: Bad ``limit``, ``batch_size`` or ``ap_scores``.

    Example:
        >>> options = RunOptions.of(None, limit=2)
        >>> options.limit, options.batch_size, RunOptions.of(options, batch_size=4).limit
        (2, 1, 2)
        >>> RunOptions(ap_scores="pooled")
        Traceback (most recent call last):
        ...
        ValueError: ap_scores must be 'normalized' or 'raw', got 'pooled'.
    """

    limit: int | None = None
    batch_size: int = 1
    resume: bool = False
    overwrite: bool = False
    ap_scores: str = "normalized"
    model_name: str | None = None
    progress: bool = True
    context: ProcessContext = field(default_factory=ProcessContext)

    def __post_init__(self) -> None:
        limit, batch_size = self.limit, self.batch_size
        if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
            raise ValueError(f"limit must be a positive integer or None, got {limit!r}.")
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}.")
        if self.ap_scores not in AP_SCORES:
            raise ValueError(f"ap_scores must be 'normalized' or 'raw', got {self.ap_scores!r}.")
        if self.context is None:  # accepted for callers that pass context=None explicitly
            object.__setattr__(self, "context", ProcessContext())

    @classmethod
    def of(cls, options: RunOptions | None = None, **overrides: Any) -> RunOptions:
        """``options`` (default: all defaults) with ``overrides`` (field names) replaced.

        Raises:
            TypeError: An override that is not a field.
        """
        return dataclasses.replace(options or cls(), **overrides)

    def settings(self) -> dict[str, Any]:
        """The options that shape the results (reports): ``limit``, ``batch_size`` and ``ap_scores``."""
        return {"limit": self.limit, "batch_size": self.batch_size, "ap_scores": self.ap_scores}


def _json_normalised(value: Any) -> Any:
    return json.loads(json.dumps(value))


def _batches(indices: Sequence[int], size: int) -> list[list[int]]:
    return [list(indices[start : start + size]) for start in range(0, len(indices), size)]


def _progress(total: int, description: str, enabled: bool) -> Any:
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=description, unit="img", disable=not enabled, dynamic_ncols=True)


def evaluate(
    pipeline: Any,
    dataset: EvaluationDataset,
    method: Method,
    out: str | os.PathLike[str],
    options: RunOptions | None = None,
    **overrides: Any,
) -> dict[str, Any] | None:
    """Evaluate one method on one dataset, writing per-image results as they come and a final report.

    Args:
        pipeline: The diffusers pipeline (already on this process's device).
        dataset: The benchmark (:func:`~conceptattention.evaluation.tasks.build_dataset`).
        method: The method (:func:`~conceptattention.evaluation.methods.get_method`).
        out: Output folder (see :mod:`conceptattention.evaluation.results` for its layout).
        options: How the run is carried out (:class:`RunOptions`; default: all defaults).
        **overrides: :class:`RunOptions` fields that replace those of ``options`` (``limit=``, ``resume=`` ...).

    Returns:
        The report (on the main process; ``None`` on the others).

    Raises:
        OutputExistsError: ``out`` exists and neither ``resume`` nor ``overwrite`` is given.
        RunMismatchError: ``resume`` into a folder holding another configuration or other data.
        ResultsFileError: A results file is corrupt beyond a torn last line.
        MethodError: The method cannot run on this pipeline.
        ValueError: Bad ``limit``, ``batch_size`` or ``ap_scores``.
        TypeError: An override that is not a :class:`RunOptions` field.

    Example:
        >>> from conceptattention.evaluation import build_dataset, get_method, evaluate
        >>> data = build_dataset("voc", "data/VOCdevkit")  # doctest: +SKIP
        >>> report = evaluate(pipe, data, get_method("conceptattention"), "runs/voc-ca", limit=10)  # doctest: +SKIP
        >>> report["metrics"]["binary"]["miou"]  # doctest: +SKIP
        0.7645
    """
    options = RunOptions.of(options, **overrides)
    context = options.context
    if len(dataset) == 0:
        raise DatasetFormatError(f"The {dataset.name} dataset holds no image to evaluate.")
    method.check_pipeline(pipeline)
    rule = method.prediction_rule(dataset.protocol)
    out = Path(out)
    identity = _json_normalised(
        {
            "format": RUN_FORMAT,
            "format_version": RUN_FORMAT_VERSION,
            "dataset": dataset.describe(),
            "method": {key: value for key, value in method.to_dict().items() if key != "description"},
            "model": options.model_name,
            "metrics": {"prediction_rule": rule, "ap_scores": options.ap_scores},
        }
    )
    check_run_folder(out, identity, resume=options.resume, overwrite=options.overwrite)
    context.barrier()
    created = prepare_run_folder(out, identity, overwrite=options.overwrite) if context.is_main else False
    context.barrier()
    with removed_on_failure(out, created=context.is_main and created, has_results=lambda: has_results(out)):
        return _run(pipeline, dataset, method, out, identity, rule, options)


def _run(
    pipeline: Any,
    dataset: EvaluationDataset,
    method: Method,
    out: Path,
    identity: dict[str, Any],
    rule: str,
    options: RunOptions,
) -> dict[str, Any] | None:
    started = time.perf_counter()
    limit, ap_scores, context = options.limit, options.ap_scores, options.context
    done = {record["index"]: record["id"] for record in load_results(out)}
    num_images = len(dataset)
    for index, stored_id in done.items():
        if index >= num_images or dataset.item_id(index) != stored_id:
            raise RunMismatchError(
                f"The results in '{out}' hold image {index} as {stored_id!r}, but the dataset has "
                f"{dataset.item_id(index) if index < num_images else 'no such image'!r} there: the data changed. "
                "Start over with --overwrite."
            )
    selected = range(min(limit, num_images) if limit is not None else num_images)
    pending = [index for index in selected if index not in done]
    shard = pending[context.rank :: context.world_size]
    batches = _batches(shard, options.batch_size if method.batches_images else 1)
    num_classes = len(dataset.class_names) if dataset.class_names is not None else None
    model_seconds = 0.0

    def load(indices: list[int]) -> list[EvaluationItem]:
        return [dataset.item(index) for index in indices]

    def score_and_write(items: list[EvaluationItem], maps: list[torch.Tensor], seconds: dict[str, float]) -> None:
        for item, item_maps in zip(items, maps):
            scored = score_item(
                item,
                item_maps,
                prediction_rule=rule,
                num_classes=num_classes,
                upsample=method.upsample,
                ap_scores=ap_scores,
            )
            line = {
                "index": item.index,
                "id": item.id,
                "class_name": item.class_name,
                "concepts": list(item.concepts),
                "grid_size": list(item_maps.shape[-2:]),
                **scored,
                "seconds": seconds,
            }
            handle.write(json.dumps(line, allow_nan=False, ensure_ascii=False) + "\n")
        handle.flush()

    # Three stages overlap: the next batch is loaded and the previous one scored and written (one worker thread
    # each) while the model runs on the current one. A record's "image" seconds are the main thread's time for
    # its batch (waiting for data, the model, waiting for the previous batch's scoring), so their sum is the
    # wall time of the loop and 1 - model / image is the runner's overhead beyond the model.
    with (
        open(results_file(out, context.rank), "a", encoding="utf-8") as handle,
        ThreadPoolExecutor(max_workers=1, thread_name_prefix="prefetch") as loader,
        ThreadPoolExecutor(max_workers=1, thread_name_prefix="scoring") as scorer,
        _progress(len(shard), f"{method.name} / {dataset.name}", options.progress and context.is_main) as bar,
    ):
        upcoming: Future[list[EvaluationItem]] | None = loader.submit(load, batches[0]) if batches else None
        scoring: Future[None] | None = None
        for position in range(len(batches)):
            batch_started = time.perf_counter()
            assert upcoming is not None
            items = upcoming.result()
            upcoming = loader.submit(load, batches[position + 1]) if position + 1 < len(batches) else None
            model_started = time.perf_counter()
            maps = method.compute_maps(
                pipeline,
                [MapRequest(item.image, item.concepts, item.caption, getattr(dataset, "version", "v1")) for item in items],
            )
            batch_model = time.perf_counter() - model_started
            if scoring is not None:
                scoring.result()  # at most one batch waits for scoring; re-raises its errors here
                bar.update(len(batches[position - 1]))
            model_seconds += batch_model
            seconds = {
                "model": batch_model / len(items),
                "image": (time.perf_counter() - batch_started) / len(items),
            }
            scoring = scorer.submit(score_and_write, items, maps, seconds)
        if scoring is not None:
            scoring.result()
            bar.update(len(batches[-1]))
    wall_seconds = time.perf_counter() - started
    context.barrier()
    if not context.is_main:
        return None
    records = [record for record in load_results(out) if record["index"] < len(selected)]
    missing = len(selected) - len(records)
    if missing:
        raise ResultsFileError(f"{missing} image(s) have no result in '{out}' after the run; rerun with --resume.")
    invocation = {
        "new_images": len(shard) if context.world_size == 1 else len(pending),
        "wall_seconds": wall_seconds,
        "main_process_model_seconds": model_seconds,
        "main_process_overhead_fraction": (1.0 - model_seconds / wall_seconds) if shard and wall_seconds > 0 else None,
    }
    report = build_report(
        identity,
        records,
        class_names=dataset.class_names,
        settings={
            "limit": limit,
            "batch_size": options.batch_size,
            "prediction_rule": rule,
            "ap_scores": ap_scores,
        },
        invocation=invocation,
        processes=context.world_size,
        device=context.device or _pipeline_device(pipeline),
    )
    write_report(out, report)
    return report


def _pipeline_device(pipeline: Any) -> str | None:
    device = getattr(pipeline, "device", None)
    return str(device) if device is not None else None

