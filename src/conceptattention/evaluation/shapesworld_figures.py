"""Figures of the ShapesWorld measurements: per-layer / per-noise-level plots of a ``segment`` run, unprompted maps.

The ``plot`` and ``unprompted`` subcommands of ``python -m conceptattention.cli.measure_shapesworld`` (see
:mod:`conceptattention.evaluation.shapesworld_measure`, which computes what is drawn here). matplotlib is imported
on first use.
"""

from __future__ import annotations

import io
import json
import os
from pathlib import Path

import torch

from conceptattention.evaluation.shapesworld_measure import MeasureError, load_measurement_pipeline
from conceptattention.outputs import atomic_write_bytes


__all__ = ["UNPROMPTED_EXAMPLES", "plot_segment_run", "plot_unprompted"]


def plot_segment_run(
    run: str | os.PathLike[str],
    out: str | os.PathLike[str],
    *,
    prefix: str = "ca",
    prefix_b: str = "ca-indist",
    metric: str = "auroc",
    title: str = "ShapesWorld: ConceptAttention per layer and noise level",
) -> None:
    """The ``plot`` subcommand: per-layer and per-noise AUROC / mIoU per kind from a ``segment`` run.

    Args:
        run: A :func:`~conceptattention.evaluation.shapesworld_measure.measure_segment` folder.
        out: The PNG file.
        prefix: Variant prefix of the solid lines (``<prefix>-layer<N>``, ``<prefix>-noise<t>``).
        prefix_b: Variant prefix of the dashed lines (empty: none).
        metric: ``"auroc"``, ``"miou"`` or ``"map"``.
        title: Figure title.

    Raises:
        MeasureError: ``run`` has no ``summary.json``.

    Example:
        >>> plot_segment_run("no/such/run", "probe.png")
        Traceback (most recent call last):
        ...
        conceptattention.evaluation.shapesworld_measure.MeasureError: no/such/run/summary.json does not exist; run the segment subcommand with --out no/such/run first.
    """
    from matplotlib.figure import Figure

    summary_path = Path(run) / "summary.json"
    if not summary_path.is_file():
        raise MeasureError(f"{summary_path} does not exist; run the segment subcommand with --out {run} first.")
    summary = json.loads(summary_path.read_text(encoding="utf-8"))
    variants = summary["variants"]
    figure = Figure(figsize=(10.0, 3.4), layout="constrained")
    panels = [("layer", "joint block (alone)"), ("noise", "noise level t")]
    kinds = ("object", "colour", "background")
    for column, (axis_kind, xlabel) in enumerate(panels):
        axes = figure.add_subplot(1, 2, column + 1)
        for line_prefix, style in ((prefix, "-"), (prefix_b, "--")):
            if not line_prefix:
                continue
            points = []
            for name in variants:
                rest = name[len(prefix) + 1 :] if name.startswith(prefix + "-") else None
                if rest is None or not rest.startswith(axis_kind):
                    continue
                points.append((float(rest[len(axis_kind) :]), variants[name]["mean"]))
            points.sort(key=lambda point: point[0])
            for kind in kinds:
                values = [p[1].get(kind, {}).get(metric) for p in points]
                if points and any(value is not None for value in values):
                    axes.plot(
                        [p[0] for p in points],
                        [100 * v if v is not None else float("nan") for v in values],
                        style,
                        marker="o",
                        label=f"{kind} ({prefix})",
                    )
        axes.axhline(50.0 if metric == "auroc" else 0.0, color="grey", lw=0.8)
        axes.set_xlabel(xlabel)
        axes.set_ylabel(f"{metric} (%)")
        axes.grid(alpha=0.3)
        if column == 1:
            axes.legend(fontsize="x-small", loc="best")
    figure.suptitle(title, fontsize="medium")
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=90)
    atomic_write_bytes(out, buffer.getvalue())
    print(f"wrote {out} ({len(buffer.getvalue()) // 1024} KB)")


UNPROMPTED_EXAMPLES: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("a house", ("house", "purple", "red", "sky", "grass", "sand", "car")),
    ("a boat", ("boat", "orange", "sky", "sea", "sun", "cloud", "tree")),
    ("a yellow sun over a tree", ("sun", "tree", "yellow", "sky", "sand", "grass", "house")),
)
"""``(caption, concepts)``: concepts beyond the caption (backgrounds, colours, absent objects)."""


def plot_unprompted(out: str | os.PathLike[str], *, seed: int = 0, threads: int = 1) -> None:
    """The ``unprompted`` subcommand: generation-path and explain-path maps of concepts not in the prompt.

    Args:
        out: The PNG file.
        seed: Seed of the first generated image (the next ones use ``seed + 1`` ...).
        threads: Torch CPU threads.

    Example:
        >>> plot_unprompted("docs/img/shapesworld_unprompted.png")  # doctest: +SKIP
        wrote docs/img/shapesworld_unprompted.png (95 KB)
    """
    from matplotlib.figure import Figure

    from conceptattention import ConceptAttention, explain
    from conceptattention.shapesworld import recommended_call_kwargs

    torch.set_num_threads(threads)
    pipe = load_measurement_pipeline()
    kwargs = recommended_call_kwargs(pipe)
    rows = []
    for number, (caption, concepts) in enumerate(UNPROMPTED_EXAMPLES):
        generator = torch.Generator().manual_seed(seed + number)
        with ConceptAttention(pipe, list(concepts)) as session:
            image = pipe(caption, generator=generator, **kwargs).images[0]
        generation_maps = session.maps.tensor[:, 0]  # [C, 1, h, w] -> [C, h, w]
        explained = explain(pipe, image, list(concepts), caption="", num_samples=4).tensor[:, 0]  # [C, h, w]
        rows.append((caption, concepts, image, generation_maps, explained))
    columns = 1 + max(len(concepts) for _, concepts, _, _, _ in rows)
    figure = Figure(figsize=(1.25 * columns, 1.35 * 2 * len(rows)), layout="constrained")
    grid = figure.add_gridspec(2 * len(rows), columns)
    for row, (caption, concepts, image, generation_maps, explained) in enumerate(rows):
        for half, (label, maps) in enumerate((("generation", generation_maps), ("explain", explained))):
            axes = figure.add_subplot(grid[2 * row + half, 0])
            axes.imshow(image, interpolation="nearest")
            axes.set_title(f'"{caption}"\n{label} path', fontsize=6)
            axes.axis("off")
            row_max = float(maps.max())
            for column, concept in enumerate(concepts):
                axes = figure.add_subplot(grid[2 * row + half, column + 1])
                axes.imshow(maps[column].numpy(), cmap="inferno", vmin=0.0, vmax=row_max, interpolation="nearest")
                in_prompt = concept in caption.split()
                axes.set_title(concept + ("" if in_prompt else " *"), fontsize=7)
                axes.axis("off")
    figure.suptitle(
        "ConceptAttention maps (softmax over the row's concepts; colour scale 0 to the row's maximum); "
        "* = concept not in the prompt",
        fontsize=8,
    )
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=80)
    atomic_write_bytes(out, buffer.getvalue())
    print(f"wrote {out} ({len(buffer.getvalue()) // 1024} KB)")
