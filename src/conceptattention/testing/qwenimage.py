"""Tiny random-weight Qwen-Image transformer, inputs and pipeline for :mod:`conceptattention.adapters.qwenimage`.

Example:
    >>> type(tiny_qwenimage_transformer()).__name__
    'QwenImageTransformer2DModel'
"""

from __future__ import annotations

from typing import Any

import torch

from .common import call_inputs, flow_matching_pipeline, padding_mask, seeded_eval
from .text_encoders import tiny_byte_level_tokenizer, tiny_qwen25vl_encoder


def tiny_qwenimage_transformer(num_layers: int = 3, zero_cond_t: bool = False, seed: int = 0) -> Any:
    """A random-weight ``QwenImageTransformer2DModel`` (3 heads × 16, text width 16, MSRoPE axes (8, 4, 4)).

    Example:
        >>> tiny_qwenimage_transformer().config.joint_attention_dim
        16
    """
    from diffusers import QwenImageTransformer2DModel

    return seeded_eval(
        seed,
        QwenImageTransformer2DModel,
        patch_size=2,
        in_channels=16,
        out_channels=4,
        num_layers=num_layers,
        attention_head_dim=16,
        num_attention_heads=3,
        joint_attention_dim=16,
        guidance_embeds=False,
        axes_dims_rope=(8, 4, 4),
        zero_cond_t=zero_cond_t,
    )


def tiny_qwenimage_inputs(
    batch_size: int = 1,
    height: int = 4,
    width: int = 6,
    text_tokens: int = 8,
    padded_text: int = 2,
    condition_shape: tuple[int, int, int] | None = None,
    seed: int = 0,
) -> dict[str, Any]:
    """Keyword inputs of a bare ``QwenImageTransformer2DModel`` call (``img_shapes`` per sample, padded prompt).

    Args:
        condition_shape: ``(frames, h, w)`` of an extra condition image appended to the image tokens (as the edit
            pipelines do); ``None`` for plain text-to-image.

    Example:
        >>> tiny_qwenimage_inputs()["hidden_states"].shape
        torch.Size([1, 24, 16])
    """
    shapes = [(1, height, width)] + ([condition_shape] if condition_shape is not None else [])
    num_image = sum(f * h * w for f, h, w in shapes)
    return call_inputs(
        seed,
        batch_size,
        {"hidden_states": (num_image, 16), "encoder_hidden_states": (text_tokens, 16)},
        0.5,
        encoder_hidden_states_mask=padding_mask(batch_size, text_tokens, padded_text, torch.long),
        img_shapes=[shapes] * batch_size,
    )


def tiny_qwenimage_pipeline(num_layers: int = 3, seed: int = 0) -> Any:
    """A complete random-weight ``QwenImagePipeline``: tiny Qwen2.5-VL, byte-level tokenizer, tiny Qwen-Image VAE.

    The VAE downsamples 4× (``vae_scale_factor`` 4): a 32×32 image has an 8×8 latent and 4×4 = 16 image tokens.

    Example:
        >>> tiny_qwenimage_pipeline().vae_scale_factor
        4
    """
    from diffusers import QwenImagePipeline

    tokenizer = tiny_byte_level_tokenizer()
    vae = tiny_qwenimage_vae(seed + 2)
    text_encoder = tiny_qwen25vl_encoder(len(tokenizer), seed=seed + 1)
    transformer = tiny_qwenimage_transformer(num_layers=num_layers, seed=seed + 3)
    return flow_matching_pipeline(QwenImagePipeline, tokenizer, text_encoder, vae, transformer)


def tiny_qwenimage_vae(seed: int = 0) -> Any:
    """A random ``AutoencoderKLQwenImage`` with 4 latent channels (8× spatial compression; Qwen-Image's and Krea 2's
    VAE), in eval mode.

    Example:
        >>> tiny_qwenimage_vae().config.z_dim
        4
    """
    from diffusers import AutoencoderKLQwenImage

    return seeded_eval(
        seed,
        AutoencoderKLQwenImage,
        base_dim=24,
        z_dim=4,
        dim_mult=[1, 2, 4],
        num_res_blocks=1,
        temperal_downsample=[False, True],
        latents_mean=[0.0] * 4,
        latents_std=[1.0] * 4,
    )
