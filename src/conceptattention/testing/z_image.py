"""Tiny random-weight Z-Image transformer, inputs and pipeline for :mod:`conceptattention.adapters.z_image`.

Example:
    >>> type(tiny_z_image_transformer()).__name__
    'ZImageTransformer2DModel'
"""

from __future__ import annotations

from typing import Any

import torch

from .common import flow_matching_pipeline, seeded_eval
from .flux import tiny_flux_vae
from .text_encoders import tiny_byte_level_tokenizer, tiny_qwen3_text_encoder


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

    model = seeded_eval(
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
    # diffusers < 0.39 creates the pad tokens with torch.empty (uninitialised memory: NaN now and then); later
    # releases zero them. Zero them here too, so the tiny model is the same, and finite, on every supported release.
    with torch.no_grad():
        for name in ("x_pad_token", "cap_pad_token", "siglip_pad_token"):
            token = getattr(model, name, None)
            if token is not None:
                token.zero_()
    return model


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
    vae = tiny_flux_vae(latent_channels=4, seed=seed + 2)
    transformer = tiny_z_image_transformer(num_layers=num_layers, seed=seed + 3)
    return flow_matching_pipeline(ZImagePipeline, tokenizer, text_encoder, vae, transformer)
