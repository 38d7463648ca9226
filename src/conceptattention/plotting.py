"""Drawing :class:`~conceptattention.maps.ConceptMaps`: heatmaps, overlays, segmentation images and figures.

Free functions of a :class:`~conceptattention.maps.ConceptMaps` (its methods :meth:`~ConceptMaps.heatmap`,
:meth:`~ConceptMaps.overlay`, :meth:`~ConceptMaps.legend`, :meth:`~ConceptMaps.segmentation_image` and
:meth:`~ConceptMaps.figure` call them). matplotlib is imported only when something is drawn.

Example:
    >>> import torch
    >>> from conceptattention.maps import ConceptMaps
    >>> maps = ConceptMaps(["cat", "sky"], torch.rand(2, 1, 4, 4))  # [C=2, F=1, h=4, w=4]
    >>> segmentation_image(maps, size=(8, 8)).size
    (8, 8)
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import torch.nn.functional as F
from PIL import Image

from conceptattention.maps import ConceptMaps, ConceptMapsError, _validate_size


if TYPE_CHECKING:
    from matplotlib.figure import Figure


__all__ = ["MAX_LABEL_CHARS", "distinct_palette", "figure", "heatmap", "legend", "overlay", "segmentation_image"]


def _colormap(name: str) -> Any:
    import matplotlib

    try:
        return matplotlib.colormaps[name]
    except KeyError as error:
        raise ConceptMapsError(
            f"Unknown matplotlib colormap {name!r}; try 'plasma', 'viridis', 'inferno' or 'jet'."
        ) from error


def distinct_palette(count: int) -> list[tuple[int, int, int]]:
    """``count`` clearly different RGB colours: tab10 first, then the farthest remaining colour, one at a time.

    Beyond ten colours, each next colour is the candidate farthest (in RGB) from every colour already chosen; the
    candidates are matplotlib's qualitative colormaps and a 9 x 9 x 9 RGB grid, without near-black and near-white
    (which vanish against the figure). Up to 60 concepts no two colours are closer than tab10's closest pair.

    Example:
        >>> distinct_palette(2)
        [(31, 119, 180), (255, 127, 14)]
    """
    import matplotlib

    tab10 = [tuple(int(round(channel * 255)) for channel in color) for color in matplotlib.colormaps["tab10"].colors]
    if count <= 10:
        return tab10[:count]
    pool = [
        color
        for name in ("tab20", "Set1", "Dark2", "Set2", "Set3", "Accent", "Paired", "tab20b", "tab20c")
        for color in matplotlib.colormaps[name].colors
    ]
    levels = np.linspace(0.0, 1.0, 9)
    grid = np.stack(np.meshgrid(levels, levels, levels, indexing="ij"), axis=-1).reshape(-1, 3)  # [729, 3]
    candidates = np.round(np.concatenate([np.asarray(pool, dtype=np.float64), grid]) * 255)  # [K, 3]
    visible = (candidates.max(axis=1) >= 48) & (candidates.min(axis=1) <= 216)
    candidates = candidates[visible]  # [K', 3]
    chosen = [np.asarray(color, dtype=np.float64) for color in tab10]
    distance = np.linalg.norm(candidates[:, None, :] - np.asarray(chosen)[None], axis=-1).min(axis=1)  # [K']
    while len(chosen) < count:
        index = int(distance.argmax())
        chosen.append(candidates[index])
        distance = np.minimum(distance, np.linalg.norm(candidates - candidates[index], axis=-1))
    return [tuple(int(channel) for channel in color) for color in chosen]


#: Longest concept label drawn in a figure (titles and legend); longer ones end in an ellipsis.
MAX_LABEL_CHARS = 40


def _label(concept: str) -> str:
    """``concept`` cut to :data:`MAX_LABEL_CHARS` characters for a figure (so a long concept cannot widen it)."""
    return concept if len(concept) <= MAX_LABEL_CHARS else concept[: MAX_LABEL_CHARS - 1] + "…"


def heatmap(
    maps: ConceptMaps,
    concept: str,
    size: tuple[int, int] | None = None,
    cmap: str = "plasma",
    frame: int = 0,
    scope: Literal["concept", "all"] = "concept",
) -> Image.Image:
    """Render one concept's normalised map as a colour-mapped RGB image.

    The map is min-max normalised (see :meth:`ConceptMaps.normalized`), bilinearly upsampled to ``size`` and coloured with a
    matplotlib colormap.

    Args:
        maps: The maps to draw.
        concept: The concept to draw.
        size: ``(H, W)`` of the image; ``None`` for the token grid size ``(h, w)``.
        cmap: Name of a matplotlib colormap.
        frame: Which frame, for video maps.
        scope: Normalisation scope, ``"concept"`` or ``"all"`` (see :meth:`ConceptMaps.normalized`).

    Returns:
        A PIL image of mode ``"RGB"`` and size ``(W, H)``.

    Raises:
        KeyError: If ``concept`` is unknown.
        ConceptMapsError: If ``size``, ``cmap``, ``frame`` or ``scope`` is invalid.

    Example:
        >>> import torch
        >>> maps = ConceptMaps(["a"], torch.rand(1, 1, 4, 4))
        >>> heatmap(maps, "a", size=(32, 48)).size
        (48, 32)
    """
    index = maps.concept_index(concept)
    frame = maps._check_frame(frame)
    colormap = _colormap(cmap)
    concept_map = maps.normalized(scope)[index, frame]  # [h, w]
    if size is not None:
        height, width = _validate_size(size)
        # [h, w] -> [1, 1, h, w] -> [1, 1, H, W] -> [H, W]
        concept_map = F.interpolate(
            concept_map[None, None], size=(height, width), mode="bilinear", align_corners=False
        )[0, 0]
    rgba = colormap(concept_map.clamp(0.0, 1.0).numpy(), bytes=True)  # [H, W, 4] uint8
    return Image.fromarray(np.ascontiguousarray(rgba[..., :3]))


def overlay(
    maps: ConceptMaps,
    image: Image.Image,
    concept: str,
    alpha: float = 0.5,
    cmap: str = "plasma",
    frame: int = 0,
    scope: Literal["concept", "all"] = "concept",
) -> Image.Image:
    """Blend one concept's heatmap over an image.

    The heatmap (see :func:`heatmap`) is upsampled to the image size and blended as
    ``(1 - alpha) * image + alpha * heatmap``. Images with transparency are first composited over white.

    Args:
        maps: The maps to draw.
        image: The image the maps were computed for (any size; any PIL mode).
        concept: The concept to draw.
        alpha: Weight of the heatmap, in ``[0, 1]``.
        cmap: Name of a matplotlib colormap.
        frame: Which frame, for video maps.
        scope: Normalisation scope, ``"concept"`` or ``"all"``.

    Returns:
        A PIL image of mode ``"RGB"`` with the size of ``image``.

    Raises:
        KeyError: If ``concept`` is unknown.
        ConceptMapsError: If ``image`` is not a PIL image, or ``alpha``, ``cmap``, ``frame`` or ``scope`` is invalid.

    Example:
        >>> import torch
        >>> maps = ConceptMaps(["a"], torch.rand(1, 1, 4, 4))
        >>> overlay(maps, Image.new("RGB", (64, 32)), "a").size
        (64, 32)
    """
    from conceptattention.images import to_rgb

    if not isinstance(image, Image.Image):
        raise ConceptMapsError(
            f"image must be a PIL.Image.Image, got {type(image).__name__}; load files with "
            "conceptattention.images.load_image and tensors with conceptattention.images.tensor_to_image."
        )
    if isinstance(alpha, bool) or not isinstance(alpha, int | float) or not 0.0 <= alpha <= 1.0:
        raise ConceptMapsError(f"alpha must be a number in [0, 1], got {alpha!r}.")
    heat = heatmap(maps, concept, size=(image.height, image.width), cmap=cmap, frame=frame, scope=scope)
    return Image.blend(to_rgb(image), heat, float(alpha))


def legend(maps: ConceptMaps) -> list[tuple[str, tuple[int, int, int]]]:
    """``(concept, (r, g, b))`` pairs giving the colour of each concept in :func:`segmentation_image`.

    Example:
        >>> import torch
        >>> legend(ConceptMaps(["cat", "sky"], torch.rand(2, 1, 2, 2)))
        [('cat', (31, 119, 180)), ('sky', (255, 127, 14))]
    """
    return list(zip(maps.concepts, distinct_palette(maps.num_concepts)))


def segmentation_image(maps: ConceptMaps, size: tuple[int, int] | None = None, frame: int = 0) -> Image.Image:
    """Draw the argmax segmentation (see :meth:`ConceptMaps.segmentation`) with one fixed colour per concept.

    Args:
        maps: The maps to draw.
        size: ``(H, W)`` to upsample the maps to before the argmax; ``None`` keeps the token grid.
        frame: Which frame, for video maps.

    Returns:
        A PIL image of mode ``"RGB"`` and size ``(W, H)``; colours as in :func:`legend`.

    Raises:
        ConceptMapsError: If ``size`` or ``frame`` is invalid.

    Example:
        >>> import torch
        >>> maps = ConceptMaps(["cat", "sky"], torch.tensor([[[[1.0, 0.0]]], [[[0.0, 1.0]]]]))
        >>> segmentation_image(maps).getpixel((1, 0))
        (255, 127, 14)
    """
    frame = maps._check_frame(frame)
    labels = maps.segmentation(size)[frame]  # [H, W]
    colors = np.array(distinct_palette(maps.num_concepts), dtype=np.uint8)  # [C, 3]
    return Image.fromarray(colors[labels.numpy()])  # [H, W] -> [H, W, 3]


def figure(maps: ConceptMaps, image: Image.Image | None = None, frame: int = 0, cmap: str = "plasma") -> Figure:
    """A matplotlib figure with every view of one frame.

    Panels, left to right and top to bottom: the image (if given), one panel per concept (the overlay on the
    image if given, else the heatmap) titled with the concept, and the argmax segmentation with a legend. Titles
    and legend labels longer than :data:`MAX_LABEL_CHARS` characters are cut with an ellipsis. Maps are
    bilinearly upsampled to the image size, or without an image to 256 pixels on the longer side. The grid
    has at most four columns. The figure is built with the object-oriented API
    (:class:`matplotlib.figure.Figure`), so it touches no pyplot state and works on any backend; save it with
    ``fig.savefig(path)``.

    Args:
        maps: The maps to draw.
        image: The image the maps were computed for, or None.
        frame: Which frame, for video maps.
        cmap: Name of a matplotlib colormap for the heatmaps.

    Returns:
        The figure, with ``C + 1`` axes (``C + 2`` with an image).

    Raises:
        ConceptMapsError: If ``image``, ``frame`` or ``cmap`` is invalid.

    Example:
        >>> import torch
        >>> maps = ConceptMaps(["cat", "sky"], torch.rand(2, 1, 4, 4))
        >>> len(figure(maps).axes)
        3
    """
    from matplotlib.figure import Figure
    from matplotlib.patches import Patch

    if image is not None and not isinstance(image, Image.Image):
        raise ConceptMapsError(f"image must be a PIL.Image.Image or None, got {type(image).__name__}.")
    frame = maps._check_frame(frame)
    _colormap(cmap)  # fail before drawing anything

    # Without an image, draw the maps bilinearly upsampled so that the longer side has 256 pixels.
    grid_height, grid_width = maps.grid_size
    scale = 256 / max(grid_height, grid_width)
    display_size = (
        (image.height, image.width)
        if image is not None
        else (max(1, round(grid_height * scale)), max(1, round(grid_width * scale)))
    )
    panel_count = maps.num_concepts + 1 + (image is not None)
    rows = math.ceil(panel_count / 4)  # at most four columns, rows filled evenly
    columns = math.ceil(panel_count / rows)
    figure = Figure(figsize=(3.2 * columns, 3.2 * rows), layout="constrained")
    panel_axes = [figure.add_subplot(rows, columns, position + 1) for position in range(panel_count)]
    for axes in panel_axes:
        axes.set_axis_off()
    panels = iter(panel_axes)

    if image is not None:
        from conceptattention.images import to_rgb

        image_axes = next(panels)
        image_axes.imshow(to_rgb(image))
        image_axes.set_title("image")
    for concept in maps.concepts:
        concept_axes = next(panels)
        if image is None:
            concept_axes.imshow(heatmap(maps, concept, size=display_size, cmap=cmap, frame=frame))
        else:
            concept_axes.imshow(overlay(maps, image, concept, cmap=cmap, frame=frame))
        concept_axes.set_title(_label(concept))

    segmentation_axes = next(panels)
    segmentation_axes.imshow(segmentation_image(maps, display_size, frame=frame), interpolation="nearest")
    segmentation_axes.set_title("segmentation")
    handles = [Patch(color=np.array(color) / 255.0, label=_label(concept)) for concept, color in legend(maps)]
    # below the panel (not beside it), so that constrained layout does not widen its column
    segmentation_axes.legend(
        handles=handles,
        loc="upper center",
        bbox_to_anchor=(0.5, 0.0),
        ncol=min(3, len(handles)),
        fontsize="small",
        frameon=False,
    )
    return figure
