"""Tiny random-weight HunyuanImage 2.1 transformer, inputs and pipeline for :mod:`conceptattention.adapters.hunyuan_image`.

Example:
    >>> type(tiny_hunyuan_image_transformer()).__name__
    'HunyuanImageTransformer2DModel'
"""

from __future__ import annotations

from typing import Any

import torch

from .common import quiet_pipeline, seeded_eval
from .text_encoders import tiny_byte_level_tokenizer, tiny_qwen25vl_encoder, tiny_t5_encoder


def tiny_hunyuan_image_transformer(
    num_layers: int = 3,
    num_single_layers: int = 1,
    guidance_embeds: bool = False,
    text_embed_2_dim: int | None = None,
    seed: int = 0,
) -> Any:
    """A random-weight ``HunyuanImageTransformer2DModel`` (2 heads × 8, one refiner layer, text width 16, patch 1;
    with ``text_embed_2_dim`` a ByT5 glyph projection).

    Example:
        >>> tiny_hunyuan_image_transformer().config.text_embed_dim
        16
    """
    from diffusers import HunyuanImageTransformer2DModel

    return seeded_eval(
        seed,
        HunyuanImageTransformer2DModel,
        in_channels=4,
        out_channels=4,
        num_attention_heads=2,
        attention_head_dim=8,
        num_layers=num_layers,
        num_single_layers=num_single_layers,
        num_refiner_layers=1,
        patch_size=(1, 1),
        guidance_embeds=guidance_embeds,
        text_embed_dim=16,
        text_embed_2_dim=text_embed_2_dim,
        rope_axes_dim=(4, 4),
    )


def tiny_hunyuan_image_inputs(
    batch_size: int = 1, height: int = 4, width: int = 6, text_tokens: int = 8, padded_text: int = 3, seed: int = 0
) -> dict[str, Any]:
    """Keyword inputs of a bare ``HunyuanImageTransformer2DModel`` call (latent ``[B, 4, H, W]``, padded prompt).

    Example:
        >>> tiny_hunyuan_image_inputs()["encoder_attention_mask"].tolist()
        [[1.0, 1.0, 1.0, 1.0, 1.0, 0.0, 0.0, 0.0]]
    """
    generator = torch.Generator().manual_seed(seed)
    mask = torch.ones(batch_size, text_tokens)  # [B, T]
    if padded_text > 0:
        mask[:, text_tokens - padded_text :] = 0
    return {
        "hidden_states": torch.randn(batch_size, 4, height, width, generator=generator),
        "timestep": torch.full((batch_size,), 500.0),
        "encoder_hidden_states": torch.randn(batch_size, text_tokens, 16, generator=generator),
        "encoder_attention_mask": mask,
    }


def tiny_hunyuan_image_pipeline(num_layers: int = 3, seed: int = 0) -> Any:
    """A complete random-weight ``HunyuanImagePipeline``: tiny Qwen2.5-VL (width 16) with a byte-level tokenizer,
    tiny ByT5 (``ByT5Tokenizer``, T5 width 8), a two-level HunyuanImage VAE (compression 2, 4 latent channels) and the
    transformer; no guider (a single conditional call per step; set ``pipe.guider`` for guidance).

    A 32×48 image has a 16×24 latent and 16×24 = 384 image tokens.

    Example:
        >>> tiny_hunyuan_image_pipeline().vae_scale_factor
        2
    """
    from diffusers import AutoencoderKLHunyuanImage, FlowMatchEulerDiscreteScheduler, HunyuanImagePipeline
    from transformers import ByT5Tokenizer


    tokenizer = tiny_byte_level_tokenizer()
    text_encoder = tiny_qwen25vl_encoder(len(tokenizer), seed=seed + 1)
    tokenizer_2 = ByT5Tokenizer()
    text_encoder_2 = tiny_t5_encoder(len(tokenizer_2), d_model=8, seed=seed + 4)
    vae = seeded_eval(
        seed + 2,
        AutoencoderKLHunyuanImage,
        in_channels=3,
        out_channels=3,
        latent_channels=4,
        block_out_channels=(32, 32),
        layers_per_block=1,
        spatial_compression_ratio=2,
        sample_size=32,
        scaling_factor=0.75,
    )
    transformer = tiny_hunyuan_image_transformer(num_layers=num_layers, text_embed_2_dim=8, seed=seed + 3)
    return quiet_pipeline(
        HunyuanImagePipeline(
            scheduler=FlowMatchEulerDiscreteScheduler(),
            vae=vae,
            text_encoder=text_encoder,
            tokenizer=tokenizer,
            text_encoder_2=text_encoder_2,
            tokenizer_2=tokenizer_2,
            transformer=transformer,
        )
    )
