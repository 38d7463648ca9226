"""Tiny random-weight Mochi transformer, inputs and pipeline for :mod:`conceptattention.adapters.mochi`.

Example:
    >>> type(tiny_mochi_transformer()).__name__
    'MochiTransformer3DModel'
"""

from __future__ import annotations

from typing import Any

import torch

from .common import quiet_pipeline, seeded_eval
from .text_encoders import tiny_t5


def tiny_mochi_transformer(num_layers: int = 3, seed: int = 0) -> Any:
    """A random-weight ``MochiTransformer3DModel`` (2 heads × 8, video width 16, text width 8, T5 width 16, patch 2;
    the last block is ``context_pre_only``).

    Example:
        >>> tiny_mochi_transformer().transformer_blocks[-1].context_pre_only
        True
    """
    from diffusers import MochiTransformer3DModel

    return seeded_eval(
        seed,
        MochiTransformer3DModel,
        patch_size=2,
        num_attention_heads=2,
        attention_head_dim=8,
        num_layers=num_layers,
        pooled_projection_dim=8,
        in_channels=4,
        text_embed_dim=16,
        time_embed_dim=4,
        max_sequence_length=16,
    )


def tiny_mochi_inputs(
    batch_size: int = 1,
    frames: int = 2,
    height: int = 2,
    width: int = 3,
    text_tokens: int = 8,
    padded_text: int = 3,
    seed: int = 0,
) -> dict[str, Any]:
    """Keyword inputs of a bare ``MochiTransformer3DModel`` call: latent video ``[B, 4, F, 2·height, 2·width]`` (patch
    2), a padded prompt and its mask.

    Example:
        >>> tiny_mochi_inputs()["hidden_states"].shape
        torch.Size([1, 4, 2, 4, 6])
    """
    generator = torch.Generator().manual_seed(seed)
    mask = torch.ones(batch_size, text_tokens)  # [B, T]
    if padded_text > 0:
        mask[:, text_tokens - padded_text :] = 0
    return {
        "hidden_states": torch.randn(batch_size, 4, frames, 2 * height, 2 * width, generator=generator),
        "encoder_hidden_states": torch.randn(batch_size, text_tokens, 16, generator=generator),
        "timestep": torch.full((batch_size,), 500.0),
        "encoder_attention_mask": mask,
        "return_dict": False,
    }


def tiny_mochi_pipeline(num_layers: int = 3, seed: int = 0) -> Any:
    """A complete random-weight ``MochiPipeline``: tiny T5 (in-memory tokenizer), tiny Mochi VAE (diffusers' fast-test
    layout, 4 latent channels), transformer. The pipeline's scale factors are fixed (8 spatial, 6 temporal): a
    7-frame 32×48 video has a 2×4×6 latent and 2×2×3 = 12 video tokens.

    Example:
        >>> tiny_mochi_pipeline().vae_temporal_scale_factor
        6
    """
    from diffusers import AutoencoderKLMochi, FlowMatchEulerDiscreteScheduler, MochiPipeline

    tokenizer, text_encoder = tiny_t5(16, seed + 1)
    vae = seeded_eval(
        seed + 2,
        AutoencoderKLMochi,
        latent_channels=4,
        out_channels=3,
        encoder_block_out_channels=(32, 32, 32, 32),
        decoder_block_out_channels=(32, 32, 32, 32),
        layers_per_block=(1, 1, 1, 1, 1),
        latents_mean=(0.0,) * 4,
        latents_std=(1.0,) * 4,
    )
    transformer = tiny_mochi_transformer(num_layers=num_layers, seed=seed + 3)
    return quiet_pipeline(
        MochiPipeline(
            scheduler=FlowMatchEulerDiscreteScheduler(),
            vae=vae,
            text_encoder=text_encoder,
            tokenizer=tokenizer,
            transformer=transformer,
        )
    )
