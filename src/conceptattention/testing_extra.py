"""Tiny random-weight models and pipelines of the MM-DiTs beyond the paper, built fully offline.

Chroma, Flux.2 (Klein: Qwen3 text encoder), Qwen-Image, HunyuanVideo and AuraFlow, in the spirit of
:mod:`conceptattention.testing`: nothing is downloaded, tokenizers come from in-memory vocabularies (byte or
character level, so every concept is multi-token), every component is seeded before it is built and put in eval mode.
Configurations follow diffusers' own fast tests (``tests/pipelines/<name>/``, ``get_dummy_components``), scaled so
that a whole pipeline call takes well under a second on a CPU.

Example:
    >>> pipe = tiny_chroma_pipeline()
    >>> type(pipe).__name__
    'ChromaPipeline'
"""

from __future__ import annotations

from typing import Any

import torch

from .testing import (
    _bytes_to_unicode,
    _call_inputs,
    _tiny_clip,
    _tiny_flux_vae,
    _tiny_t5,
    quiet_pipeline,
    seeded_eval,
    tiny_flux_inputs,
)
from .testing import tiny_t5_encoder as tiny_t5_encoder  # re-exported: it was first defined in this module


#: Chat template of the tiny Qwen tokenizers: ``<|im_start|>{role}\n{content}<|im_end|>\n`` per message.
QWEN_CHAT_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for part in message['content'] %}{{ part['text'] }}{% endfor %}{% endif %}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

#: Chat template of the tiny Mistral-style tokenizer: ``[SYSTEM_PROMPT]...[/SYSTEM_PROMPT][INST]...[/INST]``.
MISTRAL_CHAT_TEMPLATE = (
    "{% for message in messages %}{% if message['role'] == 'system' %}[SYSTEM_PROMPT]"
    "{% for part in message['content'] %}{{ part['text'] }}{% endfor %}[/SYSTEM_PROMPT]"
    "{% else %}[INST]{% for part in message['content'] %}{{ part['text'] }}{% endfor %}[/INST]{% endif %}{% endfor %}"
)


# ----- tokenizers and text encoders ----------------------------------------------------------------------------------


def tiny_byte_level_tokenizer(
    special_tokens: tuple[str, ...] = ("<|endoftext|>", "<|im_start|>", "<|im_end|>"),
    chat_template: str | None = QWEN_CHAT_TEMPLATE,
    model_max_length: int = 2048,
) -> Any:
    """A byte-level BPE ``Qwen2Tokenizer`` with no merges (one token per byte), built in memory.

    Args:
        special_tokens: Special tokens, the first is padding/unknown/EOS; they get ids ``0..len-1``.
        chat_template: Jinja chat template (``None``: none).
        model_max_length: Longest sequence the tokenizer reports.

    Returns:
        A ``Qwen2Tokenizer`` (``len`` = number of special tokens + 256).

    Example:
        >>> tok = tiny_byte_level_tokenizer()
        >>> tok.convert_ids_to_tokens(tok("ab").input_ids)
        ['a', 'b']
    """
    from transformers import Qwen2Tokenizer

    vocab: dict[str, int] = {}
    for token in special_tokens:
        vocab[token] = len(vocab)
    for character in _bytes_to_unicode():
        vocab.setdefault(character, len(vocab))
    pad = special_tokens[0]
    tokenizer = Qwen2Tokenizer(
        vocab=vocab, merges=[], unk_token=pad, eos_token=pad, pad_token=pad, model_max_length=model_max_length
    )
    if len(special_tokens) > 1:
        tokenizer.add_special_tokens({"additional_special_tokens": list(special_tokens[1:])})
    if chat_template is not None:
        tokenizer.chat_template = chat_template
    return tokenizer


def _padding_mask(batch_size: int, text_tokens: int, padded: int, dtype: torch.dtype) -> torch.Tensor:
    """A ``[B, T]`` text mask of ones whose last ``padded`` tokens are zero (none when ``padded <= 0``)."""
    mask = torch.ones(batch_size, text_tokens, dtype=dtype)  # [B, T]
    if padded > 0:
        mask[:, text_tokens - padded :] = 0
    return mask


#: Geometry shared by the tiny FLUX-family transformers: 4 latent channels, patch 1, 2 heads × 16.
_FLUX_FAMILY_GEOMETRY: dict[str, Any] = {
    "patch_size": 1,
    "in_channels": 4,
    "attention_head_dim": 16,
    "num_attention_heads": 2,
}


def _flow_matching_pipeline(pipeline_class: Any, tokenizer: Any, text_encoder: Any, vae: Any, transformer: Any) -> Any:
    """A one-text-encoder ``pipeline_class`` with the default ``FlowMatchEulerDiscreteScheduler``, progress bar off."""
    from diffusers import FlowMatchEulerDiscreteScheduler

    return quiet_pipeline(
        pipeline_class(
            scheduler=FlowMatchEulerDiscreteScheduler(),
            vae=vae,
            text_encoder=text_encoder,
            tokenizer=tokenizer,
            transformer=transformer,
        )
    )


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


# ----- Chroma --------------------------------------------------------------------------------------------------------


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
        **_FLUX_FAMILY_GEOMETRY,
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
    text_mask = _padding_mask(batch_size, text_tokens, padded_text - 1, torch.bool)  # [B, T]
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

    tokenizer, text_encoder = _tiny_t5(32, seed + 1)
    vae = _tiny_flux_vae(latent_channels=1, seed=seed + 2)
    transformer = tiny_chroma_transformer(num_layers=num_layers, seed=seed + 3)
    return _flow_matching_pipeline(ChromaPipeline, tokenizer, text_encoder, vae, transformer)


# ----- Flux.2 --------------------------------------------------------------------------------------------------------

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
        **_FLUX_FAMILY_GEOMETRY,
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
    inputs = _call_inputs(seed, batch_size, shapes, 0.5, img_ids=Flux2Pipeline._prepare_latent_ids(latents))
    inputs["txt_ids"] = Flux2Pipeline._prepare_text_ids(inputs["encoder_hidden_states"])
    if guidance is not None:
        inputs["guidance"] = torch.full((batch_size,), guidance)
    return inputs


def tiny_qwen3_text_encoder(
    tokenizer: Any,
    hidden_size: int,
    *,
    num_layers: int = 2,
    head_dim: int = 8,
    max_positions: int = 1024,
    causal_lm: bool = False,
    seed: int = 0,
) -> Any:
    """A tiny random-weight Qwen3 text encoder in eval mode (2 query and 2 key/value heads, MLP width 16), seeded.

    Example:
        >>> encoder = tiny_qwen3_text_encoder(tiny_byte_level_tokenizer(), 16)
        >>> type(encoder).__name__, encoder.config.hidden_size
        ('Qwen3Model', 16)
    """
    from transformers import Qwen3Config, Qwen3ForCausalLM, Qwen3Model

    config = Qwen3Config(
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        intermediate_size=16,
        num_hidden_layers=num_layers,
        num_attention_heads=2,
        num_key_value_heads=2,
        head_dim=head_dim,
        max_position_embeddings=max_positions,
        pad_token_id=0,
    )
    return seeded_eval(seed, Qwen3ForCausalLM if causal_lm else Qwen3Model, config)


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
    return _flow_matching_pipeline(Flux2KleinPipeline, tokenizer, text_encoder, vae, transformer)


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
    return _flow_matching_pipeline(Flux2Pipeline, tokenizer, text_encoder, vae, transformer)


# ----- Qwen-Image ----------------------------------------------------------------------------------------------------


def tiny_qwenimage_transformer(num_layers: int = 3, zero_cond_t: bool = False, seed: int = 0) -> Any:
    """A random-weight ``QwenImageTransformer2DModel`` (3 heads × 16, text width 16, MSRoPE axes (8, 4, 4)).

    Example:
        >>> tiny_qwenimage_transformer().config.joint_attention_dim
        16
    """
    from diffusers import QwenImageTransformer2DModel

    return seeded_eval(
        seed,
        QwenImageTransformer2DModel,
        patch_size=2,
        in_channels=16,
        out_channels=4,
        num_layers=num_layers,
        attention_head_dim=16,
        num_attention_heads=3,
        joint_attention_dim=16,
        guidance_embeds=False,
        axes_dims_rope=(8, 4, 4),
        zero_cond_t=zero_cond_t,
    )


def tiny_qwenimage_inputs(
    batch_size: int = 1,
    height: int = 4,
    width: int = 6,
    text_tokens: int = 8,
    padded_text: int = 2,
    condition_shape: tuple[int, int, int] | None = None,
    seed: int = 0,
) -> dict[str, Any]:
    """Keyword inputs of a bare ``QwenImageTransformer2DModel`` call (``img_shapes`` per sample, padded prompt).

    Args:
        condition_shape: ``(frames, h, w)`` of an extra condition image appended to the image tokens (as the edit
            pipelines do); ``None`` for plain text-to-image.

    Example:
        >>> tiny_qwenimage_inputs()["hidden_states"].shape
        torch.Size([1, 24, 16])
    """
    shapes = [(1, height, width)] + ([condition_shape] if condition_shape is not None else [])
    num_image = sum(f * h * w for f, h, w in shapes)
    return _call_inputs(
        seed,
        batch_size,
        {"hidden_states": (num_image, 16), "encoder_hidden_states": (text_tokens, 16)},
        0.5,
        encoder_hidden_states_mask=_padding_mask(batch_size, text_tokens, padded_text, torch.long),
        img_shapes=[shapes] * batch_size,
    )


def tiny_qwen25vl_encoder(vocab_size: int, seed: int = 0) -> Any:
    """A random two-layer ``Qwen2_5_VLForConditionalGeneration`` of width 16 (diffusers' fast-test config).

    Example:
        >>> tiny_qwen25vl_encoder(vocab_size=259).config.text_config.hidden_size
        16
    """
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

    config = Qwen2_5_VLConfig(
        text_config={
            "hidden_size": 16,
            "intermediate_size": 16,
            "num_hidden_layers": 2,
            "num_attention_heads": 2,
            "num_key_value_heads": 2,
            "rope_scaling": {"mrope_section": [1, 1, 2], "rope_type": "default", "type": "default"},
            "rope_theta": 1000000.0,
            "vocab_size": vocab_size,
            "bos_token_id": 0,
            "eos_token_id": 0,
            "pad_token_id": 0,
        },
        vision_config={"depth": 2, "hidden_size": 16, "intermediate_size": 16, "num_heads": 2, "out_hidden_size": 16},
        hidden_size=16,
        vocab_size=vocab_size,
        bos_token_id=0,
        eos_token_id=0,
        pad_token_id=0,
        vision_end_token_id=vocab_size + 1,
        vision_start_token_id=vocab_size + 2,
        vision_token_id=vocab_size + 3,
        image_token_id=vocab_size + 4,
        video_token_id=vocab_size + 5,
    )
    return seeded_eval(seed, Qwen2_5_VLForConditionalGeneration, config)


def tiny_qwenimage_pipeline(num_layers: int = 3, seed: int = 0) -> Any:
    """A complete random-weight ``QwenImagePipeline``: tiny Qwen2.5-VL, byte-level tokenizer, tiny Qwen-Image VAE.

    The VAE downsamples 4× (``vae_scale_factor`` 4): a 32×32 image has an 8×8 latent and 4×4 = 16 image tokens.

    Example:
        >>> tiny_qwenimage_pipeline().vae_scale_factor
        4
    """
    from diffusers import AutoencoderKLQwenImage, QwenImagePipeline

    tokenizer = tiny_byte_level_tokenizer()
    vae = seeded_eval(
        seed + 2,
        AutoencoderKLQwenImage,
        base_dim=24,
        z_dim=4,
        dim_mult=[1, 2, 4],
        num_res_blocks=1,
        temperal_downsample=[False, True],
        latents_mean=[0.0] * 4,
        latents_std=[1.0] * 4,
    )
    text_encoder = tiny_qwen25vl_encoder(len(tokenizer), seed=seed + 1)
    transformer = tiny_qwenimage_transformer(num_layers=num_layers, seed=seed + 3)
    return _flow_matching_pipeline(QwenImagePipeline, tokenizer, text_encoder, vae, transformer)


# ----- HunyuanVideo --------------------------------------------------------------------------------------------------


def tiny_hunyuan_video_transformer(num_layers: int = 3, num_single_layers: int = 1, seed: int = 0) -> Any:
    """A random-weight ``HunyuanVideoTransformer3DModel`` (2 heads × 10, one refiner layer, text 16, pooled 8).

    Example:
        >>> tiny_hunyuan_video_transformer().config.text_embed_dim
        16
    """
    from diffusers import HunyuanVideoTransformer3DModel

    return seeded_eval(
        seed,
        HunyuanVideoTransformer3DModel,
        in_channels=4,
        out_channels=4,
        num_attention_heads=2,
        attention_head_dim=10,
        num_layers=num_layers,
        num_single_layers=num_single_layers,
        num_refiner_layers=1,
        patch_size=1,
        patch_size_t=1,
        guidance_embeds=True,
        text_embed_dim=16,
        pooled_projection_dim=8,
        rope_axes_dim=(2, 4, 4),
    )


def tiny_hunyuan_video_inputs(
    batch_size: int = 1,
    frames: int = 2,
    height: int = 3,
    width: int = 4,
    text_tokens: int = 8,
    padded_text: int = 3,
    seed: int = 0,
) -> dict[str, Any]:
    """Keyword inputs of a bare ``HunyuanVideoTransformer3DModel`` call (latent video ``[B, 4, F, H, W]``).

    Example:
        >>> tiny_hunyuan_video_inputs()["hidden_states"].shape
        torch.Size([1, 4, 2, 3, 4])
    """
    shapes = {
        "hidden_states": (4, frames, height, width),
        "encoder_hidden_states": (text_tokens, 16),
        "pooled_projections": (8,),
    }
    return _call_inputs(
        seed,
        batch_size,
        shapes,
        500.0,
        encoder_attention_mask=_padding_mask(batch_size, text_tokens, padded_text, torch.float32),
        guidance=torch.full((batch_size,), 6000.0),
    )


#: Special tokens of the tiny Llama-style tokenizer (those of HunyuanVideo's prompt template).
LLAMA_SPECIAL_TOKENS = (
    "<|end_of_text|>",
    "<|begin_of_text|>",
    "<|start_header_id|>",
    "<|end_header_id|>",
    "<|eot_id|>",
)


def tiny_hunyuan_video_pipeline(num_layers: int = 3, seed: int = 0) -> Any:
    """A complete random-weight ``HunyuanVideoPipeline``: tiny Llama + CLIP, in-memory tokenizers, tiny video VAE.

    The VAE compresses 8× in space and 4× in time: 16×16 pixels and 9 frames give a 3 × 2 × 2 latent video.

    Example:
        >>> tiny_hunyuan_video_pipeline().vae_scale_factor_temporal
        4
    """
    from diffusers import AutoencoderKLHunyuanVideo, FlowMatchEulerDiscreteScheduler, HunyuanVideoPipeline
    from transformers import LlamaConfig, LlamaModel

    tokenizer = tiny_byte_level_tokenizer(special_tokens=LLAMA_SPECIAL_TOKENS, chat_template=None)
    llama = seeded_eval(
        seed + 1,
        LlamaModel,
        LlamaConfig(
            vocab_size=len(tokenizer),
            hidden_size=16,
            intermediate_size=37,
            num_hidden_layers=3,
            num_attention_heads=4,
            pad_token_id=0,
            bos_token_id=1,
            eos_token_id=0,
            max_position_embeddings=2048,
        ),
    )
    clip_tokenizer, clip = _tiny_clip(8, seed + 2)
    vae = seeded_eval(
        seed + 3,
        AutoencoderKLHunyuanVideo,
        in_channels=3,
        out_channels=3,
        latent_channels=4,
        down_block_types=("HunyuanVideoDownBlock3D",) * 4,
        up_block_types=("HunyuanVideoUpBlock3D",) * 4,
        block_out_channels=(8, 8, 8, 8),
        layers_per_block=1,
        act_fn="silu",
        norm_num_groups=4,
        scaling_factor=0.476986,
        spatial_compression_ratio=8,
        temporal_compression_ratio=4,
        mid_block_add_attention=True,
    )
    return quiet_pipeline(
        HunyuanVideoPipeline(
            text_encoder=llama,
            tokenizer=tokenizer,
            transformer=tiny_hunyuan_video_transformer(num_layers=num_layers, seed=seed + 4),
            vae=vae,
            scheduler=FlowMatchEulerDiscreteScheduler(shift=7.0),
            text_encoder_2=clip,
            tokenizer_2=clip_tokenizer,
        )
    )


# ----- AuraFlow ------------------------------------------------------------------------------------------------------


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
    return _call_inputs(seed, batch_size, shapes, 0.5)


def tiny_auraflow_pipeline(num_layers: int = 3, seed: int = 0) -> Any:
    """A complete random-weight ``AuraFlowPipeline``: tiny UMT5 (in-memory T5 tokenizer), one-level VAE, transformer.

    ``vae_scale_factor`` is 1 and the patch size 2: a 16×16 image has 8×8 = 64 image tokens.

    Example:
        >>> tiny_auraflow_pipeline().transformer.config.patch_size
        2
    """
    from diffusers import AuraFlowPipeline

    tokenizer, text_encoder = _tiny_t5(32, seed + 1, umt5=True)
    vae = _tiny_flux_vae(latent_channels=4, seed=seed + 2)
    transformer = tiny_auraflow_transformer(num_layers=num_layers, seed=seed + 3)
    return _flow_matching_pipeline(AuraFlowPipeline, tokenizer, text_encoder, vae, transformer)
