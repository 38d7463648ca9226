"""Configuration of a ConceptAttention run: one frozen dataclass, validated on construction.

Every option of the method (docs/method.md, "Options") lives here so that results can be logged with ``dataclasses.asdict``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from .errors import ConceptAttentionError


Space = Literal["output", "cross_attention", "value"]
ConceptAttentionMode = Literal["both", "cross", "self", "none"]
ConceptConditioning = Literal["null_pooled", "prompt"]
ConceptPooling = Literal["mean", "first", "last"]
NormalizationOrder = Literal["per_layer", "after_mean"]
LayerSpec = int | str

SPACES: tuple[str, ...] = ("output", "cross_attention", "value")
CONCEPT_ATTENTION_MODES: tuple[str, ...] = ("both", "cross", "self", "none")
CONCEPT_CONDITIONINGS: tuple[str, ...] = ("null_pooled", "prompt")
CONCEPT_POOLINGS: tuple[str, ...] = ("mean", "first", "last")
NORMALIZATION_ORDERS: tuple[str, ...] = ("per_layer", "after_mean")


class ConfigError(ConceptAttentionError, ValueError):
    """An invalid ConceptAttention option."""


def _check_choice(name: str, value: Any, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ConfigError(f"{name}={value!r} is not supported; choose one of {', '.join(map(repr, choices))}.")


@dataclass(frozen=True)
class ConceptAttentionConfig:
    """Options of ConceptAttention (Helbling et al., 2025). All fields are keyword-only.

    Args:
        layers: Joint (double-stream) blocks whose scores are averaged. ``None`` selects the model's recommended
            blocks if its transformer carries them (:class:`ModelDefaults`; the shipped ShapesWorld model does), else
            the default of the architecture (FLUX.1: the last four double blocks, 15-18, as the official code). Entries are block
            indices (negative counts from the end) or module paths such as ``"transformer_blocks.15"``.
        timesteps: Indices of the denoising calls to aggregate (0 = first recorded transformer call).
            ``None`` aggregates every call.
        space: ``"output"`` (the method: attention outputs before the output projection),
            ``"cross_attention"`` (image queries against concept keys, mean over heads) or ``"value"``.
        softmax: Softmax over concepts (per image token). Ignored, with a warning, for a single concept.
        temperature: Divides the scores before the softmax.
        normalization_order: ``"per_layer"`` (paper: softmax per layer and step, then mean) or ``"after_mean"``
            (mean of raw scores, then softmax).
        concept_attention: Which keys the concept queries attend to: ``"both"`` (concepts and image, default),
            ``"cross"`` (image only), ``"self"`` (concepts only) or ``"none"`` (no attention: output = values).
        concept_conditioning: Modulation input of the concept stream: ``"null_pooled"`` (timestep and guidance
            embedding with a zero pooled text vector, official FLUX.1) or ``"prompt"`` (the prompt's own vector).
        concept_pooling: How a multi-token concept becomes one token: ``"mean"`` over its content tokens (default;
            multi-word concepts work), ``"first"`` (the official code, truncates "red car" to "red") or ``"last"``.
        concept_text_encoder: Which of the pipeline's text encoders embeds the concept strings, for families that
            offer a choice (SD3: ``"clip"``, the default, or ``"t5"``); ``None`` takes the family's default. Checked
            against the adapter when ``ConceptAttention`` is built.
        cross_attention_scale: Scale ``q·k`` by ``1/sqrt(head_dim)`` in the cross-attention space.
        keep_per_step: Keep each (layer, step) score tensor (on the host) in addition to the running mean.
        batch_half: Under batched classifier-free guidance: ``"cond"`` reports the conditional half, ``"all"`` both.
        heads: Attention heads whose scores make the maps (indices ``0..H-1``, the same heads in every selected
            block); ``None`` uses all heads. A head's score is its share of the layer's score: in the output space
            ``H · (o_c,h · o_x,h)`` (so that the mean over all heads is exactly the usual ``o_c · o_x`` over
            ``d = H·D``), in the cross-attention and value spaces the per-head dot product (whose mean over heads is
            the usual score). The selected heads' scores are averaged, then the softmax over concepts is taken as
            usual (per layer and step, or after the mean).
        keep_heads: Also keep every head's maps and mean scores (:attr:`ConceptMaps.head_maps`,
            :attr:`ConceptMaps.head_logits`): each head's scores go through the same softmax and mean as the maps.
            Memory: two float32 running sums of ``B × C × H × I`` (4 bytes each) on the activations' device, plus
            one such tensor per selected layer during each transformer call, i.e. ``(L_sel + 2) × B × C × H × I × 4``
            bytes; with ``keep_per_step`` also ``B × C × H × I × 4`` bytes on the host per (layer, step). FLUX.1 at
            1024² (I = 4096, H = 24), 5 concepts, 4 layers, batch 1: 6 × 5 × 24 × 4096 × 4 B = 11.8 MB
            (:func:`head_memory_bytes`). Not available while blocks run compiled.

    Example:
        >>> ConceptAttentionConfig(layers=(15, 16, 17, 18), softmax=True).space
        'output'
    """

    layers: tuple[LayerSpec, ...] | None = None
    timesteps: tuple[int, ...] | None = None
    space: Space = "output"
    softmax: bool = True
    temperature: float = 1.0
    normalization_order: NormalizationOrder = "per_layer"
    concept_attention: ConceptAttentionMode = "both"
    concept_conditioning: ConceptConditioning = "null_pooled"
    concept_pooling: ConceptPooling = "mean"
    concept_text_encoder: str | None = None
    cross_attention_scale: bool = True
    keep_per_step: bool = False
    batch_half: Literal["cond", "all"] = "cond"
    heads: tuple[int, ...] | None = None
    keep_heads: bool = False
    extra: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)

    def __post_init__(self) -> None:
        if self.layers is not None:
            layers = _as_tuple(self.layers, "layers")
            if not layers:
                raise ConfigError("layers must name at least one joint block (or be None for the default).")
            for layer in layers:
                if isinstance(layer, bool) or not isinstance(layer, int | str):
                    raise ConfigError(f"layers entries must be int indices or module paths, got {layer!r}.")
            object.__setattr__(self, "layers", layers)
        if self.timesteps is not None:
            timesteps = _as_tuple(self.timesteps, "timesteps")
            if not timesteps:
                raise ConfigError("timesteps must name at least one step (or be None for all steps).")
            for step in timesteps:
                if isinstance(step, bool) or not isinstance(step, int) or step < 0:
                    raise ConfigError(f"timesteps entries must be non-negative step indices, got {step!r}.")
            object.__setattr__(self, "timesteps", tuple(sorted(set(timesteps))))
        if self.heads is not None:
            heads = _as_tuple(self.heads, "heads")
            if not heads:
                raise ConfigError("heads must name at least one attention head (or be None for all heads).")
            for head in heads:
                if isinstance(head, bool) or not isinstance(head, int) or head < 0:
                    raise ConfigError(f"heads entries must be non-negative head indices, got {head!r}.")
            if len(set(heads)) != len(heads):
                raise ConfigError(f"heads lists a head twice: {list(heads)}.")
            object.__setattr__(self, "heads", tuple(sorted(heads)))
        if not isinstance(self.keep_heads, bool):
            raise ConfigError(f"keep_heads must be True or False, got {self.keep_heads!r}.")
        _check_choice("space", self.space, SPACES)
        _check_choice("concept_attention", self.concept_attention, CONCEPT_ATTENTION_MODES)
        _check_choice("concept_conditioning", self.concept_conditioning, CONCEPT_CONDITIONINGS)
        _check_choice("concept_pooling", self.concept_pooling, CONCEPT_POOLINGS)
        _check_choice("normalization_order", self.normalization_order, NORMALIZATION_ORDERS)
        if self.concept_text_encoder is not None and not isinstance(self.concept_text_encoder, str):
            raise ConfigError(f"concept_text_encoder must be a name or None, got {self.concept_text_encoder!r}.")
        _check_choice("batch_half", self.batch_half, ("cond", "all"))
        if not isinstance(self.temperature, int | float) or not self.temperature > 0:
            raise ConfigError(f"temperature must be a positive number, got {self.temperature!r}.")

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serialisable dict of the options."""
        out = dataclasses.asdict(self)
        out.pop("extra")
        for key in ("layers", "timesteps", "heads"):
            if out[key] is not None:
                out[key] = list(out[key])
        return out

    def replace(self, **changes: Any) -> ConceptAttentionConfig:
        """A copy with some options changed (validated again)."""
        return dataclasses.replace(self, **changes)


def head_memory_bytes(
    num_concepts: int, num_image_tokens: int, num_heads: int, num_layers: int, batch: int = 1, steps: int = 0
) -> int:
    """Bytes that ``keep_heads=True`` adds: ``(L_sel + 2) × B × C × H × I × 4`` (two float32 running sums, and the
    per-head scores of every selected layer during a transformer call), plus ``steps × L_sel × B × C × H × I × 4`` on
    the host with ``keep_per_step`` (give ``steps``).

    Example:
        >>> head_memory_bytes(5, 4096, 24, 4)  # FLUX.1 at 1024², 5 concepts, 4 layers: 11.8 MB
        11796480
    """
    per_tensor = batch * num_concepts * num_heads * num_image_tokens * 4
    return (num_layers + 2) * per_tensor + steps * num_layers * per_tensor


def _as_tuple(value: Any, name: str) -> tuple[Any, ...]:
    if isinstance(value, str | int):
        return (value,)
    if isinstance(value, range | Sequence) or hasattr(value, "__iter__"):
        return tuple(value)
    raise ConfigError(f"{name} must be a sequence, got {type(value).__name__}.")


MODEL_DEFAULTS_ATTRIBUTE = "conceptattention_defaults"
"""Attribute of a transformer that holds its recommended ConceptAttention settings (see :func:`model_defaults`)."""


@dataclass(frozen=True)
class ModelDefaults:
    """Recommended ConceptAttention settings that a model carries, used where the caller leaves an option unset.

    Large released models use the architecture's defaults (the adapter's :meth:`default_layers`, noise level 0.5);
    a model whose maps were validated on other settings (e.g. the shipped ShapesWorld toy) records them on its
    transformer with :func:`set_model_defaults`, and its loader does so from the model folder.

    Args:
        layers: Joint blocks used when ``ConceptAttentionConfig.layers`` is ``None``.
        noise_levels: Noise levels of the real-image path used when ``explain(noise_level=None)``; several levels
            are averaged like the steps of a generation.

    Example:
        >>> ModelDefaults(layers=(4, 5), noise_levels=(0.3, 0.7)).to_dict()
        {'layers': [4, 5], 'noise_levels': [0.3, 0.7]}
    """

    layers: tuple[int, ...] | None = None
    noise_levels: tuple[float, ...] | None = None

    def __post_init__(self) -> None:
        if self.layers is not None:
            layers = _as_tuple(self.layers, "layers")
            if not layers or not all(isinstance(layer, int) and not isinstance(layer, bool) for layer in layers):
                raise ConfigError(f"Model default layers must be a non-empty list of block indices, got {self.layers!r}.")
            object.__setattr__(self, "layers", layers)
        if self.noise_levels is not None:
            object.__setattr__(self, "noise_levels", check_noise_levels(self.noise_levels))

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelDefaults:
        """Build from a JSON object such as ``{"layers": [4, 5], "noise_levels": [0.5]}`` (unknown keys refused)."""
        unknown = set(data) - {"layers", "noise_levels"}
        if unknown:
            raise ConfigError(f"Unknown model default(s) {sorted(unknown)}; expected 'layers' and/or 'noise_levels'.")
        return cls(**data)

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable form (``None`` fields left out)."""
        return {key: list(value) for key, value in dataclasses.asdict(self).items() if value is not None}


def check_noise_levels(noise_level: float | Sequence[float]) -> tuple[float, ...]:
    """Validate one noise level or a non-empty sequence of distinct ones, each in ``(0, 1]``.

    Example:
        >>> check_noise_levels(0.5), check_noise_levels([0.3, 0.9])
        ((0.5,), (0.3, 0.9))
    """
    levels = (noise_level,) if isinstance(noise_level, int | float) else noise_level
    if isinstance(levels, str | bytes) or not isinstance(levels, Sequence) or not levels:
        raise ConfigError(f"noise_level must be a number in (0, 1] or a non-empty list of them, got {noise_level!r}.")
    out = []
    for level in levels:
        if isinstance(level, bool) or not isinstance(level, int | float) or not 0.0 < float(level) <= 1.0:
            raise ConfigError(f"noise_level must be in (0, 1], got {level!r}.")
        out.append(float(level))
    if len(set(out)) != len(out):
        raise ConfigError(f"noise levels must be distinct, got {list(levels)!r}.")
    return tuple(out)


def model_defaults(transformer: Any) -> ModelDefaults:
    """The recommended settings recorded on a transformer (empty :class:`ModelDefaults` if none).

    Example:
        >>> from torch import nn
        >>> module = nn.Linear(1, 1)
        >>> set_model_defaults(module, ModelDefaults(layers=(0,)))
        >>> model_defaults(module).layers
        (0,)
    """
    value = getattr(transformer, MODEL_DEFAULTS_ATTRIBUTE, None)
    return value if isinstance(value, ModelDefaults) else ModelDefaults()


def set_model_defaults(transformer: Any, defaults: ModelDefaults) -> None:
    """Record recommended settings on a transformer (they travel with the module, not with ``save_pretrained``)."""
    setattr(transformer, MODEL_DEFAULTS_ATTRIBUTE, defaults)
