"""A DAAM-style cross-attention baseline for UNet pipelines (Stable Diffusion 1.x / 2.x / XL).

DAAM (Tang et al., ACL 2023, "What the DAAM: Interpreting Stable Diffusion Using Cross Attention") explains a
word of the prompt by the cross-attention probabilities of the prompt tokens that spell it: per cross-attention
layer, the softmax attention of every latent position to the text tokens, averaged over heads, upsampled to the latent
resolution, and summed over layers and denoising steps. This module re-implements that with diffusers attention
processors (no dependency on the unmaintained ``daam`` package):

* :class:`DAAMRecorder` installs, for the duration of a ``with`` block, a recording wrapper around the processor of
  every cross-attention module of a ``UNet2DConditionModel``. The wrapper computes the probabilities from the same
  projections as the layer, then calls the original processor unchanged, so the pipeline's output is bit-identical.
  The original processors are restored when the block ends, also after an exception.
* :func:`~conceptattention.evaluation.daam_images.daam_explain` (module ``daam_images``) is the real-image path
  used by the evaluation harness (as ConceptAttention's ``explain``):
  VAE-encode the image, noise it to one diffusion time with several seeded noise samples, run the UNet once with the
  DAAM prompt (``"{caption}, a {c1}, a {c2}, ..."``, the protocol of the ConceptAttention paper's DAAM baselines) and
  read each concept's map off the tokens that spell it.

The latent size is read from the latents the UNet actually receives, never from the model config, so any image
size works.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Sequence
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn

from conceptattention.capture import ProcessorSwap
from conceptattention.errors import ConceptAttentionError


__all__ = [
    "DAAMError",
    "DAAMRecorder",
    "concept_token_positions",
    "daam_prompt",
]

Interpolation = Literal["bicubic", "bilinear", "nearest"]
BatchHalf = Literal["cond", "all"]

_STANDARD_PROCESSOR_PARAMETERS = frozenset(
    {"self", "attn", "hidden_states", "encoder_hidden_states", "attention_mask", "temb", "args", "kwargs"}
)
_MAX_DOWNSAMPLING_LEVELS = 8


class DAAMError(ConceptAttentionError, ValueError):
    """A DAAM baseline cannot run as asked (unsupported pipeline or processor, concept not in the prompt, ...)."""


# ----------------------------------------------------------------------------------------------------------------
# Prompts and token alignment
# ----------------------------------------------------------------------------------------------------------------


def daam_prompt(caption: str, concepts: Sequence[str]) -> str:
    """The DAAM prompt: the caption followed by ``"a {concept}"`` for every concept, comma separated.

    This is the protocol of the ConceptAttention paper's DAAM rows (every concept is named in the prompt, so its
    tokens can be read off the cross-attention).

    Args:
        caption: The image caption (may be empty).
        concepts: Concept words.

    Returns:
        The prompt string.

    Example:
        >>> daam_prompt("a dog", ["dog", "grass"])
        'a dog, a dog, a grass'
        >>> daam_prompt("", ["sky"])
        'a sky'
    """
    parts = [caption.strip()] if caption.strip() else []
    parts += [f"a {concept}" for concept in concepts]
    return ", ".join(parts)


def concept_token_positions(tokenizer: Any, prompt: str, concept: str) -> list[int]:
    """Positions of the tokens that spell ``concept`` in the encoded ``prompt`` (every occurrence).

    The prompt is tokenized as the pipeline's text encoder sees it (BOS at position 0, truncated at the tokenizer's
    ``model_max_length``); the concept is tokenized alone without special tokens, and every contiguous occurrence of
    that token sequence in the prompt is returned (DAAM averages all occurrences of a word).

    Args:
        tokenizer: The pipeline's (first) CLIP tokenizer.
        prompt: The full prompt.
        concept: The word or phrase to locate.

    Returns:
        Sorted token positions, at least one.

    Raises:
        DAAMError: If the concept does not occur in the (truncated) prompt, e.g. because the prompt is longer than
            the text encoder's context.

    Example:
        >>> from conceptattention.testing import tiny_clip_tokenizer
        >>> concept_token_positions(tiny_clip_tokenizer(), "a dog", "dog")  # character tokens: BOS a d o g EOS
        [2, 3, 4]
    """
    max_length = int(getattr(tokenizer, "model_max_length", 77) or 77)
    prompt_ids = tokenizer(prompt, truncation=True, max_length=max_length).input_ids
    concept_ids = tokenizer(concept, add_special_tokens=False).input_ids
    if not concept_ids:
        raise DAAMError(f"The concept {concept!r} tokenizes to nothing; give a non-empty word.")
    width = len(concept_ids)
    positions: list[int] = []
    for start in range(len(prompt_ids) - width + 1):
        if prompt_ids[start : start + width] == concept_ids:
            positions.extend(range(start, start + width))
    if not positions:
        full_length = len(tokenizer(prompt, truncation=False).input_ids)
        reason = (
            f"the prompt has {full_length} tokens but the text encoder reads only {max_length}; use fewer concepts "
            "or a shorter caption"
            if full_length > max_length
            else "its tokens do not appear in the tokenized prompt"
        )
        raise DAAMError(f"Cannot locate concept {concept!r} in the DAAM prompt {prompt!r}: {reason}.")
    return sorted(set(positions))


# ----------------------------------------------------------------------------------------------------------------
# Recording
# ----------------------------------------------------------------------------------------------------------------


def find_unet(model: Any) -> nn.Module:
    """The ``UNet2DConditionModel`` of a pipeline (or the UNet itself).

    Raises:
        DAAMError: ``model`` is not a UNet pipeline (e.g. an MM-DiT such as FLUX).

    Example:
        >>> find_unet(torch.nn.Linear(1, 1))
        Traceback (most recent call last):
        ...
        conceptattention.evaluation.daam.DAAMError: The DAAM baseline needs a UNet pipeline ...
    """
    unet = getattr(model, "unet", model)
    if not isinstance(unet, nn.Module) or type(unet).__name__ != "UNet2DConditionModel":
        raise DAAMError(
            f"The DAAM baseline needs a UNet pipeline (Stable Diffusion 1.x/2.x/XL with a UNet2DConditionModel), got "
            f"{type(model).__name__}. For MM-DiT pipelines (FLUX, SD3) use the 'cross-attention' method instead."
        )
    return unet


def _cross_attention_modules(unet: nn.Module) -> list[tuple[str, nn.Module]]:
    """``(name, module)`` of every cross-attention ``Attention`` module, in ``named_modules`` order."""
    from diffusers.models.attention_processor import Attention

    found = [
        (name, module)
        for name, module in unet.named_modules()
        if isinstance(module, Attention) and getattr(module, "is_cross_attention", False)
    ]
    if not found:
        raise DAAMError(f"{type(unet).__name__} has no cross-attention layers to record.")
    return found


def _latent_grid(num_tokens: int, latent_size: tuple[int, int]) -> tuple[int, int]:
    """``(h, w)`` of a layer with ``num_tokens`` positions: the latent size downsampled ``k`` times (ceil)."""
    height, width = latent_size
    for level in range(_MAX_DOWNSAMPLING_LEVELS):
        factor = 2**level
        grid = (math.ceil(height / factor), math.ceil(width / factor))
        if grid[0] * grid[1] == num_tokens:
            return grid
    raise DAAMError(
        f"A cross-attention layer has {num_tokens} query positions, which is no downsampling of the {height}x{width} "
        "latent; this UNet layout is not supported."
    )


class _RecordingProcessor:
    """Wraps a cross-attention processor: records the attention probabilities, then runs the original unchanged."""

    def __init__(self, recorder: DAAMRecorder, layer: int, original: Any) -> None:
        self.recorder = recorder
        self.layer = layer
        self.original = original
        parameters = inspect.signature(original.__call__).parameters
        self._forwarded = {name for name in parameters if name not in ("self", "args", "kwargs")}
        self._accepts_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values())

    def __call__(
        self,
        attn: nn.Module,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        temb: torch.Tensor | None = None,
        **kwargs: Any,
    ) -> torch.Tensor:
        if encoder_hidden_states is not None and self.recorder._should_record(self.layer):
            with torch.no_grad():
                probabilities = self._probabilities(attn, hidden_states, encoder_hidden_states, attention_mask, temb)
            self.recorder._add(self.layer, probabilities)
        extra = dict(kwargs)
        if temb is not None:
            extra["temb"] = temb
        if not self._accepts_any:
            extra = {key: value for key, value in extra.items() if key in self._forwarded}
        return self.original(
            attn, hidden_states, encoder_hidden_states=encoder_hidden_states, attention_mask=attention_mask, **extra
        )

    def _probabilities(
        self,
        attn: nn.Module,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor,
        attention_mask: torch.Tensor | None,
        temb: torch.Tensor | None,
    ) -> torch.Tensor:
        """Head-averaged softmax attention of the kept batch rows: ``[B_kept, N, L]`` float32."""
        rows = self.recorder._call_rows
        if attn.spatial_norm is not None:
            hidden_states = attn.spatial_norm(hidden_states, temb)
        if hidden_states.ndim == 4:
            batch, channels, height, width = hidden_states.shape
            hidden_states = hidden_states.view(batch, channels, height * width).transpose(1, 2)  # [B, N, c]
        batch_size = hidden_states.shape[0]
        text_length = encoder_hidden_states.shape[1]
        if attention_mask is not None:
            attention_mask = attn.prepare_attention_mask(attention_mask, text_length, batch_size)
            attention_mask = attention_mask.view(batch_size, attn.heads, -1, text_length)  # [B, heads, N|1, L]
            attention_mask = attention_mask[rows]
        hidden_states = hidden_states[rows]
        encoder_hidden_states = encoder_hidden_states[rows]
        if attn.group_norm is not None:
            hidden_states = attn.group_norm(hidden_states.transpose(1, 2)).transpose(1, 2)
        if attn.norm_cross:
            encoder_hidden_states = attn.norm_encoder_hidden_states(encoder_hidden_states)
        query = attn.to_q(hidden_states)  # [B, N, heads * d]
        key = attn.to_k(encoder_hidden_states)  # [B, L, heads * d]
        kept = query.shape[0]
        head_dim = key.shape[-1] // attn.heads
        query = query.view(kept, -1, attn.heads, head_dim).transpose(1, 2)  # [B, N, heads, d] -> [B, heads, N, d]
        key = key.view(kept, -1, attn.heads, head_dim).transpose(1, 2)  # [B, L, heads, d] -> [B, heads, L, d]
        if attn.norm_q is not None:
            query = attn.norm_q(query)
        if attn.norm_k is not None:
            key = attn.norm_k(key)
        logits = torch.matmul(query.float(), key.float().transpose(-1, -2)) * float(attn.scale)  # [B, heads, N, L]
        if attention_mask is not None:
            logits = logits + attention_mask.float()
        return logits.softmax(dim=-1).mean(dim=1)  # [B, heads, N, L] -> [B, N, L]


class DAAMRecorder(ProcessorSwap):
    """Record DAAM heat maps of every prompt token while a UNet runs, for the duration of a ``with`` block.

    Per recorded UNet call and selected cross-attention layer, the softmax attention probabilities (averaged over
    heads) are reshaped to the layer's grid, upsampled to the latent size of that call, clamped at zero (bicubic
    overshoots) and summed over layers and calls into :attr:`heat_maps`. The pipeline's outputs are unchanged:
    the original processors compute the layer outputs, and they are put back when the block ends, even after an
    exception.

    Args:
        model: A UNet pipeline (``StableDiffusionPipeline``, ``StableDiffusionXLPipeline``, ...) or its
            ``UNet2DConditionModel``.
        layers: Indices into :attr:`layer_names` (the cross-attention modules in module order) to record; ``None``
            records all of them, as DAAM.
        timesteps: Indices of the UNet calls to record (0 = first call in the block); ``None`` records all.
        batch_half: ``"cond"`` keeps the conditional half of a classifier-free-guidance batch (read from the
            pipeline's ``do_classifier_free_guidance``; all rows without guidance or for a bare UNet); ``"all"``
            keeps every row.
        interpolation: Upsampling of each layer's maps to the latent size: ``"bicubic"`` (DAAM), ``"bilinear"`` or
            ``"nearest"``.

    Raises:
        DAAMError: If the model is not a UNet pipeline, a layer index is out of range, or a cross-attention processor
            takes extra inputs (e.g. IP-Adapter) that the recording wrapper cannot forward.

    Example:
        >>> from conceptattention.evaluation.daam import DAAMRecorder
        >>> with DAAMRecorder(pipe) as recorder:  # doctest: +SKIP
        ...     image = pipe("a dog on grass", num_inference_steps=20).images[0]
        >>> recorder.heat_maps.shape  # [batch, text tokens, latent h, latent w]  # doctest: +SKIP
        torch.Size([1, 77, 64, 64])
    """

    def __init__(
        self,
        model: Any,
        *,
        layers: Sequence[int] | None = None,
        timesteps: Sequence[int] | None = None,
        batch_half: BatchHalf = "cond",
        interpolation: Interpolation = "bicubic",
    ) -> None:
        self.unet = find_unet(model)
        self.pipeline = model if model is not self.unet else None
        modules = _cross_attention_modules(self.unet)
        self.layer_names = tuple(name for name, _ in modules)
        self._modules = [module for _, module in modules]
        if layers is None:
            self.layers = tuple(range(len(modules)))
        else:
            selected = []
            for layer in layers:
                if isinstance(layer, bool) or not isinstance(layer, int) or not -len(modules) <= layer < len(modules):
                    raise DAAMError(
                        f"DAAM layer {layer!r} is out of range: the UNet has {len(modules)} cross-attention layers "
                        f"(indices 0..{len(modules) - 1})."
                    )
                selected.append(layer % len(modules))
            if not selected:
                raise DAAMError("layers must select at least one cross-attention layer (or be None for all).")
            self.layers = tuple(sorted(set(selected)))
        self.timesteps = None if timesteps is None else frozenset(int(step) for step in timesteps)
        if batch_half not in ("cond", "all"):
            raise DAAMError(f"batch_half must be 'cond' or 'all', got {batch_half!r}.")
        if interpolation not in ("bicubic", "bilinear", "nearest"):
            raise DAAMError(f"interpolation must be 'bicubic', 'bilinear' or 'nearest', got {interpolation!r}.")
        self.batch_half = batch_half
        self.interpolation = interpolation
        self._selected = frozenset(self.layers)
        self._saved: list[tuple[nn.Module, Any]] = []
        self._hook: Any = None
        self._active = False
        self.reset()

    # ----- install / restore ---------------------------------------------------------------------------------

    def __enter__(self) -> DAAMRecorder:
        if self._active:
            raise RuntimeError("This DAAMRecorder is already active; it cannot be entered twice.")
        for module in self._modules:
            processor = module.processor
            if isinstance(processor, _RecordingProcessor):
                raise RuntimeError("Another DAAMRecorder is already active on this UNet; exit it first.")
            extra = set(inspect.signature(processor.__call__).parameters) - _STANDARD_PROCESSOR_PARAMETERS
            if extra:
                raise DAAMError(
                    f"The cross-attention processor {type(processor).__name__} takes extra inputs {sorted(extra)} "
                    "(e.g. an IP-Adapter); the DAAM recorder supports the standard processors only. Unload the "
                    "adapter first."
                )
        self._activate()
        return self

    def _install(self) -> None:
        """Wrap every cross-attention processor in a recording one and hook the UNet's calls."""
        for layer, module in enumerate(self._modules):
            original = module.processor
            self._saved.append((module, original))
            module.set_processor(_RecordingProcessor(self, layer, original))
        self._hook = self.unet.register_forward_pre_hook(self._begin_call, with_kwargs=True)

    def _restore(self) -> None:
        """Put back every original processor and remove the call hook; safe to call more than once."""
        for module, original in reversed(self._saved):
            module.set_processor(original)
        self._saved.clear()
        if self._hook is not None:
            self._hook.remove()
            self._hook = None
        self._recording_call = False

    # ----- per call ---------------------------------------------------------------------------------------------

    def reset(self) -> None:
        """Forget the recorded maps and the call counter."""
        self._heat: torch.Tensor | None = None
        self.num_calls = 0
        self.num_recorded_calls = 0
        self.num_recorded_layers = 0
        self.latent_size: tuple[int, int] | None = None
        self._recording_call = False
        self._call_latent_size: tuple[int, int] | None = None
        self._call_rows: slice = slice(None)

    def _begin_call(self, module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        sample = args[0] if args else kwargs.get("sample")
        if not isinstance(sample, torch.Tensor) or sample.ndim != 4:
            raise DAAMError("Could not read the latents (the UNet's `sample` argument, [B, c, h, w]) of the call.")
        step = self.num_calls
        self.num_calls += 1
        self._recording_call = self.timesteps is None or step in self.timesteps
        if not self._recording_call:
            return
        self.num_recorded_calls += 1
        latent_size = (int(sample.shape[-2]), int(sample.shape[-1]))
        if self.latent_size is not None and latent_size != self.latent_size:
            raise DAAMError(
                f"The latent size changed from {self.latent_size} to {latent_size} between UNet calls; call "
                "reset() between runs of different sizes."
            )
        self.latent_size = latent_size
        batch_size = int(sample.shape[0])
        guided = (
            self.batch_half == "cond"
            and self.pipeline is not None
            and bool(getattr(self.pipeline, "do_classifier_free_guidance", False))
            and batch_size % 2 == 0
        )
        self._call_rows = slice(batch_size // 2, None) if guided else slice(None)

    def _should_record(self, layer: int) -> bool:
        return self._active and self._recording_call and layer in self._selected

    def _add(self, layer: int, probabilities: torch.Tensor) -> None:
        """Upsample one layer's ``[B, N, L]`` probabilities to the latent size and add them to the heat maps."""
        assert self.latent_size is not None
        batch, num_tokens, text_length = probabilities.shape
        grid_height, grid_width = _latent_grid(num_tokens, self.latent_size)
        maps = probabilities.transpose(1, 2).reshape(batch, text_length, grid_height, grid_width)  # [B, L, h_l, w_l]
        align = False if self.interpolation in ("bicubic", "bilinear") else None
        maps = F.interpolate(maps, size=self.latent_size, mode=self.interpolation, align_corners=align)  # [B, L, H, W]
        if self.interpolation == "bicubic":
            maps = maps.clamp(min=0.0)
        if self._heat is None:
            self._heat = torch.zeros_like(maps)
        elif self._heat.shape != maps.shape:
            raise DAAMError(
                f"The recorded batch changed shape from {list(self._heat.shape)} to {list(maps.shape)}; call reset() "
                "between runs with different batch sizes or prompts lengths."
            )
        self._heat += maps
        self.num_recorded_layers += 1

    # ----- results --------------------------------------------------------------------------------------------

    @property
    def heat_maps(self) -> torch.Tensor:
        """Summed heat maps of every text token: float32 ``[B, L, H, W]`` on the CPU (``H, W``: latent size).

        Raises:
            DAAMError: If nothing was recorded yet.
        """
        if self._heat is None:
            raise DAAMError("No DAAM maps recorded; run the pipeline (or the UNet) inside the `with` block first.")
        return self._heat.detach().float().cpu()

    def settings(self) -> dict[str, Any]:
        """JSON-serialisable description of what was recorded."""
        return {
            "method": "daam",
            "layers": [self.layer_names[index] for index in self.layers],
            "interpolation": self.interpolation,
            "recorded_calls": self.num_recorded_calls,
            "latent_size": list(self.latent_size) if self.latent_size else None,
        }


def __getattr__(name: str) -> Any:
    """``daam_explain`` under its old path (deprecated: import it from ``daam_images``)."""
    if name == "daam_explain":
        import warnings

        from conceptattention.evaluation import daam_images

        warnings.warn(
            "conceptattention.evaluation.daam.daam_explain moved to conceptattention.evaluation.daam_images (or "
            "import it from conceptattention.evaluation); the old path goes in the next release.",
            DeprecationWarning,
            stacklevel=2,
        )
        return daam_images.daam_explain
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
