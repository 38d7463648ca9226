"""``ConceptMaps``: the result of a ConceptAttention run.

A :class:`ConceptMaps` holds one saliency map per concept (and per frame, for video models) on the transformer's
token grid, together with the raw scores they came from and the settings that produced them. It offers the usual
views of such maps: upsampled tensors, min-max normalised maps, an argmax segmentation, colour-mapped heatmaps and
overlays as PIL images, a matplotlib figure, and a lossless ``.safetensors`` file format.

The class is model-independent: it never imports diffusers. Its drawing methods call the free functions of
:mod:`conceptattention.plotting`, which imports matplotlib only when something is drawn.
"""

from __future__ import annotations

import json
import os
import types
import warnings
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import torch
import torch.nn.functional as F

from conceptattention.encoding import validate_concepts
from conceptattention.errors import ConceptAttentionError
from conceptattention.outputs import atomic_write_bytes


__all__ = ["ConceptMaps", "ConceptMapsError", "ConceptMapsFileError", "ConceptMapsNotFoundError"]

_FILE_FORMAT = "conceptattention.ConceptMaps"
_FILE_FORMAT_VERSION = "1"
_UPSAMPLE_MODES = ("nearest", "nearest-exact", "bilinear", "bicubic", "area")
_NORMALIZATION_SCOPES = ("concept", "all")


class ConceptMapsError(ConceptAttentionError, ValueError):
    """An invalid argument of :class:`ConceptMaps` or of its views (a tensor, size, frame, colormap...)."""


class ConceptMapsFileError(ConceptMapsError):
    """A file could not be read as saved :class:`ConceptMaps` (corrupt, truncated, or another kind of file)."""


class ConceptMapsNotFoundError(ConceptMapsFileError, FileNotFoundError):
    """The :class:`ConceptMaps` file does not exist. Also a :class:`FileNotFoundError`."""


def _validate_map_tensor(name: str, tensor: Any, num_concepts: int) -> torch.Tensor:
    """Check a ``[C, F, h, w]`` map tensor and return a float32 CPU copy."""
    if not isinstance(tensor, torch.Tensor):
        raise ConceptMapsError(
            f"{name} must be a torch.Tensor of shape [concepts, frames, h, w], got {type(tensor).__name__}."
        )
    if tensor.ndim != 4:
        hint = (
            " For an image, add the frame axis: maps.unsqueeze(1) turns [C, h, w] into [C, 1, h, w]."
            if tensor.ndim == 3
            else ""
        )
        raise ConceptMapsError(
            f"{name} must have 4 dimensions [concepts, frames, h, w], got shape {list(tensor.shape)}.{hint}"
        )
    if not tensor.is_floating_point():
        raise ConceptMapsError(f"{name} must be a floating-point tensor, got dtype {tensor.dtype}.")
    if tensor.shape[0] != num_concepts:
        raise ConceptMapsError(f"{name} has {tensor.shape[0]} maps on its first axis but there are {num_concepts} concepts.")
    if min(tensor.shape[1:]) == 0:
        raise ConceptMapsError(f"{name} has an empty frame or spatial axis: shape {list(tensor.shape)}.")
    copy = tensor.detach().to(device="cpu", dtype=torch.float32, copy=True).contiguous()
    if not torch.isfinite(copy).all():
        raise ConceptMapsError(f"{name} contains NaN or infinite values (after conversion to float32).")
    return copy


def _normalize_settings(settings: Mapping[str, Any] | None) -> dict[str, Any]:
    """A JSON round-tripped deep copy, so that saved and reloaded settings compare equal to the original."""
    if settings is None:
        return {}
    if not isinstance(settings, Mapping):
        raise ConceptMapsError(
            f"settings must be a mapping (e.g. config.to_dict()), got {type(settings).__name__}."
        )
    for key in settings:
        if not isinstance(key, str):
            raise ConceptMapsError(f"settings keys must be strings, got {key!r}.")
    try:
        return json.loads(json.dumps(dict(settings), allow_nan=False))
    except (TypeError, ValueError) as error:
        raise ConceptMapsError(
            f"settings must be JSON-serialisable ({error}); convert ranges and tuples of layers to lists, "
            "dtypes and devices to strings, and drop NaN/Infinity."
        ) from error


def _validate_size(size: Any) -> tuple[int, int]:
    if (
        not isinstance(size, Sequence)
        or len(size) != 2
        or not all(isinstance(side, int) and not isinstance(side, bool) and side > 0 for side in size)
    ):
        raise ConceptMapsError(f"size must be (height, width) with two positive integers, got {size!r}.")
    return int(size[0]), int(size[1])


def _deprecated(old: str, new: str) -> None:
    warnings.warn(f"{old} is deprecated; use {new} (the old name goes in the next release).", DeprecationWarning, 3)


class _PlottingMethod:
    """A :class:`ConceptMaps` method that is the :mod:`conceptattention.plotting` function of the same name.

    On an instance it is that function bound to the maps (``maps.heatmap("dog")`` is ``heatmap(maps, "dog")``, with
    the function's signature and docstring); on the class, the function itself. The plotting module (which imports
    this one) is imported on first use.
    """

    def __set_name__(self, owner: type, name: str) -> None:
        self.name = name

    def __get__(self, maps: ConceptMaps | None, owner: type | None = None) -> Any:
        from conceptattention import plotting

        function = getattr(plotting, self.name)
        return function if maps is None else types.MethodType(function, maps)


class ConceptMaps:
    """Concept saliency maps for one image or video, with raw scores and provenance.

    ``tensor[c, f]`` is the map of concept ``c`` for frame ``f`` on the transformer's token grid ``(h, w)``. With the
    default ConceptAttention settings these are probabilities from a softmax over concepts, averaged over layers and
    timesteps (so they sum to one over concepts); with the softmax switched off they are raw scores and may take any
    real value. All methods work for both.

    Tensors are stored as float32 copies on the CPU; the object does not share memory with the tensors passed in.
    ``settings`` is stored as a JSON round-tripped copy (tuples become lists), so that :meth:`save` and :meth:`load`
    reproduce it exactly.

    Renamed (the old names work for one more release, with a :class:`DeprecationWarning`): the tensor ``maps`` is
    :attr:`tensor` (``ca.maps.maps`` stuttered), and the settings dict ``config`` is :attr:`settings` (``config`` is
    the :class:`~conceptattention.config.ConceptAttentionConfig` dataclass on
    :class:`~conceptattention.capture.ConceptAttention`; these are the run's provenance, method options included).

    Args:
        concepts: ``C`` unique, non-empty concept names, in map order.
        maps: Float tensor of shape ``[C, F, h, w]`` (``F = 1`` for images): the saliency maps.
        logits: Optional float tensor of shape ``[C, F, h, w]``: the mean raw scores before normalisation.
        settings: Optional JSON-serialisable mapping of the settings that produced the maps (the method options of
            :meth:`ConceptAttentionConfig.to_dict <conceptattention.config.ConceptAttentionConfig.to_dict>` and
            provenance such as the architecture).
        config: Deprecated name of ``settings``.

    Raises:
        conceptattention.encoding.ConceptError: If the concepts are empty, repeated or not strings (whitespace is
            collapsed: ``" red  car "`` becomes ``"red car"``, as everywhere concepts are given).
        ConceptMapsError: If a tensor is not a finite floating-point ``[C, F, h, w]`` tensor matching the concepts
            (and each other); if ``settings`` is not JSON-serialisable.

    Example:
        >>> import torch
        >>> scores = torch.tensor([[[[2.0, 0.0], [0.0, 0.0]]], [[[0.0, 1.0], [1.0, 1.0]]]])  # [2, 1, 2, 2]
        >>> maps = ConceptMaps(["cat", "sky"], scores.softmax(dim=0), logits=scores, settings={"layers": [15, 16]})
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
        settings: Mapping[str, Any] | None = None,
        *,
        config: Mapping[str, Any] | None = None,
        head_maps: torch.Tensor | None = None,
        head_logits: torch.Tensor | None = None,
    ) -> None:
        if config is not None:
            _deprecated("ConceptMaps(config=...)", "ConceptMaps(settings=...)")
            if settings is not None:
                raise ConceptMapsError("Pass settings= only (config= is its deprecated name), not both.")
            settings = config
        self._concepts = validate_concepts(concepts)
        self._maps = _validate_map_tensor("maps", maps, len(self._concepts))
        self._logits: torch.Tensor | None = None
        if logits is not None:
            self._logits = _validate_map_tensor("logits", logits, len(self._concepts))
            if self._logits.shape != self._maps.shape:
                raise ConceptMapsError(
                    f"logits shape {list(self._logits.shape)} differs from maps shape {list(self._maps.shape)}."
                )
        self._settings = _normalize_settings(settings)
        self._index = {concept: index for index, concept in enumerate(self._concepts)}
        self._head_maps = self._check_heads("head_maps", head_maps)
        self._head_logits = self._check_heads("head_logits", head_logits)

    def _check_heads(self, name: str, tensor: torch.Tensor | None) -> torch.Tensor | None:
        """A float32 CPU copy of a per-head ``[C, H, F, h, w]`` tensor matching the maps, or None."""
        if tensor is None:
            return None
        if not isinstance(tensor, torch.Tensor) or tensor.ndim != 5:
            raise ConceptMapsError(f"{name} must be a [concepts, heads, frames, h, w] tensor, got {getattr(tensor, 'shape', tensor)!r}.")
        flat = _validate_map_tensor(name, tensor.flatten(1, 2), len(self._concepts))  # [C, H·F, h, w]
        heads = tensor.shape[1]
        if (tensor.shape[0], *tensor.shape[2:]) != tuple(self._maps.shape):
            raise ConceptMapsError(f"{name} shape {list(tensor.shape)} does not match maps {list(self._maps.shape)} (heads on axis 1).")
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
            ConceptMapsError: no per-head maps were kept, or ``index`` is not a head.

        Example:
            >>> maps = ConceptMaps(["a", "b"], torch.rand(2, 1, 2, 2), head_maps=torch.rand(2, 3, 1, 2, 2))
            >>> maps.head(2).tensor.shape
            torch.Size([2, 1, 2, 2])
        """
        if self._head_maps is None:
            raise ConceptMapsError("No per-head maps were kept; run with keep_heads=True.")
        num_heads = self._head_maps.shape[1]
        if isinstance(index, bool) or not isinstance(index, int) or not 0 <= index < num_heads:
            raise ConceptMapsError(f"Head {index!r} does not exist; the maps have heads 0..{num_heads - 1}.")
        logits = None if self._head_logits is None else self._head_logits[:, index]
        return ConceptMaps(self._concepts, self._head_maps[:, index], logits, {**self._settings, "head": index})

    # ------------------------------------------------------------------ basic access

    @property
    def concepts(self) -> tuple[str, ...]:
        """The concept names, in map order."""
        return self._concepts

    @property
    def tensor(self) -> torch.Tensor:
        """The saliency maps, float32 ``[C, F, h, w]``. Do not modify in place.

        Example:
            >>> ConceptMaps(["cat", "sky"], torch.rand(2, 1, 4, 6)).tensor.shape  # [C, F, h, w]
            torch.Size([2, 1, 4, 6])
        """
        return self._maps

    @property
    def maps(self) -> torch.Tensor:
        """Deprecated name of :attr:`tensor` (``ca.maps.maps`` stuttered); warns, then returns :attr:`tensor`."""
        _deprecated("ConceptMaps.maps", "ConceptMaps.tensor")
        return self._maps

    @property
    def logits(self) -> torch.Tensor | None:
        """The mean raw scores, float32 ``[C, F, h, w]``, or None if not recorded."""
        return self._logits

    @property
    def settings(self) -> dict[str, Any]:
        """The settings that produced the maps (a copy; editing it does not change this object).

        Example:
            >>> ConceptMaps(["cat"], torch.rand(1, 1, 2, 2), settings={"layers": [15]}).settings
            {'layers': [15]}
        """
        return json.loads(json.dumps(self._settings))

    @property
    def config(self) -> dict[str, Any]:
        """Deprecated name of :attr:`settings` (``config`` is the dataclass of options on ``ConceptAttention``)."""
        _deprecated("ConceptMaps.config", "ConceptMaps.settings")
        return self.settings

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
            and self._settings == other._settings
        )

    __hash__ = None  # type: ignore[assignment]  # mutable tensors inside: not hashable

    # ------------------------------------------------------------------ tensor views

    def _check_frame(self, frame: int) -> int:
        if isinstance(frame, bool) or not isinstance(frame, int) or not 0 <= frame < self.num_frames:
            raise ConceptMapsError(f"frame must be an integer in [0, {self.num_frames - 1}], got {frame!r}.")
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
            ConceptMapsError: If ``size`` is not two positive integers or ``mode`` is unknown.

        Example:
            >>> maps = ConceptMaps(["a"], torch.tensor([[[[0.0, 1.0]]]]))  # [1, 1, 1, 2]
            >>> maps.upsample((1, 4))[0, 0]
            tensor([[0.0000, 0.2500, 0.7500, 1.0000]])
        """
        height, width = _validate_size(size)
        if mode not in _UPSAMPLE_MODES:
            raise ConceptMapsError(f"Unknown upsampling mode {mode!r}; use one of {list(_UPSAMPLE_MODES)}.")
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
            ConceptMapsError: If ``scope`` is unknown.

        Example:
            >>> maps = ConceptMaps(["a", "b"], torch.tensor([[[[1.0, 3.0]]], [[[2.0, 2.0]]]]))  # [2, 1, 1, 2]
            >>> maps.normalized("concept")[:, 0, 0].tolist()
            [[0.0, 1.0], [0.0, 0.0]]
            >>> maps.normalized("all")[:, 0, 0].tolist()
            [[0.0, 1.0], [0.5, 0.5]]
        """
        if scope not in _NORMALIZATION_SCOPES:
            raise ConceptMapsError(f"Unknown normalisation scope {scope!r}; use 'concept' or 'all'.")
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

    # The drawing methods are the functions of conceptattention.plotting (same signature and docstring, the maps as
    # first argument), bound to these maps: maps.heatmap("dog") is plotting.heatmap(maps, "dog").
    heatmap = _PlottingMethod()
    overlay = _PlottingMethod()
    legend = _PlottingMethod()
    segmentation_image = _PlottingMethod()
    figure = _PlottingMethod()

    def palette(self) -> list[tuple[int, int, int]]:
        """The RGB colour of each concept in :meth:`segmentation_image`, in concept order; see
        :func:`conceptattention.plotting.distinct_palette`.

        Example:
            >>> len(ConceptMaps(["a", "b", "c"], torch.rand(3, 1, 2, 2)).palette())
            3
        """
        from conceptattention.plotting import distinct_palette

        return distinct_palette(self.num_concepts)

    # ------------------------------------------------------------------ files

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write the maps to a ``.safetensors`` file, atomically.

        The file holds the tensors ``"maps"`` and (if recorded) ``"logits"``; the header metadata holds the concepts
        and the settings as JSON strings, plus a format tag. The file is written to a temporary name and renamed into
        place, so an interrupted save never leaves a partial file. Any existing file at ``path`` is replaced.

        Args:
            path: Destination; ``.safetensors`` is the conventional suffix, but the name is used as given.

        Returns:
            The destination as a :class:`~pathlib.Path`.

        Raises:
            conceptattention.outputs.OutputPathError: If ``path`` is a directory.

        Example:
            >>> import tempfile
            >>> maps = ConceptMaps(["cat"], torch.rand(1, 1, 2, 2), settings={"layers": [15]})
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
            "config": json.dumps(self._settings, ensure_ascii=False),  # the file's key: unchanged
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
            settings = json.loads(metadata.get("config", "{}"))
            return cls(
                concepts,
                tensors["maps"],
                logits=tensors.get("logits"),
                settings=settings,
                head_maps=tensors.get("head_maps"),
                head_logits=tensors.get("head_logits"),
            )
        except (KeyError, ValueError) as error:  # json.JSONDecodeError is a ValueError
            raise ConceptMapsFileError(f"'{file_path}' holds invalid ConceptMaps data: {error}") from error
