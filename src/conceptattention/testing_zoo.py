"""Tiny random-weight models and pipelines of the FLUX.1-architecture clones (Bria, LongCat-Image, Ovis-Image), built
fully offline, in the spirit of :mod:`conceptattention.testing` and :mod:`conceptattention.testing_extra`.

Example:
    >>> tiny_bria_transformer().config.num_layers
    3
"""

from __future__ import annotations

import warnings
from typing import Any

import torch

from .testing import _tiny_flux_vae, _tiny_t5, quiet_pipeline, seeded_eval, tiny_flux_inputs
from .testing_extra import (
    _FLUX_FAMILY_GEOMETRY,
    _flow_matching_pipeline,
    tiny_byte_level_tokenizer,
    tiny_qwen3_text_encoder,
    tiny_qwen25vl_encoder,
)


#: RoPE axes of the tiny FLUX.1 clones (2 heads × 16).
_AXES = (4, 4, 8)


def _flux_clone_inputs(
    batch_size: int, height: int, width: int, text_tokens: int, seed: int, diagonal_text_ids: bool
) -> dict[str, Any]:
    """FLUX.1's tiny inputs without the pooled vector; with ``diagonal_text_ids`` the text ids are ``(0, i, i)``
    (LongCat-Image, Ovis-Image) and the image ids are offset past them, as those pipelines build them."""
    inputs = tiny_flux_inputs(batch_size, height, width, text_tokens, seed=seed)
    del inputs["pooled_projections"]
    if diagonal_text_ids:
        positions = torch.arange(text_tokens, dtype=torch.float32)  # [T]
        inputs["txt_ids"] = torch.stack([torch.zeros(text_tokens), positions, positions], dim=1)  # [T, 3]
        image_ids = inputs["img_ids"].clone()  # [I, 3]
        image_ids[:, 0] = 1  # modality id of the image
        image_ids[:, 1:] += text_tokens
        inputs["img_ids"] = image_ids
    return inputs


# ----- Bria ----------------------------------------------------------------------------------------------------------


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
        **_FLUX_FAMILY_GEOMETRY,
        num_layers=num_layers,
        num_single_layers=num_single_layers,
        joint_attention_dim=32,
        axes_dims_rope=_AXES,
    )


def tiny_bria_inputs(
    batch_size: int = 1, height: int = 4, width: int = 6, text_tokens: int = 8, seed: int = 0
) -> dict[str, Any]:
    """Keyword inputs of a bare ``BriaTransformer2DModel`` call (text ids all zero, as ``BriaPipeline``'s).

    Example:
        >>> sorted(tiny_bria_inputs())
        ['encoder_hidden_states', 'hidden_states', 'img_ids', 'return_dict', 'timestep', 'txt_ids']
    """
    return _flux_clone_inputs(batch_size, height, width, text_tokens, seed, diagonal_text_ids=False)


def tiny_bria_pipeline(num_layers: int = 3, seed: int = 0) -> Any:
    """A complete random-weight ``BriaPipeline``: tiny T5 (in-memory tokenizer), one-level VAE, transformer.

    A 32×32 image has a 16×16 latent and 8×8 = 64 image tokens.

    Example:
        >>> type(tiny_bria_pipeline()).__name__
        'BriaPipeline'
    """
    from diffusers import BriaPipeline

    tokenizer, text_encoder = _tiny_t5(32, seed + 1)
    vae = _tiny_flux_vae(latent_channels=1, seed=seed + 2)
    transformer = tiny_bria_transformer(num_layers=num_layers, seed=seed + 3)
    return _flow_matching_pipeline(BriaPipeline, tokenizer, text_encoder, vae, transformer)


# ----- LongCat-Image -------------------------------------------------------------------------------------------------


def tiny_longcat_image_transformer(
    num_layers: int = 3, num_single_layers: int = 1, joint_attention_dim: int = 32, in_channels: int = 4, seed: int = 0
) -> Any:
    """A random-weight ``LongCatImageTransformer2DModel`` (2 heads × 16, text width 32, eval mode).

    Example:
        >>> tiny_longcat_image_transformer().config.joint_attention_dim
        32
    """
    from diffusers import LongCatImageTransformer2DModel

    return seeded_eval(
        seed,
        LongCatImageTransformer2DModel,
        **{**_FLUX_FAMILY_GEOMETRY, "in_channels": in_channels},
        num_layers=num_layers,
        num_single_layers=num_single_layers,
        joint_attention_dim=joint_attention_dim,
        pooled_projection_dim=joint_attention_dim,
        axes_dims_rope=list(_AXES),
    )


def tiny_longcat_image_inputs(
    batch_size: int = 1, height: int = 4, width: int = 6, text_tokens: int = 8, seed: int = 0
) -> dict[str, Any]:
    """Keyword inputs of a bare ``LongCatImageTransformer2DModel`` call, text ids ``(0, i, i)`` as the pipeline's.

    Example:
        >>> tiny_longcat_image_inputs()["txt_ids"][2].tolist()
        [0.0, 2.0, 2.0]
    """
    return _flux_clone_inputs(batch_size, height, width, text_tokens, seed, diagonal_text_ids=True)


def tiny_longcat_image_pipeline(num_layers: int = 3, seed: int = 0) -> Any:
    """A complete random-weight ``LongCatImagePipeline``: tiny Qwen2.5-VL (width 16), byte-level tokenizer, one-level
    VAE with the 16 latent channels the pipeline hard-codes, transformer. No ``text_processor``: call the pipeline
    with ``enable_prompt_rewrite=False`` (rewriting generates text with the encoder).

    A 32×32 image has a 16×16 latent and 8×8 = 64 image tokens; prompts are padded to 512 tokens, as the pipeline's.

    Example:
        >>> tiny_longcat_image_pipeline().transformer.config.in_channels
        64
    """
    from diffusers import FlowMatchEulerDiscreteScheduler, LongCatImagePipeline

    tokenizer = tiny_byte_level_tokenizer()
    text_encoder = tiny_qwen25vl_encoder(len(tokenizer), seed=seed + 1)
    vae = _tiny_flux_vae(latent_channels=16, seed=seed + 2)
    transformer = tiny_longcat_image_transformer(
        num_layers=num_layers, joint_attention_dim=16, in_channels=64, seed=seed + 3
    )
    return quiet_pipeline(
        LongCatImagePipeline(
            scheduler=FlowMatchEulerDiscreteScheduler(),
            vae=vae,
            text_encoder=text_encoder,
            tokenizer=tokenizer,
            text_processor=None,
            transformer=transformer,
        )
    )


# ----- Ovis-Image ----------------------------------------------------------------------------------------------------


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
        **_FLUX_FAMILY_GEOMETRY,
        out_channels=4,
        num_layers=num_layers,
        num_single_layers=num_single_layers,
        joint_attention_dim=joint_attention_dim,
        axes_dims_rope=_AXES,
    )


def tiny_ovis_image_inputs(
    batch_size: int = 1, height: int = 4, width: int = 6, text_tokens: int = 8, seed: int = 0
) -> dict[str, Any]:
    """Keyword inputs of a bare ``OvisImageTransformer2DModel`` call, text ids ``(0, i, i)`` as the pipeline's.

    Example:
        >>> tiny_ovis_image_inputs(batch_size=2)["hidden_states"].shape
        torch.Size([2, 24, 4])
    """
    return _flux_clone_inputs(batch_size, height, width, text_tokens, seed, diagonal_text_ids=True)


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
    vae = _tiny_flux_vae(latent_channels=1, seed=seed + 2)
    transformer = tiny_ovis_image_transformer(num_layers=num_layers, joint_attention_dim=OVIS_TEXT_HIDDEN, seed=seed + 3)
    return _flow_matching_pipeline(OvisImagePipeline, tokenizer, text_encoder, vae, transformer)


# ----- HunyuanImage 2.1 ----------------------------------------------------------------------------------------------


def tiny_hunyuan_image_transformer(
    num_layers: int = 3,
    num_single_layers: int = 1,
    guidance_embeds: bool = False,
    text_embed_2_dim: int | None = None,
    seed: int = 0,
) -> Any:
    """A random-weight ``HunyuanImageTransformer2DModel`` (2 heads × 8, one refiner layer, text width 16, patch 1;
    with ``text_embed_2_dim`` a ByT5 glyph projection).

    Example:
        >>> tiny_hunyuan_image_transformer().config.text_embed_dim
        16
    """
    from diffusers import HunyuanImageTransformer2DModel

    return seeded_eval(
        seed,
        HunyuanImageTransformer2DModel,
        in_channels=4,
        out_channels=4,
        num_attention_heads=2,
        attention_head_dim=8,
        num_layers=num_layers,
        num_single_layers=num_single_layers,
        num_refiner_layers=1,
        patch_size=(1, 1),
        guidance_embeds=guidance_embeds,
        text_embed_dim=16,
        text_embed_2_dim=text_embed_2_dim,
        rope_axes_dim=(4, 4),
    )


def tiny_hunyuan_image_inputs(
    batch_size: int = 1, height: int = 4, width: int = 6, text_tokens: int = 8, padded_text: int = 3, seed: int = 0
) -> dict[str, Any]:
    """Keyword inputs of a bare ``HunyuanImageTransformer2DModel`` call (latent ``[B, 4, H, W]``, padded prompt).

    Example:
        >>> tiny_hunyuan_image_inputs()["encoder_attention_mask"].tolist()
        [[1.0, 1.0, 1.0, 1.0, 1.0, 0.0, 0.0, 0.0]]
    """
    generator = torch.Generator().manual_seed(seed)
    mask = torch.ones(batch_size, text_tokens)  # [B, T]
    if padded_text > 0:
        mask[:, text_tokens - padded_text :] = 0
    return {
        "hidden_states": torch.randn(batch_size, 4, height, width, generator=generator),
        "timestep": torch.full((batch_size,), 500.0),
        "encoder_hidden_states": torch.randn(batch_size, text_tokens, 16, generator=generator),
        "encoder_attention_mask": mask,
    }


def tiny_hunyuan_image_pipeline(num_layers: int = 3, seed: int = 0) -> Any:
    """A complete random-weight ``HunyuanImagePipeline``: tiny Qwen2.5-VL (width 16) with a byte-level tokenizer,
    tiny ByT5 (``ByT5Tokenizer``, T5 width 8), a two-level HunyuanImage VAE (compression 2, 4 latent channels) and the
    transformer; no guider (a single conditional call per step; set ``pipe.guider`` for guidance).

    A 32×48 image has a 16×24 latent and 16×24 = 384 image tokens.

    Example:
        >>> tiny_hunyuan_image_pipeline().vae_scale_factor
        2
    """
    from diffusers import AutoencoderKLHunyuanImage, FlowMatchEulerDiscreteScheduler, HunyuanImagePipeline
    from transformers import ByT5Tokenizer

    from .testing import tiny_t5_encoder

    tokenizer = tiny_byte_level_tokenizer()
    text_encoder = tiny_qwen25vl_encoder(len(tokenizer), seed=seed + 1)
    tokenizer_2 = ByT5Tokenizer()
    text_encoder_2 = tiny_t5_encoder(len(tokenizer_2), d_model=8, seed=seed + 4)
    vae = seeded_eval(
        seed + 2,
        AutoencoderKLHunyuanImage,
        in_channels=3,
        out_channels=3,
        latent_channels=4,
        block_out_channels=(32, 32),
        layers_per_block=1,
        spatial_compression_ratio=2,
        sample_size=32,
        scaling_factor=0.75,
    )
    transformer = tiny_hunyuan_image_transformer(num_layers=num_layers, text_embed_2_dim=8, seed=seed + 3)
    return quiet_pipeline(
        HunyuanImagePipeline(
            scheduler=FlowMatchEulerDiscreteScheduler(),
            vae=vae,
            text_encoder=text_encoder,
            tokenizer=tokenizer,
            text_encoder_2=text_encoder_2,
            tokenizer_2=tokenizer_2,
            transformer=transformer,
        )
    )


# ----- HunyuanVideo 1.5 ----------------------------------------------------------------------------------------------


def tiny_hunyuan_video15_transformer(num_layers: int = 3, in_channels: int = 4, seed: int = 0) -> Any:
    """A random-weight ``HunyuanVideo15Transformer3DModel`` (2 heads × 8, one refiner layer, Qwen width 16, ByT5
    width 8, image-embedding width 8, patch 1; the pipeline needs ``in_channels = 2 · latent channels + 1``).

    Example:
        >>> tiny_hunyuan_video15_transformer().config.num_layers
        3
    """
    from diffusers import HunyuanVideo15Transformer3DModel

    return seeded_eval(
        seed,
        HunyuanVideo15Transformer3DModel,
        in_channels=in_channels,
        out_channels=4,
        num_attention_heads=2,
        attention_head_dim=8,
        num_layers=num_layers,
        num_refiner_layers=1,
        text_embed_dim=16,
        text_embed_2_dim=8,
        image_embed_dim=8,
        rope_axes_dim=(2, 2, 4),
        target_size=32,
    )


def tiny_hunyuan_video15_pipeline(num_layers: int = 3, seed: int = 0) -> Any:
    """A complete random-weight ``HunyuanVideo15Pipeline``: tiny three-layer ``Qwen2_5_VLTextModel`` (width 16) with a
    byte-level chat tokenizer, tiny ByT5, a two-level HunyuanVideo 1.5 VAE (compression 2 in space and time, 4 latent
    channels), the transformer and a ``ClassifierFreeGuidance`` guider at scale 1 (one call per step).

    A 5-frame 32×32 video has a 3×16×16 latent and 768 video tokens.

    Example:
        >>> tiny_hunyuan_video15_pipeline().vae_scale_factor_spatial
        2
    """
    from diffusers import (
        AutoencoderKLHunyuanVideo15,
        ClassifierFreeGuidance,
        FlowMatchEulerDiscreteScheduler,
        HunyuanVideo15Pipeline,
    )
    from transformers import ByT5Tokenizer, Qwen2_5_VLTextConfig, Qwen2_5_VLTextModel

    from .testing import tiny_t5_encoder

    tokenizer = tiny_byte_level_tokenizer()
    text_config = Qwen2_5_VLTextConfig(
        hidden_size=16,
        intermediate_size=16,
        num_hidden_layers=3,  # the pipeline reads the third layer from the end
        num_attention_heads=2,
        num_key_value_heads=2,
        vocab_size=len(tokenizer),
        rope_scaling={"mrope_section": [1, 1, 2], "rope_type": "default", "type": "default"},
        pad_token_id=0,
    )
    text_encoder = seeded_eval(seed + 1, Qwen2_5_VLTextModel, text_config)
    tokenizer_2 = ByT5Tokenizer()
    text_encoder_2 = tiny_t5_encoder(len(tokenizer_2), d_model=8, seed=seed + 4)
    vae = seeded_eval(
        seed + 2,
        AutoencoderKLHunyuanVideo15,
        latent_channels=4,
        block_out_channels=(32, 32),
        layers_per_block=1,
        spatial_compression_ratio=2,
        temporal_compression_ratio=2,
    )
    transformer = tiny_hunyuan_video15_transformer(num_layers=num_layers, in_channels=9, seed=seed + 3)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Guiders are currently an experimental feature")
        guider = ClassifierFreeGuidance(guidance_scale=1.0)
    return quiet_pipeline(
        HunyuanVideo15Pipeline(
            text_encoder=text_encoder,
            tokenizer=tokenizer,
            transformer=transformer,
            vae=vae,
            scheduler=FlowMatchEulerDiscreteScheduler(),
            text_encoder_2=text_encoder_2,
            tokenizer_2=tokenizer_2,
            guider=guider,
        )
    )


def tiny_hunyuan_video15_inputs(
    batch_size: int = 1,
    frames: int = 2,
    height: int = 3,
    width: int = 4,
    text_tokens: int = 8,
    padded_text: int = 3,
    glyph_tokens: int = 4,
    image_tokens: int = 2,
    image_to_video: bool = False,
    seed: int = 0,
) -> dict[str, Any]:
    """Keyword inputs of a bare ``HunyuanVideo15Transformer3DModel`` call (latent video ``[B, 4, F, H, W]``): a padded
    prompt, a half-padded ByT5 glyph prompt and SigLIP image embeddings (zeros for text-to-video, as the pipeline).

    Example:
        >>> tiny_hunyuan_video15_inputs()["hidden_states"].shape
        torch.Size([1, 4, 2, 3, 4])
    """
    generator = torch.Generator().manual_seed(seed)
    mask = torch.ones(batch_size, text_tokens)  # [B, T]
    if padded_text > 0:
        mask[:, text_tokens - padded_text :] = 0
    glyph_mask = torch.ones(batch_size, glyph_tokens)  # [B, T2]
    glyph_mask[:, glyph_tokens // 2 :] = 0
    inputs = {
        "hidden_states": torch.randn(batch_size, 4, frames, height, width, generator=generator),
        "timestep": torch.full((batch_size,), 500.0),
        "encoder_hidden_states": torch.randn(batch_size, text_tokens, 16, generator=generator),
        "encoder_attention_mask": mask,
        "encoder_hidden_states_2": torch.randn(batch_size, glyph_tokens, 8, generator=generator),
        "encoder_attention_mask_2": glyph_mask,
        "image_embeds": torch.randn(batch_size, image_tokens, 8, generator=generator),
        "return_dict": False,
    }
    if not image_to_video:
        inputs["image_embeds"] = torch.zeros_like(inputs["image_embeds"])
    return inputs


# ----- CogView4 ------------------------------------------------------------------------------------------------------


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

    from .testing import tiny_autoencoder_kl

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


# ----- Mochi ---------------------------------------------------------------------------------------------------------


def tiny_mochi_transformer(num_layers: int = 3, seed: int = 0) -> Any:
    """A random-weight ``MochiTransformer3DModel`` (2 heads × 8, video width 16, text width 8, T5 width 16, patch 2;
    the last block is ``context_pre_only``).

    Example:
        >>> tiny_mochi_transformer().transformer_blocks[-1].context_pre_only
        True
    """
    from diffusers import MochiTransformer3DModel

    return seeded_eval(
        seed,
        MochiTransformer3DModel,
        patch_size=2,
        num_attention_heads=2,
        attention_head_dim=8,
        num_layers=num_layers,
        pooled_projection_dim=8,
        in_channels=4,
        text_embed_dim=16,
        time_embed_dim=4,
        max_sequence_length=16,
    )


def tiny_mochi_inputs(
    batch_size: int = 1,
    frames: int = 2,
    height: int = 2,
    width: int = 3,
    text_tokens: int = 8,
    padded_text: int = 3,
    seed: int = 0,
) -> dict[str, Any]:
    """Keyword inputs of a bare ``MochiTransformer3DModel`` call: latent video ``[B, 4, F, 2·height, 2·width]`` (patch
    2), a padded prompt and its mask.

    Example:
        >>> tiny_mochi_inputs()["hidden_states"].shape
        torch.Size([1, 4, 2, 4, 6])
    """
    generator = torch.Generator().manual_seed(seed)
    mask = torch.ones(batch_size, text_tokens)  # [B, T]
    if padded_text > 0:
        mask[:, text_tokens - padded_text :] = 0
    return {
        "hidden_states": torch.randn(batch_size, 4, frames, 2 * height, 2 * width, generator=generator),
        "encoder_hidden_states": torch.randn(batch_size, text_tokens, 16, generator=generator),
        "timestep": torch.full((batch_size,), 500.0),
        "encoder_attention_mask": mask,
        "return_dict": False,
    }


def tiny_mochi_pipeline(num_layers: int = 3, seed: int = 0) -> Any:
    """A complete random-weight ``MochiPipeline``: tiny T5 (in-memory tokenizer), tiny Mochi VAE (diffusers' fast-test
    layout, 4 latent channels), transformer. The pipeline's scale factors are fixed (8 spatial, 6 temporal): a
    7-frame 32×48 video has a 2×4×6 latent and 2×2×3 = 12 video tokens.

    Example:
        >>> tiny_mochi_pipeline().vae_temporal_scale_factor
        6
    """
    from diffusers import AutoencoderKLMochi, FlowMatchEulerDiscreteScheduler, MochiPipeline

    tokenizer, text_encoder = _tiny_t5(16, seed + 1)
    vae = seeded_eval(
        seed + 2,
        AutoencoderKLMochi,
        latent_channels=4,
        out_channels=3,
        encoder_block_out_channels=(32, 32, 32, 32),
        decoder_block_out_channels=(32, 32, 32, 32),
        layers_per_block=(1, 1, 1, 1, 1),
        latents_mean=(0.0,) * 4,
        latents_std=(1.0,) * 4,
    )
    transformer = tiny_mochi_transformer(num_layers=num_layers, seed=seed + 3)
    return quiet_pipeline(
        MochiPipeline(
            scheduler=FlowMatchEulerDiscreteScheduler(),
            vae=vae,
            text_encoder=text_encoder,
            tokenizer=tokenizer,
            transformer=transformer,
        )
    )


# ----- Z-Image (single-stream extension) -----------------------------------------------------------------------------

#: Width of the tiny Z-Image caption features (and of its tiny Qwen3 text encoder).
Z_IMAGE_CAP_DIM = 16


def tiny_z_image_transformer(num_layers: int = 3, num_refiner_layers: int = 1, seed: int = 0) -> Any:
    """A random-weight ``ZImageTransformer2DModel`` (width 32, 2 heads × 16, 4 latent channels, patch 2, caption
    features of width 16, eval mode).

    Example:
        >>> len(tiny_z_image_transformer().layers)
        3
    """
    from diffusers import ZImageTransformer2DModel

    return seeded_eval(
        seed,
        ZImageTransformer2DModel,
        in_channels=4,
        dim=32,
        n_layers=num_layers,
        n_refiner_layers=num_refiner_layers,
        n_heads=2,
        n_kv_heads=2,
        cap_feat_dim=Z_IMAGE_CAP_DIM,
        axes_dims=[4, 6, 6],
        axes_lens=[256, 32, 32],
    )


def tiny_z_image_inputs(
    batch_size: int = 1, height: int = 8, width: int = 12, text_tokens: int = 20, seed: int = 0
) -> dict[str, Any]:
    """Keyword inputs of a bare ``ZImageTransformer2DModel`` call, as ``ZImagePipeline`` passes them: lists of
    ``[4, 1, height, width]`` latents and of ``[T_b, 16]`` caption features, ``t`` in [0, 1].

    Sample ``b`` has ``text_tokens·(b + 1)`` caption tokens, so that a batch of two pads its sequences to different
    lengths (the model's attention mask is used). An 8×12 latent gives 4×6 = 24 image tokens (padded to 32 by the
    model).

    Example:
        >>> inputs = tiny_z_image_inputs(batch_size=2)
        >>> [tuple(c.shape) for c in inputs["cap_feats"]]
        [(20, 16), (40, 16)]
    """
    generator = torch.Generator().manual_seed(seed)
    return {
        "x": [torch.randn(4, 1, height, width, generator=generator) for _ in range(batch_size)],
        "t": torch.linspace(0.3, 0.7, batch_size),
        "cap_feats": [
            torch.randn(text_tokens * (index + 1), Z_IMAGE_CAP_DIM, generator=generator) for index in range(batch_size)
        ],
        "return_dict": False,
    }


def tiny_z_image_pipeline(num_layers: int = 3, seed: int = 0) -> Any:
    """A complete random-weight ``ZImagePipeline``: tiny two-layer ``Qwen3Model`` (width 16), byte-level tokenizer
    with a chat template, one-level VAE (4 latent channels), transformer.

    A 16×24 image has a 16×24 latent and 8×12 = 96 image tokens.

    Example:
        >>> type(tiny_z_image_pipeline().text_encoder).__name__
        'Qwen3Model'
    """
    from diffusers import ZImagePipeline

    tokenizer = tiny_byte_level_tokenizer()
    text_encoder = tiny_qwen3_text_encoder(tokenizer, Z_IMAGE_CAP_DIM, seed=seed + 1)
    vae = _tiny_flux_vae(latent_channels=4, seed=seed + 2)
    transformer = tiny_z_image_transformer(num_layers=num_layers, seed=seed + 3)
    return _flow_matching_pipeline(ZImagePipeline, tokenizer, text_encoder, vae, transformer)


# ----- Krea 2 (single-stream extension) ------------------------------------------------------------------------------

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
    from diffusers import AutoencoderKLQwenImage, FlowMatchEulerDiscreteScheduler, Krea2Pipeline
    from transformers import Qwen3VLModel

    tokenizer = tiny_byte_level_tokenizer()
    vocab = len(tokenizer)
    config = tiny_qwen3vl_config(vocab, KREA2_TEXT_DIM, KREA2_TEXT_LAYERS)
    text_encoder = seeded_eval(seed + 1, Qwen3VLModel, config)
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


# ----- Bria-Fibo -----------------------------------------------------------------------------------------------------

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
        **_FLUX_FAMILY_GEOMETRY,
        num_layers=num_layers,
        num_single_layers=num_single_layers,
        joint_attention_dim=BRIA_FIBO_JOINT_DIM,
        text_encoder_dim=BRIA_FIBO_TEXT_DIM,
        axes_dims_rope=list(_AXES),
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
    inputs = _flux_clone_inputs(batch_size, height, width, text_tokens, seed, diagonal_text_ids=False)
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
    return _flow_matching_pipeline(BriaFiboPipeline, tokenizer, text_encoder, vae, transformer)


# ----- HiDream-I1 ----------------------------------------------------------------------------------------------------

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

    from .testing import _tiny_clip

    tokenizer, text_encoder = _tiny_clip(HIDREAM_POOLED_DIM // 2, seed + 1, with_projection=True)
    tokenizer_2, text_encoder_2 = _tiny_clip(HIDREAM_POOLED_DIM // 2, seed + 2, with_projection=True)
    tokenizer_3, text_encoder_3 = _tiny_t5(HIDREAM_T5_DIM, seed + 3)
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
            vae=_tiny_flux_vae(latent_channels=4, seed=seed + 5),
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


# ----- JoyImage Edit -------------------------------------------------------------------------------------------------

#: Width of the tiny JoyImage Edit's text features (``text_dim``).
JOYIMAGE_TEXT_DIM = 16


def tiny_joyimage_transformer(num_layers: int = 3, rope_type: str = "rope", seed: int = 0, plus: bool = False) -> Any:
    """A random-weight ``JoyImageEditTransformer3DModel`` (``plus``: ``JoyImageEditPlusTransformer3DModel``; 2 heads
    × 16, patch ``(1, 2, 2)``, 4 latent channels, text width 16; eval mode). The learned modulation tables start at
    zero in diffusers: they are randomised here so that the tests see them.

    Example:
        >>> len(tiny_joyimage_transformer().double_blocks)
        3
    """
    import diffusers

    model_class = diffusers.JoyImageEditPlusTransformer3DModel if plus else diffusers.JoyImageEditTransformer3DModel
    model = seeded_eval(
        seed,
        model_class,
        patch_size=[1, 2, 2],
        in_channels=4,
        hidden_size=32,
        num_attention_heads=2,
        text_dim=JOYIMAGE_TEXT_DIM,
        num_layers=num_layers,
        rope_dim_list=[4, 6, 6],
        rope_type=rope_type,
    )
    generator = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for block in model.double_blocks:
            for table in (block.img_mod.modulate_table, block.txt_mod.modulate_table):
                table.copy_(0.1 * torch.randn(table.shape, generator=generator))
    return model


def tiny_joyimage_inputs(
    batch_size: int = 1, height: int = 8, width: int = 12, text_tokens: int = 7, references: int = 0, seed: int = 0
) -> dict[str, Any]:
    """Keyword inputs of a bare ``JoyImageEditTransformer3DModel`` call: latents ``[B, 4, 1, h, w]`` (``references``
    > 0: ``[B, references + 1, 4, 1, h, w]``, the reference images first and the target last, as the edit pipeline
    stacks them), a 0-1000 timestep and text features ``[B, T, 16]``. An 8×12 latent has 4×6 target tokens.

    Example:
        >>> tuple(tiny_joyimage_inputs(references=1)["hidden_states"].shape)
        (1, 2, 4, 1, 8, 12)
    """
    generator = torch.Generator().manual_seed(seed)
    items = () if references == 0 else (references + 1,)
    return {
        "hidden_states": torch.randn(batch_size, *items, 4, 1, height, width, generator=generator),
        "timestep": torch.linspace(300.0, 700.0, batch_size),
        "encoder_hidden_states": torch.randn(batch_size, text_tokens, JOYIMAGE_TEXT_DIM, generator=generator),
        "return_dict": False,
    }


def tiny_joyimage_pipeline(num_layers: int = 3, seed: int = 0) -> Any:
    """A random-weight ``JoyImageEditPipeline`` for its text-to-image path (no reference image, so no Qwen3-VL
    processor): tiny two-layer ``Qwen3VLForConditionalGeneration`` (width 16) with a byte-level chat tokenizer, tiny
    Wan VAE (4 latent channels, ``vae_scale_factor_spatial`` 8), the tiny transformer.

    The pipeline snaps every request to its 1024-pixel buckets: a square request gives a 128×128 latent and 64×64
    image tokens (use ``output_type="latent"``: decoding 1024² pixels is slow on a CPU).

    Example:
        >>> type(tiny_joyimage_pipeline()).__name__
        'JoyImageEditPipeline'
    """
    from diffusers import AutoencoderKLWan, FlowMatchEulerDiscreteScheduler, JoyImageEditPipeline
    from transformers import Qwen3VLForConditionalGeneration

    tokenizer = tiny_byte_level_tokenizer()
    vocab = len(tokenizer)
    config = tiny_qwen3vl_config(vocab, JOYIMAGE_TEXT_DIM, 2)
    vae = seeded_eval(
        seed + 2,
        AutoencoderKLWan,
        base_dim=8,
        z_dim=4,
        dim_mult=[1, 1, 1, 1],
        num_res_blocks=1,
        temperal_downsample=[False, True, True],
        latents_mean=[0.0] * 4,
        latents_std=[1.0] * 4,
    )
    return quiet_pipeline(
        JoyImageEditPipeline(
            scheduler=FlowMatchEulerDiscreteScheduler(),
            vae=vae,
            text_encoder=seeded_eval(seed + 1, Qwen3VLForConditionalGeneration, config),
            tokenizer=tokenizer,
            transformer=tiny_joyimage_transformer(num_layers=num_layers, seed=seed + 3),
            processor=None,
        )
    )


# ----- JoyImage Edit Plus --------------------------------------------------------------------------------------------


def tiny_joyimage_edit_plus_transformer(num_layers: int = 3, seed: int = 0) -> Any:
    """A random-weight ``JoyImageEditPlusTransformer3DModel`` (the tiny JoyImage Edit geometry; eval mode).

    Example:
        >>> type(tiny_joyimage_edit_plus_transformer()).__name__
        'JoyImageEditPlusTransformer3DModel'
    """
    return tiny_joyimage_transformer(num_layers=num_layers, seed=seed, plus=True)


def tiny_joyimage_edit_plus_inputs(
    batch_size: int = 1, text_tokens: int = 7, padded_text: int = 2, padded_patches: int = 3, seed: int = 0
) -> dict[str, Any]:
    """Keyword inputs of a bare ``JoyImageEditPlusTransformer3DModel`` call, packed as ``JoyImageEditPlusPipeline``
    packs them: per sample a 4×6-token target, then a 2×4-token reference, then ``padded_patches`` padding patches
    (``hidden_states [B, 24 + 8 + pad, 4, 1, 2, 2]``, ``shape_list``), a 0-1000 timestep, text features
    ``[B, T, 16]`` whose last ``padded_text`` tokens are masked out.

    Example:
        >>> inputs = tiny_joyimage_edit_plus_inputs()
        >>> tuple(inputs["hidden_states"].shape), inputs["shape_list"]
        ((1, 35, 4, 1, 2, 2), [[(1, 4, 6), (1, 2, 4)]])
    """
    generator = torch.Generator().manual_seed(seed)
    shapes = [(1, 4, 6), (1, 2, 4)]
    patches = sum(t * h * w for t, h, w in shapes)
    hidden = torch.randn(batch_size, patches + padded_patches, 4, 1, 2, 2, generator=generator)
    hidden[:, patches:] = 0  # padding patches, as the pipeline's zeros
    mask = torch.ones(batch_size, text_tokens, dtype=torch.long)  # [B, T]
    if padded_text > 0:
        mask[:, text_tokens - padded_text :] = 0
    return {
        "hidden_states": hidden,
        "timestep": torch.linspace(300.0, 700.0, batch_size),
        "encoder_hidden_states": torch.randn(batch_size, text_tokens, JOYIMAGE_TEXT_DIM, generator=generator),
        "encoder_hidden_states_mask": mask,
        "shape_list": [list(shapes) for _ in range(batch_size)],
        "return_dict": False,
    }


def tiny_qwen3vl_config(vocab_size: int, hidden_size: int, num_layers: int) -> Any:
    """A tiny ``Qwen3VLConfig`` (2 heads × 8, one-layer vision tower of width 16, special image/video ids after the
    vocabulary), shared by the tiny Krea 2 and JoyImage Edit text encoders.

    Example:
        >>> tiny_qwen3vl_config(300, 16, 2).text_config.num_hidden_layers
        2
    """
    from transformers import Qwen3VLConfig

    return Qwen3VLConfig(
        text_config={
            "hidden_size": hidden_size,
            "intermediate_size": 16,
            "num_hidden_layers": num_layers,
            "num_attention_heads": 2,
            "num_key_value_heads": 2,
            "head_dim": 8,
            "rope_scaling": {"mrope_section": [1, 1, 2], "rope_type": "default", "mrope_interleaved": True},
            "vocab_size": vocab_size,
            "pad_token_id": 0,
            "max_position_embeddings": 2048,
        },
        vision_config={
            "depth": 1, "hidden_size": 16, "intermediate_size": 16, "num_heads": 2, "out_hidden_size": 16,
            "deepstack_visual_indexes": [],
        },
        image_token_id=vocab_size + 1,
        video_token_id=vocab_size + 2,
        vision_start_token_id=vocab_size + 3,
        vision_end_token_id=vocab_size + 4,
    )
