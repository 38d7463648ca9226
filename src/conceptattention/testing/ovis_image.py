"""Tiny random-weight Ovis-Image transformer, inputs and pipeline for :mod:`conceptattention.adapters.ovis_image`.

Example:
    >>> type(tiny_ovis_image_transformer()).__name__
    'OvisImageTransformer2DModel'
"""

from __future__ import annotations

from typing import Any

from .common import FLUX_FAMILY_GEOMETRY, flow_matching_pipeline, seeded_eval
from .flux import tiny_flux_vae
from .flux_like import FLUX_CLONE_AXES, flux_clone_inputs
from .text_encoders import tiny_byte_level_tokenizer, tiny_qwen3_text_encoder


def tiny_ovis_image_transformer(
    num_layers: int = 3, num_single_layers: int = 1, joint_attention_dim: int = 32, seed: int = 0
) -> Any:
    """A random-weight ``OvisImageTransformer2DModel`` (2 heads × 16, text width 32, eval mode).

    Example:
        >>> tiny_ovis_image_transformer().config.num_single_layers
        1
    """
    from diffusers import OvisImageTransformer2DModel

    return seeded_eval(
        seed,
        OvisImageTransformer2DModel,
        **FLUX_FAMILY_GEOMETRY,
        out_channels=4,
        num_layers=num_layers,
        num_single_layers=num_single_layers,
        joint_attention_dim=joint_attention_dim,
        axes_dims_rope=FLUX_CLONE_AXES,
    )


def tiny_ovis_image_inputs(
    batch_size: int = 1, height: int = 4, width: int = 6, text_tokens: int = 8, seed: int = 0
) -> dict[str, Any]:
    """Keyword inputs of a bare ``OvisImageTransformer2DModel`` call, text ids ``(0, i, i)`` as the pipeline's.

    Example:
        >>> tiny_ovis_image_inputs(batch_size=2)["hidden_states"].shape
        torch.Size([2, 24, 4])
    """
    return flux_clone_inputs(batch_size, height, width, text_tokens, seed, diagonal_text_ids=True)


#: Hidden size of the tiny Qwen3 text encoder of the Ovis-Image pipeline.
OVIS_TEXT_HIDDEN = 16


def tiny_ovis_image_pipeline(num_layers: int = 3, seed: int = 0) -> Any:
    """A complete random-weight ``OvisImagePipeline``: tiny two-layer ``Qwen3Model`` (width 16), byte-level tokenizer
    with a chat template, one-level VAE, transformer.

    A 32×32 image has a 16×16 latent and 8×8 = 64 image tokens.

    Example:
        >>> type(tiny_ovis_image_pipeline().text_encoder).__name__
        'Qwen3Model'
    """
    from diffusers import OvisImagePipeline

    tokenizer = tiny_byte_level_tokenizer()
    text_encoder = tiny_qwen3_text_encoder(tokenizer, OVIS_TEXT_HIDDEN, seed=seed + 1)
    vae = tiny_flux_vae(latent_channels=1, seed=seed + 2)
    transformer = tiny_ovis_image_transformer(num_layers=num_layers, joint_attention_dim=OVIS_TEXT_HIDDEN, seed=seed + 3)
    return flow_matching_pipeline(OvisImagePipeline, tokenizer, text_encoder, vae, transformer)
