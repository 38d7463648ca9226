"""Tiny random-weight HunyuanVideo transformer, inputs and pipeline for :mod:`conceptattention.adapters.hunyuan_video`.

Example:
    >>> type(tiny_hunyuan_video_transformer()).__name__
    'HunyuanVideoTransformer3DModel'
"""

from __future__ import annotations

from typing import Any

import torch

from .common import call_inputs, padding_mask, quiet_pipeline, seeded_eval
from .text_encoders import tiny_byte_level_tokenizer, tiny_clip


def tiny_hunyuan_video_transformer(num_layers: int = 3, num_single_layers: int = 1, seed: int = 0) -> Any:
    """A random-weight ``HunyuanVideoTransformer3DModel`` (2 heads × 10, one refiner layer, text 16, pooled 8).

    Example:
        >>> tiny_hunyuan_video_transformer().config.text_embed_dim
        16
    """
    from diffusers import HunyuanVideoTransformer3DModel

    return seeded_eval(
        seed,
        HunyuanVideoTransformer3DModel,
        in_channels=4,
        out_channels=4,
        num_attention_heads=2,
        attention_head_dim=10,
        num_layers=num_layers,
        num_single_layers=num_single_layers,
        num_refiner_layers=1,
        patch_size=1,
        patch_size_t=1,
        guidance_embeds=True,
        text_embed_dim=16,
        pooled_projection_dim=8,
        rope_axes_dim=(2, 4, 4),
    )


def tiny_hunyuan_video_inputs(
    batch_size: int = 1,
    frames: int = 2,
    height: int = 3,
    width: int = 4,
    text_tokens: int = 8,
    padded_text: int = 3,
    seed: int = 0,
) -> dict[str, Any]:
    """Keyword inputs of a bare ``HunyuanVideoTransformer3DModel`` call (latent video ``[B, 4, F, H, W]``).

    Example:
        >>> tiny_hunyuan_video_inputs()["hidden_states"].shape
        torch.Size([1, 4, 2, 3, 4])
    """
    shapes = {
        "hidden_states": (4, frames, height, width),
        "encoder_hidden_states": (text_tokens, 16),
        "pooled_projections": (8,),
    }
    return call_inputs(
        seed,
        batch_size,
        shapes,
        500.0,
        encoder_attention_mask=padding_mask(batch_size, text_tokens, padded_text, torch.float32),
        guidance=torch.full((batch_size,), 6000.0),
    )


#: Special tokens of the tiny Llama-style tokenizer (those of HunyuanVideo's prompt template).
LLAMA_SPECIAL_TOKENS = (
    "<|end_of_text|>",
    "<|begin_of_text|>",
    "<|start_header_id|>",
    "<|end_header_id|>",
    "<|eot_id|>",
)


def tiny_hunyuan_video_pipeline(num_layers: int = 3, seed: int = 0) -> Any:
    """A complete random-weight ``HunyuanVideoPipeline``: tiny Llama + CLIP, in-memory tokenizers, tiny video VAE.

    The VAE compresses 8× in space and 4× in time: 16×16 pixels and 9 frames give a 3 × 2 × 2 latent video.

    Example:
        >>> tiny_hunyuan_video_pipeline().vae_scale_factor_temporal
        4
    """
    from diffusers import AutoencoderKLHunyuanVideo, FlowMatchEulerDiscreteScheduler, HunyuanVideoPipeline
    from transformers import LlamaConfig, LlamaModel

    tokenizer = tiny_byte_level_tokenizer(special_tokens=LLAMA_SPECIAL_TOKENS, chat_template=None)
    llama = seeded_eval(
        seed + 1,
        LlamaModel,
        LlamaConfig(
            vocab_size=len(tokenizer),
            hidden_size=16,
            intermediate_size=37,
            num_hidden_layers=3,
            num_attention_heads=4,
            pad_token_id=0,
            bos_token_id=1,
            eos_token_id=0,
            max_position_embeddings=2048,
        ),
    )
    clip_tokenizer, clip = tiny_clip(8, seed + 2)
    vae = seeded_eval(
        seed + 3,
        AutoencoderKLHunyuanVideo,
        in_channels=3,
        out_channels=3,
        latent_channels=4,
        down_block_types=("HunyuanVideoDownBlock3D",) * 4,
        up_block_types=("HunyuanVideoUpBlock3D",) * 4,
        block_out_channels=(8, 8, 8, 8),
        layers_per_block=1,
        act_fn="silu",
        norm_num_groups=4,
        scaling_factor=0.476986,
        spatial_compression_ratio=8,
        temporal_compression_ratio=4,
        mid_block_add_attention=True,
    )
    return quiet_pipeline(
        HunyuanVideoPipeline(
            text_encoder=llama,
            tokenizer=tokenizer,
            transformer=tiny_hunyuan_video_transformer(num_layers=num_layers, seed=seed + 4),
            vae=vae,
            scheduler=FlowMatchEulerDiscreteScheduler(shift=7.0),
            text_encoder_2=clip,
            tokenizer_2=clip_tokenizer,
        )
    )
