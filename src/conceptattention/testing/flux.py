"""Tiny random-weight FLUX.1 transformer, inputs and pipeline (:mod:`conceptattention.adapters.flux`).

Nothing here downloads anything: tokenizers are built from in-memory vocabularies, encoders and the VAE from small
configs, seeded before each component.

Example:
    >>> pipe = tiny_flux_pipeline()
    >>> type(pipe).__name__
    'FluxPipeline'
"""

from __future__ import annotations

from typing import Any

import torch

from .common import SD3_STYLE_VAE, call_inputs, quiet_pipeline, seeded_eval, tiny_autoencoder_kl
from .text_encoders import tiny_clip, tiny_t5


def tiny_flux_vae(latent_channels: int, seed: int) -> Any:
    """A one-level ``AutoencoderKL`` (``vae_scale_factor`` 1), as in diffusers' Flux fast tests."""
    return tiny_autoencoder_kl(latent_channels=latent_channels, seed=seed, **SD3_STYLE_VAE)


def tiny_flux_transformer(
    num_layers: int = 4,
    num_single_layers: int = 1,
    num_attention_heads: int = 2,
    attention_head_dim: int = 16,
    joint_attention_dim: int = 32,
    pooled_projection_dim: int = 32,
    in_channels: int = 4,
    guidance_embeds: bool = False,
    seed: int = 0,
) -> Any:
    """A random-weight ``FluxTransformer2DModel`` small enough for CPU tests (eval mode).

    Example:
        >>> tiny_flux_transformer().config.num_layers
        4
    """
    from diffusers import FluxTransformer2DModel

    head_quarter = attention_head_dim // 4
    return seeded_eval(
        seed,
        FluxTransformer2DModel,
        patch_size=1,
        in_channels=in_channels,
        num_layers=num_layers,
        num_single_layers=num_single_layers,
        attention_head_dim=attention_head_dim,
        num_attention_heads=num_attention_heads,
        joint_attention_dim=joint_attention_dim,
        pooled_projection_dim=pooled_projection_dim,
        guidance_embeds=guidance_embeds,
        axes_dims_rope=(head_quarter, head_quarter, attention_head_dim - 2 * head_quarter),
    )


def tiny_flux_inputs(
    batch_size: int = 1,
    height: int = 4,
    width: int = 6,
    text_tokens: int = 8,
    in_channels: int = 4,
    joint_attention_dim: int = 32,
    pooled_projection_dim: int = 32,
    guidance: float | None = None,
    seed: int = 0,
) -> dict[str, Any]:
    """Keyword inputs for a bare ``FluxTransformer2DModel`` call on a ``height × width`` token grid.

    Example:
        >>> tiny_flux_inputs(guidance=3.5)["hidden_states"].shape
        torch.Size([1, 24, 4])
    """
    from diffusers import FluxPipeline

    shapes = {
        "hidden_states": (height * width, in_channels),
        "encoder_hidden_states": (text_tokens, joint_attention_dim),
        "pooled_projections": (pooled_projection_dim,),
    }
    inputs = call_inputs(
        seed,
        batch_size,
        shapes,
        0.5,
        img_ids=FluxPipeline._prepare_latent_image_ids(batch_size, height, width, "cpu", torch.float32),
        txt_ids=torch.zeros(text_tokens, 3),
    )
    if guidance is not None:
        inputs["guidance"] = torch.full((batch_size,), guidance)
    return inputs


def tiny_flux_pipeline(num_layers: int = 4, guidance_embeds: bool = False, seed: int = 0) -> Any:
    """A complete random-weight ``FluxPipeline``: tiny CLIP + T5 (in-memory tokenizers), VAE and transformer.

    The VAE has one block level (``vae_scale_factor`` 1), so a 32×32 image has a 16×16 latent and 8×8 = 64 image
    tokens.

    Example:
        >>> tiny_flux_pipeline().vae_scale_factor
        1
    """
    from diffusers import FlowMatchEulerDiscreteScheduler, FluxPipeline

    clip_tokenizer, clip = tiny_clip(32, seed)
    t5_tokenizer, t5 = tiny_t5(32, seed + 1)
    return quiet_pipeline(
        FluxPipeline(
            scheduler=FlowMatchEulerDiscreteScheduler(),
            vae=tiny_flux_vae(latent_channels=1, seed=seed + 2),
            text_encoder=clip,
            tokenizer=clip_tokenizer,
            text_encoder_2=t5,
            tokenizer_2=t5_tokenizer,
            transformer=tiny_flux_transformer(num_layers=num_layers, guidance_embeds=guidance_embeds, seed=seed + 3),
        )
    )
