"""``ConceptMaps``: the result of a ConceptAttention run.

A :class:`ConceptMaps` holds one saliency map per concept (and per frame, for video models) on the transformer's
token grid, together with the raw scores they came from and the settings that produced them. It offers the usual
views of such maps: upsampled tensors, min-max normalised maps, an argmax segmentation, colour-mapped heatmaps and
overlays as PIL images, a matplotlib figure, and a lossless ``.safetensors`` file format.

The class is model-independent: it never imports diffusers, and matplotlib is imported only by the methods that
draw.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from conceptattention.encoding import duplicate_concepts
from conceptattention.outputs import atomic_write_bytes


if TYPE_CHECKING:
    from matplotlib.figure import Figure


__all__ = ["ConceptMaps", "ConceptMapsFileError", "ConceptMapsNotFoundError"]

_FILE_FORMAT = "conceptattention.ConceptMaps"
_FILE_FORMAT_VERSION = "1"
_UPSAMPLE_MODES = ("nearest", "nearest-exact", "bilinear", "bicubic", "area")
_NORMALIZATION_SCOPES = ("concept", "all")


class ConceptMapsFileError(ValueError):
    """A file could not be read as saved :class:`ConceptMaps` (corrupt, truncated, or another kind of file)."""


class ConceptMapsNotFoundError(ConceptMapsFileError, FileNotFoundError):
    """The :class:`ConceptMaps` file does not exist. Also a :class:`FileNotFoundError`."""


def _validate_concepts(concepts: Sequence[str]) -> tuple[str, ...]:
    if isinstance(concepts, str) or not isinstance(concepts, Sequence):
        raise ValueError(f"concepts must be a sequence of strings such as ['dog', 'sky'], got {concepts!r}.")
    concept_tuple = tuple(concepts)
    if not concept_tuple:
        raise ValueError("concepts is empty; give at least one concept.")
    for concept in concept_tuple:
        if not isinstance(concept, str) or not concept.strip():
            raise ValueError(f"Every concept must be a non-empty string, got {concept!r} in {list(concept_tuple)}.")
    duplicates = duplicate_concepts(concept_tuple)
    if duplicates:
        raise ValueError(
            f"Concepts must be unique (ignoring case and spaces); {duplicates} repeat an earlier concept."
        )
    return concept_tuple


def _validate_map_tensor(name: str, tensor: Any, num_concepts: int) -> torch.Tensor:
    """Check a ``[C, F, h, w]`` map tensor and return a float32 CPU copy."""
    if not isinstance(tensor, torch.Tensor):
        raise ValueError(
            f"{name} must be a torch.Tensor of shape [concepts, frames, h, w], got {type(tensor).__name__}."
        )
    if tensor.ndim != 4:
        hint = (
            " For an image, add the frame axis: maps.unsqueeze(1) turns [C, h, w] into [C, 1, h, w]."
            if tensor.ndim == 3
            else ""
        )
        raise ValueError(
            f"{name} must have 4 dimensions [concepts, frames, h, w], got shape {list(tensor.shape)}.{hint}"
        )
    if not tensor.is_floating_point():
        raise ValueError(f"{name} must be a floating-point tensor, got dtype {tensor.dtype}.")
    if tensor.shape[0] != num_concepts:
        raise ValueError(f"{name} has {tensor.shape[0]} maps on its first axis but there are {num_concepts} concepts.")
    if min(tensor.shape[1:]) == 0:
        raise ValueError(f"{name} has an empty frame or spatial axis: shape {list(tensor.shape)}.")
    copy = tensor.detach().to(device="cpu", dtype=torch.float32, copy=True).contiguous()
    if not torch.isfinite(copy).all():
        raise ValueError(f"{name} contains NaN or infinite values (after conversion to float32).")
    return copy


def _normalize_config(config: Mapping[str, Any] | None) -> dict[str, Any]:
    """A JSON round-tripped deep copy, so that a saved and reloaded config compares equal to the original."""
    if config is None:
        return {}
    if not isinstance(config, Mapping):
        raise ValueError(f"config must be a mapping (e.g. dataclasses.asdict(config)), got {type(config).__name__}.")
    for key in config:
        if not isinstance(key, str):
            raise ValueError(f"config keys must be strings, got {key!r}.")
    try:
        return json.loads(json.dumps(dict(config), allow_nan=False))
    except (TypeError, ValueError) as error:
        raise ValueError(
            f"config must be JSON-serialisable ({error}); convert ranges and tuples of layers to lists, "
            "dtypes and devices to strings, and drop NaN/Infinity."
        ) from error


def _validate_size(size: Any) -> tuple[int, int]:
    if (
        not isinstance(size, Sequence)
        or len(size) != 2
        or not all(isinstance(side, int) and not isinstance(side, bool) and side > 0 for side in size)
    ):
        raise ValueError(f"size must be (height, width) with two positive integers, got {size!r}.")
    return int(size[0]), int(size[1])


def _colormap(name: str) -> Any:
    import matplotlib

    try:
        return matplotlib.colormaps[name]
    except KeyError as error:
        raise ValueError(
            f"Unknown matplotlib colormap {name!r}; try 'plasma', 'viridis', 'inferno' or 'jet'."
        ) from error


def _distinct_palette(count: int) -> list[tuple[int, int, int]]:
    """``count`` clearly different RGB colours: tab10 first, then the farthest remaining colour, one at a time.

    Beyond ten colours, each next colour is the candidate farthest (in RGB) from every colour already chosen; the
    candidates are matplotlib's qualitative colormaps and a 9 x 9 x 9 RGB grid, without near-black and near-white
    (which vanish against the figure). Up to 60 concepts no two colours are closer than tab10's closest pair.
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


class ConceptMaps:
    """Concept saliency maps for one image or video, with raw scores and provenance.

    ``maps[c, f]`` is the map of concept ``c`` for frame ``f`` on the transformer's token grid ``(h, w)``. With the
    default ConceptAttention settings these are probabilities from a softmax over concepts, averaged over layers and
    timesteps (so they sum to one over concepts); with the softmax switched off they are raw scores and may take any
    real value. All methods work for both.

    Tensors are stored as float32 copies on the CPU; the object does not share memory with the tensors passed in.
    ``config`` is stored as a JSON round-tripped copy (tuples become lists), so that :meth:`save` and :meth:`load`
    reproduce it exactly.

    Args:
        concepts: ``C`` unique, non-empty concept names, in map order.
        maps: Float tensor of shape ``[C, F, h, w]`` (``F = 1`` for images): the saliency maps.
        logits: Optional float tensor of shape ``[C, F, h, w]``: the mean raw scores before normalisation.
        config: Optional JSON-serialisable mapping of the settings that produced the maps.

    Raises:
        ValueError: If the concepts are empty, repeated or not strings; if a tensor is not a finite floating-point
            ``[C, F, h, w]`` tensor matching the concepts (and each other); if ``config`` is not JSON-serialisable.

    Example:
        >>> import torch
        >>> scores = torch.tensor([[[[2.0, 0.0], [0.0, 0.0]]], [[[0.0, 1.0], [1.0, 1.0]]]])  # [2, 1, 2, 2]
        >>> maps = ConceptMaps(["cat", "sky"], scores.softmax(dim=0), logits=scores, config={"layers": [15, 16]})
        >>> maps
        ConceptMaps(concepts=('cat', 'sky'), frames=1, grid_size=(2, 2), logits=True)
        >>> maps.segmentation().tolist()
        [[[0, 1], [1, 1]]]
        >>> maps["cat"].shape
        torch.Size([1, 2, 2])
    """

    def __init__(
        self,
        concepts: Sequence[str],
        maps: torch.Tensor,
        logits: torch.Tensor | None = None,
        config: Mapping[str, Any] | None = None,
        *,
        head_maps: torch.Tensor | None = None,
        head_logits: torch.Tensor | None = None,
    ) -> None:
        self._concepts = _validate_concepts(concepts)
        self._maps = _validate_map_tensor("maps", maps, len(self._concepts))
        self._logits: torch.Tensor | None = None
        if logits is not None:
            self._logits = _validate_map_tensor("logits", logits, len(self._concepts))
            if self._logits.shape != self._maps.shape:
                raise ValueError(
                    f"logits shape {list(self._logits.shape)} differs from maps shape {list(self._maps.shape)}."
                )
        self._config = _normalize_config(config)
        self._index = {concept: index for index, concept in enumerate(self._concepts)}
        self._head_maps = self._check_heads("head_maps", head_maps)
        self._head_logits = self._check_heads("head_logits", head_logits)

    def _check_heads(self, name: str, tensor: torch.Tensor | None) -> torch.Tensor | None:
        """A float32 CPU copy of a per-head ``[C, H, F, h, w]`` tensor matching the maps, or None."""
        if tensor is None:
            return None
        if not isinstance(tensor, torch.Tensor) or tensor.ndim != 5:
            raise ValueError(f"{name} must be a [concepts, heads, frames, h, w] tensor, got {getattr(tensor, 'shape', tensor)!r}.")
        flat = _validate_map_tensor(name, tensor.flatten(1, 2), len(self._concepts))  # [C, H·F, h, w]
        heads = tensor.shape[1]
        if (tensor.shape[0], *tensor.shape[2:]) != tuple(self._maps.shape):
            raise ValueError(f"{name} shape {list(tensor.shape)} does not match maps {list(self._maps.shape)} (heads on axis 1).")
        return flat.unflatten(1, (heads, -1))  # [C, H, F, h, w]

    @property
    def head_maps(self) -> torch.Tensor | None:
        """Per-head maps ``[C, H, F, h, w]`` (``keep_heads=True``): each head's scores through the same softmax over
        concepts and mean over layers and steps as :attr:`maps`; None if not kept."""
        return self._head_maps

    @property
    def head_logits(self) -> torch.Tensor | None:
        """Per-head mean raw scores ``[C, H, F, h, w]`` (``keep_heads=True``); their mean over heads is :attr:`logits`
        (up to float rounding). None if not kept."""
        return self._head_logits

    def head(self, index: int) -> ConceptMaps:
        """The maps of one attention head (``keep_heads=True``), as a :class:`ConceptMaps`.

        Raises:
            ValueError: no per-head maps were kept, or ``index`` is not a head.

        Example:
            >>> maps = ConceptMaps(["a", "b"], torch.rand(2, 1, 2, 2), head_maps=torch.rand(2, 3, 1, 2, 2))
            >>> maps.head(2).maps.shape
            torch.Size([2, 1, 2, 2])
        """
        if self._head_maps is None:
            raise ValueError("No per-head maps were kept; run with keep_heads=True.")
        num_heads = self._head_maps.shape[1]
        if isinstance(index, bool) or not isinstance(index, int) or not 0 <= index < num_heads:
            raise ValueError(f"Head {index!r} does not exist; the maps have heads 0..{num_heads - 1}.")
        logits = None if self._head_logits is None else self._head_logits[:, index]
        return ConceptMaps(self._concepts, self._head_maps[:, index], logits, {**self._config, "head": index})

    # ------------------------------------------------------------------ basic access

    @property
    def concepts(self) -> tuple[str, ...]:
        """The concept names, in map order."""
        return self._concepts

    @property
    def maps(self) -> torch.Tensor:
        """The saliency maps, float32 ``[C, F, h, w]``. Do not modify in place."""
        return self._maps

    @property
    def logits(self) -> torch.Tensor | None:
        """The mean raw scores, float32 ``[C, F, h, w]``, or None if not recorded."""
        return self._logits

    @property
    def config(self) -> dict[str, Any]:
        """The settings that produced the maps (a copy; editing it does not change this object)."""
        return json.loads(json.dumps(self._config))

    @property
    def num_concepts(self) -> int:
        """``C``, the number of concepts."""
        return self._maps.shape[0]

    @property
    def num_frames(self) -> int:
        """``F``, the number of frames (1 for images)."""
        return self._maps.shape[1]

    @property
    def grid_size(self) -> tuple[int, int]:
        """``(h, w)``, the size of the token grid the maps live on."""
        return self._maps.shape[2], self._maps.shape[3]

    def concept_index(self, concept: str) -> int:
        """The position of ``concept`` on the first axis of :attr:`maps`.

        Raises:
            KeyError: If ``concept`` is not one of :attr:`concepts`; the message lists the known ones.
        """
        try:
            return self._index[concept]
        except (KeyError, TypeError):
            raise KeyError(f"Unknown concept {concept!r}; known concepts: {list(self._concepts)}.") from None

    def __getitem__(self, concept: str) -> torch.Tensor:
        """The map of one concept, float32 ``[F, h, w]``."""
        return self._maps[self.concept_index(concept)]

    def __contains__(self, concept: object) -> bool:
        return isinstance(concept, str) and concept in self._index

    def __len__(self) -> int:
        return len(self._concepts)

    def __iter__(self) -> Iterator[str]:
        return iter(self._concepts)

    def __repr__(self) -> str:
        return (
            f"ConceptMaps(concepts={self._concepts!r}, frames={self.num_frames}, grid_size={self.grid_size}, "
            f"logits={self._logits is not None})"
        )

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, ConceptMaps):
            return NotImplemented
        same_logits = (self._logits is None and other._logits is None) or (
            self._logits is not None and other._logits is not None and torch.equal(self._logits, other._logits)
        )
        return (
            self._concepts == other._concepts
            and self._maps.shape == other._maps.shape
            and torch.equal(self._maps, other._maps)
            and same_logits
            and self._config == other._config
        )

    __hash__ = None  # type: ignore[assignment]  # mutable tensors inside: not hashable

    # ------------------------------------------------------------------ tensor views

    def _check_frame(self, frame: int) -> int:
        if isinstance(frame, bool) or not isinstance(frame, int) or not 0 <= frame < self.num_frames:
            raise ValueError(f"frame must be an integer in [0, {self.num_frames - 1}], got {frame!r}.")
        return frame

    def upsample(self, size: tuple[int, int], mode: str = "bilinear") -> torch.Tensor:
        """Resize the maps to ``size`` with :func:`torch.nn.functional.interpolate`.

        Bilinear and bicubic use ``align_corners=False`` (pixel centres aligned, as PIL's resize). Bicubic may
        overshoot the input range slightly.

        Args:
            size: ``(H, W)``, the output height and width.
            mode: One of ``"nearest"``, ``"nearest-exact"``, ``"bilinear"``, ``"bicubic"``, ``"area"``.

        Returns:
            Float32 tensor of shape ``[C, F, H, W]``.

        Raises:
            ValueError: If ``size`` is not two positive integers or ``mode`` is unknown.

        Example:
            >>> maps = ConceptMaps(["a"], torch.tensor([[[[0.0, 1.0]]]]))  # [1, 1, 1, 2]
            >>> maps.upsample((1, 4))[0, 0]
            tensor([[0.0000, 0.2500, 0.7500, 1.0000]])
        """
        height, width = _validate_size(size)
        if mode not in _UPSAMPLE_MODES:
            raise ValueError(f"Unknown upsampling mode {mode!r}; use one of {list(_UPSAMPLE_MODES)}.")
        align_corners = False if mode in ("bilinear", "bicubic") else None
        # Concepts act as the batch axis and frames as channels: [C, F, h, w] -> [C, F, H, W].
        return F.interpolate(self._maps, size=(height, width), mode=mode, align_corners=align_corners)

    def normalized(self, scope: Literal["concept", "all"] = "concept") -> torch.Tensor:
        """Min-max normalise the maps to ``[0, 1]``.

        Args:
            scope: ``"concept"``: each map (each concept, each frame) is stretched to its own ``[0, 1]`` range, which
                shows where a concept is strongest but hides how strong it is. ``"all"``: one range over all
                concepts and frames, which keeps maps comparable with each other. A constant map (or, with ``"all"``,
                constant maps) becomes all zeros.

        Returns:
            Float32 tensor of shape ``[C, F, h, w]`` with values in ``[0, 1]``.

        Raises:
            ValueError: If ``scope`` is unknown.

        Example:
            >>> maps = ConceptMaps(["a", "b"], torch.tensor([[[[1.0, 3.0]]], [[[2.0, 2.0]]]]))  # [2, 1, 1, 2]
            >>> maps.normalized("concept")[:, 0, 0].tolist()
            [[0.0, 1.0], [0.0, 0.0]]
            >>> maps.normalized("all")[:, 0, 0].tolist()
            [[0.0, 1.0], [0.5, 0.5]]
        """
        if scope not in _NORMALIZATION_SCOPES:
            raise ValueError(f"Unknown normalisation scope {scope!r}; use 'concept' or 'all'.")
        values = self._maps.to(torch.float64)  # float64: max - min cannot overflow for float32 inputs
        if scope == "concept":
            low = values.amin(dim=(2, 3), keepdim=True)  # [C, F, 1, 1]
            high = values.amax(dim=(2, 3), keepdim=True)  # [C, F, 1, 1]
        else:
            low, high = values.min(), values.max()  # scalars
        value_range = high - low
        safe_range = torch.where(value_range > 0, value_range, torch.ones_like(value_range))
        return ((values - low) / safe_range).clamp(0.0, 1.0).to(torch.float32)

    def segmentation(self, size: tuple[int, int] | None = None) -> torch.Tensor:
        """Label every location with the concept whose map is largest there.

        Ties go to the concept listed first.

        Args:
            size: ``(H, W)`` to bilinearly upsample the maps to before the argmax; ``None`` keeps the token grid.

        Returns:
            Int64 tensor of shape ``[F, H, W]`` (``[F, h, w]`` without ``size``) of indices into :attr:`concepts`.

        Example:
            >>> maps = ConceptMaps(["a", "b"], torch.tensor([[[[0.9, 0.2]]], [[[0.1, 0.8]]]]))  # [2, 1, 1, 2]
            >>> maps.segmentation().tolist()
            [[[0, 1]]]
        """
        values = self._maps if size is None else self.upsample(size, mode="bilinear")
        return values.argmax(dim=0)  # [C, F, H, W] -> [F, H, W]

    def masks(
        self,
        rule: Literal["mean", "otsu", "threshold", "argmax"] = "mean",
        threshold: float | None = None,
        size: tuple[int, int] | None = None,
        none: float | None = None,
    ) -> torch.Tensor:
        """Binary masks, one per concept and frame; see :func:`conceptattention.masks.concept_masks`.

        Args:
            rule: ``"mean"`` (map above its mean), ``"otsu"``, ``"threshold"`` (map above ``threshold``) or
                ``"argmax"`` (the concept with the largest map).
            threshold: The value for ``rule="threshold"``.
            size: ``(H, W)``; the maps are bilinearly upsampled first (as the heatmaps). ``None``: the token grid.
            none: Beyond the paper, off by default: a null concept with this standardised logit takes the pixels
                where no concept scores high (see :func:`conceptattention.masks.none_pixels`).

        Returns:
            Bool tensor ``[C, F, H, W]``.

        Example:
            >>> maps = ConceptMaps(["a", "b"], torch.tensor([[[[0.9, 0.2]]], [[[0.1, 0.8]]]]))  # [2, 1, 1, 2]
            >>> maps.masks("argmax", size=(1, 4))[0, 0].tolist()
            [[True, True, False, False]]
        """
        from conceptattention.masks import concept_masks

        return concept_masks(self, rule, threshold=threshold, size=size, none=none)

    # ------------------------------------------------------------------ images

    def heatmap(
        self,
        concept: str,
        size: tuple[int, int] | None = None,
        cmap: str = "plasma",
        frame: int = 0,
        scope: Literal["concept", "all"] = "concept",
    ) -> Image.Image:
        """Render one concept's normalised map as a colour-mapped RGB image.

        The map is min-max normalised (see :meth:`normalized`), bilinearly upsampled to ``size`` and coloured with a
        matplotlib colormap.

        Args:
            concept: The concept to draw.
            size: ``(H, W)`` of the image; ``None`` for the token grid size ``(h, w)``.
            cmap: Name of a matplotlib colormap.
            frame: Which frame, for video maps.
            scope: Normalisation scope, ``"concept"`` or ``"all"`` (see :meth:`normalized`).

        Returns:
            A PIL image of mode ``"RGB"`` and size ``(W, H)``.

        Raises:
            KeyError: If ``concept`` is unknown.
            ValueError: If ``size``, ``cmap``, ``frame`` or ``scope`` is invalid.

        Example:
            >>> maps = ConceptMaps(["a"], torch.rand(1, 1, 4, 4))
            >>> maps.heatmap("a", size=(32, 48)).size
            (48, 32)
        """
        index = self.concept_index(concept)
        frame = self._check_frame(frame)
        colormap = _colormap(cmap)
        concept_map = self.normalized(scope)[index, frame]  # [h, w]
        if size is not None:
            height, width = _validate_size(size)
            # [h, w] -> [1, 1, h, w] -> [1, 1, H, W] -> [H, W]
            concept_map = F.interpolate(
                concept_map[None, None], size=(height, width), mode="bilinear", align_corners=False
            )[0, 0]
        rgba = colormap(concept_map.clamp(0.0, 1.0).numpy(), bytes=True)  # [H, W, 4] uint8
        return Image.fromarray(np.ascontiguousarray(rgba[..., :3]))

    def overlay(
        self,
        image: Image.Image,
        concept: str,
        alpha: float = 0.5,
        cmap: str = "plasma",
        frame: int = 0,
        scope: Literal["concept", "all"] = "concept",
    ) -> Image.Image:
        """Blend one concept's heatmap over an image.

        The heatmap (see :meth:`heatmap`) is upsampled to the image size and blended as
        ``(1 - alpha) * image + alpha * heatmap``. Images with transparency are first composited over white.

        Args:
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
            ValueError: If ``image`` is not a PIL image, or ``alpha``, ``cmap``, ``frame`` or ``scope`` is invalid.

        Example:
            >>> from PIL import Image
            >>> maps = ConceptMaps(["a"], torch.rand(1, 1, 4, 4))
            >>> maps.overlay(Image.new("RGB", (64, 32)), "a").size
            (64, 32)
        """
        from conceptattention.images import to_rgb

        if not isinstance(image, Image.Image):
            raise ValueError(
                f"image must be a PIL.Image.Image, got {type(image).__name__}; load files with "
                "conceptattention.images.load_image and tensors with conceptattention.images.tensor_to_image."
            )
        if isinstance(alpha, bool) or not isinstance(alpha, int | float) or not 0.0 <= alpha <= 1.0:
            raise ValueError(f"alpha must be a number in [0, 1], got {alpha!r}.")
        heat = self.heatmap(concept, size=(image.height, image.width), cmap=cmap, frame=frame, scope=scope)
        return Image.blend(to_rgb(image), heat, float(alpha))

    def palette(self) -> list[tuple[int, int, int]]:
        """The RGB colour of each concept in :meth:`segmentation_image`, in concept order.

        Colours come from matplotlib's ``tab10`` (up to 10 concepts); each further one is the qualitative-colormap or
        RGB-grid colour farthest from those already chosen, so that many concepts still get clearly different colours.
        """
        return _distinct_palette(self.num_concepts)

    def legend(self) -> list[tuple[str, tuple[int, int, int]]]:
        """``(concept, (r, g, b))`` pairs giving the colour of each concept in :meth:`segmentation_image`.

        Example:
            >>> ConceptMaps(["cat", "sky"], torch.rand(2, 1, 2, 2)).legend()
            [('cat', (31, 119, 180)), ('sky', (255, 127, 14))]
        """
        return list(zip(self._concepts, self.palette()))

    def segmentation_image(self, size: tuple[int, int] | None = None, frame: int = 0) -> Image.Image:
        """Draw the argmax segmentation (see :meth:`segmentation`) with one fixed colour per concept.

        Args:
            size: ``(H, W)`` to upsample the maps to before the argmax; ``None`` keeps the token grid.
            frame: Which frame, for video maps.

        Returns:
            A PIL image of mode ``"RGB"`` and size ``(W, H)``; colours as in :meth:`legend`.

        Raises:
            ValueError: If ``size`` or ``frame`` is invalid.

        Example:
            >>> maps = ConceptMaps(["cat", "sky"], torch.tensor([[[[1.0, 0.0]]], [[[0.0, 1.0]]]]))
            >>> maps.segmentation_image().getpixel((1, 0))
            (255, 127, 14)
        """
        frame = self._check_frame(frame)
        labels = self.segmentation(size)[frame]  # [H, W]
        colors = np.array(self.palette(), dtype=np.uint8)  # [C, 3]
        return Image.fromarray(colors[labels.numpy()])  # [H, W] -> [H, W, 3]

    def figure(self, image: Image.Image | None = None, frame: int = 0, cmap: str = "plasma") -> Figure:
        """A matplotlib figure with every view of one frame.

        Panels, left to right and top to bottom: the image (if given), one panel per concept (the overlay on the
        image if given, else the heatmap) titled with the concept, and the argmax segmentation with a legend. Titles
        and legend labels longer than :data:`MAX_LABEL_CHARS` characters are cut with an ellipsis. Maps are
        bilinearly upsampled to the image size, or without an image to 256 pixels on the longer side. The grid
        has at most four columns. The figure is built with the object-oriented API
        (:class:`matplotlib.figure.Figure`), so it touches no pyplot state and works on any backend; save it with
        ``fig.savefig(path)``.

        Args:
            image: The image the maps were computed for, or None.
            frame: Which frame, for video maps.
            cmap: Name of a matplotlib colormap for the heatmaps.

        Returns:
            The figure, with ``C + 1`` axes (``C + 2`` with an image).

        Raises:
            ValueError: If ``image``, ``frame`` or ``cmap`` is invalid.

        Example:
            >>> maps = ConceptMaps(["cat", "sky"], torch.rand(2, 1, 4, 4))
            >>> len(maps.figure().axes)
            3
        """
        from matplotlib.figure import Figure
        from matplotlib.patches import Patch

        if image is not None and not isinstance(image, Image.Image):
            raise ValueError(f"image must be a PIL.Image.Image or None, got {type(image).__name__}.")
        frame = self._check_frame(frame)
        _colormap(cmap)  # fail before drawing anything

        # Without an image, draw the maps bilinearly upsampled so that the longer side has 256 pixels.
        grid_height, grid_width = self.grid_size
        scale = 256 / max(grid_height, grid_width)
        display_size = (
            (image.height, image.width)
            if image is not None
            else (max(1, round(grid_height * scale)), max(1, round(grid_width * scale)))
        )
        panel_count = self.num_concepts + 1 + (image is not None)
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
        for concept in self._concepts:
            concept_axes = next(panels)
            if image is None:
                concept_axes.imshow(self.heatmap(concept, size=display_size, cmap=cmap, frame=frame))
            else:
                concept_axes.imshow(self.overlay(image, concept, cmap=cmap, frame=frame))
            concept_axes.set_title(_label(concept))

        segmentation_axes = next(panels)
        segmentation_axes.imshow(self.segmentation_image(display_size, frame=frame), interpolation="nearest")
        segmentation_axes.set_title("segmentation")
        handles = [Patch(color=np.array(color) / 255.0, label=_label(concept)) for concept, color in self.legend()]
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

    # ------------------------------------------------------------------ files

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write the maps to a ``.safetensors`` file, atomically.

        The file holds the tensors ``"maps"`` and (if recorded) ``"logits"``; the header metadata holds the concepts
        and the config as JSON strings, plus a format tag. The file is written to a temporary name and renamed into
        place, so an interrupted save never leaves a partial file. Any existing file at ``path`` is replaced.

        Args:
            path: Destination; ``.safetensors`` is the conventional suffix, but the name is used as given.

        Returns:
            The destination as a :class:`~pathlib.Path`.

        Raises:
            conceptattention.outputs.OutputPathError: If ``path`` is a directory.

        Example:
            >>> import tempfile
            >>> maps = ConceptMaps(["cat"], torch.rand(1, 1, 2, 2), config={"layers": [15]})
            >>> path = maps.save(f"{tempfile.mkdtemp()}/maps.safetensors")
            >>> ConceptMaps.load(path) == maps
            True
        """
        from safetensors.torch import save as save_safetensors

        tensors = {"maps": self._maps}
        if self._logits is not None:
            tensors["logits"] = self._logits
        for name, value in (("head_maps", self._head_maps), ("head_logits", self._head_logits)):
            if value is not None:
                tensors[name] = value
        metadata = {
            "format": _FILE_FORMAT,
            "format_version": _FILE_FORMAT_VERSION,
            "concepts": json.dumps(list(self._concepts), ensure_ascii=False),
            "config": json.dumps(self._config, ensure_ascii=False),
        }
        return atomic_write_bytes(path, save_safetensors(tensors, metadata=metadata))

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> ConceptMaps:
        """Read maps written by :meth:`save`.

        Args:
            path: A file written by :meth:`save`.

        Returns:
            A :class:`ConceptMaps` equal to the one saved.

        Raises:
            ConceptMapsNotFoundError: If ``path`` does not exist (also a :class:`FileNotFoundError`).
            ConceptMapsFileError: If ``path`` is a directory, not a safetensors file, truncated or corrupt, or a
                safetensors file not written by :meth:`save`.

        Example:
            >>> import tempfile
            >>> path = ConceptMaps(["cat"], torch.rand(1, 1, 2, 2)).save(f"{tempfile.mkdtemp()}/maps.safetensors")
            >>> ConceptMaps.load(path).concepts
            ('cat',)
        """
        from safetensors import safe_open

        file_path = Path(path)
        if not file_path.exists():
            raise ConceptMapsNotFoundError(f"ConceptMaps file '{file_path}' does not exist; check the path.")
        if file_path.is_dir():
            raise ConceptMapsFileError(
                f"'{file_path}' is a directory; pass the .safetensors file written by ConceptMaps.save."
            )
        try:
            with safe_open(str(file_path), framework="pt", device="cpu") as handle:
                metadata = handle.metadata() or {}
                names = set(handle.keys())
                tensors = {name: handle.get_tensor(name) for name in names & {"maps", "logits", "head_maps", "head_logits"}}
        except Exception as error:  # safetensors raises SafetensorError, OSError, ... for unreadable files
            raise ConceptMapsFileError(
                f"'{file_path}' is not a readable safetensors file (it may be truncated or corrupt): {error}"
            ) from error

        if metadata.get("format") != _FILE_FORMAT or "maps" not in tensors:
            raise ConceptMapsFileError(
                f"'{file_path}' is a safetensors file but was not written by ConceptMaps.save (format tag "
                f"{metadata.get('format')!r}, tensors {sorted(names)})."
            )
        if metadata.get("format_version") != _FILE_FORMAT_VERSION:
            raise ConceptMapsFileError(
                f"'{file_path}' uses ConceptMaps file format version {metadata.get('format_version')!r}; this "
                f"version of conceptattention reads version {_FILE_FORMAT_VERSION}. Upgrade conceptattention."
            )
        try:
            concepts = json.loads(metadata["concepts"])
            config = json.loads(metadata.get("config", "{}"))
            return cls(
                concepts,
                tensors["maps"],
                logits=tensors.get("logits"),
                config=config,
                head_maps=tensors.get("head_maps"),
                head_logits=tensors.get("head_logits"),
            )
        except (KeyError, ValueError) as error:  # json.JSONDecodeError is a ValueError
            raise ConceptMapsFileError(f"'{file_path}' holds invalid ConceptMaps data: {error}") from error
