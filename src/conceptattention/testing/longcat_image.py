"""Tiny random-weight LongCat-Image transformer, inputs and pipeline for :mod:`conceptattention.adapters.longcat_image`.

Example:
    >>> type(tiny_longcat_image_transformer()).__name__
    'LongCatImageTransformer2DModel'
"""

from __future__ import annotations

from typing import Any

from .common import FLUX_FAMILY_GEOMETRY, quiet_pipeline, seeded_eval
from .flux import tiny_flux_vae
from .flux_like import FLUX_CLONE_AXES, flux_clone_inputs
from .text_encoders import tiny_byte_level_tokenizer, tiny_qwen25vl_encoder


def tiny_longcat_image_transformer(
    num_layers: int = 3, num_single_layers: int = 1, joint_attention_dim: int = 32, in_channels: int = 4, seed: int = 0
) -> Any:
    """A random-weight ``LongCatImageTransformer2DModel`` (2 heads × 16, text width 32, eval mode).

    Example:
        >>> tiny_longcat_image_transformer().config.joint_attention_dim
        32
    """
    from diffusers import LongCatImageTransformer2DModel

    return seeded_eval(
        seed,
        LongCatImageTransformer2DModel,
        **{**FLUX_FAMILY_GEOMETRY, "in_channels": in_channels},
        num_layers=num_layers,
        num_single_layers=num_single_layers,
        joint_attention_dim=joint_attention_dim,
        pooled_projection_dim=joint_attention_dim,
        axes_dims_rope=list(FLUX_CLONE_AXES),
    )


def tiny_longcat_image_inputs(
    batch_size: int = 1, height: int = 4, width: int = 6, text_tokens: int = 8, seed: int = 0
) -> dict[str, Any]:
    """Keyword inputs of a bare ``LongCatImageTransformer2DModel`` call, text ids ``(0, i, i)`` as the pipeline's.

    Example:
        >>> tiny_longcat_image_inputs()["txt_ids"][2].tolist()
        [0.0, 2.0, 2.0]
    """
    return flux_clone_inputs(batch_size, height, width, text_tokens, seed, diagonal_text_ids=True)


def tiny_longcat_image_pipeline(num_layers: int = 3, seed: int = 0) -> Any:
    """A complete random-weight ``LongCatImagePipeline``: tiny Qwen2.5-VL (width 16), byte-level tokenizer, one-level
    VAE with the 16 latent channels the pipeline hard-codes, transformer. No ``text_processor``: call the pipeline
    with ``enable_prompt_rewrite=False`` (rewriting generates text with the encoder).

    A 32×32 image has a 16×16 latent and 8×8 = 64 image tokens; prompts are padded to 512 tokens, as the pipeline's.

    Example:
        >>> tiny_longcat_image_pipeline().transformer.config.in_channels
        64
    """
    from diffusers import FlowMatchEulerDiscreteScheduler, LongCatImagePipeline

    tokenizer = tiny_byte_level_tokenizer()
    text_encoder = tiny_qwen25vl_encoder(len(tokenizer), seed=seed + 1)
    vae = tiny_flux_vae(latent_channels=16, seed=seed + 2)
    transformer = tiny_longcat_image_transformer(
        num_layers=num_layers, joint_attention_dim=16, in_channels=64, seed=seed + 3
    )
    return quiet_pipeline(
        LongCatImagePipeline(
            scheduler=FlowMatchEulerDiscreteScheduler(),
            vae=vae,
            text_encoder=text_encoder,
            tokenizer=tokenizer,
            text_processor=None,
            transformer=transformer,
        )
    )
