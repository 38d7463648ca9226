"""Tiny random-weight Krea 2 transformer, inputs and pipeline for :mod:`conceptattention.adapters.krea2`.

Example:
    >>> type(tiny_krea2_transformer()).__name__
    'Krea2Transformer2DModel'
"""

from __future__ import annotations

from typing import Any

import torch

from .common import quiet_pipeline, seeded_eval
from .qwenimage import tiny_qwenimage_vae
from .text_encoders import tiny_byte_level_tokenizer, tiny_qwen3vl_config


#: Tapped text layers and their width in the tiny Krea 2 (concept embeddings are ``[C, 2·16]``).
KREA2_TEXT_LAYERS, KREA2_TEXT_DIM = 2, 16


def tiny_krea2_transformer(num_layers: int = 3, in_channels: int = 4, seed: int = 0) -> Any:
    """A random-weight ``Krea2Transformer2DModel`` (4 query heads × 8 over 2 key/value heads, width 32, ``in_channels``
    packed latent channels, 2 tapped text layers of width 16, eval mode). The zero-initialised scale tables and norm weights are
    randomised so that every modulation and norm matters in tests.

    Example:
        >>> len(tiny_krea2_transformer().transformer_blocks)
        3
    """
    from diffusers import Krea2Transformer2DModel

    model = seeded_eval(
        seed,
        Krea2Transformer2DModel,
        in_channels=in_channels,
        num_layers=num_layers,
        attention_head_dim=8,
        num_attention_heads=4,
        num_key_value_heads=2,
        intermediate_size=48,
        timestep_embed_dim=16,
        text_hidden_dim=KREA2_TEXT_DIM,
        num_text_layers=KREA2_TEXT_LAYERS,
        text_num_attention_heads=2,
        text_num_key_value_heads=2,
        text_intermediate_size=32,
        num_layerwise_text_blocks=1,
        num_refiner_text_blocks=1,
        axes_dims_rope=(2, 2, 4),
    )
    generator = torch.Generator().manual_seed(seed + 100)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if name.endswith("scale_shift_table") or parameter.ndim == 1 and "norm" in name:
                parameter.copy_(0.3 * torch.randn(parameter.shape, generator=generator))
    return model


def tiny_krea2_inputs(
    batch_size: int = 1, height: int = 4, width: int = 6, text_tokens: int = 8, seed: int = 0
) -> dict[str, Any]:
    """Keyword inputs of a bare ``Krea2Transformer2DModel`` call, as ``Krea2Pipeline`` passes them (text ids zero,
    image ids ``(0, h, w)``); the last two text tokens of sample 1 are padding (``encoder_attention_mask``).

    Example:
        >>> tiny_krea2_inputs(batch_size=2)["encoder_hidden_states"].shape
        torch.Size([2, 8, 2, 16])
    """
    from diffusers import Krea2Pipeline

    generator = torch.Generator().manual_seed(seed)
    mask = torch.ones(batch_size, text_tokens, dtype=torch.bool)  # [B, T]
    if batch_size > 1:
        mask[1, -2:] = False
    return {
        "hidden_states": torch.randn(batch_size, height * width, 4, generator=generator),
        "encoder_hidden_states": torch.randn(
            batch_size, text_tokens, KREA2_TEXT_LAYERS, KREA2_TEXT_DIM, generator=generator
        ),
        "timestep": torch.linspace(0.3, 0.7, batch_size),
        "position_ids": Krea2Pipeline.prepare_position_ids(text_tokens, height, width, torch.device("cpu")),
        "encoder_attention_mask": mask,
        "return_dict": False,
    }


def tiny_krea2_pipeline(num_layers: int = 3, seed: int = 0) -> Any:
    """A complete random-weight ``Krea2Pipeline``: tiny two-layer ``Qwen3VLModel`` (width 16; both layers tapped),
    byte-level tokenizer, tiny Qwen-Image VAE (4 latent channels, ``vae_scale_factor`` 4), transformer on 2×2 packed
    latents (16 channels).

    A 32×48 image has an 8×12 latent and 4×6 = 24 image tokens.

    Example:
        >>> tiny_krea2_pipeline().text_encoder_select_layers
        (1, 2)
    """
    from diffusers import FlowMatchEulerDiscreteScheduler, Krea2Pipeline
    from transformers import Qwen3VLModel

    tokenizer = tiny_byte_level_tokenizer()
    vocab = len(tokenizer)
    config = tiny_qwen3vl_config(vocab, KREA2_TEXT_DIM, KREA2_TEXT_LAYERS)
    text_encoder = seeded_eval(seed + 1, Qwen3VLModel, config)
    vae = tiny_qwenimage_vae(seed + 2)
    transformer = tiny_krea2_transformer(num_layers=num_layers, in_channels=16, seed=seed + 3)
    return quiet_pipeline(
        Krea2Pipeline(
            scheduler=FlowMatchEulerDiscreteScheduler(),
            vae=vae,
            text_encoder=text_encoder,
            tokenizer=tokenizer,
            transformer=transformer,
            text_encoder_select_layers=(1, 2),
        )
    )
