"""Tiny random-weight SD3/SD3.5 and CogVideoX models and pipelines, built fully offline (tests, docs).

Companion of :mod:`conceptattention.testing` (FLUX.1). Nothing here downloads anything: tokenizers are the in-memory
character-level ones of :mod:`conceptattention.testing` (so every concept is multi-token), encoders, VAEs and
transformers are built from small configs, seeded before each component, in eval mode.

Sizes are chosen so that the pipelines exercise the real code paths: the SD3 VAE downsamples by 2 and the
transformer patchifies by 2 (a 32×48 image gives an 8×12 token grid), CLIP-L ⊕ CLIP-G (16 + 16 channels) is
zero-padded to the T5 width (48) as in the real pipeline; the CogVideoX VAE compresses 4× in space and time.

Example:
    >>> pipe = tiny_sd3_pipeline()
    >>> type(pipe).__name__
    'StableDiffusion3Pipeline'
"""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any, Literal

import torch

from .testing import (
    _SD3_STYLE_VAE,
    _call_inputs,
    _tiny_clip,
    _tiny_t5,
    quiet_pipeline,
    seeded_eval,
    tiny_autoencoder_kl,
)


__all__ = [
    "cogvideox_rotary_embeddings",
    "tiny_cogvideox_inputs",
    "tiny_cogvideox_pipeline",
    "tiny_cogvideox_transformer",
    "tiny_sd3_inputs",
    "tiny_sd3_pipeline",
    "tiny_sd3_transformer",
]

CogVideoXVersion = Literal["1.0", "1.0-rope", "1.5"]

# ----------------------------------------------------------------------------------------------------------------
# SD3 / SD3.5
# ----------------------------------------------------------------------------------------------------------------


def tiny_sd3_transformer(
    num_layers: int = 3,
    sd35: bool = False,
    patch_size: int = 2,
    num_attention_heads: int = 4,
    attention_head_dim: int = 8,
    in_channels: int = 4,
    joint_attention_dim: int = 48,
    pooled_projection_dim: int = 32,
    seed: int = 0,
) -> Any:
    """A random-weight ``SD3Transformer2DModel`` (eval mode); its last block has ``context_pre_only=True``.

    Args:
        num_layers: Joint blocks.
        sd35: SD3.5-medium-like: RMS QK-norm and dual attention (an extra image self-attention ``attn2``) in block 0.
        patch_size: Patch size of the latent patchifier.
        num_attention_heads: Heads (width = heads × head dim).
        attention_head_dim: Head dimension.
        in_channels: Latent channels.
        joint_attention_dim: Width of the text encoder states (the concept embedding width).
        pooled_projection_dim: Width of the pooled text vector.
        seed: Seed of the random weights.

    Returns:
        The transformer.

    Example:
        >>> tiny_sd3_transformer(sd35=True).transformer_blocks[0].attn2 is not None
        True
    """
    from diffusers import SD3Transformer2DModel

    inner_dim = num_attention_heads * attention_head_dim
    return seeded_eval(
        seed,
        SD3Transformer2DModel,
        sample_size=16,
        patch_size=patch_size,
        in_channels=in_channels,
        num_layers=num_layers,
        attention_head_dim=attention_head_dim,
        num_attention_heads=num_attention_heads,
        joint_attention_dim=joint_attention_dim,
        caption_projection_dim=inner_dim,
        pooled_projection_dim=pooled_projection_dim,
        out_channels=in_channels,
        pos_embed_max_size=32,
        dual_attention_layers=(0,) if sd35 else (),
        qk_norm="rms_norm" if sd35 else None,
    )


def tiny_sd3_inputs(
    batch_size: int = 1,
    height: int = 8,
    width: int = 12,
    text_tokens: int = 10,
    in_channels: int = 4,
    joint_attention_dim: int = 48,
    pooled_projection_dim: int = 32,
    seed: int = 0,
) -> dict[str, Any]:
    """Keyword inputs of a bare ``SD3Transformer2DModel`` call on a ``height × width`` latent.

    Args:
        batch_size: Batch size B.
        height: Latent height (token rows = height / patch size).
        width: Latent width.
        text_tokens: Prompt tokens T.
        in_channels: Latent channels.
        joint_attention_dim: Width of the text states.
        pooled_projection_dim: Width of the pooled vector.
        seed: Seed of the random inputs.

    Returns:
        ``hidden_states [B, c, H, W]``, ``encoder_hidden_states [B, T, joint]``, ``pooled_projections [B, pooled]``,
        ``timestep [B]`` (0..1000 scale), ``return_dict=False``.

    Example:
        >>> tiny_sd3_inputs(batch_size=2)["hidden_states"].shape
        torch.Size([2, 4, 8, 12])
    """
    shapes = {
        "hidden_states": (in_channels, height, width),
        "encoder_hidden_states": (text_tokens, joint_attention_dim),
        "pooled_projections": (pooled_projection_dim,),
    }
    return _call_inputs(seed, batch_size, shapes, 500.0)


def tiny_sd3_pipeline(num_layers: int = 3, sd35: bool = False, with_t5: bool = True, seed: int = 0) -> Any:
    """A complete random-weight ``StableDiffusion3Pipeline``: CLIP-L, CLIP-G, T5, VAE and transformer.

    CLIP-L and CLIP-G have 16 channels each (pooled 16 + 16 = 32 = ``pooled_projection_dim``); their penultimate
    states are concatenated and zero-padded to the T5 width 48 (= ``joint_attention_dim``) by the pipeline. The VAE
    downsamples by 2 and the transformer patchifies by 2, so a 32×48 image has an 8×12 token grid.

    Args:
        num_layers: Joint blocks of the transformer.
        sd35: SD3.5-medium-like transformer (RMS QK-norm, dual attention in block 0).
        with_t5: Include the T5 encoder (``False`` builds the pipeline without ``text_encoder_3``, as users do to
            save memory; the prompt's T5 part is then zeros).
        seed: Seed of the random weights.

    Returns:
        The pipeline, progress bar disabled.

    Example:
        >>> tiny_sd3_pipeline().vae_scale_factor
        2
    """
    from diffusers import FlowMatchEulerDiscreteScheduler, StableDiffusion3Pipeline

    clip_tokenizer, clip_l = _tiny_clip(16, seed, with_projection=True)
    clip_tokenizer_2, clip_g = _tiny_clip(16, seed + 1, with_projection=True)
    t5_tokenizer, t5 = _tiny_t5(48, seed + 2) if with_t5 else (None, None)
    vae = tiny_autoencoder_kl((4, 8), latent_channels=4, norm_num_groups=2, seed=seed + 3, **_SD3_STYLE_VAE)
    return quiet_pipeline(
        StableDiffusion3Pipeline(
            scheduler=FlowMatchEulerDiscreteScheduler(),
            vae=vae,
            text_encoder=clip_l,
            tokenizer=clip_tokenizer,
            text_encoder_2=clip_g,
            tokenizer_2=clip_tokenizer_2,
            text_encoder_3=t5,
            tokenizer_3=t5_tokenizer,
            transformer=tiny_sd3_transformer(num_layers=num_layers, sd35=sd35, seed=seed + 4),
        )
    )


# ----------------------------------------------------------------------------------------------------------------
# CogVideoX
# ----------------------------------------------------------------------------------------------------------------


def tiny_cogvideox_transformer(
    version: CogVideoXVersion = "1.0",
    num_layers: int = 2,
    text_embed_dim: int = 32,
    max_text_seq_length: int = 8,
    seed: int = 0,
) -> Any:
    """A random-weight ``CogVideoXTransformer3DModel`` (2 heads × 16, eval mode).

    Args:
        version: ``"1.0"`` (CogVideoX-2b-like: 3-D sin-cos positions), ``"1.0-rope"`` (CogVideoX-5b-like: 3-D RoPE on
            the video tokens) or ``"1.5"`` (RoPE and ``patch_size_t=2``).
        num_layers: Blocks.
        text_embed_dim: Width of the T5 states (the concept embedding width).
        max_text_seq_length: Prompt length the sin-cos positions are built for (prompts must have this length).
        seed: Seed of the random weights.

    Returns:
        The transformer.

    Example:
        >>> tiny_cogvideox_transformer("1.5").config.patch_size_t
        2
    """
    from diffusers import CogVideoXTransformer3DModel

    if version not in ("1.0", "1.0-rope", "1.5"):
        raise ValueError(f"version must be '1.0', '1.0-rope' or '1.5', got {version!r}.")
    return seeded_eval(
        seed,
        CogVideoXTransformer3DModel,
        num_attention_heads=2,
        attention_head_dim=16,
        in_channels=4,
        out_channels=4,
        time_embed_dim=8,
        text_embed_dim=text_embed_dim,
        num_layers=num_layers,
        sample_width=8,
        sample_height=8,
        sample_frames=9,
        patch_size=2,
        patch_size_t=2 if version == "1.5" else None,
        temporal_compression_ratio=4,
        max_text_seq_length=max_text_seq_length,
        use_rotary_positional_embeddings=version != "1.0",
    )


def cogvideox_rotary_embeddings(
    transformer: Any, latent_frames: int, latent_height: int, latent_width: int
) -> tuple[torch.Tensor, torch.Tensor] | None:
    """The 3-D RoPE ``(cos, sin)`` that ``CogVideoXPipeline`` builds for a latent video, or None without RoPE.

    Calls the pipeline's own ``_prepare_rotary_positional_embeddings`` with a stand-in pipeline whose spatial VAE
    factor is 1, so that pixel sizes equal latent sizes.

    Args:
        transformer: A ``CogVideoXTransformer3DModel``.
        latent_frames: Latent frames (a multiple of ``patch_size_t`` for CogVideoX 1.5).
        latent_height: Latent height.
        latent_width: Latent width.

    Returns:
        ``(cos, sin)``, each ``[tokens, head_dim]``, or None for sin-cos checkpoints.

    Example:
        >>> cos, sin = cogvideox_rotary_embeddings(tiny_cogvideox_transformer("1.5"), 2, 4, 6)
        >>> cos.shape
        torch.Size([6, 16])
    """
    from diffusers import CogVideoXPipeline

    if not transformer.config.use_rotary_positional_embeddings:
        return None
    stand_in = SimpleNamespace(vae_scale_factor_spatial=1, transformer=transformer)
    return CogVideoXPipeline._prepare_rotary_positional_embeddings(
        stand_in, latent_height, latent_width, latent_frames, torch.device("cpu")
    )


def tiny_cogvideox_inputs(
    transformer: Any,
    batch_size: int = 1,
    frames: int = 2,
    height: int = 4,
    width: int = 6,
    seed: int = 0,
) -> dict[str, Any]:
    """Keyword inputs of a bare ``CogVideoXTransformer3DModel`` call on a ``frames × height × width`` latent video.

    Args:
        transformer: The model (its config gives the text length, widths and RoPE).
        batch_size: Batch size B.
        frames: Latent frames (a multiple of 2 for CogVideoX 1.5).
        height: Latent height (token rows = height / 2).
        width: Latent width.
        seed: Seed of the random inputs.

    Returns:
        ``hidden_states [B, F, c, H, W]``, ``encoder_hidden_states [B, T, text]``, ``timestep [B]`` (integer DDPM
        scale), ``image_rotary_emb`` (or None) and ``return_dict=False``.

    Example:
        >>> tiny_cogvideox_inputs(tiny_cogvideox_transformer())["hidden_states"].shape
        torch.Size([1, 2, 4, 4, 6])
    """
    config = transformer.config
    shapes = {
        "hidden_states": (frames, config.in_channels, height, width),
        "encoder_hidden_states": (config.max_text_seq_length, config.text_embed_dim),
    }
    rotary = cogvideox_rotary_embeddings(transformer, frames, height, width)
    return _call_inputs(seed, batch_size, shapes, 500, image_rotary_emb=rotary)  # integer timestep: long tensor


def tiny_cogvideox_pipeline(version: CogVideoXVersion = "1.0", num_layers: int = 2, seed: int = 0) -> Any:
    """A complete random-weight ``CogVideoXPipeline``: T5 (in-memory tokenizer), 3-D VAE, DDIM, transformer.

    The VAE compresses 4× in space and in time, the transformer patchifies by 2: 9 frames of 16×24 pixels give 3
    latent frames of 4×6, i.e. 3 × 2 × 3 tokens (CogVideoX 1.5: latent frames padded to 4, 2 token frames). Prompts
    are encoded to 16 tokens (call the pipeline with ``max_sequence_length=16``).

    Args:
        version: ``"1.0"``, ``"1.0-rope"`` or ``"1.5"`` (see :func:`tiny_cogvideox_transformer`).
        num_layers: Transformer blocks.
        seed: Seed of the random weights.

    Returns:
        The pipeline, progress bar disabled.

    Example:
        >>> tiny_cogvideox_pipeline().vae_scale_factor_temporal
        4
    """
    from diffusers import AutoencoderKLCogVideoX, CogVideoXDDIMScheduler, CogVideoXPipeline

    tokenizer, text_encoder = _tiny_t5(32, seed)
    vae = seeded_eval(
        seed + 1,
        AutoencoderKLCogVideoX,
        in_channels=3,
        out_channels=3,
        down_block_types=("CogVideoXDownBlock3D",) * 3,
        up_block_types=("CogVideoXUpBlock3D",) * 3,
        block_out_channels=(8, 8, 8),
        latent_channels=4,
        layers_per_block=1,
        norm_num_groups=2,
        temporal_compression_ratio=4,
    )
    transformer = tiny_cogvideox_transformer(version, num_layers=num_layers, max_text_seq_length=16, seed=seed + 2)
    return quiet_pipeline(
        CogVideoXPipeline(
            tokenizer=tokenizer,
            text_encoder=text_encoder,
            vae=vae,
            transformer=transformer,
            scheduler=CogVideoXDDIMScheduler(),
        )
    )
