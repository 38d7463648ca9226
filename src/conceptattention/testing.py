"""Tiny random-weight models and pipelines built fully offline (tests, docs, benchmarks).

Nothing here downloads anything: tokenizers are built from in-memory vocabularies (character level, so every
concept is multi-token), encoders and the VAE from small configs, seeded before each component.

Example:
    >>> pipe = tiny_flux_pipeline()
    >>> type(pipe).__name__
    'FluxPipeline'
"""

from __future__ import annotations

import string
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

import torch


_Built = TypeVar("_Built")

#: ``AutoencoderKL`` settings shared by the tiny SD3/FLUX-style VAEs: no quant convs, SD3's latent shift and scale
#: (those of diffusers' fast tests).
_SD3_STYLE_VAE: dict[str, Any] = {
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
        >>> quiet_pipeline(tiny_flux_pipeline())._progress_bar_config
        {'disable': True}
    """
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _call_inputs(
    seed: int, batch_size: int, shapes: Mapping[str, tuple[int, ...]], timestep: float, **extra: Any
) -> dict[str, Any]:
    """Keyword inputs of a bare transformer call: one ``randn [batch_size, *shape]`` per entry of ``shapes``, drawn in
    that order from a generator seeded with ``seed``, a constant ``timestep [batch_size]``, ``extra`` and
    ``return_dict=False``."""
    generator = torch.Generator().manual_seed(seed)
    inputs = {name: torch.randn(batch_size, *shape, generator=generator) for name, shape in shapes.items()}
    return {**inputs, "timestep": torch.full((batch_size,), timestep), **extra, "return_dict": False}


def _bytes_to_unicode() -> list[str]:
    """The 256 printable stand-ins of CLIP's byte-level BPE (GPT-2's table)."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
    printable += list(range(ord("®"), ord("ÿ") + 1))
    characters = printable[:]
    extra = 0
    for byte in range(256):
        if byte not in printable:
            printable.append(byte)
            characters.append(256 + extra)
            extra += 1
    return [chr(code) for code in characters]


def tiny_clip_tokenizer(model_max_length: int = 77) -> Any:
    """A character-level ``CLIPTokenizer`` (no merges) built in memory: BOS id 0, EOS/pad id 1."""
    from transformers import CLIPTokenizer

    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for character in _bytes_to_unicode():
        vocab.setdefault(character, len(vocab))
        vocab.setdefault(character + "</w>", len(vocab))
    return CLIPTokenizer(
        vocab=vocab,
        merges=[],
        bos_token="<|startoftext|>",
        eos_token="<|endoftext|>",
        pad_token="<|endoftext|>",
        unk_token="<|endoftext|>",
        model_max_length=model_max_length,
    )


def tiny_t5_tokenizer(model_max_length: int = 128) -> Any:
    """A character-level ``T5Tokenizer`` built in memory: pad 0, EOS 1, unk 2."""
    from transformers import T5Tokenizer

    vocab = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("▁", -2.0)]
    for character in string.digits + string.ascii_letters + string.punctuation:
        vocab += [("▁" + character, -3.0), (character, -3.5)]
    return T5Tokenizer(vocab=vocab, extra_ids=0, model_max_length=model_max_length)


def tiny_clip_text_model(
    tokenizer: Any, hidden_size: int = 32, *, with_projection: bool = False, seed: int = 0
) -> Any:
    """A 2-layer random ``CLIPTextModel`` (or ``CLIPTextModelWithProjection``) for an in-memory CLIP tokenizer.

    Example:
        >>> tiny_clip_text_model(tiny_clip_tokenizer()).config.hidden_size
        32
    """
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    config = CLIPTextConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        intermediate_size=37,
        num_attention_heads=4,
        num_hidden_layers=2,
        bos_token_id=0,
        eos_token_id=1,  # equal to the tokenizer's EOS id: the pooled output is read at the first EOS
        pad_token_id=1,
        projection_dim=hidden_size,
        max_position_embeddings=77,
    )
    return seeded_eval(seed, CLIPTextModelWithProjection if with_projection else CLIPTextModel, config)


def tiny_t5_encoder(vocab_size: int, d_model: int = 32, seed: int = 0, umt5: bool = False) -> Any:
    """A two-layer random ``T5EncoderModel`` (or ``UMT5EncoderModel``) without dropout, in eval mode.

    Example:
        >>> tiny_t5_encoder(vocab_size=192).config.d_model
        32
    """
    from transformers import T5Config, T5EncoderModel, UMT5Config, UMT5EncoderModel

    config_class, model_class = (UMT5Config, UMT5EncoderModel) if umt5 else (T5Config, T5EncoderModel)
    config = config_class(
        vocab_size=vocab_size,
        d_model=d_model,
        d_kv=8,
        d_ff=37,
        num_layers=2,
        num_heads=4,
        relative_attention_num_buckets=8,
        pad_token_id=0,
        eos_token_id=1,
        decoder_start_token_id=0,
        dropout_rate=0.0,
    )
    return seeded_eval(seed, model_class, config)


def tiny_t5_text_model(tokenizer: Any, d_model: int = 32, *, seed: int = 0) -> Any:
    """A 2-layer random ``T5EncoderModel`` (dropout 0) for an in-memory T5 tokenizer.

    Example:
        >>> tiny_t5_text_model(tiny_t5_tokenizer()).config.d_model
        32
    """
    return tiny_t5_encoder(len(tokenizer), d_model, seed=seed)


def _tiny_clip(hidden_size: int, seed: int, with_projection: bool = False) -> tuple[Any, Any]:
    """An in-memory CLIP tokenizer and its tiny random text model."""
    tokenizer = tiny_clip_tokenizer()
    return tokenizer, tiny_clip_text_model(tokenizer, hidden_size, with_projection=with_projection, seed=seed)


def _tiny_t5(d_model: int, seed: int, umt5: bool = False) -> tuple[Any, Any]:
    """An in-memory T5 tokenizer and its tiny random (UM)T5 encoder."""
    tokenizer = tiny_t5_tokenizer()
    return tokenizer, tiny_t5_encoder(len(tokenizer), d_model, seed=seed, umt5=umt5)


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


def _tiny_flux_vae(latent_channels: int, seed: int) -> Any:
    """A one-level ``AutoencoderKL`` (``vae_scale_factor`` 1), as in diffusers' Flux fast tests."""
    return tiny_autoencoder_kl(latent_channels=latent_channels, seed=seed, **_SD3_STYLE_VAE)


def tiny_flux_transformer(
    num_layers: int = 4,
    num_single_layers: int = 1,
    num_attention_heads: int = 2,
    attention_head_dim: int = 16,
    joint_attention_dim: int = 32,
    pooled_projection_dim: int = 32,
    in_channels: int = 4,
    guidance_embeds: bool = False,
    seed: int = 0,
) -> Any:
    """A random-weight ``FluxTransformer2DModel`` small enough for CPU tests (eval mode).

    Example:
        >>> tiny_flux_transformer().config.num_layers
        4
    """
    from diffusers import FluxTransformer2DModel

    head_quarter = attention_head_dim // 4
    return seeded_eval(
        seed,
        FluxTransformer2DModel,
        patch_size=1,
        in_channels=in_channels,
        num_layers=num_layers,
        num_single_layers=num_single_layers,
        attention_head_dim=attention_head_dim,
        num_attention_heads=num_attention_heads,
        joint_attention_dim=joint_attention_dim,
        pooled_projection_dim=pooled_projection_dim,
        guidance_embeds=guidance_embeds,
        axes_dims_rope=(head_quarter, head_quarter, attention_head_dim - 2 * head_quarter),
    )


def tiny_flux_inputs(
    batch_size: int = 1,
    height: int = 4,
    width: int = 6,
    text_tokens: int = 8,
    in_channels: int = 4,
    joint_attention_dim: int = 32,
    pooled_projection_dim: int = 32,
    guidance: float | None = None,
    seed: int = 0,
) -> dict[str, Any]:
    """Keyword inputs for a bare ``FluxTransformer2DModel`` call on a ``height × width`` token grid.

    Example:
        >>> tiny_flux_inputs(guidance=3.5)["hidden_states"].shape
        torch.Size([1, 24, 4])
    """
    from diffusers import FluxPipeline

    shapes = {
        "hidden_states": (height * width, in_channels),
        "encoder_hidden_states": (text_tokens, joint_attention_dim),
        "pooled_projections": (pooled_projection_dim,),
    }
    inputs = _call_inputs(
        seed,
        batch_size,
        shapes,
        0.5,
        img_ids=FluxPipeline._prepare_latent_image_ids(batch_size, height, width, "cpu", torch.float32),
        txt_ids=torch.zeros(text_tokens, 3),
    )
    if guidance is not None:
        inputs["guidance"] = torch.full((batch_size,), guidance)
    return inputs


def tiny_flux_pipeline(num_layers: int = 4, guidance_embeds: bool = False, seed: int = 0) -> Any:
    """A complete random-weight ``FluxPipeline``: tiny CLIP + T5 (in-memory tokenizers), VAE and transformer.

    The VAE has one block level (``vae_scale_factor`` 1), so a 32×32 image has a 16×16 latent and 8×8 = 64 image
    tokens.

    Example:
        >>> tiny_flux_pipeline().vae_scale_factor
        1
    """
    from diffusers import FlowMatchEulerDiscreteScheduler, FluxPipeline

    clip_tokenizer, clip = _tiny_clip(32, seed)
    t5_tokenizer, t5 = _tiny_t5(32, seed + 1)
    return quiet_pipeline(
        FluxPipeline(
            scheduler=FlowMatchEulerDiscreteScheduler(),
            vae=_tiny_flux_vae(latent_channels=1, seed=seed + 2),
            text_encoder=clip,
            tokenizer=clip_tokenizer,
            text_encoder_2=t5,
            tokenizer_2=t5_tokenizer,
            transformer=tiny_flux_transformer(num_layers=num_layers, guidance_embeds=guidance_embeds, seed=seed + 3),
        )
    )
