"""Tiny random-weight Flux.2 (and Flux.2 Klein, Qwen3 text encoder) transformer, inputs and pipeline for :mod:`conceptattention.adapters.flux2`.

Example:
    >>> type(tiny_flux2_transformer()).__name__
    'Flux2Transformer2DModel'
"""

from __future__ import annotations

from typing import Any

import torch

from .common import FLUX_FAMILY_GEOMETRY, call_inputs, flow_matching_pipeline, seeded_eval
from .text_encoders import MISTRAL_CHAT_TEMPLATE, tiny_byte_level_tokenizer, tiny_qwen3_text_encoder


def _tiny_flux2_vae(seed: int) -> Any:
    """A one-level ``AutoencoderKLFlux2`` with one latent channel (``vae_scale_factor`` 1)."""
    from diffusers import AutoencoderKLFlux2

    return seeded_eval(
        seed,
        AutoencoderKLFlux2,
        sample_size=32,
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",),
        up_block_types=("UpDecoderBlock2D",),
        block_out_channels=(4,),
        layers_per_block=1,
        latent_channels=1,
        norm_num_groups=1,
        use_quant_conv=False,
        use_post_quant_conv=False,
    )


#: Hidden size of the tiny Qwen3 text encoder; Flux.2 Klein concatenates three of its layers (9, 18, 27).
FLUX2_TEXT_HIDDEN = 8


def tiny_flux2_transformer(
    num_layers: int = 3, num_single_layers: int = 1, guidance_embeds: bool = False, seed: int = 0
) -> Any:
    """A random-weight ``Flux2Transformer2DModel`` (2 heads × 16, text width 24 = 3 × 8, 4-axis RoPE, eval mode).

    Example:
        >>> tiny_flux2_transformer().config.joint_attention_dim
        24
    """
    from diffusers import Flux2Transformer2DModel

    return seeded_eval(
        seed,
        Flux2Transformer2DModel,
        **FLUX_FAMILY_GEOMETRY,
        num_layers=num_layers,
        num_single_layers=num_single_layers,
        joint_attention_dim=3 * FLUX2_TEXT_HIDDEN,
        timestep_guidance_channels=256,
        axes_dims_rope=(4, 4, 4, 4),
        guidance_embeds=guidance_embeds,
    )


def tiny_flux2_inputs(
    batch_size: int = 1,
    height: int = 4,
    width: int = 6,
    text_tokens: int = 8,
    guidance: float | None = None,
    seed: int = 0,
) -> dict[str, Any]:
    """Keyword inputs of a bare ``Flux2Transformer2DModel`` call, with the pipeline's 4-axis ``(t, h, w, l)`` ids.

    Example:
        >>> tiny_flux2_inputs()["txt_ids"].shape
        torch.Size([1, 8, 4])
    """
    from diffusers import Flux2Pipeline

    shapes = {  # drawn in this order
        "encoder_hidden_states": (text_tokens, 3 * FLUX2_TEXT_HIDDEN),
        "hidden_states": (height * width, 4),
    }
    latents = torch.zeros(batch_size, 4, height, width)  # [B, C, h, w], only the shape matters for the ids
    inputs = call_inputs(seed, batch_size, shapes, 0.5, img_ids=Flux2Pipeline._prepare_latent_ids(latents))
    inputs["txt_ids"] = Flux2Pipeline._prepare_text_ids(inputs["encoder_hidden_states"])
    if guidance is not None:
        inputs["guidance"] = torch.full((batch_size,), guidance)
    return inputs


def tiny_flux2_klein_pipeline(num_layers: int = 3, seed: int = 0) -> Any:
    """A complete random-weight ``Flux2KleinPipeline``: tiny Qwen3 (28 layers of width 8, so the default hidden
    layers 9, 18, 27 exist), byte-level tokenizer with a chat template, one-level Flux.2 VAE, transformer.

    A 32×32 image has a 16×16 latent, patchified to 8×8 = 64 image tokens.

    Example:
        >>> type(tiny_flux2_klein_pipeline().text_encoder).__name__
        'Qwen3ForCausalLM'
    """
    from diffusers import Flux2KleinPipeline

    tokenizer = tiny_byte_level_tokenizer()
    text_encoder = tiny_qwen3_text_encoder(
        tokenizer, FLUX2_TEXT_HIDDEN, num_layers=28, head_dim=4, max_positions=512, causal_lm=True, seed=seed + 1
    )
    vae = _tiny_flux2_vae(seed + 2)
    transformer = tiny_flux2_transformer(num_layers=num_layers, seed=seed + 3)
    return flow_matching_pipeline(Flux2KleinPipeline, tokenizer, text_encoder, vae, transformer)


def tiny_flux2_pipeline(num_layers: int = 3, seed: int = 0) -> Any:
    """A complete random-weight ``Flux2Pipeline`` (FLUX.2-dev layout): tiny Mistral-Small-3 (31 layers of width 8, so
    the default hidden layers 10, 20, 30 exist), guidance-distilled transformer, one-level Flux.2 VAE.

    The real pipeline's tokenizer is a ``PixtralProcessor``, which needs torchvision; here a byte-level tokenizer with
    a Mistral-style chat template stands in for it (the pipeline only calls ``apply_chat_template``), so the
    processor's own wrapping is not exercised.

    Example:
        >>> tiny_flux2_pipeline().transformer.config.guidance_embeds
        True
    """
    from diffusers import Flux2Pipeline
    from transformers import Mistral3Config, Mistral3ForConditionalGeneration

    tokenizer = tiny_byte_level_tokenizer(
        special_tokens=("<pad>", "[INST]", "[/INST]", "[SYSTEM_PROMPT]", "[/SYSTEM_PROMPT]", "[IMG]"),
        chat_template=MISTRAL_CHAT_TEMPLATE,
    )
    text_encoder = seeded_eval(
        seed + 1,
        Mistral3ForConditionalGeneration,
        Mistral3Config(
            text_config={
                "model_type": "mistral",
                "vocab_size": len(tokenizer),
                "hidden_size": FLUX2_TEXT_HIDDEN,
                "intermediate_size": 16,
                "num_hidden_layers": 31,
                "num_attention_heads": 2,
                "num_key_value_heads": 2,
                "head_dim": 4,
                "max_position_embeddings": 1024,
                "pad_token_id": 0,
            },
            vision_config={
                "model_type": "pixtral",
                "hidden_size": 16,
                "intermediate_size": 16,
                "num_hidden_layers": 1,
                "num_attention_heads": 2,
                "image_size": 32,
                "patch_size": 16,
                "head_dim": 8,
            },
            image_token_index=5,
            spatial_merge_size=1,
        ),
    )
    vae = _tiny_flux2_vae(seed + 2)
    transformer = tiny_flux2_transformer(num_layers=num_layers, guidance_embeds=True, seed=seed + 3)
    return flow_matching_pipeline(Flux2Pipeline, tokenizer, text_encoder, vae, transformer)
