"""Tiny random-weight Bria-Fibo transformer, inputs and pipeline for :mod:`conceptattention.adapters.bria_fibo`.

Example:
    >>> type(tiny_bria_fibo_transformer()).__name__
    'BriaFiboTransformer2DModel'
"""

from __future__ import annotations

from typing import Any

import torch

from .common import FLUX_FAMILY_GEOMETRY, flow_matching_pipeline, seeded_eval
from .flux_like import FLUX_CLONE_AXES, flux_clone_inputs
from .text_encoders import tiny_byte_level_tokenizer


#: Text widths of the tiny Bria-Fibo: one SmolLM3 hidden layer (``text_encoder_dim``) and ``encoder_hidden_states``
#: (the last two layers concatenated, ``joint_attention_dim``).
BRIA_FIBO_TEXT_DIM = 8
BRIA_FIBO_JOINT_DIM = 2 * BRIA_FIBO_TEXT_DIM


def tiny_bria_fibo_transformer(num_layers: int = 3, num_single_layers: int = 1, seed: int = 0) -> Any:
    """A random-weight ``BriaFiboTransformer2DModel`` (2 heads × 16, text widths 16 and 8, eval mode).

    Example:
        >>> len(tiny_bria_fibo_transformer().caption_projection)
        4
    """
    from diffusers import BriaFiboTransformer2DModel

    return seeded_eval(
        seed,
        BriaFiboTransformer2DModel,
        **FLUX_FAMILY_GEOMETRY,
        num_layers=num_layers,
        num_single_layers=num_single_layers,
        joint_attention_dim=BRIA_FIBO_JOINT_DIM,
        text_encoder_dim=BRIA_FIBO_TEXT_DIM,
        axes_dims_rope=list(FLUX_CLONE_AXES),
    )


def tiny_bria_fibo_inputs(
    batch_size: int = 1, height: int = 4, width: int = 6, text_tokens: int = 8, num_blocks: int = 4, seed: int = 0
) -> dict[str, Any]:
    """Keyword inputs of a bare ``BriaFiboTransformer2DModel`` call: FLUX.1's tiny inputs without pooled text, text
    ids all zero, a 0-1000 timestep and one ``[B, T, 8]`` text-encoder layer per block (``num_blocks``).

    Example:
        >>> inputs = tiny_bria_fibo_inputs()
        >>> len(inputs["text_encoder_layers"]), tuple(inputs["encoder_hidden_states"].shape)
        (4, (1, 8, 16))
    """
    inputs = flux_clone_inputs(batch_size, height, width, text_tokens, seed, diagonal_text_ids=False)
    generator = torch.Generator().manual_seed(seed + 100)
    inputs["encoder_hidden_states"] = torch.randn(batch_size, text_tokens, BRIA_FIBO_JOINT_DIM, generator=generator)
    inputs["text_encoder_layers"] = [
        torch.randn(batch_size, text_tokens, BRIA_FIBO_TEXT_DIM, generator=generator) for _ in range(num_blocks)
    ]
    inputs["timestep"] = inputs["timestep"] * 1000  # BriaFiboPipeline passes the scheduler's 0-1000 timesteps
    return inputs


def tiny_bria_fibo_pipeline(num_layers: int = 3, seed: int = 0) -> Any:
    """A complete random-weight ``BriaFiboPipeline``: tiny four-layer ``SmolLM3ForCausalLM`` (width 8, vocabulary
    large enough for the pipeline's empty-prompt token 128000), byte-level tokenizer, tiny Wan VAE (4 latent
    channels), transformer with 3 double and 1 single block (the pipeline hands them the last 4 of the 5 hidden
    states).

    The pipeline's ``vae_scale_factor`` is 16: a 64×96 image has a 4×6 latent and 24 image tokens (no patching).

    Example:
        >>> type(tiny_bria_fibo_pipeline()).__name__
        'BriaFiboPipeline'
    """
    from diffusers import AutoencoderKLWan, BriaFiboPipeline
    from transformers import SmolLM3Config, SmolLM3ForCausalLM

    tokenizer = tiny_byte_level_tokenizer(chat_template=None)
    config = SmolLM3Config(
        vocab_size=128256,
        hidden_size=BRIA_FIBO_TEXT_DIM,
        intermediate_size=16,
        num_hidden_layers=4,
        num_attention_heads=2,
        num_key_value_heads=2,
        max_position_embeddings=256,
        pad_token_id=tokenizer.pad_token_id,
    )
    text_encoder = seeded_eval(seed + 1, SmolLM3ForCausalLM, config)
    vae = seeded_eval(
        seed + 2,
        AutoencoderKLWan,
        base_dim=8,
        z_dim=4,
        dim_mult=[1, 1],
        num_res_blocks=1,
        temperal_downsample=[False],
        latents_mean=[0.0] * 4,
        latents_std=[1.0] * 4,
    )
    transformer = tiny_bria_fibo_transformer(num_layers=num_layers, seed=seed + 3)
    return flow_matching_pipeline(BriaFiboPipeline, tokenizer, text_encoder, vae, transformer)
