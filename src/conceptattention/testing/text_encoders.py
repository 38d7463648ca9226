"""Tiny in-memory tokenizers and random text encoders shared by the tiny pipelines: CLIP and T5 (character level,
so every concept is multi-token), byte-level Qwen-style tokenizers, Qwen3 and Qwen2.5-VL encoders.

Nothing here downloads anything: vocabularies are built in memory, every encoder is seeded before it is built and put in
eval mode.

Example:
    >>> tiny_t5_text_model(tiny_t5_tokenizer()).config.d_model
    32
"""

from __future__ import annotations

import string
from typing import Any

from .common import seeded_eval


def bytes_to_unicode() -> list[str]:
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
    for character in bytes_to_unicode():
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


def tiny_clip(hidden_size: int, seed: int, with_projection: bool = False) -> tuple[Any, Any]:
    """An in-memory CLIP tokenizer and its tiny random text model."""
    tokenizer = tiny_clip_tokenizer()
    return tokenizer, tiny_clip_text_model(tokenizer, hidden_size, with_projection=with_projection, seed=seed)


def tiny_t5(d_model: int, seed: int, umt5: bool = False) -> tuple[Any, Any]:
    """An in-memory T5 tokenizer and its tiny random (UM)T5 encoder."""
    tokenizer = tiny_t5_tokenizer()
    return tokenizer, tiny_t5_encoder(len(tokenizer), d_model, seed=seed, umt5=umt5)


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
    for character in bytes_to_unicode():
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
