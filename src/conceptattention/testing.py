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
from typing import Any

import torch


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


def tiny_clip_text_model(tokenizer: Any, hidden_size: int = 32, *, with_projection: bool = False, seed: int = 0) -> Any:
    """A 2-layer random ``CLIPTextModel`` (or ``CLIPTextModelWithProjection``) for an in-memory CLIP tokenizer.

    Example:
        >>> tiny_clip_text_model(tiny_clip_tokenizer()).config.hidden_size
        32
    """
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    torch.manual_seed(seed)
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
    return (CLIPTextModelWithProjection if with_projection else CLIPTextModel)(config).eval()


def tiny_t5_text_model(tokenizer: Any, d_model: int = 32, *, seed: int = 0) -> Any:
    """A 2-layer random ``T5EncoderModel`` (dropout 0) for an in-memory T5 tokenizer.

    Example:
        >>> tiny_t5_text_model(tiny_t5_tokenizer()).config.d_model
        32
    """
    from transformers import T5Config, T5EncoderModel

    torch.manual_seed(seed)
    config = T5Config(
        vocab_size=len(tokenizer),
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
    return T5EncoderModel(config).eval()


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
    """A random-weight ``FluxTransformer2DModel`` small enough for CPU tests (eval mode)."""
    from diffusers import FluxTransformer2DModel

    torch.manual_seed(seed)
    head_quarter = attention_head_dim // 4
    return FluxTransformer2DModel(
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
    ).eval()


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
    """Keyword inputs for a bare ``FluxTransformer2DModel`` call on a ``height × width`` token grid."""
    from diffusers import FluxPipeline

    generator = torch.Generator().manual_seed(seed)
    inputs: dict[str, Any] = {
        "hidden_states": torch.randn(batch_size, height * width, in_channels, generator=generator),
        "encoder_hidden_states": torch.randn(batch_size, text_tokens, joint_attention_dim, generator=generator),
        "pooled_projections": torch.randn(batch_size, pooled_projection_dim, generator=generator),
        "timestep": torch.full((batch_size,), 0.5),
        "img_ids": FluxPipeline._prepare_latent_image_ids(batch_size, height, width, "cpu", torch.float32),
        "txt_ids": torch.zeros(text_tokens, 3),
        "return_dict": False,
    }
    if guidance is not None:
        inputs["guidance"] = torch.full((batch_size,), guidance)
    return inputs


def tiny_flux_pipeline(num_layers: int = 4, guidance_embeds: bool = False, seed: int = 0) -> Any:
    """A complete random-weight ``FluxPipeline``: tiny CLIP + T5 (in-memory tokenizers), VAE and transformer.

    The VAE has one block level (``vae_scale_factor`` 1), so a 32×32 image has a 16×16 latent and 8×8 = 64 image
    tokens.
    """
    from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, FluxPipeline
    clip_tokenizer = tiny_clip_tokenizer()
    t5_tokenizer = tiny_t5_tokenizer()
    clip = tiny_clip_text_model(clip_tokenizer, seed=seed)
    t5 = tiny_t5_text_model(t5_tokenizer, seed=seed + 1)
    torch.manual_seed(seed + 2)
    vae = AutoencoderKL(
        sample_size=32,
        in_channels=3,
        out_channels=3,
        block_out_channels=(4,),
        layers_per_block=1,
        latent_channels=1,
        norm_num_groups=1,
        use_quant_conv=False,
        use_post_quant_conv=False,
        shift_factor=0.0609,
        scaling_factor=1.5035,
    ).eval()
    transformer = tiny_flux_transformer(num_layers=num_layers, guidance_embeds=guidance_embeds, seed=seed + 3)
    pipe = FluxPipeline(
        scheduler=FlowMatchEulerDiscreteScheduler(),
        vae=vae,
        text_encoder=clip,
        tokenizer=clip_tokenizer,
        text_encoder_2=t5,
        tokenizer_2=t5_tokenizer,
        transformer=transformer,
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe
