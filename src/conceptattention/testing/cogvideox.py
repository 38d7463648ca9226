"""Tiny random-weight CogVideoX transformer, inputs and pipeline for :mod:`conceptattention.adapters.cogvideox`.

The CogVideoX VAE compresses 4× in space and time.

Example:
    >>> type(tiny_cogvideox_transformer()).__name__
    'CogVideoXTransformer3DModel'
"""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any, Literal

import torch

from .common import call_inputs, quiet_pipeline, seeded_eval
from .text_encoders import tiny_t5


CogVideoXVersion = Literal["1.0", "1.0-rope", "1.5"]


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
    return call_inputs(seed, batch_size, shapes, 500, image_rotary_emb=rotary)  # integer timestep: long tensor


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

    tokenizer, text_encoder = tiny_t5(32, seed)
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
