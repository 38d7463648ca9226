"""Tiny random-weight Chroma transformer, inputs and pipeline for :mod:`conceptattention.adapters.chroma`.

Example:
    >>> type(tiny_chroma_transformer()).__name__
    'ChromaTransformer2DModel'
"""

from __future__ import annotations

from typing import Any

import torch

from .common import FLUX_FAMILY_GEOMETRY, flow_matching_pipeline, padding_mask, seeded_eval
from .flux import tiny_flux_inputs, tiny_flux_vae
from .text_encoders import tiny_t5


def tiny_chroma_transformer(num_layers: int = 3, num_single_layers: int = 1, seed: int = 0) -> Any:
    """A random-weight ``ChromaTransformer2DModel`` (2 heads × 16, T5 width 32, approximator 16 → 32, eval mode).

    Example:
        >>> tiny_chroma_transformer().config.num_layers
        3
    """
    from diffusers import ChromaTransformer2DModel

    return seeded_eval(
        seed,
        ChromaTransformer2DModel,
        **FLUX_FAMILY_GEOMETRY,
        num_layers=num_layers,
        num_single_layers=num_single_layers,
        joint_attention_dim=32,
        axes_dims_rope=(4, 4, 8),
        approximator_num_channels=16,
        approximator_hidden_dim=32,
        approximator_layers=1,
    )


def tiny_chroma_inputs(
    batch_size: int = 1, height: int = 4, width: int = 6, text_tokens: int = 8, padded_text: int = 3, seed: int = 0
) -> dict[str, Any]:
    """Keyword inputs of a bare ``ChromaTransformer2DModel`` call, with a padded prompt and its attention mask.

    The mask is built like ``ChromaPipeline``'s: the last ``padded_text`` text tokens are padding, except the first
    padding token, which stays visible; image tokens are always visible.

    Example:
        >>> tiny_chroma_inputs()["attention_mask"].shape
        torch.Size([1, 32])
    """
    # FLUX.1's inputs without the pooled vector (drawn last, so the other tensors are those of the same seed)
    inputs = tiny_flux_inputs(batch_size, height, width, text_tokens, seed=seed)
    del inputs["pooled_projections"]
    text_mask = padding_mask(batch_size, text_tokens, padded_text - 1, torch.bool)  # [B, T]
    image_mask = torch.ones(batch_size, height * width, dtype=torch.bool)  # [B, I]
    inputs["attention_mask"] = torch.cat([text_mask, image_mask], dim=1)  # [B, T + I]
    return inputs


def tiny_chroma_pipeline(num_layers: int = 3, seed: int = 0) -> Any:
    """A complete random-weight ``ChromaPipeline``: tiny T5 (in-memory tokenizer), one-level VAE, transformer.

    A 32×32 image has a 16×16 latent and 8×8 = 64 image tokens.

    Example:
        >>> tiny_chroma_pipeline().vae_scale_factor
        1
    """
    from diffusers import ChromaPipeline

    tokenizer, text_encoder = tiny_t5(32, seed + 1)
    vae = tiny_flux_vae(latent_channels=1, seed=seed + 2)
    transformer = tiny_chroma_transformer(num_layers=num_layers, seed=seed + 3)
    return flow_matching_pipeline(ChromaPipeline, tokenizer, text_encoder, vae, transformer)
