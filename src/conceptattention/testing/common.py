"""Seeding, the tiny VAE and the call-input helpers shared by every tiny-model builder of :mod:`conceptattention.testing`.

Example:
    >>> type(tiny_autoencoder_kl()).__name__
    'AutoencoderKL'
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, TypeVar

import torch


_Built = TypeVar("_Built")


#: ``AutoencoderKL`` settings shared by the tiny SD3/FLUX-style VAEs: no quant convs, SD3's latent shift and scale
#: (those of diffusers' fast tests).
SD3_STYLE_VAE: dict[str, Any] = {
    "use_quant_conv": False,
    "use_post_quant_conv": False,
    "shift_factor": 0.0609,
    "scaling_factor": 1.5035,
}


def seeded_eval(seed: int | None, build: Callable[..., _Built], /, *args: Any, **kwargs: Any) -> _Built:
    """``build(*args, **kwargs).eval()`` right after ``torch.manual_seed(seed)``: the seeded construction of every
    tiny component, so that its random weights depend on ``seed`` only.

    Args:
        seed: Seed of torch's global RNG; ``None`` builds from the RNG's current state (no reseeding).
        build: A module class or factory.
        *args: Positional arguments of ``build``.
        **kwargs: Keyword arguments of ``build``.

    Returns:
        The built module, in eval mode.

    Example:
        >>> first, second = seeded_eval(3, torch.nn.Linear, 2, 2), seeded_eval(3, torch.nn.Linear, 2, 2)
        >>> torch.equal(first.weight, second.weight), first.training
        (True, False)
    """
    if seed is not None:
        torch.manual_seed(seed)
    return build(*args, **kwargs).eval()


def quiet_pipeline(pipe: Any) -> Any:
    """Disable a diffusers pipeline's progress bar and return the pipeline (the last step of every tiny pipeline).

    Example:
        >>> from conceptattention.testing import tiny_flux_pipeline
        >>> quiet_pipeline(tiny_flux_pipeline())._progress_bar_config
        {'disable': True}
    """
    pipe.set_progress_bar_config(disable=True)
    return pipe


def call_inputs(
    seed: int, batch_size: int, shapes: Mapping[str, tuple[int, ...]], timestep: float, **extra: Any
) -> dict[str, Any]:
    """Keyword inputs of a bare transformer call: one ``randn [batch_size, *shape]`` per entry of ``shapes``, drawn in
    that order from a generator seeded with ``seed``, a constant ``timestep [batch_size]``, ``extra`` and
    ``return_dict=False``."""
    generator = torch.Generator().manual_seed(seed)
    inputs = {name: torch.randn(batch_size, *shape, generator=generator) for name, shape in shapes.items()}
    return {**inputs, "timestep": torch.full((batch_size,), timestep), **extra, "return_dict": False}


def tiny_autoencoder_kl(
    block_out_channels: tuple[int, ...] = (4,),
    latent_channels: int = 1,
    norm_num_groups: int = 1,
    sample_size: int = 32,
    seed: int | None = 0,
    **config: Any,
) -> Any:
    """A random RGB ``AutoencoderKL`` with one ResNet per block and one level per block width, in eval mode.

    Args:
        block_out_channels: Widths of the levels; ``vae_scale_factor`` is ``2 ** (len(block_out_channels) - 1)``.
        latent_channels: Latent channels.
        norm_num_groups: Groups of the group norms.
        sample_size: Sample size recorded in the config.
        seed: Seed of the random weights (``None``: the global RNG's current state).
        **config: Further ``AutoencoderKL`` arguments.

    Returns:
        The VAE.

    Example:
        >>> tiny_autoencoder_kl((4, 8), latent_channels=4, norm_num_groups=2).config.down_block_types
        ('DownEncoderBlock2D', 'DownEncoderBlock2D')
    """
    from diffusers import AutoencoderKL

    if len(block_out_channels) > 1:  # AutoencoderKL's default block types are one level
        config["down_block_types"] = ("DownEncoderBlock2D",) * len(block_out_channels)
        config["up_block_types"] = ("UpDecoderBlock2D",) * len(block_out_channels)
    return seeded_eval(
        seed,
        AutoencoderKL,
        sample_size=sample_size,
        in_channels=3,
        out_channels=3,
        block_out_channels=block_out_channels,
        layers_per_block=1,
        latent_channels=latent_channels,
        norm_num_groups=norm_num_groups,
        **config,
    )


def padding_mask(batch_size: int, text_tokens: int, padded: int, dtype: torch.dtype) -> torch.Tensor:
    """A ``[B, T]`` text mask of ones whose last ``padded`` tokens are zero (none when ``padded <= 0``)."""
    mask = torch.ones(batch_size, text_tokens, dtype=dtype)  # [B, T]
    if padded > 0:
        mask[:, text_tokens - padded :] = 0
    return mask


#: Geometry shared by the tiny FLUX-family transformers: 4 latent channels, patch 1, 2 heads × 16.
FLUX_FAMILY_GEOMETRY: dict[str, Any] = {
    "patch_size": 1,
    "in_channels": 4,
    "attention_head_dim": 16,
    "num_attention_heads": 2,
}


def flow_matching_pipeline(pipeline_class: Any, tokenizer: Any, text_encoder: Any, vae: Any, transformer: Any) -> Any:
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
