"""Helpers of the real-image (explain) path shared by the adapters: the request and batch types, the image as the
VAE takes it, seeded noise and flow-matching noising, and the guidance-embedding input.

An adapter's :meth:`~conceptattention.adapters.base.ConceptAdapter.explain_batch` builds one batched transformer call
from an :class:`ExplainRequest` with these; :mod:`conceptattention.adapters.base` holds the adapter interface itself.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from torch import nn


if TYPE_CHECKING:
    from PIL import Image


@dataclass(frozen=True)
class ExplainBatch:
    """Inputs of one transformer forward on the real-image path.

    Attributes:
        transformer_kwargs: Keyword arguments of the transformer call (noised latents included).
        latent_shape: Shape of the clean latents, for reference.
    """

    transformer_kwargs: dict[str, Any]
    latent_shape: tuple[int, ...]


@dataclass(frozen=True)
class ExplainRequest:
    """What the real-image path asks of an adapter (validated by :meth:`ConceptAdapter.prepare_explain`).

    Attributes:
        caption: Prompt given with the image.
        noise_level: Rectified-flow time ``t`` in (0, 1] (DDPM families map it to a training timestep).
        seeds: One noise sample per seed, drawn on the CPU.
        height: Model input height in pixels (a multiple of the adapter's size multiple).
        width: Model input width in pixels.
        guidance_scale: Guidance embedding for guidance-distilled models.
        image_pooled: ``"zero"`` or ``"caption"``: the pooled text vector of the image stream, where there is one.
    """

    caption: str
    noise_level: float
    seeds: tuple[int, ...]
    height: int
    width: int
    guidance_scale: float = 3.5
    image_pooled: str = "zero"


def area_resolution(image_size: tuple[int, int], area: float, multiple: int) -> tuple[int, int]:
    """``(height, width)`` in pixels of about ``area`` pixels with the aspect ratio of ``image_size`` (PIL's
    ``(width, height)``), each side rounded to ``multiple`` (at least one multiple): the model input size of the
    real-image path.

    Example:
        >>> area_resolution((512, 256), 1024 * 1024, 16)
        (720, 1456)
    """
    width, height = image_size
    scale = math.sqrt(area / float(width * height))
    return (
        max(multiple, int(round(height * scale / multiple)) * multiple),
        max(multiple, int(round(width * scale / multiple)) * multiple),
    )


def image_pixels(pipeline: Any, image: Image.Image, height: int, width: int) -> torch.Tensor:
    """An image as the VAE takes it: RGB, resized bicubically to ``width × height``, ``[1, 3, H, W]`` in [-1, 1] on
    the pipeline's execution device, in the VAE's dtype."""
    from ..images import image_to_tensor, to_rgb

    resized = to_rgb(image).resize((width, height), resample=3)  # 3 = BICUBIC
    return image_to_tensor(resized).unsqueeze(0).to(device=pipeline._execution_device, dtype=pipeline.vae.dtype)


def seeded_noise(shape: Sequence[int], seeds: Sequence[int], device: torch.device) -> torch.Tensor:
    """One standard-normal sample of ``shape`` per seed, drawn on the CPU (device-independent results):
    ``[N, *shape]`` float32 on ``device``.

    Example:
        >>> seeded_noise((2,), [0, 0], torch.device("cpu")).unique(dim=0).shape
        torch.Size([1, 2])
    """
    samples = [torch.randn(tuple(shape), generator=torch.Generator().manual_seed(int(seed))) for seed in seeds]
    return torch.stack(samples).to(device=device, dtype=torch.float32)  # [N, *shape]


def flow_noised(clean: torch.Tensor, request: ExplainRequest, device: torch.device) -> torch.Tensor:
    """Rectified flow ``x_t = (1 - t)·x_0 + t·ε`` for each seed: ``clean [1, *S]`` → ``[N, *S]`` float32."""
    noise = seeded_noise(clean.shape[1:], request.seeds, device)  # [N, *S]
    return (1.0 - request.noise_level) * clean.float() + request.noise_level * noise


def guidance_tensor(transformer: nn.Module, request: ExplainRequest, num: int, device: torch.device) -> torch.Tensor | None:
    """The guidance embedding input ``[N]`` of guidance-distilled transformers (``config.guidance_embeds``), else
    ``None``."""
    if not getattr(transformer.config, "guidance_embeds", False):
        return None
    return torch.full((num,), request.guidance_scale, device=device, dtype=torch.float32)


__all__ = [
    "ExplainBatch",
    "ExplainRequest",
    "area_resolution",
    "flow_noised",
    "guidance_tensor",
    "image_pixels",
    "seeded_noise",
]
