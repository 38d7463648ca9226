"""``--animate steps|blocks`` of ``generate`` and ``explain``: maps through time and depth in the run folder.

The run keeps every ``(step, layer)`` score tensor (on the CPU; see :mod:`conceptattention.timeline`), after a
memory check made before the model runs. The run folder then also holds ``animation.gif`` (and ``animation.mp4``
when the ``video`` extra, imageio-ffmpeg, is installed): one frame per step or block, the image and one overlay per
concept; and ``animation_grid.png``: rows = concepts, columns = steps or blocks.

torch and the library are imported inside the functions, so ``--help`` stays fast.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .common import CLIError, positive_float


if TYPE_CHECKING:
    from PIL import Image

    from ..capture import ConceptAttention


#: Default of ``--animate-memory-gb`` (GiB of kept per-step scores); equals timeline.DEFAULT_TIMELINE_MEMORY_GB.
DEFAULT_ANIMATE_MEMORY_GB = 8.0


def add_animate_options(parser: argparse.ArgumentParser, *, steps_help: str) -> None:
    """``--animate``, ``--animate-memory-gb``, ``--animate-fps``."""
    group = parser.add_argument_group("maps through time and depth")
    group.add_argument(
        "--animate",
        choices=["steps", "blocks"],
        default=None,
        help=f"also write animation.gif (+ .mp4 with the video extra) and animation_grid.png: one frame per {steps_help} "
        "('steps') or per selected joint block, see --layers ('blocks')",
    )
    group.add_argument(
        "--animate-memory-gb",
        type=positive_float,
        default=DEFAULT_ANIMATE_MEMORY_GB,
        help="refuse --animate runs whose kept per-step scores (steps x layers x batch x concepts x image tokens x 4 "
        f"bytes, always kept on the CPU) would exceed this many GiB (default {DEFAULT_ANIMATE_MEMORY_GB:g})",
    )
    group.add_argument(
        "--animate-fps", type=positive_float, default=2.0, help="frames per second of the animation (default 2)"
    )


def image_tokens(pipeline: Any, *, height: int, width: int, frames: int = 1) -> int:
    """Image tokens of one transformer call: token grid ``h · w`` times the latent frames of a video model."""
    from ..memory import model_dims

    dims = model_dims(pipeline)
    side = dims.pixels_per_token
    latent_frames = 1 + (frames - 1) // dims.temporal_compression if frames > 1 else 1
    return -(-height // side) * -(-width // side) * latent_frames


def check_animation_memory(
    args: argparse.Namespace,
    attention: ConceptAttention,
    *,
    steps: int,
    tokens: int,
    batch: int = 1,
) -> dict[str, Any]:
    """Estimate the kept per-step scores and refuse (before the run) above ``--animate-memory-gb``.

    Returns:
        The ``animate`` entry of settings.json (axis, estimate, limit).

    Raises:
        conceptattention.timeline.TimelineMemoryError: With the estimate and the limit.
    """
    from ..timeline import check_timeline_memory, estimate_timeline_bytes

    estimate = estimate_timeline_bytes(
        steps=steps, layers=len(attention.layers), concepts=len(attention.concepts), image_tokens=tokens, batch=batch
    )
    check_timeline_memory(estimate, args.animate_memory_gb)
    return {
        "over": args.animate,
        "estimated_bytes": estimate,
        "memory_limit_gib": args.animate_memory_gb,
        "kept_on": "cpu",
        "fps": args.animate_fps,
    }


def animation_writer(
    args: argparse.Namespace,
    attention: ConceptAttention,
    image: Image.Image,
    settings: dict[str, Any],
    *,
    labels: Sequence[str] | None = None,
) -> Callable[[Path], dict[str, Any]]:
    """A writer for :func:`~conceptattention.cli.run_folder.write_run_folder`'s ``extra_files``.

    The per-step (or per-block) maps are computed now, so that an error comes before anything is written; the
    frame labels (``labels``, default ``"step 3"`` / ``"block 5"``) are added to ``settings["animate"]``.
    """
    from ..timeline import maps_over, mp4_available, timeline_labels

    timeline = maps_over(attention, args.animate)
    labels = timeline_labels(timeline) if labels is None else list(labels)
    if len(labels) != len(timeline):
        raise CLIError(f"{len(timeline)} frames were recorded but {len(labels)} labels were expected.")
    settings.setdefault("animate", {})["frames"] = labels

    def write(folder: Path) -> dict[str, Any]:
        return write_animation(folder, timeline, image, labels, cmap=args.cmap, fps=args.animate_fps, mp4=mp4_available())

    return write


def write_animation(
    folder: Path,
    timeline: Sequence[Any],
    image: Image.Image,
    labels: Sequence[str],
    *,
    cmap: str,
    fps: float,
    mp4: bool,
) -> dict[str, Any]:
    """Write ``animation.gif`` (and ``.mp4``) and ``animation_grid.png`` into ``folder``; return their listing."""
    from ..timeline import save_animation, timeline_figure, timeline_frames

    pictures = timeline_frames(timeline, image, labels=labels, cmap=cmap)
    names = ["animation.gif"] + (["animation.mp4"] if mp4 else [])
    for name in names:
        save_animation(pictures, folder / name, fps=fps)
    figure = timeline_figure(timeline, image, labels=labels, cmap=cmap)
    figure.savefig(folder / "animation_grid.png", dpi=100, bbox_inches="tight")
    return {"animation": names, "animation_grid": "animation_grid.png"}


def check_explain_steps(args: argparse.Namespace, noise_levels: Sequence[float]) -> None:
    """``explain --animate steps`` needs several noise levels (one frame per level)."""
    if args.animate == "steps" and len(noise_levels) < 2:
        raise CLIError(
            "explain --animate steps shows one frame per noise level, and this run has one "
            f"({noise_levels[0]:g}); give several, e.g. --noise-level 0.1 0.3 0.5 0.7 0.9, or use --animate blocks."
        )
