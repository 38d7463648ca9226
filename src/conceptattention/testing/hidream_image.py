"""Tiny random-weight HiDream-I1 transformer, inputs and pipeline for :mod:`conceptattention.adapters.hidream_image`.

Example:
    >>> type(tiny_hidream_image_transformer()).__name__
    'HiDreamImageTransformer2DModel'
"""

from __future__ import annotations

from typing import Any

import torch

from .common import quiet_pipeline, seeded_eval
from .flux import tiny_flux_vae
from .text_encoders import tiny_byte_level_tokenizer, tiny_clip, tiny_t5


#: Text widths of the tiny HiDream-I1: T5 states, one Llama hidden layer, the pooled CLIP-L + CLIP-G vector.
HIDREAM_T5_DIM = 16
HIDREAM_LLAMA_DIM = 8
HIDREAM_POOLED_DIM = 16
#: Llama hidden layers of the tiny Llama (the model taps all of them: one per block).
HIDREAM_LLAMA_LAYERS = 4


def tiny_hidream_image_transformer(num_layers: int = 3, num_single_layers: int = 1, seed: int = 0) -> Any:
    """A random-weight ``HiDreamImageTransformer2DModel`` (2 heads × 16, patch 2, two routed experts, Llama layers
    ``0..num_layers + num_single_layers - 1``, one per block; eval mode).

    Example:
        >>> tiny_hidream_image_transformer().config.llama_layers
        [0, 1, 2, 3]
    """
    from diffusers import HiDreamImageTransformer2DModel

    return seeded_eval(
        seed,
        HiDreamImageTransformer2DModel,
        patch_size=2,
        in_channels=4,
        num_layers=num_layers,
        num_single_layers=num_single_layers,
        attention_head_dim=16,
        num_attention_heads=2,
        caption_channels=[HIDREAM_T5_DIM, HIDREAM_LLAMA_DIM],
        text_emb_dim=HIDREAM_POOLED_DIM,
        num_routed_experts=2,
        num_activated_experts=1,
        axes_dims_rope=(8, 4, 4),
        max_resolution=(16, 16),
        llama_layers=list(range(num_layers + num_single_layers)),
    )


def tiny_hidream_image_inputs(
    batch_size: int = 1, size: int = 8, t5_tokens: int = 6, llama_tokens: int = 5, seed: int = 0
) -> dict[str, Any]:
    """Keyword inputs of a bare ``HiDreamImageTransformer2DModel`` call: square latents ``[B, 4, size, size]`` (the
    model patchifies them: ``(size/2)²`` tokens), a 0-1000 timestep, T5 states, the stacked Llama hidden layers
    ``[L, B, T, 8]`` and the pooled CLIP vector.

    Example:
        >>> tuple(tiny_hidream_image_inputs()["encoder_hidden_states_llama3"].shape)
        (4, 1, 5, 8)
    """
    generator = torch.Generator().manual_seed(seed)
    return {
        "hidden_states": torch.randn(batch_size, 4, size, size, generator=generator),
        "timesteps": torch.linspace(300.0, 700.0, batch_size),
        "encoder_hidden_states_t5": torch.randn(batch_size, t5_tokens, HIDREAM_T5_DIM, generator=generator),
        "encoder_hidden_states_llama3": torch.randn(
            HIDREAM_LLAMA_LAYERS, batch_size, llama_tokens, HIDREAM_LLAMA_DIM, generator=generator
        ),
        "pooled_embeds": torch.randn(batch_size, HIDREAM_POOLED_DIM, generator=generator),
        "return_dict": False,
    }


def tiny_hidream_image_pipeline(num_layers: int = 3, seed: int = 0) -> Any:
    """A complete random-weight ``HiDreamImagePipeline`` with its four text encoders: two tiny CLIPs with projection
    (width 8 each: a 16-wide pooled vector), a tiny T5 (width 16, in-memory tokenizer), a tiny four-layer
    ``LlamaForCausalLM`` (width 8) with a byte-level tokenizer, a one-level VAE (4 latent channels) and the tiny
    transformer (3 double blocks + 1 single block, Llama layers 0-3).

    Call it with ``max_sequence_length`` at most 77 (the tiny CLIPs' positions). The pipeline rescales every request
    to an area of ``default_sample_size²`` pixels (set to 16² here): a 16×16 image has 8×8 image tokens.

    Example:
        >>> type(tiny_hidream_image_pipeline()).__name__
        'HiDreamImagePipeline'
    """
    from diffusers import FlowMatchEulerDiscreteScheduler, HiDreamImagePipeline
    from transformers import LlamaConfig, LlamaForCausalLM

    tokenizer, text_encoder = tiny_clip(HIDREAM_POOLED_DIM // 2, seed + 1, with_projection=True)
    tokenizer_2, text_encoder_2 = tiny_clip(HIDREAM_POOLED_DIM // 2, seed + 2, with_projection=True)
    tokenizer_3, text_encoder_3 = tiny_t5(HIDREAM_T5_DIM, seed + 3)
    tokenizer_4 = tiny_byte_level_tokenizer(chat_template=None)
    config = LlamaConfig(
        vocab_size=len(tokenizer_4),
        hidden_size=HIDREAM_LLAMA_DIM,
        intermediate_size=16,
        num_hidden_layers=HIDREAM_LLAMA_LAYERS,
        num_attention_heads=2,
        num_key_value_heads=2,
        max_position_embeddings=256,
        pad_token_id=tokenizer_4.pad_token_id,
        eos_token_id=tokenizer_4.eos_token_id,
        bos_token_id=tokenizer_4.eos_token_id,
    )
    config._attn_implementation = "eager"  # the pipeline asks for attention weights
    text_encoder_4 = seeded_eval(seed + 4, LlamaForCausalLM, config)
    pipe = quiet_pipeline(
        HiDreamImagePipeline(
            scheduler=FlowMatchEulerDiscreteScheduler(),
            vae=tiny_flux_vae(latent_channels=4, seed=seed + 5),
            text_encoder=text_encoder,
            tokenizer=tokenizer,
            text_encoder_2=text_encoder_2,
            tokenizer_2=tokenizer_2,
            text_encoder_3=text_encoder_3,
            tokenizer_3=tokenizer_3,
            text_encoder_4=text_encoder_4,
            tokenizer_4=tokenizer_4,
            transformer=tiny_hidream_image_transformer(num_layers=num_layers, seed=seed + 6),
        )
    )
    pipe.default_sample_size = 16  # the pipeline resizes every request to this area (16² pixels: 8×8 tokens)
    return pipe
