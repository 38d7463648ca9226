"""Tiny random-weight HunyuanVideo 1.5 transformer, inputs and pipeline for :mod:`conceptattention.adapters.hunyuan_video15`.

Example:
    >>> type(tiny_hunyuan_video15_transformer()).__name__
    'HunyuanVideo15Transformer3DModel'
"""

from __future__ import annotations

import warnings
from typing import Any

import torch

from .common import quiet_pipeline, seeded_eval
from .text_encoders import tiny_byte_level_tokenizer, tiny_t5_encoder


def tiny_hunyuan_video15_transformer(num_layers: int = 3, in_channels: int = 4, seed: int = 0) -> Any:
    """A random-weight ``HunyuanVideo15Transformer3DModel`` (2 heads × 8, one refiner layer, Qwen width 16, ByT5
    width 8, image-embedding width 8, patch 1; the pipeline needs ``in_channels = 2 · latent channels + 1``).

    Example:
        >>> tiny_hunyuan_video15_transformer().config.num_layers
        3
    """
    from diffusers import HunyuanVideo15Transformer3DModel

    return seeded_eval(
        seed,
        HunyuanVideo15Transformer3DModel,
        in_channels=in_channels,
        out_channels=4,
        num_attention_heads=2,
        attention_head_dim=8,
        num_layers=num_layers,
        num_refiner_layers=1,
        text_embed_dim=16,
        text_embed_2_dim=8,
        image_embed_dim=8,
        rope_axes_dim=(2, 2, 4),
        target_size=32,
    )


def tiny_hunyuan_video15_pipeline(num_layers: int = 3, seed: int = 0) -> Any:
    """A complete random-weight ``HunyuanVideo15Pipeline``: tiny three-layer ``Qwen2_5_VLTextModel`` (width 16) with a
    byte-level chat tokenizer, tiny ByT5, a two-level HunyuanVideo 1.5 VAE (compression 2 in space and time, 4 latent
    channels), the transformer and a ``ClassifierFreeGuidance`` guider at scale 1 (one call per step).

    A 5-frame 32×32 video has a 3×16×16 latent and 768 video tokens.

    Example:
        >>> tiny_hunyuan_video15_pipeline().vae_scale_factor_spatial
        2
    """
    from diffusers import (
        AutoencoderKLHunyuanVideo15,
        ClassifierFreeGuidance,
        FlowMatchEulerDiscreteScheduler,
        HunyuanVideo15Pipeline,
    )
    from transformers import ByT5Tokenizer, Qwen2_5_VLTextConfig, Qwen2_5_VLTextModel


    tokenizer = tiny_byte_level_tokenizer()
    text_config = Qwen2_5_VLTextConfig(
        hidden_size=16,
        intermediate_size=16,
        num_hidden_layers=3,  # the pipeline reads the third layer from the end
        num_attention_heads=2,
        num_key_value_heads=2,
        vocab_size=len(tokenizer),
        rope_scaling={"mrope_section": [1, 1, 2], "rope_type": "default", "type": "default"},
        pad_token_id=0,
    )
    text_encoder = seeded_eval(seed + 1, Qwen2_5_VLTextModel, text_config)
    tokenizer_2 = ByT5Tokenizer()
    text_encoder_2 = tiny_t5_encoder(len(tokenizer_2), d_model=8, seed=seed + 4)
    vae = seeded_eval(
        seed + 2,
        AutoencoderKLHunyuanVideo15,
        latent_channels=4,
        block_out_channels=(32, 32),
        layers_per_block=1,
        spatial_compression_ratio=2,
        temporal_compression_ratio=2,
    )
    transformer = tiny_hunyuan_video15_transformer(num_layers=num_layers, in_channels=9, seed=seed + 3)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Guiders are currently an experimental feature")
        guider = ClassifierFreeGuidance(guidance_scale=1.0)
    return quiet_pipeline(
        HunyuanVideo15Pipeline(
            text_encoder=text_encoder,
            tokenizer=tokenizer,
            transformer=transformer,
            vae=vae,
            scheduler=FlowMatchEulerDiscreteScheduler(),
            text_encoder_2=text_encoder_2,
            tokenizer_2=tokenizer_2,
            guider=guider,
        )
    )


def tiny_hunyuan_video15_inputs(
    batch_size: int = 1,
    frames: int = 2,
    height: int = 3,
    width: int = 4,
    text_tokens: int = 8,
    padded_text: int = 3,
    glyph_tokens: int = 4,
    image_tokens: int = 2,
    image_to_video: bool = False,
    seed: int = 0,
) -> dict[str, Any]:
    """Keyword inputs of a bare ``HunyuanVideo15Transformer3DModel`` call (latent video ``[B, 4, F, H, W]``): a padded
    prompt, a half-padded ByT5 glyph prompt and SigLIP image embeddings (zeros for text-to-video, as the pipeline).

    Example:
        >>> tiny_hunyuan_video15_inputs()["hidden_states"].shape
        torch.Size([1, 4, 2, 3, 4])
    """
    generator = torch.Generator().manual_seed(seed)
    mask = torch.ones(batch_size, text_tokens)  # [B, T]
    if padded_text > 0:
        mask[:, text_tokens - padded_text :] = 0
    glyph_mask = torch.ones(batch_size, glyph_tokens)  # [B, T2]
    glyph_mask[:, glyph_tokens // 2 :] = 0
    inputs = {
        "hidden_states": torch.randn(batch_size, 4, frames, height, width, generator=generator),
        "timestep": torch.full((batch_size,), 500.0),
        "encoder_hidden_states": torch.randn(batch_size, text_tokens, 16, generator=generator),
        "encoder_attention_mask": mask,
        "encoder_hidden_states_2": torch.randn(batch_size, glyph_tokens, 8, generator=generator),
        "encoder_attention_mask_2": glyph_mask,
        "image_embeds": torch.randn(batch_size, image_tokens, 8, generator=generator),
        "return_dict": False,
    }
    if not image_to_video:
        inputs["image_embeds"] = torch.zeros_like(inputs["image_embeds"])
    return inputs
