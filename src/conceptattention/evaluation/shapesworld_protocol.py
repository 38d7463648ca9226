"""The per-kind ShapesWorld protocol of ``conceptattention evaluate --protocol per-kind``, with bootstrap intervals.

Each scene is given to every method twice (:func:`protocol_concept_sets`):

* the **names** set: the objects present + ``k`` absent objects + ``"sky"`` + the ground (the issue-10 protocol);
  object names and the two backgrounds are scored;
* the **colours** set: the colour words present + ``k`` absent colours + ``"sky"`` + the ground; colour words are
  scored (colour words and object names are true on the same pixels, so they are kept apart).

Maps are resized to the label resolution (bilinear); each pixel gets the concept with the largest map (a pixel
where all maps tie, e.g. all-background, gets none). Per scene, :func:`scene_stats` records sums; the metrics
(:data:`METRIC_LABELS`) are ratios of sums over scenes:

* per kind (object / colour / background): **AUROC** (mean over (scene, concept) records of the map's AUROC against
  the concept's exact mask; 0.5 = chance), **argmax IoU** (intersection / union of the argmax regions with the
  masks, summed over the dataset), **argmax pixel accuracy** (fraction of the kind's pixels given to the right
  concept), **mIoU** (Chefer standard: map > its mean, mean of foreground and background IoU, counts summed);
* per set: **pixel accuracy** of the names set (fraction of all pixels whose argmax concept is the true one) and the
  **absent share** (fraction of pixels given to concepts absent from the scene);
* per concept word: AUROC.

Every number comes with a 95 % percentile bootstrap interval over scenes (:mod:`conceptattention.evaluation.bootstrap`,
numpy, 1000 resamples, seed 0 by default; the same resamples for every metric and method).

Example:
    >>> from conceptattention.shapesworld import ShapesWorldDataset
    >>> sample = ShapesWorldDataset("test", seed=0, n=1)[0]
    >>> names, colours = protocol_concept_sets(sample)
    >>> names.concepts[-2:] == sample.background_concepts, len(names.distractors)
    (True, 2)
"""

from __future__ import annotations

import json
import math
import os
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from conceptattention.evaluation.bootstrap import DEFAULT_RESAMPLES, bootstrap_metric, resample_weights
from conceptattention.evaluation.methods import MapRequest, Method
from conceptattention.evaluation.metrics import per_image_counts
from conceptattention.evaluation.results import check_run_folder, removed_on_failure, resume_records
from conceptattention.evaluation.shapesworld_report import (
    CONCEPT_KINDS,
    SceneConceptSet,
    per_image_auroc,
    scene_concept_sets,
)
from conceptattention.outputs import atomic_write_json, atomic_write_text


__all__ = [
    "METRIC_LABELS",
    "PROTOCOLS",
    "argmax_labels",
    "compute_metrics",
    "metrics_table",
    "protocol_concept_sets",
    "run_per_kind",
    "scene_stats",
]

PROTOCOLS: tuple[str, ...] = ("standard", "per-kind")
"""``evaluate --protocol`` choices (``per-kind``: ShapesWorld only)."""

METRIC_LABELS: dict[str, str] = {
    "object.auroc": "object AUROC",
    "background.auroc": "sky+ground AUROC",
    "colour.auroc": "colour AUROC",
    "object.argmax_iou": "object argmax IoU",
    "background.argmax_iou": "sky+ground argmax IoU",
    "colour.argmax_iou": "colour argmax IoU",
    "names.pixel_accuracy": "argmax pixel accuracy (names set)",
    "object.argmax_pixel_accuracy": "object pixels named right",
    "background.argmax_pixel_accuracy": "sky+ground pixels named right",
    "names.absent_share": "pixels given to absent concepts (names set)",
    "colours.absent_share": "pixels given to absent colours (colours set)",
    "object.miou": "object mIoU (mean threshold)",
    "background.miou": "sky+ground mIoU (mean threshold)",
    "colour.miou": "colour mIoU (mean threshold)",
}
"""The reported metrics, by key, with their table labels (per-concept AUROCs come on top, ``concept.<word>.auroc``)."""

_SUMMARY_KEYS = (
    "object.auroc",
    "background.auroc",
    "colour.auroc",
    "object.argmax_iou",
    "names.pixel_accuracy",
    "names.absent_share",
    "object.miou",
)


def protocol_concept_sets(
    sample: Any, *, num_distractors: int = 2, seed: int = 0
) -> tuple[SceneConceptSet, SceneConceptSet]:
    """The ``names`` and ``colours`` sets of a scene: present + ``num_distractors`` absent words + sky + ground.

    Unlike :func:`~conceptattention.evaluation.shapesworld_report.scene_concept_sets` (its default adds absent
    backgrounds too), no absent background is added: the concepts are the issue-10 protocol's.

    Example:
        >>> from conceptattention.shapesworld import ShapesWorldDataset
        >>> sample = ShapesWorldDataset("test", seed=0, n=1)[0]
        >>> protocol_concept_sets(sample, num_distractors=0)[0].concepts == (*sample.object_concepts, "sky", "sand")
        True
    """
    return scene_concept_sets(sample, num_distractors=num_distractors, seed=seed, background_distractors=0)


def argmax_labels(maps: torch.Tensor) -> torch.Tensor:
    """Argmax concept index of every pixel of ``[C, H, W]`` maps; -1 where every concept ties (no winner).

    Example:
        >>> argmax_labels(torch.tensor([[[1.0, 0.0]], [[0.0, 0.0]]])).tolist()
        [[0, -1]]
    """
    labels = maps.argmax(dim=0)  # [H, W]
    tied = maps.amax(dim=0) == maps.amin(dim=0)  # [H, W]
    return torch.where(tied, torch.full_like(labels, -1), labels)


def _add(stats: dict[str, float], key: str, value: float) -> None:
    stats[key] = stats.get(key, 0.0) + float(value)


def scene_stats(
    maps: Mapping[str, torch.Tensor], sets: Sequence[SceneConceptSet], sample: Any, *, upsample: str = "bilinear"
) -> dict[str, float]:
    """Per-scene sums of the protocol (see the module docstring) from each set's maps.

    Args:
        maps: ``{set name: float [C, h, w]}``, concepts in the set's order (any resolution; resized to the labels).
        sets: The scene's concept sets (:func:`protocol_concept_sets`).
        sample: The :class:`~conceptattention.shapesworld.ShapesWorldSample` (exact masks).
        upsample: ``"bilinear"`` or ``"nearest"``.

    Returns:
        ``{stat: sum}``: ``<kind>.{auroc_sum, auroc_n, inter, union, pixels, tp, fp, tn, fn}``,
        ``<set>.{absent, pixels}``, ``names.correct``, ``concept.<word>.{auroc_sum, auroc_n}``.

    Example:
        >>> from conceptattention.shapesworld import ShapesWorldDataset
        >>> sample = ShapesWorldDataset("test", seed=0, n=1)[0]
        >>> sets = protocol_concept_sets(sample)
        >>> truth = {s.name: torch.stack([sample.concept_mask(c).float() for c in s.concepts]) for s in sets}
        >>> stats = scene_stats(truth, sets, sample)
        >>> stats["names.correct"] == stats["names.pixels"], stats["object.inter"] == stats["object.union"]
        (True, True)
    """
    label_size = tuple(sample.object_class.shape)
    stats: dict[str, float] = {}
    for concept_set in sets:
        raw = maps[concept_set.name]
        if raw.ndim != 3 or raw.shape[0] != len(concept_set.concepts):
            raise ValueError(
                f"Expected maps [{len(concept_set.concepts)}, h, w] for set {concept_set.name!r}, got {list(raw.shape)}."
            )
        align = False if upsample == "bilinear" else None
        resized = F.interpolate(raw[:, None].float(), size=label_size, mode=upsample, align_corners=align)[:, 0]
        # [C, 1, H, W] -> [C, H, W]
        labels = argmax_labels(resized)  # [H, W]
        absent = torch.tensor([not present for present in concept_set.present] + [False])  # [C + 1]; -1 -> False
        _add(stats, f"{concept_set.name}.absent", absent[labels].sum())
        _add(stats, f"{concept_set.name}.pixels", labels.numel())
        if concept_set.name == "names":
            truth = torch.full(label_size, -2, dtype=torch.long)  # [H, W]
            for index, concept in enumerate(concept_set.concepts):
                if concept_set.present[index]:
                    truth[sample.concept_mask(concept)] = index
            _add(stats, "names.correct", (labels == truth).sum())
        for concept in concept_set.scored:
            index = concept_set.concepts.index(concept)
            kind = concept_set.kinds[index]
            mask = sample.concept_mask(concept)  # [H, W] bool
            predicted = labels == index
            _add(stats, f"{kind}.inter", (predicted & mask).sum())
            _add(stats, f"{kind}.union", (predicted | mask).sum())
            _add(stats, f"{kind}.pixels", mask.sum())
            counts = per_image_counts(resized[index], mask.to(torch.int8))
            for key in ("tp", "fp", "tn", "fn"):
                _add(stats, f"{kind}.{key}", counts[key])
            auroc = per_image_auroc(resized[index], mask)
            if auroc is not None:
                for prefix in (kind, f"concept.{concept}"):
                    _add(stats, f"{prefix}.auroc_sum", auroc)
                    _add(stats, f"{prefix}.auroc_n", 1)
    return stats


def _ratio(numerator: str, denominator: str) -> Callable[[Mapping[str, np.ndarray]], np.ndarray]:
    return lambda s: s[numerator] / s[denominator]


def _miou(kind: str) -> Callable[[Mapping[str, np.ndarray]], np.ndarray]:
    def metric(s: Mapping[str, np.ndarray]) -> np.ndarray:
        tp, fp, tn, fn = (s[f"{kind}.{key}"] for key in ("tp", "fp", "tn", "fn"))
        return 0.5 * (tp / (tp + fp + fn) + tn / (tn + fp + fn))

    return metric


def _metric_functions(stat_names: Sequence[str]) -> dict[str, Callable[[Mapping[str, np.ndarray]], np.ndarray]]:
    functions: dict[str, Callable[[Mapping[str, np.ndarray]], np.ndarray]] = {}
    for kind in CONCEPT_KINDS:
        functions[f"{kind}.auroc"] = _ratio(f"{kind}.auroc_sum", f"{kind}.auroc_n")
        functions[f"{kind}.argmax_iou"] = _ratio(f"{kind}.inter", f"{kind}.union")
        functions[f"{kind}.argmax_pixel_accuracy"] = _ratio(f"{kind}.inter", f"{kind}.pixels")
        functions[f"{kind}.miou"] = _miou(kind)
    functions["names.pixel_accuracy"] = _ratio("names.correct", "names.pixels")
    functions["names.absent_share"] = _ratio("names.absent", "names.pixels")
    functions["colours.absent_share"] = _ratio("colours.absent", "colours.pixels")
    for name in sorted(stat_names):
        if name.startswith("concept.") and name.endswith(".auroc_sum"):
            word = name[len("concept.") : -len(".auroc_sum")]
            functions[f"concept.{word}.auroc"] = _ratio(name, f"concept.{word}.auroc_n")
    return functions


def compute_metrics(
    scene_rows: Sequence[Mapping[str, float]], *, resamples: int = DEFAULT_RESAMPLES, seed: int = 0
) -> dict[str, dict[str, float | None]]:
    """Metrics with 95 % bootstrap intervals from per-scene :func:`scene_stats` rows.

    Returns:
        ``{metric key: {"value", "low", "high"}}`` (fractions; ``None`` where undefined, e.g. a kind with no record).

    Example:
        >>> rows = [{"names.correct": c, "names.pixels": 4.0} for c in (4.0, 2.0, 3.0, 3.0)]
        >>> result = compute_metrics(rows, resamples=100)["names.pixel_accuracy"]
        >>> result["value"], result["low"] <= 0.75 <= result["high"]
        (0.75, True)
    """
    if not scene_rows:
        raise ValueError("No scene to summarise.")
    names = sorted({name for row in scene_rows for name in row})
    stats = {name: np.array([float(row.get(name, 0.0)) for row in scene_rows]) for name in names}  # each [N]
    weights = resample_weights(len(scene_rows), resamples, seed)
    out: dict[str, dict[str, float | None]] = {}
    for key, function in _metric_functions(names).items():
        needed = _needed(key)
        if any(name not in stats for name in needed):
            out[key] = {"value": None, "low": None, "high": None}
            continue
        value, low, high = bootstrap_metric(stats, function, weights=weights)
        out[key] = {"value": value, "low": low, "high": high}
    return out


def _needed(key: str) -> tuple[str, ...]:
    prefix, _, metric = key.rpartition(".")
    if metric == "auroc":
        return (f"{prefix}.auroc_sum", f"{prefix}.auroc_n")
    if metric in ("argmax_iou", "argmax_pixel_accuracy"):
        return (f"{prefix}.inter", f"{prefix}.union", f"{prefix}.pixels")
    if metric == "miou":
        return tuple(f"{prefix}.{k}" for k in ("tp", "fp", "tn", "fn"))
    if metric == "pixel_accuracy":
        return ("names.correct", "names.pixels")
    return (f"{prefix}.absent", f"{prefix}.pixels")


def format_interval(entry: Mapping[str, float | None] | None) -> str:
    """``"73.8 [70.1, 77.2]"`` (percent, one decimal) or ``"—"``.

    Example:
        >>> format_interval({"value": 0.5, "low": 0.4, "high": 0.6})
        '50.0 [40.0, 60.0]'
    """
    if not entry or entry.get("value") is None:
        return "—"
    text = f"{100 * entry['value']:.1f}"
    if entry.get("low") is not None and entry.get("high") is not None:
        text += f" [{100 * entry['low']:.1f}, {100 * entry['high']:.1f}]"
    return text


def metrics_table(rows: Mapping[str, Mapping[str, Any]], keys: Sequence[str] = _SUMMARY_KEYS) -> str:
    """Markdown table: one row per method, the given metrics as ``value [low, high]`` in percent.

    Example:
        >>> print(metrics_table({"m": {"object.auroc": {"value": 0.9, "low": 0.8, "high": 1.0}}}, ["object.auroc"]))
        | method | object AUROC |
        | --- | --- |
        | m | 90.0 [80.0, 100.0] |
        <BLANKLINE>
    """
    header = ["method"] + [METRIC_LABELS.get(key, key.split(".")[1] if key.startswith("concept.") else key)
                           for key in keys]  # fmt: skip
    lines = ["| " + " | ".join(header) + " |", "| " + " | ".join(["---"] * len(header)) + " |"]
    for name, metrics in rows.items():
        lines.append("| " + " | ".join([name] + [format_interval(metrics.get(key)) for key in keys]) + " |")
    return "\n".join(lines) + "\n"


def run_per_kind(
    pipeline: Any,
    dataset: Any,
    methods: Sequence[Method],
    out: str | os.PathLike[str],
    *,
    num_distractors: int = 2,
    distractor_seed: int = 0,
    resamples: int = DEFAULT_RESAMPLES,
    bootstrap_seed: int = 0,
    resume: bool = False,
    overwrite: bool = False,
    model_name: str | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Run the per-kind protocol for several methods on the same scenes; resumable; writes the report.

    Args:
        pipeline: The ShapesWorld pipeline (``None`` when every method is a model-free baseline).
        dataset: A :class:`~conceptattention.shapesworld.ShapesWorldDataset` (its ``version`` sets the colour
            prior's palette).
        methods: Methods to compare (distinct names).
        out: Output folder: ``run.json``, ``scenes-<method>.jsonl`` (one line per scene, appended as computed),
            ``report.json`` and ``report.md``.
        num_distractors: Absent objects (names set) and absent colours (colours set) per scene.
        distractor_seed: Seed of the distractor draw.
        resamples: Bootstrap resamples.
        bootstrap_seed: Seed of the bootstrap.
        resume: Continue a run in ``out`` (same configuration), skipping scenes done.
        overwrite: Replace the results in ``out``.
        model_name: Description of the model (part of the run's identity).
        progress: Print progress to stderr.

    Returns:
        The report (also in ``report.json``): ``{"config", "num_scenes", "metrics": {method: metrics},
        "seconds_per_scene": {method: s}}``.

    Raises:
        RunMismatchError: ``resume`` into a folder holding another configuration.
        OutputExistsError: ``out`` exists without ``resume`` / ``overwrite``.
        ValueError: Repeated method names, or no method.
    """
    names = [method.name for method in methods]
    if not names or len(set(names)) != len(names):
        raise ValueError(f"Give one or more methods with distinct names, got {names}.")
    out = Path(out)
    identity = {
        "protocol": "per-kind",
        "data": {
            "split": dataset.split,
            "seed": dataset.seed,
            "n": len(dataset),
            "size": dataset.size,
            "version": getattr(dataset, "version", "v1"),
        },  # fmt: skip
        "distractors": num_distractors,
        "distractor_seed": distractor_seed,
        "methods": {method.name: method.to_dict() for method in methods},
        "model": model_name if any(method.needs_model for method in methods) else None,
    }
    identity = json.loads(json.dumps(identity))
    check_run_folder(out, identity, resume=resume, overwrite=overwrite, what="a per-kind run")
    for method in methods:
        if method.needs_model:
            method.check_pipeline(pipeline)
    created = not os.path.lexists(out)
    if overwrite and not created:
        for path in [*out.glob("scenes-*.jsonl"), out / "run.json", out / "report.json", out / "report.md"]:
            path.unlink(missing_ok=True)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out / "run.json", identity)
    version = identity["data"]["version"]
    timings: dict[str, list[float]] = {name: [] for name in names}
    records: dict[str, dict[int, dict[str, Any]]] = {}
    started = time.perf_counter()
    has_results = lambda: any(path.stat().st_size > 0 for path in out.glob("scenes-*.jsonl"))  # noqa: E731
    with removed_on_failure(out, created=created, has_results=has_results):
        for method in methods:
            path = out / f"scenes-{method.name}.jsonl"
            done = resume_records(path, key="stats", what="the per-kind protocol")
            with open(path, "a", encoding="utf-8") as handle:
                for index in range(len(dataset)):
                    if index in done:
                        continue
                    sample = dataset[index]
                    sets = protocol_concept_sets(sample, num_distractors=num_distractors, seed=distractor_seed)
                    scene_started = time.perf_counter()
                    image = sample.pil()
                    requests = [MapRequest(image, s.concepts, sample.caption, data_version=version) for s in sets]
                    computed = method.compute_maps(pipeline, requests)
                    stats = scene_stats({s.name: m for s, m in zip(sets, computed)}, sets, sample)
                    seconds = time.perf_counter() - scene_started
                    record = {"index": index, "seconds": round(seconds, 4), "stats": stats}
                    handle.write(json.dumps(record) + "\n")
                    handle.flush()
                    done[index] = record
                    if progress and (index + 1) % 10 == 0:
                        print(f"{method.name}: {index + 1}/{len(dataset)} scenes, "
                              f"{time.perf_counter() - started:.0f} s", file=sys.stderr, flush=True)  # fmt: skip
            records[method.name] = done
            timings[method.name] = [float(done[i]["seconds"]) for i in sorted(done)]
    metrics = {
        name: compute_metrics(
            [records[name][i]["stats"] for i in range(len(dataset))], resamples=resamples, seed=bootstrap_seed
        )
        for name in names
    }
    report = {
        "config": {**identity, "bootstrap": {"resamples": resamples, "seed": bootstrap_seed, "library": "numpy",
                                             "interval": "95 % percentile, scenes resampled with replacement"}},
        "num_scenes": len(dataset),
        "metrics": metrics,
        "seconds_per_scene": {name: math.fsum(t) / max(1, len(t)) for name, t in timings.items()},
    }  # fmt: skip
    atomic_write_json(out / "report.json", report)
    atomic_write_text(out / "report.md", report_markdown(report))
    return report


def report_markdown(report: Mapping[str, Any]) -> str:
    """The markdown report of :func:`run_per_kind`: the summary table, every metric, per-concept AUROC."""
    data = report["config"]["data"]
    metrics = report["metrics"]
    concept_keys = sorted({key for m in metrics.values() for key in m if key.startswith("concept.")})
    lines = [
        f"# ShapesWorld per-kind protocol: {data['split']} split, {report['num_scenes']} scenes (seed {data['seed']}, "
        f"data {data['version']})",
        "",
        f"Concepts: the objects present + {report['config']['distractors']} absent objects + sky + ground (names "
        "set); the colours present + absent colours + sky + ground (colours set). Percent; 95 % bootstrap "
        f"interval over scenes in brackets ({report['config']['bootstrap']['resamples']} resamples, numpy, seed "
        f"{report['config']['bootstrap']['seed']}).",
        "",
        metrics_table(metrics),
        "## All metrics",
        "",
        metrics_table(metrics, list(METRIC_LABELS)),
        "## AUROC per concept word",
        "",
        metrics_table(metrics, concept_keys),
        "Seconds per scene: " + ", ".join(f"{k} {v:.2f}" for k, v in report["seconds_per_scene"].items()),
        "",
    ]
    return "\n".join(lines)
