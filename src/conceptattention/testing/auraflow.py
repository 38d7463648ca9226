"""Tiny random-weight AuraFlow transformer, inputs and pipeline for :mod:`conceptattention.adapters.auraflow`.

Example:
    >>> type(tiny_auraflow_transformer()).__name__
    'AuraFlowTransformer2DModel'
"""

from __future__ import annotations

from typing import Any

from .common import call_inputs, flow_matching_pipeline, seeded_eval
from .flux import tiny_flux_vae
from .text_encoders import tiny_t5


def tiny_auraflow_transformer(num_layers: int = 3, num_single_layers: int = 1, seed: int = 0) -> Any:
    """A random-weight ``AuraFlowTransformer2DModel`` (4 heads × 8, text width 32, patch 2, 16×16 position grid).

    Example:
        >>> tiny_auraflow_transformer().config.num_mmdit_layers
        3
    """
    from diffusers import AuraFlowTransformer2DModel

    return seeded_eval(
        seed,
        AuraFlowTransformer2DModel,
        sample_size=32,
        patch_size=2,
        in_channels=4,
        num_mmdit_layers=num_layers,
        num_single_dit_layers=num_single_layers,
        attention_head_dim=8,
        num_attention_heads=4,
        caption_projection_dim=32,
        joint_attention_dim=32,
        out_channels=4,
        pos_embed_max_size=256,
    )


def tiny_auraflow_inputs(
    batch_size: int = 1, height: int = 8, width: int = 12, text_tokens: int = 8, seed: int = 0
) -> dict[str, Any]:
    """Keyword inputs of a bare ``AuraFlowTransformer2DModel`` call (latent ``[B, 4, H, W]``, patch 2).

    Example:
        >>> tiny_auraflow_inputs()["hidden_states"].shape
        torch.Size([1, 4, 8, 12])
    """
    shapes = {"hidden_states": (4, height, width), "encoder_hidden_states": (text_tokens, 32)}
    return call_inputs(seed, batch_size, shapes, 0.5)


def tiny_auraflow_pipeline(num_layers: int = 3, seed: int = 0) -> Any:
    """A complete random-weight ``AuraFlowPipeline``: tiny UMT5 (in-memory T5 tokenizer), one-level VAE, transformer.

    ``vae_scale_factor`` is 1 and the patch size 2: a 16×16 image has 8×8 = 64 image tokens.

    Example:
        >>> tiny_auraflow_pipeline().transformer.config.patch_size
        2
    """
    from diffusers import AuraFlowPipeline

    tokenizer, text_encoder = tiny_t5(32, seed + 1, umt5=True)
    vae = tiny_flux_vae(latent_channels=4, seed=seed + 2)
    transformer = tiny_auraflow_transformer(num_layers=num_layers, seed=seed + 3)
    return flow_matching_pipeline(AuraFlowPipeline, tokenizer, text_encoder, vae, transformer)
