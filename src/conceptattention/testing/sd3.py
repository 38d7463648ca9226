"""Tiny random-weight SD3/SD3.5 transformer, inputs and pipeline for :mod:`conceptattention.adapters.sd3`.

Sizes are chosen so that the pipelines exercise the real code paths: the SD3 VAE downsamples by 2 and the
transformer patchifies by 2 (a 32×48 image gives an 8×12 token grid), CLIP-L ⊕ CLIP-G (16 + 16 channels) is
zero-padded to the T5 width (48) as in the real pipeline.

Example:
    >>> type(tiny_sd3_transformer()).__name__
    'SD3Transformer2DModel'
"""

from __future__ import annotations

from typing import Any

from .common import SD3_STYLE_VAE, call_inputs, quiet_pipeline, seeded_eval, tiny_autoencoder_kl
from .text_encoders import tiny_clip, tiny_t5


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
    return call_inputs(seed, batch_size, shapes, 500.0)


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

    clip_tokenizer, clip_l = tiny_clip(16, seed, with_projection=True)
    clip_tokenizer_2, clip_g = tiny_clip(16, seed + 1, with_projection=True)
    t5_tokenizer, t5 = tiny_t5(48, seed + 2) if with_t5 else (None, None)
    vae = tiny_autoencoder_kl((4, 8), latent_channels=4, norm_num_groups=2, seed=seed + 3, **SD3_STYLE_VAE)
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
