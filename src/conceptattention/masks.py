"""Binary masks, label images and COCO-style annotations from :class:`~conceptattention.ConceptMaps`.

The maps are bilinearly upsampled to the requested size (as :meth:`ConceptMaps.heatmap` does) and turned into one
binary mask per concept and frame by a rule:

* ``"mean"``: the map above its own mean (the Chefer et al. standard used by the evaluation harness);
* ``"otsu"``: the map above its Otsu threshold (:func:`otsu_threshold`, 256-bin histogram as scikit-image's
  ``threshold_otsu``);
* ``"threshold"``: the map above a fixed value (a probability for softmax maps, the raw score otherwise);
* ``"argmax"``: the pixels where the concept's map is the largest (one concept per pixel; ties to the first).

**"None of these" (beyond the paper).** A softmax over the listed concepts gives every pixel to some concept, even
to concepts that are absent from the image. With ``none=z`` a *null concept* is appended to that softmax on the
stored raw scores: the scores of each frame are standardised (zero mean, unit standard deviation over concepts and
pixels) and the null concept gets the fixed logit ``z``; a pixel where the null concept wins (its standardised
scores are all below about ``z``) belongs to no concept and is removed from every mask (:func:`none_pixels`). This
is not part of ConceptAttention (Helbling et al. 2025) and is off by default; ``docs/results.md`` and
``scripts/measure_leakage.py`` give its effect on ShapesWorld.

Outputs: :func:`label_image` (a palette PNG, index = concept + 1, 0 = none, the legend in a PNG text chunk) and
:func:`coco_annotations` (COCO-style JSON with RLE masks, encoded by ``pycocotools``; install
``conceptattention[masks]``). :func:`write_masks` writes ``masks/<concept>.png``, ``labels.png``, ``legend.json`` and
``annotations.json`` into a folder.

Example:
    >>> import torch
    >>> from conceptattention import ConceptMaps
    >>> scores = torch.tensor([[[[3.0, 0.0], [0.0, 0.0]]], [[[0.0, 1.0], [1.0, 1.0]]]])  # [2, 1, 2, 2]
    >>> maps = ConceptMaps(["cat", "sky"], scores.softmax(dim=0), logits=scores)
    >>> maps.masks("argmax")[:, 0].int().tolist()
    [[[1, 0], [0, 0]], [[0, 1], [1, 1]]]
    >>> label_image(maps).getpixel((0, 0)), label_image(maps).getpixel((1, 0))
    (1, 2)
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, PngImagePlugin

from conceptattention.errors import ConceptAttentionError


if TYPE_CHECKING:
    from conceptattention.maps import ConceptMaps


__all__ = [
    "MASK_RULES",
    "NONE_COLOR",
    "MaskError",
    "coco_annotations",
    "concept_masks",
    "label_image",
    "labels_from_masks",
    "legend",
    "none_pixels",
    "otsu_threshold",
    "read_legend",
    "rle_encode",
    "save_label_image",
    "write_masks",
]



class MaskError(ConceptAttentionError, ValueError):
    """An invalid mask rule, threshold, tensor or label file."""


MaskRule = Literal["mean", "otsu", "threshold", "argmax"]
MASK_RULES: tuple[str, ...] = ("mean", "otsu", "threshold", "argmax")
"""The rules of :func:`concept_masks`."""

NONE_COLOR: tuple[int, int, int] = (0, 0, 0)
"""Palette colour of label 0 ("none of the concepts")."""


def otsu_threshold(values: torch.Tensor, bins: int = 256) -> float:
    """Otsu's threshold of a set of values: the bin centre that maximises the between-class variance.

    The same algorithm as scikit-image's ``threshold_otsu(values, nbins=256)``: a histogram of ``bins`` equal bins
    between the minimum and the maximum, and for every candidate split (a bin centre) the between-class variance
    ``w0 * w1 * (m0 - m1) ** 2``; the first maximum wins. Pixels *above* the threshold are foreground.

    Args:
        values: Float tensor of any shape (flattened), e.g. one ``[H, W]`` map.
        bins: Number of histogram bins (at least 2).

    Returns:
        The threshold; for constant values, that value.

    Raises:
        MaskError: If ``values`` is empty or not finite, or ``bins`` < 2.

    Example:
        >>> round(otsu_threshold(torch.tensor([0.0, 0.1, 0.2, 0.8, 0.9, 1.0])), 4)
        0.2012
    """
    if isinstance(bins, bool) or not isinstance(bins, int) or bins < 2:
        raise MaskError(f"bins must be an integer of at least 2, got {bins!r}.")
    flat = torch.as_tensor(values).detach().reshape(-1).to(device="cpu", dtype=torch.float64)  # [N]
    if flat.numel() == 0 or not torch.isfinite(flat).all():
        raise MaskError("otsu_threshold needs a non-empty tensor of finite values.")
    low, high = float(flat.min()), float(flat.max())
    if low == high:
        return low
    counts = torch.histc(flat, bins=bins, min=low, max=high)  # [bins]
    width = (high - low) / bins
    centers = low + width * (torch.arange(bins, dtype=torch.float64) + 0.5)  # [bins]
    weight_low = torch.cumsum(counts, 0)  # [bins]: pixels at or below each centre
    weight_high = torch.cumsum(counts.flip(0), 0).flip(0)  # [bins]: pixels at or above each centre
    mass = counts * centers  # [bins]
    mean_low = torch.cumsum(mass, 0) / weight_low.clamp(min=1)  # [bins]
    mean_high = torch.cumsum(mass.flip(0), 0).flip(0) / weight_high.clamp(min=1)  # [bins]
    # split between bin i (class 0 up to it) and bin i + 1: [bins - 1] candidates
    variance = weight_low[:-1] * weight_high[1:] * (mean_low[:-1] - mean_high[1:]) ** 2
    return float(centers[int(torch.argmax(variance))])


def _standardized_logits(maps: ConceptMaps) -> torch.Tensor:
    """The stored raw scores standardised per frame over concepts and pixels, ``[C, F, h, w]``."""
    if maps.logits is None:
        raise MaskError(
            "none= needs the raw scores (ConceptMaps.logits), but these maps were stored without them; compute the "
            "maps again with this version of conceptattention (ConceptAttention and explain always record them)."
        )
    logits = maps.logits.to(torch.float64)
    mean = logits.mean(dim=(0, 2, 3), keepdim=True)  # [1, F, 1, 1]
    std = logits.std(dim=(0, 2, 3), keepdim=True)  # [1, F, 1, 1]
    std = torch.where(std > 0, std, torch.ones_like(std))
    return (logits - mean) / std


def _check_none(none: float | None) -> float | None:
    if none is None:
        return None
    if isinstance(none, bool) or not isinstance(none, int | float) or not np.isfinite(none):
        raise MaskError(
            f"none must be a finite number (the null concept's standardised logit) or None, got {none!r}."
        )
    return float(none)


def none_pixels(maps: ConceptMaps, none: float, size: tuple[int, int] | None = None) -> torch.Tensor:
    """The pixels that a null concept with standardised logit ``none`` wins (see the module docstring).

    Args:
        maps: Maps with raw scores (:attr:`ConceptMaps.logits`).
        none: The null concept's logit, in standard deviations of the frame's raw scores (e.g. ``1.0``: a pixel
            belongs to no concept unless some concept scores about one standard deviation above the frame's mean).
        size: ``(H, W)`` to bilinearly upsample the scores to first; ``None`` keeps the token grid.

    Returns:
        Bool tensor ``[F, H, W]``: True where no concept is assigned.

    Raises:
        MaskError: If the maps have no logits or ``none`` is not a finite number.

    Example:
        >>> from conceptattention import ConceptMaps
        >>> scores = torch.tensor([[[[4.0, 0.0]]], [[[0.0, 0.0]]]])  # [2, 1, 1, 2]
        >>> none_pixels(ConceptMaps(["a", "b"], scores.softmax(0), logits=scores), 1.0).tolist()
        [[[False, True]]]
    """
    from conceptattention.maps import _validate_size

    value = _check_none(none)
    if value is None:
        raise MaskError("none must be a finite number, got None.")
    standardized = _standardized_logits(maps)  # [C, F, h, w]
    if size is not None:
        # concepts as the batch axis, frames as channels: [C, F, h, w] -> [C, F, H, W]
        standardized = F.interpolate(standardized, size=_validate_size(size), mode="bilinear", align_corners=False)
    null = torch.full_like(standardized[:1], value)  # [1, F, H, W]
    return torch.cat([standardized, null]).argmax(dim=0) == standardized.shape[0]  # [C + 1, F, H, W] -> [F, H, W]


def concept_masks(
    maps: ConceptMaps,
    rule: MaskRule = "mean",
    threshold: float | None = None,
    size: tuple[int, int] | None = None,
    none: float | None = None,
) -> torch.Tensor:
    """One binary mask per concept and frame (see the module docstring for the rules).

    Args:
        maps: The concept maps.
        rule: ``"mean"``, ``"otsu"``, ``"threshold"`` or ``"argmax"``.
        threshold: The value for ``rule="threshold"`` (required there, refused otherwise): pixels whose map is
            strictly above it are in the mask.
        size: ``(H, W)`` of the masks; the maps are bilinearly upsampled first (``align_corners=False``, as the
            heatmaps). ``None`` keeps the token grid.
        none: Optional null-concept logit (beyond the paper; see :func:`none_pixels`): the pixels it wins are removed
            from every mask. Needs :attr:`ConceptMaps.logits`.

    Returns:
        Bool tensor ``[C, F, H, W]``.

    Raises:
        MaskError: For an unknown rule, a missing or unexpected ``threshold``, a bad ``size`` or ``none``.

    Example:
        >>> from conceptattention import ConceptMaps
        >>> maps = ConceptMaps(["a"], torch.tensor([[[[0.0, 0.2, 0.9, 1.0]]]]))  # [1, 1, 1, 4]
        >>> concept_masks(maps, "mean")[0, 0].tolist()
        [[False, False, True, True]]
        >>> concept_masks(maps, "threshold", threshold=0.95)[0, 0].tolist()
        [[False, False, False, True]]
    """
    if rule not in MASK_RULES:
        raise MaskError(f"Unknown mask rule {rule!r}; use one of {list(MASK_RULES)}.")
    if rule == "threshold":
        if threshold is None:
            raise MaskError("rule='threshold' needs threshold=VALUE (e.g. 0.5 for softmax maps).")
        if isinstance(threshold, bool) or not isinstance(threshold, int | float) or not np.isfinite(threshold):
            raise MaskError(f"threshold must be a finite number, got {threshold!r}.")
    elif threshold is not None:
        raise MaskError(f"threshold is only used by rule='threshold', not by rule={rule!r}; leave it out.")
    none_value = _check_none(none)
    values = maps.tensor if size is None else maps.upsample(size, mode="bilinear")  # [C, F, H, W]
    if rule == "mean":
        masks = values > values.mean(dim=(2, 3), keepdim=True)  # [C, F, H, W]
    elif rule == "threshold":
        masks = values > float(threshold)  # type: ignore[arg-type]
    elif rule == "argmax":
        labels = values.argmax(dim=0)  # [F, H, W]
        masks = labels[None] == torch.arange(values.shape[0])[:, None, None, None]  # [C, F, H, W]
    else:
        cuts = torch.tensor(
            [[otsu_threshold(frame_map) for frame_map in concept_map] for concept_map in values]
        )  # [C, F]
        masks = values > cuts.to(values.dtype)[:, :, None, None]
    if none_value is not None:
        masks = masks & ~none_pixels(maps, none_value, size=tuple(values.shape[2:]))[None]
    return masks


def labels_from_masks(masks: torch.Tensor, maps: torch.Tensor) -> torch.Tensor:
    """One label per pixel: 0 where no mask is on, else 1 + the concept whose map is largest among the masks on.

    Args:
        masks: Bool ``[C, F, H, W]``.
        maps: Float ``[C, F, H, W]`` maps at the same size (to decide pixels in several masks).

    Returns:
        Int64 ``[F, H, W]`` labels in ``[0, C]``.

    Example:
        >>> masks = torch.tensor([[[[True, True, False]]], [[[False, True, False]]]])  # [2, 1, 1, 3]
        >>> maps = torch.tensor([[[[0.9, 0.2, 0.5]]], [[[0.1, 0.8, 0.5]]]])
        >>> labels_from_masks(masks, maps).tolist()
        [[[1, 2, 0]]]
    """
    if masks.shape != maps.shape or masks.ndim != 4:
        raise MaskError(f"masks {list(masks.shape)} and maps {list(maps.shape)} must be [C, F, H, W] of one shape.")
    masked = torch.where(masks, maps.to(torch.float64), torch.tensor(-torch.inf, dtype=torch.float64))
    return torch.where(masks.any(dim=0), masked.argmax(dim=0) + 1, 0)  # [C, F, H, W] -> [F, H, W]


def _palette(maps: ConceptMaps) -> list[tuple[int, int, int]]:
    return [NONE_COLOR, *maps.palette()]


def legend(maps: ConceptMaps) -> list[dict[str, Any]]:
    """The label legend: ``[{"index": 0, "name": None, "color": [0, 0, 0]}, {"index": 1, "name": concept,
    "color": [r, g, b]}, ...]`` (label ``c + 1`` is concept ``c``; 0 is none).

    Example:
        >>> from conceptattention import ConceptMaps
        >>> legend(ConceptMaps(["cat"], torch.rand(1, 1, 2, 2)))[1]
        {'index': 1, 'name': 'cat', 'color': [31, 119, 180]}
    """
    entries: list[dict[str, Any]] = [{"index": 0, "name": None, "color": list(NONE_COLOR)}]
    for index, (concept, color) in enumerate(maps.legend(), start=1):
        entries.append({"index": index, "name": concept, "color": list(color)})
    return entries


def label_image(
    maps: ConceptMaps,
    rule: MaskRule = "argmax",
    threshold: float | None = None,
    size: tuple[int, int] | None = None,
    none: float | None = None,
    frame: int = 0,
) -> Image.Image:
    """A palette PNG image of the labels: index ``c + 1`` for concept ``c``, ``0`` for none.

    The palette gives index 0 black and concept ``c`` the colour of :meth:`ConceptMaps.legend`; the image carries
    the legend as JSON in ``image.info["legend"]``, which :func:`save_label_image` (and :func:`write_masks`) store
    as a PNG text chunk and :func:`read_legend` reads back. Pixels in several masks (rules other than argmax)
    take the concept whose map is largest there.

    Args:
        maps: The concept maps.
        rule: Mask rule, as :func:`concept_masks` (default ``"argmax"``).
        threshold: For ``rule="threshold"``.
        size: ``(H, W)``; ``None`` keeps the token grid.
        none: Optional null-concept logit (see :func:`none_pixels`).
        frame: Which frame, for video maps.

    Returns:
        A PIL image of mode ``"P"`` and size ``(W, H)``.

    Raises:
        MaskError: For more than 255 concepts, or invalid arguments.

    Example:
        >>> from conceptattention import ConceptMaps
        >>> maps = ConceptMaps(["cat", "sky"], torch.tensor([[[[1.0, 0.0]]], [[[0.0, 1.0]]]]))
        >>> image = label_image(maps)
        >>> image.mode, image.getpixel((1, 0)), image.getpalette()[6:9]
        ('P', 2, [255, 127, 14])
    """
    if maps.num_concepts > 255:
        raise MaskError(f"A label PNG holds at most 255 concepts, got {maps.num_concepts}.")
    frame = maps._check_frame(frame)
    masks = concept_masks(maps, rule, threshold=threshold, size=size, none=none)  # [C, F, H, W]
    values = maps.tensor if size is None else maps.upsample(size, mode="bilinear")  # [C, F, H, W]
    labels = labels_from_masks(masks, values)[frame]  # [H, W]
    image = Image.fromarray(labels.numpy().astype(np.uint8), mode="P")
    image.putpalette([channel for color in _palette(maps) for channel in color])
    image.info["legend"] = json.dumps(legend(maps), ensure_ascii=False)
    return image


def save_label_image(image: Image.Image, path: str | os.PathLike[str]) -> Path:
    """Save a :func:`label_image` as PNG with its legend in a ``"legend"`` text chunk.

    Example:
        >>> import tempfile
        >>> from conceptattention import ConceptMaps
        >>> maps = ConceptMaps(["cat", "sky"], torch.rand(2, 1, 2, 2))
        >>> path = save_label_image(label_image(maps), f"{tempfile.mkdtemp()}/labels.png")
        >>> [entry["name"] for entry in read_legend(path)]
        [None, 'cat', 'sky']
    """
    info = PngImagePlugin.PngInfo()
    if "legend" in image.info:
        info.add_text("legend", image.info["legend"])
    image.save(path, format="PNG", pnginfo=info)
    return Path(path)


def read_legend(path: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """The legend stored in a label PNG written by :func:`write_masks`.

    Raises:
        MaskError: If the PNG has no legend chunk.

    Example:
        >>> import tempfile
        >>> from conceptattention import ConceptMaps
        >>> path = save_label_image(label_image(ConceptMaps(["cat"], torch.rand(1, 1, 2, 2))), f"{tempfile.mkdtemp()}/l.png")
        >>> read_legend(path)[1]["name"]
        'cat'
    """
    with Image.open(path) as image:
        text = getattr(image, "text", {}).get("legend")
    if text is None:
        raise MaskError(f"'{path}' holds no 'legend' text chunk; it was not written by conceptattention.")
    return json.loads(text)


def rle_encode(mask: torch.Tensor | np.ndarray) -> dict[str, Any]:
    """COCO run-length encoding of one ``[H, W]`` binary mask, via ``pycocotools.mask.encode``.

    Returns:
        ``{"size": [H, W], "counts": str}`` (the compressed COCO string, as in COCO JSON files).

    Raises:
        ImportError: If pycocotools is not installed (``pip install 'conceptattention[masks]'``).
        MaskError: If ``mask`` is not two-dimensional.

    Example:
        >>> rle_encode(torch.tensor([[0, 1], [1, 1]], dtype=torch.bool))
        {'size': [2, 2], 'counts': '13'}
    """
    mask_util = _pycocotools_mask()
    array = np.asarray(mask.cpu().numpy() if isinstance(mask, torch.Tensor) else mask)
    if array.ndim != 2:
        raise MaskError(f"rle_encode expects an [H, W] mask, got shape {list(array.shape)}.")
    encoded = mask_util.encode(np.asfortranarray(array.astype(np.uint8)))
    return {"size": [int(side) for side in encoded["size"]], "counts": encoded["counts"].decode("ascii")}


def _pycocotools_mask() -> Any:
    try:
        from pycocotools import mask as mask_util
    except ImportError as error:
        raise ImportError(
            "COCO RLE annotations need pycocotools; install it with pip install 'conceptattention[masks]' "
            "(or pip install pycocotools)."
        ) from error
    return mask_util


def coco_annotations(
    masks: torch.Tensor,
    concepts: Sequence[str],
    file_names: Sequence[str],
    *,
    image_ids: Sequence[int] | None = None,
    first_annotation_id: int = 1,
    colors: Sequence[tuple[int, int, int]] | None = None,
) -> dict[str, Any]:
    """COCO-style annotations of the masks of one image (or of each frame of a video).

    One ``images`` entry per frame, one ``categories`` entry per concept (``id = concept index + 1``, as the label
    PNG), and one ``annotations`` entry per non-empty (concept, frame) mask with an RLE ``segmentation`` (compressed
    COCO string, ``iscrowd`` 0), its ``area`` and ``bbox`` (``[x, y, width, height]``), all from pycocotools.

    Args:
        masks: Bool ``[C, F, H, W]``.
        concepts: The ``C`` concept names.
        file_names: One image file name per frame.
        image_ids: One id per frame (default ``1..F``).
        first_annotation_id: Id of the first annotation.
        colors: Optional ``C`` RGB colours stored with the categories.

    Returns:
        A JSON-serialisable dict with ``images``, ``categories`` and ``annotations``.

    Raises:
        ImportError: If pycocotools is not installed.
        MaskError: If the lengths do not match the masks.

    Example:
        >>> masks = torch.zeros(2, 1, 4, 4, dtype=torch.bool)
        >>> masks[0, 0, 1:3, 1:3] = True
        >>> coco = coco_annotations(masks, ["cat", "sky"], ["image.png"])
        >>> [(a["category_id"], a["area"], a["bbox"]) for a in coco["annotations"]]
        [(1, 4, [1.0, 1.0, 2.0, 2.0])]
    """
    mask_util = _pycocotools_mask()
    if masks.ndim != 4 or masks.dtype != torch.bool:
        raise MaskError(f"masks must be a bool [C, F, H, W] tensor, got {masks.dtype} {list(masks.shape)}.")
    num_concepts, num_frames, height, width = masks.shape
    if len(concepts) != num_concepts:
        raise MaskError(f"{len(concepts)} concepts for {num_concepts} masks.")
    if len(file_names) != num_frames:
        raise MaskError(f"{len(file_names)} file names for {num_frames} frames.")
    ids = list(image_ids) if image_ids is not None else list(range(1, num_frames + 1))
    if len(ids) != num_frames:
        raise MaskError(f"{len(ids)} image ids for {num_frames} frames.")
    categories = []
    for index, concept in enumerate(concepts):
        category: dict[str, Any] = {"id": index + 1, "name": concept, "supercategory": "concept"}
        if colors is not None:
            category["color"] = list(colors[index])
        categories.append(category)
    images = [
        {"id": image_id, "file_name": name, "height": height, "width": width}
        for image_id, name in zip(ids, file_names)
    ]
    annotations = []
    next_id = first_annotation_id
    for concept_index in range(num_concepts):
        for frame in range(num_frames):
            mask = masks[concept_index, frame]  # [H, W]
            if not mask.any():
                continue
            encoded = mask_util.encode(np.asfortranarray(mask.numpy().astype(np.uint8)))
            annotations.append(
                {
                    "id": next_id,
                    "image_id": ids[frame],
                    "category_id": concept_index + 1,
                    "segmentation": {
                        "size": [int(side) for side in encoded["size"]],
                        "counts": encoded["counts"].decode("ascii"),
                    },
                    "area": int(mask_util.area(encoded)),
                    "bbox": [float(value) for value in mask_util.toBbox(encoded)],
                    "iscrowd": 0,
                }
            )
            next_id += 1
    return {"images": images, "categories": categories, "annotations": annotations}


def write_masks(
    folder: str | os.PathLike[str],
    maps: ConceptMaps,
    rule: MaskRule = "mean",
    *,
    size: tuple[int, int],
    threshold: float | None = None,
    none: float | None = None,
    image_file: str = "image.png",
    names: Sequence[str] | None = None,
) -> dict[str, Any]:
    """Write ``masks/<name>.png`` (one 0/255 PNG per concept; frame 0), ``labels.png``, ``legend.json`` and
    ``annotations.json`` (COCO, RLE) into ``folder``.

    Meant to be called inside an atomic output folder (the CLI's run folders and dataset items are), so it writes
    the files directly.

    Args:
        folder: An existing folder.
        maps: The concept maps.
        rule: Mask rule (see :func:`concept_masks`).
        size: ``(H, W)`` of the masks, normally the image size.
        threshold: For ``rule="threshold"``.
        none: Optional null-concept logit (see :func:`none_pixels`).
        image_file: The image's file name, recorded in ``annotations.json``.
        names: File-name-safe names per concept (default: the concepts themselves).

    Returns:
        The relative file names written: ``{"masks": {concept: path}, "labels", "legend", "annotations"}``.

    Raises:
        ImportError: If pycocotools is not installed (checked before anything is written).

    Example:
        >>> import tempfile
        >>> from conceptattention import ConceptMaps
        >>> maps = ConceptMaps(["cat", "sky"], torch.rand(2, 1, 4, 4))
        >>> files = write_masks(tempfile.mkdtemp(), maps, "argmax", size=(16, 16))
        >>> files["masks"]["sky"], files["labels"], files["annotations"]
        ('masks/sky.png', 'labels.png', 'annotations.json')
    """
    _pycocotools_mask()
    out = Path(folder)
    names = list(names) if names is not None else list(maps.concepts)
    masks = concept_masks(maps, rule, threshold=threshold, size=size, none=none)  # [C, F, H, W]
    (out / "masks").mkdir(exist_ok=True)
    files: dict[str, Any] = {"masks": {}}
    for index, (concept, name) in enumerate(zip(maps.concepts, names)):
        Image.fromarray(masks[index, 0].numpy().astype(np.uint8) * 255, mode="L").save(out / "masks" / f"{name}.png")
        files["masks"][concept] = f"masks/{name}.png"
    labels = label_image(maps, rule, threshold=threshold, size=size, none=none)
    save_label_image(labels, out / "labels.png")
    (out / "legend.json").write_text(json.dumps(legend(maps), indent=2, ensure_ascii=False))
    frame_names = [image_file] if maps.num_frames == 1 else [f"{image_file}#frame={f}" for f in range(maps.num_frames)]
    coco = coco_annotations(masks, maps.concepts, frame_names, colors=maps.palette())
    coco["info"] = {"description": "conceptattention masks", "rule": rule, "threshold": threshold, "none": none}
    (out / "annotations.json").write_text(json.dumps(coco, indent=1, ensure_ascii=False))
    files.update(labels="labels.png", legend="legend.json", annotations="annotations.json")
    return files
