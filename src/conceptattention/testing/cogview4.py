"""Tiny random-weight CogView4 transformer, inputs and pipeline for :mod:`conceptattention.adapters.cogview4`.

Example:
    >>> type(tiny_cogview4_transformer()).__name__
    'CogView4Transformer2DModel'
"""

from __future__ import annotations

from typing import Any

import torch

from .common import quiet_pipeline, seeded_eval, tiny_autoencoder_kl
from .text_encoders import tiny_byte_level_tokenizer


def tiny_cogview4_transformer(num_layers: int = 3, text_embed_dim: int = 16, seed: int = 0) -> Any:
    """A random-weight ``CogView4Transformer2DModel`` (2 heads × 8, patch 2, text width 16).

    Example:
        >>> tiny_cogview4_transformer().config.patch_size
        2
    """
    from diffusers import CogView4Transformer2DModel

    return seeded_eval(
        seed,
        CogView4Transformer2DModel,
        patch_size=2,
        in_channels=4,
        out_channels=4,
        num_layers=num_layers,
        attention_head_dim=8,
        num_attention_heads=2,
        text_embed_dim=text_embed_dim,
        time_embed_dim=8,
        condition_dim=4,
        pos_embed_max_size=16,
        sample_size=16,
        rope_axes_dim=(8, 8),
    )


def tiny_cogview4_inputs(
    batch_size: int = 1, height: int = 4, width: int = 6, text_tokens: int = 8, seed: int = 0
) -> dict[str, Any]:
    """Keyword inputs of a bare ``CogView4Transformer2DModel`` call on a ``height × width`` token grid (latent twice
    that size: patch 2), with the size conditioning the pipeline passes.

    Example:
        >>> tiny_cogview4_inputs()["hidden_states"].shape
        torch.Size([1, 4, 8, 12])
    """
    generator = torch.Generator().manual_seed(seed)
    size = torch.tensor([[height * 16.0, width * 16.0]]).repeat(batch_size, 1)  # [B, 2]
    return {
        "hidden_states": torch.randn(batch_size, 4, 2 * height, 2 * width, generator=generator),
        "encoder_hidden_states": torch.randn(batch_size, text_tokens, 16, generator=generator),
        "timestep": torch.full((batch_size,), 500.0),
        "original_size": size,
        "target_size": size,
        "crop_coords": torch.zeros(batch_size, 2),
        "return_dict": False,
    }


def tiny_cogview4_pipeline(num_layers: int = 3, seed: int = 0) -> Any:
    """A complete random-weight ``CogView4Pipeline``: tiny two-layer ``GlmModel`` (width 16), byte-level tokenizer
    that, like GLM-4's, prefixes ``[gMASK]<sop>`` and pads on the left, one-level VAE with 4 latent channels,
    transformer.

    A 32×48 image has a 32×48 latent and (patch 2) 16×24 = 384 image tokens.

    Example:
        >>> type(tiny_cogview4_pipeline().text_encoder).__name__
        'GlmModel'
    """
    from diffusers import CogView4Pipeline, FlowMatchEulerDiscreteScheduler
    from tokenizers.processors import TemplateProcessing
    from transformers import GlmConfig, GlmModel


    tokenizer = tiny_byte_level_tokenizer(special_tokens=("<|endoftext|>", "[gMASK]", "<sop>"), chat_template=None)
    prefix = [(token, tokenizer.convert_tokens_to_ids(token)) for token in ("[gMASK]", "<sop>")]
    tokenizer._tokenizer.post_processor = TemplateProcessing(
        single="[gMASK] <sop> $A", pair="[gMASK] <sop> $A $B", special_tokens=prefix
    )
    tokenizer.padding_side = "left"
    text_encoder = seeded_eval(
        seed + 1,
        GlmModel,
        GlmConfig(
            vocab_size=len(tokenizer),
            hidden_size=16,
            intermediate_size=32,
            num_hidden_layers=2,
            num_attention_heads=2,
            num_key_value_heads=2,
            head_dim=8,
            max_position_embeddings=512,
            pad_token_id=0,
        ),
    )
    vae = tiny_autoencoder_kl(latent_channels=4, seed=seed + 2)
    transformer = tiny_cogview4_transformer(num_layers=num_layers, seed=seed + 3)
    return quiet_pipeline(
        CogView4Pipeline(
            tokenizer=tokenizer,
            text_encoder=text_encoder,
            vae=vae,
            transformer=transformer,
            scheduler=FlowMatchEulerDiscreteScheduler(),
        )
    )
