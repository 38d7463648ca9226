"""Maps through time and depth: one :class:`~conceptattention.maps.ConceptMaps` per denoising step or per block.

A normal run averages the concept scores over the selected joint blocks ("layers") and denoising steps. With
``ConceptAttention(..., keep_per_step=True)`` every ``(step, layer)`` score tensor is also kept, on the CPU (the
library always moves each kept tensor to the host as soon as it is recorded: that *is* the offload; there is no
option to keep them on the accelerator). :func:`maps_over` turns them into one map set per step (averaged over the
layers) or per block (averaged over the steps) with the same arithmetic as the normal run: each group is fed to the
library's own :class:`~conceptattention.core.ScoreAccumulator` with the run's softmax, temperature, normalisation
order and batch reduction, and laid out on the run's token grid. With the paper's order (softmax per layer and step,
then the mean), the mean of the per-step maps (or of the per-block maps) is exactly the normal map up to float
rounding, because every step holds the same layers and every layer the same steps.

On the real-image path (:func:`~conceptattention.explain`) a "step" is one transformer call: one noise level (all
noise samples are batched into one call unless ``samples_per_batch`` splits them).

Kept scores take ``steps · layers · batch · concepts · image tokens · 4`` bytes; :func:`estimate_timeline_bytes`
computes it before a run and :func:`check_timeline_memory` refuses runs above a limit (the CLI's
``--animate-memory-gb``, default :data:`DEFAULT_TIMELINE_MEMORY_GB`).

Drawing: :func:`timeline_frames` (one picture per step or block: the image and one overlay per concept, for an
animated GIF/MP4 written by :func:`save_animation`) and :func:`timeline_figure` (a matplotlib grid, rows = concepts,
columns = steps or blocks).

Example:
    >>> from conceptattention import ConceptAttention
    >>> from conceptattention.testing import tiny_flux_pipeline
    >>> pipe = tiny_flux_pipeline()
    >>> with ConceptAttention(pipe, ["dog", "sky"], keep_per_step=True) as ca:
    ...     image = pipe("a dog", height=32, width=32, num_inference_steps=3, max_sequence_length=32).images[0]
    >>> per_step = maps_over(ca, "steps")
    >>> len(per_step), per_step[0].tensor.shape
    (3, torch.Size([2, 1, 16, 16]))
    >>> torch.allclose(torch.stack([m.tensor for m in per_step]).mean(0), ca.maps.tensor, atol=1e-6)
    True
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw, ImageFont

from .core import ScoreAccumulator
from .errors import ConceptAttentionError
from .maps import ConceptMaps


if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from .capture import ConceptAttention


__all__ = [
    "DEFAULT_TIMELINE_MEMORY_GB",
    "TIMELINE_AXES",
    "TimelineError",
    "TimelineMemoryError",
    "check_timeline_memory",
    "estimate_timeline_bytes",
    "maps_over",
    "mp4_available",
    "save_animation",
    "timeline_figure",
    "timeline_frames",
    "timeline_labels",
]

TimelineAxis = Literal["steps", "blocks"]

#: The axes :func:`maps_over` can split a run along.
TIMELINE_AXES: tuple[str, ...] = ("steps", "blocks")

#: Default limit of the kept per-step scores, in GiB (the CLI's ``--animate-memory-gb``).
DEFAULT_TIMELINE_MEMORY_GB = 8.0

_SCORE_BYTES = 4  # kept scores are float32


class TimelineError(ConceptAttentionError, ValueError):
    """Per-step or per-block maps cannot be made (not kept, unknown axis, nothing recorded)."""


class TimelineMemoryError(TimelineError):
    """The kept per-step scores would need more memory than the limit; the message gives both numbers."""


# ----------------------------------------------------------------------------------------------------------------
# memory guard
# ----------------------------------------------------------------------------------------------------------------


def estimate_timeline_bytes(*, steps: int, layers: int, concepts: int, image_tokens: int, batch: int = 1) -> int:
    """Bytes of the kept ``(step, layer)`` scores: ``steps · layers · batch · concepts · image_tokens · 4``.

    Args:
        steps: Recorded denoising steps (transformer calls; explain: noise levels).
        layers: Selected joint blocks.
        concepts: Concepts ``C``.
        image_tokens: Image tokens ``I`` per call (``frames · h · w`` of the token grid).
        batch: Rows kept per call (1 for a generated image; the noise samples for explain).

    Returns:
        The number of bytes.

    Example:
        >>> estimate_timeline_bytes(steps=28, layers=4, concepts=4, image_tokens=4096)  # FLUX.1 at 1024x1024
        7340032
    """
    for name, value in (
        ("steps", steps),
        ("layers", layers),
        ("concepts", concepts),
        ("image_tokens", image_tokens),
        ("batch", batch),
    ):
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise TimelineError(f"{name} must be a non-negative integer, got {value!r}.")
    return steps * layers * batch * concepts * image_tokens * _SCORE_BYTES


def _readable(count: int) -> str:
    """``count`` bytes in the largest binary unit that keeps the number at least 1 (``"120.0 KiB"``)."""
    for unit, size in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if count >= size:
            return f"{count / size:.2f} {unit}"
    return f"{count} bytes"


def check_timeline_memory(estimate: int, limit_gb: float = DEFAULT_TIMELINE_MEMORY_GB) -> None:
    """Refuse a run whose kept per-step scores (``estimate`` bytes) exceed ``limit_gb`` GiB.

    Raises:
        TimelineMemoryError: With the estimate and the limit.

    Example:
        >>> check_timeline_memory(2**30, limit_gb=8.0)
        >>> check_timeline_memory(9 * 2**30, limit_gb=8.0)
        Traceback (most recent call last):
        ...
        conceptattention.timeline.TimelineMemoryError: Keeping the maps of every step and block needs about 9.00 GiB...
    """
    if isinstance(limit_gb, bool) or not isinstance(limit_gb, int | float) or not math.isfinite(limit_gb) or limit_gb <= 0:
        raise TimelineError(f"The memory limit must be a positive number of GiB, got {limit_gb!r}.")
    if estimate > limit_gb * 2**30:
        raise TimelineMemoryError(
            f"Keeping the maps of every step and block needs about {_readable(estimate)} ({estimate:,} bytes: steps x "
            f"layers x batch x concepts x image tokens x 4 bytes, kept on the CPU), more than the limit of "
            f"{limit_gb:g} GiB. Use fewer steps (--steps or --timesteps), layers, concepts or a smaller size, or "
            "raise --animate-memory-gb."
        )


# ----------------------------------------------------------------------------------------------------------------
# per-step and per-block maps
# ----------------------------------------------------------------------------------------------------------------


def maps_over(attention: ConceptAttention, over: TimelineAxis = "steps", *, index: int = 0) -> list[ConceptMaps]:
    """One :class:`ConceptMaps` per recorded step (averaged over the layers) or per block (averaged over the steps).

    Each group of kept ``[B, C, I]`` score tensors goes through the library's
    :class:`~conceptattention.core.ScoreAccumulator` with the run's settings, exactly as the whole run does, and is
    laid out on the run's token grid ``[C, F, h, w]``. Each result's ``settings`` are the run's, plus ``"over"``
    (``"steps"`` or ``"blocks"``), ``"step"`` or ``"block"`` (the step index / the absolute joint-block index) and
    ``"label"``.

    Args:
        attention: A :class:`~conceptattention.ConceptAttention` created with ``keep_per_step=True``, after the run.
        over: ``"steps"`` or ``"blocks"``.
        index: Which image of a batch (generation with several images per prompt).

    Returns:
        The map sets in step order (steps) or block order (blocks).

    Raises:
        TimelineError: ``keep_per_step`` was off, nothing was recorded, ``over`` or ``index`` is invalid.

    Example:
        >>> from conceptattention import ConceptAttention
        >>> from conceptattention.testing import tiny_flux_pipeline
        >>> pipe = tiny_flux_pipeline()
        >>> with ConceptAttention(pipe, ["dog", "sky"], keep_per_step=True, layers=[0, 1]) as ca:
        ...     _ = pipe("a dog", height=32, width=32, num_inference_steps=2, max_sequence_length=32)
        >>> [m.settings["block"] for m in maps_over(ca, "blocks")]
        [0, 1]
    """
    if over not in TIMELINE_AXES:
        raise TimelineError(f"over must be 'steps' or 'blocks', got {over!r}.")
    if not attention.config.keep_per_step:
        raise TimelineError(
            "Per-step maps need the per-step scores: create the block with ConceptAttention(..., keep_per_step=True)."
        )
    session = attention.session
    if session is None or not session.accumulator.per_step or session.grid_inputs is None:
        raise TimelineError("No per-step scores were recorded; run the pipeline inside the ConceptAttention block first.")
    batch_maps = attention.batch_maps
    if isinstance(index, bool) or not isinstance(index, int) or not 0 <= index < len(batch_maps):
        raise TimelineError(f"index must be an image of the batch, 0 to {len(batch_maps) - 1}, got {index!r}.")
    base = batch_maps[index]
    scores = session.accumulator.per_step  # {(step, layer): [B, C, I]}
    position = 0 if over == "steps" else 1
    keys = sorted({key[position] for key in scores})
    results = []
    for key in keys:
        accumulator = ScoreAccumulator(
            softmax=attention.effective_softmax,
            temperature=attention.config.temperature,
            order=attention.config.normalization_order,
            reduce_batch=session.reduce_batch,
        )
        for (step, layer), tensor in sorted(scores.items()):
            if (step, layer)[position] == key:
                accumulator.add(tensor, step=step, layer=layer)
        maps, logits = accumulator.result()  # [B, C, I] each
        frames, height, width = attention.adapter.token_grid(session.grid_inputs, maps.shape[-1])
        maps = maps.reshape(maps.shape[0], maps.shape[1], frames, height, width)  # [B, C, F, h, w]
        logits = logits.reshape(logits.shape[0], logits.shape[1], frames, height, width)  # [B, C, F, h, w]
        row = 0 if maps.shape[0] == 1 else index
        label = f"step {key}" if over == "steps" else f"block {key}"
        settings = base.settings
        settings.update({"over": over, "step" if over == "steps" else "block": key, "label": label})
        results.append(ConceptMaps(base.concepts, maps[row], logits[row], settings))
    return results


def timeline_labels(maps: Sequence[ConceptMaps]) -> list[str]:
    """The ``"label"`` of each map set of :func:`maps_over` (``"step 3"``, ``"block 15"``), else its position.

    Example:
        >>> timeline_labels([ConceptMaps(["a"], torch.rand(1, 1, 2, 2), settings={"label": "step 0"})] * 2)
        ['step 0', 'step 0']
        >>> timeline_labels([ConceptMaps(["a"], torch.rand(1, 1, 2, 2))])
        ['#0']
    """
    return [str(item.settings.get("label", f"#{position}")) for position, item in enumerate(maps)]


# ----------------------------------------------------------------------------------------------------------------
# drawing
# ----------------------------------------------------------------------------------------------------------------


def _check_timeline(maps: Sequence[ConceptMaps]) -> list[ConceptMaps]:
    if isinstance(maps, ConceptMaps) or not isinstance(maps, Sequence) or not maps:
        raise TimelineError("maps must be a non-empty list of ConceptMaps (e.g. from maps_over).")
    if not all(isinstance(item, ConceptMaps) for item in maps):
        raise TimelineError("maps must hold ConceptMaps only.")
    first = maps[0]
    for item in maps[1:]:
        if item.concepts != first.concepts or item.tensor.shape != first.tensor.shape:
            raise TimelineError("All map sets must have the same concepts and shape.")
    return list(maps)


def _overlay_tiles(
    maps: list[ConceptMaps], image: Image.Image, tile: tuple[int, int], cmap: str, alpha: float, frame: int
) -> np.ndarray:
    """Overlays ``[T, C, H, W, 3]`` uint8; each concept is scaled by one range over all ``T`` map sets."""
    import matplotlib

    try:
        colormap = matplotlib.colormaps[cmap]
    except KeyError as error:
        raise TimelineError(f"Unknown matplotlib colormap {cmap!r}; try 'plasma' or 'viridis'.") from error
    values = torch.stack([item.tensor[:, frame] for item in maps]).to(torch.float64)  # [T, C, h, w]
    low = values.amin(dim=(0, 2, 3), keepdim=True)  # [1, C, 1, 1]
    high = values.amax(dim=(0, 2, 3), keepdim=True)  # [1, C, 1, 1]
    span = torch.where(high > low, high - low, torch.ones_like(high))
    normalized = ((values - low) / span).clamp(0, 1).float()  # [T, C, h, w]
    width, height = tile
    upsampled = F.interpolate(normalized, size=(height, width), mode="bilinear", align_corners=False)  # [T, C, H, W]
    colored = colormap(upsampled.clamp(0, 1).numpy(), bytes=True)[..., :3].astype(np.float32)  # [T, C, H, W, 3]
    base = np.asarray(image.convert("RGB").resize(tile, Image.Resampling.LANCZOS), dtype=np.float32)  # [H, W, 3]
    blended = (1 - alpha) * base + alpha * colored  # [T, C, H, W, 3]
    return np.clip(np.round(blended), 0, 255).astype(np.uint8)


def timeline_frames(
    maps: Sequence[ConceptMaps],
    image: Image.Image,
    *,
    labels: Sequence[str] | None = None,
    tile: int = 160,
    cmap: str = "plasma",
    alpha: float = 0.6,
    frame: int = 0,
) -> list[Image.Image]:
    """One picture per map set: the image, then one overlay per concept, with the step/block and concepts written.

    Each concept's colours span one range over all map sets, so a concept's map visibly gathers (or fades) from
    one step or block to the next.

    Args:
        maps: Map sets of one image (e.g. :func:`maps_over`).
        image: The image the maps belong to (first frame of a video).
        labels: Titles (default :func:`timeline_labels`).
        tile: Longer side of each panel in pixels.
        cmap: Matplotlib colormap.
        alpha: Heatmap weight in ``[0, 1]``.
        frame: Map frame (video models).

    Returns:
        ``len(maps)`` RGB images of one size.

    Example:
        >>> maps = [ConceptMaps(["a", "b"], torch.rand(2, 1, 4, 4)) for _ in range(3)]
        >>> pictures = timeline_frames(maps, Image.new("RGB", (32, 32)), tile=64)
        >>> len(pictures), pictures[0].size
        (3, (192, 84))
    """
    maps = _check_timeline(maps)
    labels = timeline_labels(maps) if labels is None else list(labels)
    if len(labels) != len(maps):
        raise TimelineError(f"{len(labels)} labels were given for {len(maps)} map sets.")
    if isinstance(alpha, bool) or not isinstance(alpha, int | float) or not 0 <= alpha <= 1:
        raise TimelineError(f"alpha must be a number in [0, 1], got {alpha!r}.")
    if isinstance(tile, bool) or not isinstance(tile, int) or tile < 16:
        raise TimelineError(f"tile must be an integer of at least 16 pixels, got {tile!r}.")
    scale = tile / max(image.size)
    size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
    tiles = _overlay_tiles(maps, image, size, cmap, float(alpha), frame)  # [T, C, H, W, 3]
    font = ImageFont.load_default()
    header = 20
    columns = 1 + len(maps[0].concepts)
    shown = image.convert("RGB").resize(size, Image.Resampling.LANCZOS)
    pictures = []
    for position, label in enumerate(labels):
        canvas = Image.new("RGB", (size[0] * columns, size[1] + header), "white")
        draw = ImageDraw.Draw(canvas)
        canvas.paste(shown, (0, header))
        draw.text((4, 4), label, fill="black", font=font)
        for concept_index, concept in enumerate(maps[0].concepts, start=1):
            canvas.paste(Image.fromarray(tiles[position, concept_index - 1]), (size[0] * concept_index, header))
            draw.text((size[0] * concept_index + 4, 4), concept[:24], fill="black", font=font)
        pictures.append(canvas)
    return pictures


def timeline_figure(
    maps: Sequence[ConceptMaps],
    image: Image.Image,
    *,
    labels: Sequence[str] | None = None,
    max_columns: int = 12,
    cmap: str = "plasma",
    alpha: float = 0.6,
    frame: int = 0,
) -> Figure:
    """A matplotlib grid: rows = concepts, columns = steps or blocks (at most ``max_columns``, evenly spaced).

    Built with the object-oriented API (no pyplot state); save with ``figure.savefig(path)``.

    Args:
        maps: Map sets of one image (e.g. :func:`maps_over`).
        image: The image the maps belong to.
        labels: Column titles (default :func:`timeline_labels`).
        max_columns: Most columns shown; with more map sets, evenly spaced ones from the first to the last.
        cmap: Matplotlib colormap.
        alpha: Heatmap weight in ``[0, 1]``.
        frame: Map frame (video models).

    Returns:
        The figure, with ``concepts × columns`` axes.

    Example:
        >>> maps = [ConceptMaps(["a", "b"], torch.rand(2, 1, 4, 4)) for _ in range(3)]
        >>> len(timeline_figure(maps, Image.new("RGB", (32, 32))).axes)
        6
    """
    from matplotlib.figure import Figure

    maps = _check_timeline(maps)
    labels = timeline_labels(maps) if labels is None else list(labels)
    if len(labels) != len(maps):
        raise TimelineError(f"{len(labels)} labels were given for {len(maps)} map sets.")
    if isinstance(max_columns, bool) or not isinstance(max_columns, int) or max_columns < 1:
        raise TimelineError(f"max_columns must be a positive integer, got {max_columns!r}.")
    count = min(max_columns, len(maps))
    shown = sorted({round(i * (len(maps) - 1) / max(count - 1, 1)) for i in range(count)})
    scale = 128 / max(image.size)
    size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
    tiles = _overlay_tiles([maps[i] for i in shown], image, size, cmap, float(alpha), frame)  # [K, C, H, W, 3]
    concepts = maps[0].concepts
    panel = 1.4
    figure = Figure(figsize=(panel * len(shown) + 0.6, panel * len(concepts) * size[1] / size[0] + 0.4))
    axes = figure.subplots(len(concepts), len(shown), squeeze=False)
    for column, map_index in enumerate(shown):
        axes[0, column].set_title(labels[map_index], fontsize=8)
        for row, concept in enumerate(concepts):
            axes[row, column].imshow(tiles[column, row])
            if column == 0:
                axes[row, column].set_ylabel(concept[:24], fontsize=8)
    for axis in axes.flat:
        axis.set_xticks([])
        axis.set_yticks([])
    figure.tight_layout()
    return figure


def save_animation(pictures: Sequence[Image.Image], path: str | os.PathLike[str], fps: float = 2) -> Path:
    """Write pictures (e.g. :func:`timeline_frames`) as a looping GIF or an MP4 (by suffix), atomically.

    MP4 needs imageio-ffmpeg (the ``video`` extra); GIF needs only imageio.

    Example:
        >>> import tempfile
        >>> save_animation([Image.new("RGB", (8, 8))] * 2, f"{tempfile.mkdtemp()}/a.gif").name
        'a.gif'
    """
    from .video import save_video

    if isinstance(fps, bool) or not isinstance(fps, int | float) or not math.isfinite(fps) or fps <= 0:
        raise TimelineError(f"fps must be a positive number, got {fps!r}.")
    return save_video(list(pictures), path, fps=float(fps))


def mp4_available() -> bool:
    """Whether MP4 can be written (imageio and imageio-ffmpeg, the ``video`` extra, are installed).

    Example:
        >>> isinstance(mp4_available(), bool)
        True
    """
    import importlib.util

    return all(importlib.util.find_spec(name) is not None for name in ("imageio", "imageio_ffmpeg"))
