"""DAAM maps of real images (the evaluation harness's path): encode, noise, one UNet forward under the recorder.

The counterpart of ConceptAttention's ``explain`` for the DAAM baseline of :mod:`conceptattention.evaluation.daam`:
VAE-encode the image, noise it to one diffusion time with several seeded noise samples, run the UNet once with the
DAAM prompt (``"{caption}, a {c1}, a {c2}, ..."``, the protocol of the ConceptAttention paper's DAAM baselines)
under a :class:`~conceptattention.evaluation.daam.DAAMRecorder`, and read each concept's map off the tokens that spell
it. The latent size is read from the latents the UNet receives, so any image size works.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
from PIL import Image
from torch import nn

from conceptattention import ConceptMaps
from conceptattention.evaluation.daam import (
    DAAMError,
    DAAMRecorder,
    Interpolation,
    concept_token_positions,
    daam_prompt,
    find_unet,
)


__all__ = ["daam_explain"]


def _size_multiple(pipeline: Any, unet: nn.Module) -> int:
    vae_scale = int(getattr(pipeline, "vae_scale_factor", 8))
    return vae_scale * 2 ** (len(unet.config.block_out_channels) - 1)


def _default_resolution(pipeline: Any, unet: nn.Module, image_size: tuple[int, int]) -> tuple[int, int]:
    """``(height, width)`` at the model's default area, aspect ratio kept, rounded to the UNet's size multiple."""
    vae_scale = int(getattr(pipeline, "vae_scale_factor", 8))
    sample_size = getattr(pipeline, "default_sample_size", None) or unet.config.sample_size
    side = int(sample_size if isinstance(sample_size, int) else sample_size[0]) * vae_scale
    multiple = _size_multiple(pipeline, unet)
    width, height = image_size
    scale = math.sqrt(side * side / float(width * height))
    return (
        max(multiple, int(round(height * scale / multiple)) * multiple),
        max(multiple, int(round(width * scale / multiple)) * multiple),
    )


def _encode_images(pipeline: Any, images: Sequence[Image.Image], height: int, width: int) -> torch.Tensor:
    """VAE latents (scaled as the UNet expects) of images resized to ``height x width``: ``[B, c, h, w]``."""
    from conceptattention.images import image_to_tensor, to_rgb

    vae = pipeline.vae
    device = pipeline._execution_device
    pixels = torch.stack(
        [image_to_tensor(to_rgb(image).resize((width, height), Image.Resampling.BICUBIC)) for image in images]
    ).to(device=device, dtype=vae.dtype)  # [B, 3, H, W] in [-1, 1]
    with torch.no_grad():
        latents = vae.encode(pixels).latent_dist.mode()  # [B, c, h, w]
    shift = getattr(vae.config, "shift_factor", None)
    if shift is not None:
        latents = latents - shift
    return latents * vae.config.scaling_factor


def _noised(
    latents: torch.Tensor, scheduler: Any, noise_level: float, seeds: Sequence[int]
) -> tuple[torch.Tensor, int]:
    """Each latent noised once per seed: ``[B * N, c, h, w]`` (image-major), and the integer timestep used."""
    alphas_cumprod = getattr(scheduler, "alphas_cumprod", None)
    if alphas_cumprod is None:
        raise DAAMError(
            f"The scheduler {type(scheduler).__name__} has no alphas_cumprod (not a DDPM-style schedule); use a "
            "DDIM/PNDM/Euler scheduler for the DAAM baseline."
        )
    num_train_timesteps = len(alphas_cumprod)
    timestep = int(round(noise_level * (num_train_timesteps - 1)))
    alpha_bar = float(alphas_cumprod[timestep])
    noise = torch.stack(
        [torch.randn(latents.shape[1:], generator=torch.Generator().manual_seed(int(seed))) for seed in seeds]
    ).to(device=latents.device, dtype=torch.float32)  # [N, c, h, w], drawn on the CPU: device-independent
    clean = latents.float().repeat_interleave(len(seeds), dim=0)  # [B, c, h, w] -> [B * N, c, h, w]
    noise = noise.repeat(latents.shape[0], 1, 1, 1)  # [N, c, h, w] -> [B * N, c, h, w]
    noisy = math.sqrt(alpha_bar) * clean + math.sqrt(1.0 - alpha_bar) * noise  # DDPM forward process
    return noisy.to(latents.dtype), timestep


def _unet_inputs(pipeline: Any, prompts: Sequence[str], num_samples: int, height: int, width: int) -> dict[str, Any]:
    """Text conditioning for one UNet call: ``encoder_hidden_states`` (and SDXL's ``added_cond_kwargs``)."""
    device = pipeline._execution_device
    unet = pipeline.unet
    with torch.no_grad():
        encoded = pipeline.encode_prompt(
            prompt=list(prompts),
            device=device,
            num_images_per_prompt=num_samples,
            do_classifier_free_guidance=False,
        )
    inputs: dict[str, Any] = {"encoder_hidden_states": encoded[0].to(unet.dtype)}  # [B * N, L, D]
    if getattr(unet.config, "addition_embed_type", None) == "text_time":  # SDXL
        pooled = encoded[2]  # [B * N, D_pooled]
        projection_dim = (
            int(pipeline.text_encoder_2.config.projection_dim)
            if getattr(pipeline, "text_encoder_2", None) is not None
            else int(pooled.shape[-1])
        )
        time_ids = pipeline._get_add_time_ids(
            (height, width), (0, 0), (height, width), dtype=pooled.dtype, text_encoder_projection_dim=projection_dim
        ).to(device)  # [1, 6]
        inputs["added_cond_kwargs"] = {
            "text_embeds": pooled.to(device),
            "time_ids": time_ids.repeat(pooled.shape[0], 1),  # [1, 6] -> [B * N, 6]
        }
    return inputs


def daam_explain(
    pipeline: Any,
    images: Sequence[Image.Image],
    concepts: Sequence[Sequence[str]],
    *,
    captions: Sequence[str] | None = None,
    noise_level: float = 0.5,
    num_samples: int = 1,
    seed: int = 0,
    height: int | None = None,
    width: int | None = None,
    layers: Sequence[int] | None = None,
    interpolation: Interpolation = "bicubic",
) -> list[ConceptMaps]:
    """DAAM maps of real images, one :class:`~conceptattention.ConceptMaps` per image.

    Images are resized to ``height x width`` (default: the model's area, aspect ratio kept), VAE-encoded and noised
    to the DDPM time ``t = round(noise_level * (T - 1))`` with ``num_samples`` noise samples (sample ``i`` uses seed
    ``seed + i``, as ConceptAttention's ``explain``). One batched UNet call (images of equal size share a call)
    records the cross-attention of the DAAM prompt :func:`daam_prompt`; a concept's map is the mean over its token
    positions (:func:`concept_token_positions`) of the summed heat maps, averaged over the noise samples.

    Args:
        pipeline: A Stable Diffusion 1.x/2.x/XL pipeline.
        images: The images.
        concepts: One concept list per image.
        captions: One caption per image (default: empty).
        noise_level: Diffusion time as a fraction of the training schedule, in ``(0, 1]``.
        num_samples: Noise samples averaged.
        seed: Seed of the first noise sample.
        height: Model input height in pixels (give both or neither).
        width: Model input width in pixels.
        layers: Cross-attention layers to use (see :class:`DAAMRecorder`); ``None`` uses all.
        interpolation: Upsampling of layer maps to the latent size.

    Returns:
        One ``ConceptMaps`` per image with maps ``[C, 1, h, w]`` on the latent grid (raw summed attention, no
        softmax over concepts), in concept order.

    Raises:
        DAAMError: Not a UNet pipeline, mismatched argument lengths, bad noise level, size or sample count, or a
            concept that the prompt cannot hold.

    Example:
        >>> maps = daam_explain(pipe, [image], [["dog", "grass"]], captions=["a dog"])  # doctest: +SKIP
        >>> maps[0].concepts  # doctest: +SKIP
        ('dog', 'grass')
    """
    unet = find_unet(pipeline)
    images = list(images)
    concept_lists = [tuple(item) for item in concepts]
    captions = list(captions) if captions is not None else [""] * len(images)
    if not images:
        raise DAAMError("No images given.")
    if not len(images) == len(concept_lists) == len(captions):
        raise DAAMError(
            f"Give one concept list and one caption per image: {len(images)} images, {len(concept_lists)} concept "
            f"lists, {len(captions)} captions."
        )
    if not isinstance(noise_level, int | float) or not 0.0 < float(noise_level) <= 1.0:
        raise DAAMError(f"noise_level must be in (0, 1], got {noise_level!r}.")
    if isinstance(num_samples, bool) or not isinstance(num_samples, int) or num_samples < 1:
        raise DAAMError(f"num_samples must be a positive integer, got {num_samples!r}.")
    if (height is None) != (width is None):
        raise DAAMError("Give both height and width, or neither.")
    multiple = _size_multiple(pipeline, unet)
    if (
        height is not None
        and width is not None
        and (height <= 0 or width <= 0 or height % multiple or width % multiple)
    ):
        raise DAAMError(
            f"height and width must be positive multiples of {multiple} for this UNet, got {height}x{width}."
        )
    for image in images:
        if not isinstance(image, Image.Image):
            raise DAAMError(f"images must be PIL images, got {type(image).__name__}.")
    prompts = [daam_prompt(caption, items) for caption, items in zip(captions, concept_lists)]
    positions = [
        [concept_token_positions(pipeline.tokenizer, prompt, concept) for concept in items]
        for prompt, items in zip(prompts, concept_lists)
    ]
    sizes = [(height, width) if height is not None else _default_resolution(pipeline, unet, im.size) for im in images]
    seeds = [seed + index for index in range(num_samples)]
    results: list[ConceptMaps | None] = [None] * len(images)
    for size in dict.fromkeys(sizes):
        group = [index for index, item_size in enumerate(sizes) if item_size == size]
        latents = _encode_images(pipeline, [images[index] for index in group], *size)  # [G, c, h, w]
        noisy, timestep = _noised(latents, pipeline.scheduler, float(noise_level), seeds)  # [G * N, c, h, w]
        inputs = _unet_inputs(pipeline, [prompts[index] for index in group], num_samples, *size)
        timesteps = torch.full((noisy.shape[0],), timestep, device=noisy.device, dtype=torch.long)
        with DAAMRecorder(unet, layers=layers, batch_half="all", interpolation=interpolation) as recorder:
            with torch.no_grad():
                unet(noisy.to(unet.dtype), timesteps, return_dict=False, **inputs)
        heat = recorder.heat_maps  # [G * N, L, h, w]
        heat = heat.view(len(group), num_samples, *heat.shape[1:]).mean(dim=1)  # [G, N, L, h, w] -> [G, L, h, w]
        for slot, index in enumerate(group):
            concept_maps = torch.stack(
                [heat[slot, token_positions].mean(dim=0) for token_positions in positions[index]]
            )  # [C, h, w]
            config = recorder.settings()
            config.update(
                {
                    "path": "daam_explain",
                    "prompt": prompts[index],
                    "token_positions": dict(zip(concept_lists[index], positions[index])),
                    "noise_level": float(noise_level),
                    "timestep": timestep,
                    "num_samples": num_samples,
                    "seed": seed,
                    "height": size[0],
                    "width": size[1],
                }
            )
            results[index] = ConceptMaps(
                concept_lists[index], concept_maps.unsqueeze(1), settings=config
            )  # [C, 1, h, w]
    return [maps for maps in results if maps is not None]
