"""Ablation sweeps of the ConceptAttention paper, each a series of runner evaluations.

* ``table3``: representation space, ``output`` vs ``cross_attention`` vs ``value``, each with and without the
  softmax over concepts (the paper's Table 3).
* ``table4``: what the concept tokens attend to: image and concepts (``both``), image only (``cross``), concepts
  only (``self``), nothing (``none``) (Table 4).
* ``figure7``: one joint block at a time (every block of the model, or a chosen list), and one noise level at a time
  (Figure 7 / Figure 6 of v1).

Every configuration is evaluated by :func:`conceptattention.evaluation.loop.evaluate` into its own sub-folder of
the sweep folder, so an interrupted sweep resumes where it stopped (``resume=True``) and finished configurations are
not recomputed. The sweep writes ``summary.json``, a markdown table per series and a PNG plot per series.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from conceptattention import get_adapter
from conceptattention.evaluation.loop import RunOptions, evaluate
from conceptattention.evaluation.methods import Method, MethodError
from conceptattention.evaluation.report import environment_info, git_revision, markdown_table, metrics_row, plot_sweep
from conceptattention.evaluation.results import RunMismatchError, check_reusable_folder, removed_on_failure
from conceptattention.evaluation.tasks import EvaluationDataset
from conceptattention.outputs import atomic_write_json, atomic_write_text


__all__ = [
    "DEFAULT_NOISE_LEVELS",
    "SWEEPS",
    "SweepPoint",
    "check_sweep_folder",
    "run_sweep",
    "sweep_points",
]

SWEEPS: tuple[str, ...] = ("table3", "table4", "figure7")
"""Sweep names accepted by :func:`run_sweep` and ``conceptattention ablate --sweep``."""

DEFAULT_NOISE_LEVELS: tuple[float, ...] = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)
"""Noise levels of the ``figure7`` noise series."""

_SERIES_TITLES = {
    "space": ("Table 3: representation space and softmax", "configuration", "bar"),
    "attention": ("Table 4: concept attention (cross / self)", "concept attention", "bar"),
    "layer": ("Figure 7: one joint block at a time", "joint block", "line"),
    "noise": ("Figure 7: noise level", "noise level t", "line"),
}


@dataclass(frozen=True)
class SweepPoint:
    """One configuration of a sweep.

    Attributes:
        series: ``"space"`` (table3), ``"attention"`` (table4), ``"layer"`` or ``"noise"`` (figure7).
        label: Short label, also the sub-folder name.
        x: The swept value (layer index, noise level) or the label.
        method: The evaluated method.

    Example:
        >>> from conceptattention.evaluation.methods import get_method
        >>> point = sweep_points("table3", get_method("conceptattention"))[1]
        >>> point.label, point.method.config.softmax
        ('output-raw', False)
    """

    series: str
    label: str
    x: Any
    method: Method


def _joint_block_count(pipeline: Any) -> int:
    transformer = getattr(pipeline, "transformer", None)
    if transformer is None:
        raise MethodError(
            "The figure7 layer sweep needs a multi-modal diffusion transformer pipeline (it has no joint blocks)."
        )
    return len(get_adapter(pipeline).joint_blocks(transformer))


def sweep_points(
    sweep: str,
    base: Method,
    *,
    num_layers: int | None = None,
    layers: Sequence[int] | None = None,
    noise_levels: Sequence[float] = DEFAULT_NOISE_LEVELS,
) -> list[SweepPoint]:
    """The configurations of a sweep, derived from a base method (its other options are kept).

    Args:
        sweep: One of :data:`SWEEPS`.
        base: The method whose options the sweep varies (normally ``conceptattention`` with command-line
            overrides such as ``--layers`` or ``--samples``).
        num_layers: Number of joint blocks of the model (``figure7``; every block is a point unless ``layers``).
        layers: The blocks of the ``figure7`` layer series.
        noise_levels: The noise levels of the ``figure7`` noise series.

    Returns:
        The points, in table / plot order.

    Raises:
        MethodError: Unknown sweep, a DAAM base method, or a figure7 sweep without layers.

    Example:
        >>> from conceptattention.evaluation.methods import get_method
        >>> [point.label for point in sweep_points("table4", get_method("conceptattention"))]
        ['both', 'cross-only', 'self-only', 'none']
    """
    if sweep not in SWEEPS:
        raise MethodError(f"Unknown sweep {sweep!r}; choose one of {', '.join(SWEEPS)}.")
    if base.kind != "conceptattention":
        raise MethodError(f"Sweeps vary ConceptAttention options; the base method {base.name!r} is {base.kind}.")
    points: list[SweepPoint] = []
    if sweep == "table3":
        for space in ("output", "cross_attention", "value"):
            for softmax in (True, False):
                label = f"{space.replace('_', '-')}-{'softmax' if softmax else 'raw'}"
                method = base.replace(name=label, space=space, softmax=softmax)
                points.append(SweepPoint("space", label, label, method))
    elif sweep == "table4":
        for mode, label in (("both", "both"), ("cross", "cross-only"), ("self", "self-only"), ("none", "none")):
            points.append(SweepPoint("attention", label, label, base.replace(name=label, concept_attention=mode)))
    else:
        if layers is None:
            if num_layers is None:
                raise MethodError("The figure7 sweep needs the model's number of joint blocks (or a list of layers).")
            layers = list(range(num_layers))
        for layer in layers:
            label = f"layer-{layer:02d}"
            points.append(SweepPoint("layer", label, int(layer), base.replace(name=label, layers=(int(layer),))))
        for level in noise_levels:
            label = f"noise-{float(level):.3f}"
            points.append(SweepPoint("noise", label, float(level), base.replace(name=label, noise_level=float(level))))
    return points


def check_sweep_folder(out: str | os.PathLike[str], sweep: str, *, resume: bool, overwrite: bool) -> None:
    """Refuse an unusable sweep folder before any work.

    Raises:
        ValueError: ``resume`` and ``overwrite`` together.
        OutputPathError: ``out`` is a file.
        OutputExistsError: ``out`` exists and neither ``resume`` nor ``overwrite`` is given.
        RunMismatchError: ``resume`` into a folder that is not a sweep folder of the same sweep.

    Example:
        >>> check_sweep_folder("no/such/folder", "table3", resume=False, overwrite=False)  # a new folder is fine
    """
    folder = Path(out)
    marker = check_reusable_folder(
        folder,
        "sweep.json",
        resume=resume,
        overwrite=overwrite,
        exists_message=f"The sweep folder '{folder}' already exists; pass --resume to continue the sweep in it "
        "(finished configurations are not recomputed), or --overwrite to start over.",
        foreign_message=f"'{folder}' has no sweep.json: it is not a sweep folder. Choose another --out.",
    )
    if marker is None:
        return
    stored = json.loads(marker.read_text(encoding="utf-8")).get("sweep")
    if stored != sweep:
        raise RunMismatchError(f"'{folder}' holds the {stored!r} sweep, not {sweep!r}; choose another --out.")


def run_sweep(
    pipeline: Any,
    dataset: EvaluationDataset,
    sweep: str,
    base: Method,
    out: str | os.PathLike[str],
    options: RunOptions | None = None,
    *,
    layers: Sequence[int] | None = None,
    noise_levels: Sequence[float] = DEFAULT_NOISE_LEVELS,
    **overrides: Any,
) -> dict[str, Any] | None:
    """Run every configuration of a sweep and write its tables and plots.

    Args:
        pipeline: The diffusers pipeline (an MM-DiT such as FLUX.1 or the ShapesWorld toy).
        dataset: The benchmark.
        sweep: One of :data:`SWEEPS`.
        base: The base method (see :func:`sweep_points`).
        out: Sweep folder: one runner folder per configuration, plus ``sweep.json`` (which sweep it holds),
            ``summary.json``, ``<sweep>*.md`` and ``<sweep>*.png``.
        options: How every configuration is run (:class:`~conceptattention.evaluation.loop.RunOptions`):
            ``resume`` continues an interrupted sweep (finished configurations are not recomputed), ``overwrite``
            recomputes every configuration.
        layers: Joint blocks of the figure7 layer series (default: all).
        noise_levels: Noise levels of the figure7 noise series.
        **overrides: :class:`~conceptattention.evaluation.loop.RunOptions` fields that replace those of
            ``options`` (``limit=``, ``resume=``, ``model_name=`` ...).

    Returns:
        The summary (main process), else ``None``.

    Raises:
        OutputExistsError: ``out`` exists without ``resume`` or ``overwrite``.
        RunMismatchError: ``resume`` into a folder of another sweep.
        MethodError: An invalid sweep or base method.
        ValueError: Invalid run options.

    Example:
        >>> summary = run_sweep(pipe, data, "table4", get_method("conceptattention"), "runs/table4")  # doctest: +SKIP
        >>> [row["name"] for row in summary["series"]["attention"]]  # doctest: +SKIP
        ['both', 'cross-only', 'self-only', 'none']
    """
    options = RunOptions.of(options, **overrides)
    context = options.context
    folder = Path(out)
    check_sweep_folder(folder, sweep, resume=options.resume, overwrite=options.overwrite)
    num_layers = _joint_block_count(pipeline) if sweep == "figure7" and layers is None else None
    points = sweep_points(sweep, base, num_layers=num_layers, layers=layers, noise_levels=noise_levels)
    for point in points:
        point.method.check_pipeline(pipeline)  # every configuration is valid before the first one runs
    created = not os.path.lexists(folder)
    context.barrier()
    if context.is_main:
        atomic_write_json(folder / "sweep.json", {"sweep": sweep, "points": [point.label for point in points]})
    context.barrier()

    def has_results() -> bool:
        return any(folder.glob("*/results/rank-*.jsonl"))

    with removed_on_failure(folder, created=context.is_main and created, has_results=has_results):
        return _run_points(pipeline, dataset, sweep, base, folder, points, options)


def _run_points(
    pipeline: Any,
    dataset: EvaluationDataset,
    sweep: str,
    base: Method,
    folder: Path,
    points: list[SweepPoint],
    options: RunOptions,
) -> dict[str, Any] | None:
    """Evaluate every point and write the summary."""
    series: dict[str, list[dict[str, Any]]] = {}
    entries = []
    for point in points:
        report = evaluate(pipeline, dataset, point.method, folder / point.label, options)
        if report is None:
            continue
        row = {"name": point.label, "x": point.x, **metrics_row(report["metrics"])}
        series.setdefault(point.series, []).append(row)
        entries.append(
            {
                "series": point.series,
                "label": point.label,
                "x": point.x,
                "folder": point.label,
                "method": report["method"],
                "metrics": report["metrics"],
                "timing": report["timing"],
            }
        )
    if not options.context.is_main:
        return None
    summary = {
        "format": "conceptattention.evaluation.sweep",
        "sweep": sweep,
        "dataset": dataset.describe(),
        "base_method": base.to_dict(),
        "model": options.model_name,
        "settings": options.settings(),
        "series": series,
        "points": entries,
        "versions": environment_info(),
        "git": git_revision(),
    }
    _write_outputs(folder, sweep, summary)
    return summary


def _write_outputs(folder: Path, sweep: str, summary: dict[str, Any]) -> None:
    """``summary.json``, one markdown table and one PNG plot per series."""
    atomic_write_json(folder / "summary.json", summary)
    sections = [f"# {sweep} on {summary['dataset']['name']}", "", f"Model: {summary['model']}", ""]
    for name, rows in summary["series"].items():
        title, xlabel, kind = _SERIES_TITLES[name]
        stem = sweep if len(summary["series"]) == 1 else f"{sweep}_{name}"
        first_column = ("name", "configuration") if kind == "bar" else ("x", xlabel)
        table = markdown_table(rows, first_column=first_column)
        sections += [f"## {title}", "", table, f"![{title}]({stem}.png)", ""]
        labels = [row["name"] for row in rows] if kind == "bar" else [row["x"] for row in rows]
        plot_sweep(folder / f"{stem}.png", labels, rows, title=title, xlabel=xlabel, kind=kind)
    atomic_write_text(folder / f"{sweep}.md", "\n".join(sections))
