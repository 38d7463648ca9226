"""Tiny random-weight JoyImage Edit and Edit Plus transformers, inputs and pipeline for
:mod:`conceptattention.adapters.joyimage`.

Example:
    >>> type(tiny_joyimage_transformer()).__name__
    'JoyImageEditTransformer3DModel'
"""

from __future__ import annotations

from typing import Any

import torch

from .common import quiet_pipeline, seeded_eval
from .text_encoders import tiny_byte_level_tokenizer, tiny_qwen3vl_config


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
