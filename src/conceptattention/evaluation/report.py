"""Evaluation reports: a run's report (:func:`build_report`), provenance (versions, git, hardware), tables, plots.

A report is one JSON-serialisable dict (written as ``report.json``) and its markdown rendering (``report.md``).
Metric values are stored as fractions in ``[0, 1]`` and shown in tables as percentages with two decimals, as the
paper's tables.
"""

from __future__ import annotations

import importlib.metadata
import math
import os
import platform
import subprocess
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from conceptattention.evaluation.metrics import aggregate
from conceptattention.evaluation.multiclass_metrics import aggregate_multiclass
from conceptattention.evaluation.results import RUN_FORMAT_VERSION
from conceptattention.outputs import atomic_write_bytes, atomic_write_json, atomic_write_text


__all__ = [
    "METRIC_COLUMNS",
    "build_report",
    "environment_info",
    "format_metric",
    "git_revision",
    "hardware_info",
    "markdown_table",
    "metrics_row",
    "plot_sweep",
    "report_markdown",
    "write_report",
]

_PACKAGES = (
    "conceptattention",
    "torch",
    "diffusers",
    "transformers",
    "torchmetrics",
    "accelerate",
    "numpy",
    "h5py",
    "pillow",
    "safetensors",
)

METRIC_COLUMNS: tuple[tuple[str, str], ...] = (
    ("pixel_accuracy", "pixel acc."),
    ("miou", "mIoU"),
    ("map", "mAP"),
    ("paper_compatible_miou", "paper-compatible mIoU = acc/(2−acc)"),
    ("multiclass_pixel_accuracy", "multi-class acc."),
    ("multiclass_miou", "multi-class mIoU"),
)
"""``(key, header)`` of the metric columns of result tables (keys of :func:`metrics_row`)."""


def environment_info() -> dict[str, str | None]:
    """Installed versions of Python and of the packages that affect results (``None`` when not installed).

    Example:
        >>> "torch" in environment_info()
        True
    """
    versions: dict[str, str | None] = {"python": platform.python_version()}
    for package in _PACKAGES:
        try:
            versions[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            versions[package] = None
    return versions


def git_revision(path: str | os.PathLike[str] | None = None) -> dict[str, Any] | None:
    """The git commit of the source tree holding ``path`` (default: this package), or ``None`` outside git.

    Only read-only git commands are run (``rev-parse``, ``status --porcelain``), each with a short timeout.

    Returns:
        ``{"commit": sha, "dirty": bool}`` (``dirty``: tracked files differ from the commit), or ``None``.

    Example:
        >>> import tempfile
        >>> git_revision(tempfile.mkdtemp()) is None  # not a git checkout
        True
    """
    folder = Path(path) if path is not None else Path(__file__).resolve().parent
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=folder, capture_output=True, text=True, timeout=10, check=True
        ).stdout.strip()
        status = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=folder,
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    return {"commit": commit, "dirty": bool(status.strip())} if commit else None


def hardware_info(device: str | None = None) -> dict[str, Any]:
    """The machine: platform, CPU, accelerators, and the device the model ran on.

    Example:
        >>> hardware_info("cpu")["device"]
        'cpu'
    """
    import torch

    info: dict[str, Any] = {
        "platform": platform.platform(),
        "machine": platform.machine(),
        "processor": platform.processor() or None,
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "device": device,
        "cuda_devices": [],
    }
    if torch.cuda.is_available():
        info["cuda_devices"] = [torch.cuda.get_device_name(index) for index in range(torch.cuda.device_count())]
    return info


def format_metric(value: Any) -> str:
    """A fraction as a percentage with two decimals (``"—"`` for a missing value).

    Example:
        >>> format_metric(0.83071), format_metric(None)
        ('83.07', '—')
    """
    if value is None:
        return "—"
    return f"{100.0 * float(value):.2f}"


def metrics_row(metrics: Mapping[str, Any]) -> dict[str, Any]:
    """The table values of a report's ``metrics`` section (keys of :data:`METRIC_COLUMNS`, plus ``images``).

    Example:
        >>> metrics_row({"num_images": 3, "binary": {"miou": 0.5}, "multiclass": None})["miou"]
        0.5
    """
    binary = metrics.get("binary") or {}
    multiclass = metrics.get("multiclass") or {}
    return {
        "images": metrics.get("num_images"),
        "pixel_accuracy": binary.get("pixel_accuracy"),
        "miou": binary.get("miou"),
        "map": binary.get("map"),
        "paper_compatible_miou": binary.get("paper_compatible_miou"),
        "multiclass_pixel_accuracy": multiclass.get("pixel_accuracy"),
        "multiclass_miou": multiclass.get("miou"),
    }


def markdown_table(rows: Sequence[Mapping[str, Any]], first_column: tuple[str, str] = ("name", "method")) -> str:
    """A markdown table of metric rows; metric columns that are empty in every row are left out.

    Args:
        rows: Dicts with ``first_column[0]``, ``"images"`` and the metric keys of :data:`METRIC_COLUMNS`.
        first_column: ``(key, header)`` of the label column.

    Returns:
        The table, ending with a newline.

    Example:
        >>> print(markdown_table([{"name": "a", "images": 2, "pixel_accuracy": 0.5, "miou": 0.25}]), end="")
        | method | images | pixel acc. | mIoU |
        | --- | --- | --- | --- |
        | a | 2 | 50.00 | 25.00 |
    """
    key, header = first_column
    columns = [(name, title) for name, title in METRIC_COLUMNS if any(row.get(name) is not None for row in rows)]
    lines = [
        "| " + " | ".join([header, "images", *(title for _, title in columns)]) + " |",
        "| " + " | ".join(["---"] * (len(columns) + 2)) + " |",
    ]
    for row in rows:
        cells = [
            str(row.get(key, "")),
            str(row.get("images", "")),
            *(format_metric(row.get(name)) for name, _ in columns),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def report_markdown(report: Mapping[str, Any]) -> str:
    """The markdown rendering of one evaluation report (see :func:`build_report`).

    Example:
        >>> report = {"method": {"name": "m"}, "dataset": {"name": "voc"}, "settings": {},
        ...           "metrics": {"num_images": 1, "binary": {"miou": 0.5}}}
        >>> report_markdown(report).splitlines()[0]
        '# m on voc'
    """
    method = report["method"]
    dataset = report["dataset"]
    timing = report.get("timing", {})
    row = {"name": method["name"], **metrics_row(report["metrics"])}
    git = report.get("git") or {}
    lines = [
        f"# {method['name']} on {dataset['name']}",
        "",
        markdown_table([row]).rstrip("\n"),
        "",
        "Standard (Chefer et al. 2021) definitions: pixel accuracy and fg/bg mIoU from counts summed over the dataset, "
        "mAP = mean of per-image pooled APs. The paper-compatible column is acc/(2−acc), the number the official "
        "ConceptAttention ImageNet harness reports as mIoU; it is not an IoU.",
        "",
        "## Run",
        "",
        f"- model: {report.get('model')}",
        f"- dataset: {dataset['name']} ({report['metrics'].get('num_images')} images; {_describe(dataset)})",
        f"- prediction: {report['settings'].get('prediction_rule')}; AP scores: {report['settings'].get('ap_scores')}",
        f"- method options: {_describe(method, skip=('name', 'config', 'description'))}",
        f"- ConceptAttention config: {_describe(method.get('config', {}))}",
        f"- processes: {timing.get('processes')}; device: {report.get('hardware', {}).get('device')}",
        f"- git: {git.get('commit', 'unavailable')}{' (dirty)' if git.get('dirty') else ''}",
        "",
        "## Timing",
        "",
        f"- model seconds (all images): {timing.get('model_seconds', 0.0):.3f}",
        f"- image seconds (all images, model + data + metrics + writing): {timing.get('image_seconds', 0.0):.3f}",
        f"- runner overhead beyond model forwards: {100.0 * timing.get('runner_overhead_fraction', 0.0):.2f}%",
        f"- this invocation: {timing.get('new_images', 0)} new images in {timing.get('wall_seconds', 0.0):.3f} s",
        "",
    ]
    return "\n".join(lines)


def _describe(mapping: Mapping[str, Any], skip: Sequence[str] = ()) -> str:
    return ", ".join(f"{key}={value}" for key, value in mapping.items() if key not in skip and value is not None)


def write_report(out: str | os.PathLike[str], report: Mapping[str, Any]) -> tuple[Path, Path]:
    """Write ``report.json`` and ``report.md`` into ``out`` atomically.

    Returns:
        The two paths.

    Example:
        >>> import tempfile
        >>> report = {"method": {"name": "m"}, "dataset": {"name": "voc"}, "settings": {},
        ...           "metrics": {"num_images": 1, "binary": {"miou": 0.5}}}
        >>> [path.name for path in write_report(tempfile.mkdtemp(), report)]
        ['report.json', 'report.md']
    """
    folder = Path(out)
    json_path = atomic_write_json(folder / "report.json", dict(report))
    markdown_path = atomic_write_text(folder / "report.md", report_markdown(report))
    return json_path, markdown_path


def plot_sweep(
    path: str | os.PathLike[str],
    labels: Sequence[Any],
    rows: Sequence[Mapping[str, Any]],
    *,
    title: str,
    xlabel: str,
    kind: str = "line",
) -> Path:
    """Plot metric rows of a sweep (lines over a numeric axis, or grouped bars) and save a PNG atomically.

    Args:
        path: Destination ``.png``.
        labels: One x value (line) or label (bars) per row.
        rows: :func:`metrics_row` dicts.
        title: Figure title.
        xlabel: X axis label.
        kind: ``"line"`` or ``"bar"``.

    Returns:
        The path written.

    Example:
        >>> import tempfile
        >>> rows = [{"miou": 0.4, "map": 0.6}, {"miou": 0.5, "map": 0.7}]
        >>> plot_sweep(f"{tempfile.mkdtemp()}/sweep.png", [0.3, 0.6], rows, title="t", xlabel="noise").suffix
        '.png'
    """
    import io

    import numpy as np
    from matplotlib.figure import Figure

    if kind not in ("line", "bar"):
        raise ValueError(f"kind must be 'line' or 'bar', got {kind!r}.")
    columns = [(key, title_) for key, title_ in METRIC_COLUMNS if any(row.get(key) is not None for row in rows)]
    figure = Figure(figsize=(max(5.0, 0.9 * len(labels) + 2.0), 3.6), layout="constrained")
    axes = figure.add_subplot(1, 1, 1)
    positions = np.arange(len(labels))
    width = 0.8 / max(1, len(columns))
    for offset, (key, column_title) in enumerate(columns):
        values = [100.0 * row[key] if row.get(key) is not None else np.nan for row in rows]
        if kind == "line":
            axes.plot(labels, values, marker="o", label=column_title)
        else:
            axes.bar(positions + (offset - (len(columns) - 1) / 2) * width, values, width, label=column_title)
    if kind == "bar":
        axes.set_xticks(positions, [str(label) for label in labels], rotation=20, ha="right")
    axes.set_xlabel(xlabel)
    axes.set_ylabel("%")
    axes.set_title(title)
    axes.grid(alpha=0.3)
    axes.legend(fontsize="small", loc="best")
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=110)
    return atomic_write_bytes(path, buffer.getvalue())


def build_report(
    identity: Mapping[str, Any],
    records: Sequence[Mapping[str, Any]],
    *,
    class_names: Sequence[str] | None,
    settings: Mapping[str, Any],
    invocation: Mapping[str, Any],
    processes: int,
    device: str | None,
) -> dict[str, Any]:
    """The report of a run from its identity and per-image records (see :func:`.loop.evaluate`).

    Returns:
        A JSON-serialisable dict: ``dataset``, ``method``, ``model``, ``settings``, ``metrics`` (``binary``: the
        fg/bg metrics of :func:`~conceptattention.evaluation.metrics.aggregate`; ``multiclass``: those of
        :func:`~conceptattention.evaluation.multiclass_metrics.aggregate_multiclass` or ``None``), ``per_image`` APs,
        ``versions``, ``git``, ``hardware`` and ``timing``.

    Example:
        >>> record = {"index": 0, "id": "a", "multiclass": None, "seconds": {"model": 0.9, "image": 1.0},
        ...           "binary": [{"concept": "dog", "tp": 1, "fp": 0, "tn": 1, "fn": 0, "void": 0,
        ...                       "average_precision": 1.0}]}
        >>> identity = {"dataset": {"name": "voc"}, "method": {"name": "m"}, "model": None}
        >>> report = build_report(identity, [record], class_names=None, settings={}, invocation={}, processes=1,
        ...                       device="cpu")
        >>> report["metrics"]["binary"]["miou"], round(report["timing"]["runner_overhead_fraction"], 3)
        (1.0, 0.1)
    """
    binary_records = [record for line in records for record in line["binary"]]
    multiclass_records = [line["multiclass"] for line in records if line.get("multiclass") is not None]
    model_seconds = math.fsum(float(line.get("seconds", {}).get("model", 0.0)) for line in records)
    image_seconds = math.fsum(float(line.get("seconds", {}).get("image", 0.0)) for line in records)
    return {
        "format": "conceptattention.evaluation.report",
        "format_version": RUN_FORMAT_VERSION,
        "dataset": dict(identity["dataset"]),
        "method": dict(identity["method"]),
        "model": identity.get("model"),
        "settings": dict(settings),
        "metrics": {
            "num_images": len(records),
            "binary": aggregate(binary_records) if binary_records else None,
            "multiclass": aggregate_multiclass(multiclass_records, class_names) if multiclass_records else None,
        },
        "per_image": [
            {
                "index": line["index"],
                "id": line["id"],
                "concept": record["concept"],
                "average_precision": record["average_precision"],
            }
            for line in records
            for record in line["binary"]
        ],
        "versions": environment_info(),
        "git": git_revision(),
        "hardware": hardware_info(device),
        "timing": {
            "processes": processes,
            "model_seconds": model_seconds,
            "image_seconds": image_seconds,
            "runner_overhead_fraction": (1.0 - model_seconds / image_seconds) if image_seconds > 0 else 0.0,
            **invocation,
        },
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }

