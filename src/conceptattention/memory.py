"""A rough estimate of the memory a run needs, checked before it starts (the CLI's ``--max-memory-gb``).

A request for a 100,000-pixel-high image, a 50,000 x 50,000 explain input or 100,000 noise samples would otherwise
hang at the first step or die in an allocation error deep inside torch. :func:`estimate_run_memory` adds up the
largest working tensors of a run from its sizes (image, frames, batch of noise samples, concepts, text tokens) and
the model's widths; :func:`check_run_memory` refuses a run whose estimate is above a limit, with the number.

The estimate is deliberately simple and counts activations only (the weights are already loaded):

* image tensors: ``frames · H · W · 3`` floats, a few copies (pre-processing, decoding, PIL images);
* the VAE's full-resolution feature maps: ``frames · H · W · vae_channels`` elements (at most
  :data:`VAE_FRAME_CHUNK` frames at once), a few copies;
* the transformer's token activations: ``batch · S · hidden`` elements for the ``S = image + text + concept`` tokens,
  a dozen copies (q, k, v, MLP, residuals);
* the attention scores of one head: ``batch · S²`` elements (memory-efficient kernels need less, the math path
  ``heads`` times more; either way the quadratic term is what makes huge images hang).

Example:
    >>> estimate = estimate_run_memory(height=1024, width=1024, dims=ModelDims(hidden=3072, vae_channels=128))
    >>> round(estimate.total / 2**30, 1)
    2.2
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from .errors import ConceptAttentionError


__all__ = [
    "DEFAULT_MAX_MEMORY_GB",
    "default_memory_limit_gb",
    "MemoryEstimate",
    "MemoryLimitError",
    "ModelDims",
    "check_run_memory",
    "estimate_run_memory",
    "model_dims",
]

#: The default limit of the command line (``--max-memory-gb``) on the CPU: what a laptop can usually spare.
DEFAULT_MAX_MEMORY_GB = 16.0

#: Frames the VAE of a video model processes at once (diffusers decodes videos in chunks of frames).
VAE_FRAME_CHUNK = 8


def default_memory_limit_gb(device: str) -> float:
    """The default limit for ``device``: a CUDA device's total memory, else :data:`DEFAULT_MAX_MEMORY_GB`.

    Example:
        >>> default_memory_limit_gb("cpu")
        16.0
    """
    import torch

    try:
        parsed = torch.device(device)
    except (RuntimeError, TypeError, ValueError):
        return DEFAULT_MAX_MEMORY_GB
    if parsed.type == "cuda" and torch.cuda.is_available():
        index = parsed.index if parsed.index is not None else torch.cuda.current_device()
        return round(torch.cuda.get_device_properties(index).total_memory / 1e9, 1)
    return DEFAULT_MAX_MEMORY_GB


class MemoryLimitError(ConceptAttentionError, ValueError):
    """A run would need more memory than the limit; the message gives the estimate and the limit."""


@dataclass(frozen=True)
class ModelDims:
    """The widths of a model that the memory estimate needs (zero where unknown: that term is left out).

    Attributes:
        pixels_per_token: Image pixels per token side (VAE downsampling x patch size).
        temporal_compression: Video frames per latent frame.
        hidden: Transformer width (heads x head dimension).
        vae_channels: Channels of the VAE's full-resolution feature maps.
        text_tokens: Prompt tokens given to the transformer.
        element_bytes: Bytes per element of the activations (4 for float32, 2 for bfloat16).
    """

    pixels_per_token: int = 16
    temporal_compression: int = 1
    hidden: int = 0
    vae_channels: int = 0
    text_tokens: int = 0
    element_bytes: int = 4


@dataclass(frozen=True)
class MemoryEstimate:
    """The estimated bytes of each part of a run.

    Attributes:
        images: Image tensors in pixel space.
        vae: The VAE's full-resolution feature maps.
        transformer: Token activations.
        attention: Attention scores of one head.
        tokens: ``S``, the tokens of one transformer call.
    """

    images: int
    vae: int
    transformer: int
    attention: int
    tokens: int

    @property
    def total(self) -> int:
        """All parts together, in bytes."""
        return self.images + self.vae + self.transformer + self.attention

    def describe(self) -> str:
        """One line: the total and its largest part, e.g. ``"about 2.5 TB (mostly attention over 800,032 tokens)"``."""
        parts = {
            "image tensors": self.images,
            "VAE feature maps": self.vae,
            "transformer activations": self.transformer,
            f"attention over {self.tokens:,} tokens": self.attention,
        }
        largest = max(parts, key=lambda name: parts[name])
        return f"about {_format_bytes(self.total)} (mostly {largest})"


def _format_bytes(count: float) -> str:
    for unit in ("bytes", "KB", "MB", "GB", "TB", "PB"):
        if count < 1000 or unit == "PB":
            return f"{count:,.0f} {unit}" if unit == "bytes" else f"{count:,.1f} {unit}"
        count /= 1000
    raise AssertionError("unreachable")


def estimate_run_memory(
    *,
    height: int,
    width: int,
    frames: int = 1,
    batch: int = 1,
    concepts: int = 1,
    dims: ModelDims | None = None,
) -> MemoryEstimate:
    """Estimate the activation memory of one ConceptAttention run (see the module docstring for the terms).

    Args:
        height: Image height in pixels (the model input).
        width: Image width in pixels.
        frames: Video frames (1 for images).
        batch: Images per transformer call (noise samples of the explain path).
        concepts: Number of concepts.
        dims: The model's widths (default: unknown model, only the image term and token count).

    Returns:
        :class:`MemoryEstimate`.

    Example:
        >>> estimate_run_memory(height=32, width=32, batch=4, dims=ModelDims(pixels_per_token=2, hidden=160)).tokens
        257
    """
    dims = dims or ModelDims()
    for name, value in (("height", height), ("width", width), ("frames", frames), ("batch", batch)):
        if value < 1:
            raise ValueError(f"{name} must be at least 1 for a memory estimate, got {value}.")
    pixels = frames * height * width
    latent_frames = math.ceil(frames / max(1, dims.temporal_compression))
    side = max(1, dims.pixels_per_token)
    image_tokens = latent_frames * math.ceil(height / side) * math.ceil(width / side)
    tokens = image_tokens + dims.text_tokens + concepts
    element = dims.element_bytes
    return MemoryEstimate(
        images=pixels * 3 * 4 * 4,  # float32 pre-processing and post-processing copies
        vae=min(frames, VAE_FRAME_CHUNK) * height * width * dims.vae_channels * element * 3,
        transformer=batch * tokens * dims.hidden * element * 12,
        attention=batch * tokens * tokens * element,
        tokens=tokens,
    )


def check_run_memory(estimate: MemoryEstimate, max_gb: float | None, *, option: str = "--max-memory-gb") -> None:
    """Refuse a run whose estimate is above ``max_gb`` gigabytes (None: no limit).

    Raises:
        MemoryLimitError: With the estimate, its largest part, the limit and the way out.

    Example:
        >>> check_run_memory(estimate_run_memory(height=100_000, width=32, dims=ModelDims(pixels_per_token=2)), 16)
        Traceback (most recent call last):
        ...
        conceptattention.memory.MemoryLimitError: This run needs about 2.6 TB (mostly attention over 800,001 tokens)...
    """
    if max_gb is None or estimate.total <= max_gb * 1e9:
        return
    raise MemoryLimitError(
        f"This run needs {estimate.describe()} of memory by a rough estimate, more than the limit of {max_gb:g} GB. "
        f"Use a smaller size, fewer frames, samples or concepts, or raise the limit with {option} if the machine "
        "has the memory."
    )


def model_dims(pipeline: Any, *, text_tokens: int | None = None) -> ModelDims:
    """The widths of a loaded pipeline for :func:`estimate_run_memory` (unknown ones left at zero).

    Args:
        pipeline: A diffusers pipeline supported by ConceptAttention.
        text_tokens: Prompt tokens of the run (default: the pipeline's ``max_sequence_length`` default, else 0).

    Example:
        >>> from conceptattention.testing import tiny_flux_pipeline
        >>> model_dims(tiny_flux_pipeline(), text_tokens=32).hidden
        32
    """
    import inspect

    from .adapters import get_adapter

    transformer = getattr(pipeline, "transformer", None)
    config = getattr(transformer, "config", None)
    heads = int(getattr(config, "num_attention_heads", 0) or 0)
    head_dim = int(getattr(config, "attention_head_dim", 0) or 0)
    hidden = heads * head_dim or int(getattr(config, "hidden_size", 0) or getattr(config, "inner_dim", 0) or 0)
    vae_config = getattr(getattr(pipeline, "vae", None), "config", None)
    channels = getattr(vae_config, "block_out_channels", None) or [0]
    if text_tokens is None:
        parameter = inspect.signature(pipeline.__call__).parameters.get("max_sequence_length")
        default = parameter.default if parameter is not None else None
        text_tokens = default if isinstance(default, int) else 0
    dtype = getattr(transformer, "dtype", None)
    element = int(getattr(dtype, "itemsize", 4) or 4)
    return ModelDims(
        pixels_per_token=get_adapter(pipeline).size_multiple(pipeline),
        temporal_compression=int(getattr(pipeline, "vae_scale_factor_temporal", 1) or 1),
        hidden=hidden,
        vae_channels=int(channels[0] or 0),
        text_tokens=int(text_tokens),
        element_bytes=element,
    )
