"""Tiny random-weight Bria transformer, inputs and pipeline for :mod:`conceptattention.adapters.bria`.

Example:
    >>> type(tiny_bria_transformer()).__name__
    'BriaTransformer2DModel'
"""

from __future__ import annotations

from typing import Any

from .common import FLUX_FAMILY_GEOMETRY, flow_matching_pipeline, seeded_eval
from .flux import tiny_flux_vae
from .flux_like import FLUX_CLONE_AXES, flux_clone_inputs
from .text_encoders import tiny_t5


def tiny_bria_transformer(num_layers: int = 3, num_single_layers: int = 1, seed: int = 0) -> Any:
    """A random-weight ``BriaTransformer2DModel`` (2 heads × 16, T5 width 32, eval mode).

    Example:
        >>> tiny_bria_transformer(num_layers=2).config.num_layers
        2
    """
    from diffusers import BriaTransformer2DModel

    return seeded_eval(
        seed,
        BriaTransformer2DModel,
        **FLUX_FAMILY_GEOMETRY,
        num_layers=num_layers,
        num_single_layers=num_single_layers,
        joint_attention_dim=32,
        axes_dims_rope=FLUX_CLONE_AXES,
    )


def tiny_bria_inputs(
    batch_size: int = 1, height: int = 4, width: int = 6, text_tokens: int = 8, seed: int = 0
) -> dict[str, Any]:
    """Keyword inputs of a bare ``BriaTransformer2DModel`` call (text ids all zero, as ``BriaPipeline``'s).

    Example:
        >>> sorted(tiny_bria_inputs())
        ['encoder_hidden_states', 'hidden_states', 'img_ids', 'return_dict', 'timestep', 'txt_ids']
    """
    return flux_clone_inputs(batch_size, height, width, text_tokens, seed, diagonal_text_ids=False)


def tiny_bria_pipeline(num_layers: int = 3, seed: int = 0) -> Any:
    """A complete random-weight ``BriaPipeline``: tiny T5 (in-memory tokenizer), one-level VAE, transformer.

    A 32×32 image has a 16×16 latent and 8×8 = 64 image tokens.

    Example:
        >>> type(tiny_bria_pipeline()).__name__
        'BriaPipeline'
    """
    from diffusers import BriaPipeline

    tokenizer, text_encoder = tiny_t5(32, seed + 1)
    vae = tiny_flux_vae(latent_channels=1, seed=seed + 2)
    transformer = tiny_bria_transformer(num_layers=num_layers, seed=seed + 3)
    return flow_matching_pipeline(BriaPipeline, tokenizer, text_encoder, vae, transformer)
