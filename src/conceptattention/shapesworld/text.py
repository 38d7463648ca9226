"""Word-level tokenizers and tiny text encoders for the ShapesWorld pipeline, built in memory (no downloads).

Both tokenizers are standard ``transformers.PreTrainedTokenizerFast`` objects over a ``tokenizers`` WordLevel model
whose vocabulary is the caption vocabulary (:data:`~conceptattention.shapesworld.dataset.CAPTION_WORDS`), so every
caption word, and hence every concept word, is exactly one token. They save and load with ``save_pretrained`` /
``from_pretrained`` and need no files from a hub.

* ``tokenizer`` (CLIP side): ``<|startoftext|> words <|endoftext|>``, padded with ``<|endoftext|>``; the pooled vector
  of :class:`transformers.CLIPTextModel` is read at the first end token (config ``eos_token_id`` = 1, not the
  legacy 2).
* ``tokenizer_2`` (T5 side): ``words </s>``, padded with ``<pad>`` as T5 does.

Example:
    >>> tokenizer = build_t5_tokenizer()
    >>> tokenizer("a red sun").input_ids[-1] == tokenizer.eos_token_id
    True
"""

from __future__ import annotations

from collections.abc import Sequence

from conceptattention.shapesworld.dataset import CAPTION_WORDS


T5_SPECIALS: tuple[str, ...] = ("<pad>", "</s>", "<unk>")
CLIP_SPECIALS: tuple[str, ...] = ("<|startoftext|>", "<|endoftext|>", "<unk>")


def _word_level_tokenizer(
    specials: Sequence[str], template: str, template_specials: Sequence[str], words: Sequence[str]
):
    """A ``tokenizers.Tokenizer``: lower-casing, whitespace/punctuation split, word-level vocabulary."""
    import tokenizers
    from tokenizers import normalizers, pre_tokenizers, processors

    vocabulary = {token: index for index, token in enumerate(list(specials) + sorted(set(words)))}
    core = tokenizers.Tokenizer(tokenizers.models.WordLevel(vocab=vocabulary, unk_token="<unk>"))
    core.normalizer = normalizers.Lowercase()
    core.pre_tokenizer = pre_tokenizers.Whitespace()
    core.post_processor = processors.TemplateProcessing(
        single=template, special_tokens=[(token, vocabulary[token]) for token in template_specials]
    )
    return core


def build_t5_tokenizer(words: Sequence[str] = CAPTION_WORDS, model_max_length: int = 512):
    """The T5-side word-level tokenizer (``pad`` = 0, ``</s>`` = 1, ``<unk>`` = 2).

    Args:
        words: Vocabulary (lower-case words and punctuation).
        model_max_length: Upper bound on sequence length (FluxPipeline pads to its ``max_sequence_length``).

    Returns:
        A ``transformers.PreTrainedTokenizerFast``.

    Example:
        >>> build_t5_tokenizer().convert_ids_to_tokens(build_t5_tokenizer()("sun").input_ids)
        ['sun', '</s>']
    """
    from transformers import PreTrainedTokenizerFast

    core = _word_level_tokenizer(T5_SPECIALS, "$A </s>", ["</s>"], words)
    return PreTrainedTokenizerFast(
        tokenizer_object=core,
        pad_token="<pad>",
        eos_token="</s>",
        unk_token="<unk>",
        model_max_length=model_max_length,
    )


def build_clip_tokenizer(words: Sequence[str] = CAPTION_WORDS, model_max_length: int = 32):
    """The CLIP-side word-level tokenizer (BOS = 0, EOS = pad = 1, ``<unk>`` = 2).

    ``FluxPipeline`` pads CLIP input to ``tokenizer.model_max_length``, so this also fixes the CLIP sequence length.

    Example:
        >>> tokenizer = build_clip_tokenizer()
        >>> tokenizer.convert_ids_to_tokens(tokenizer("sun").input_ids)
        ['<|startoftext|>', 'sun', '<|endoftext|>']
    """
    from transformers import PreTrainedTokenizerFast

    core = _word_level_tokenizer(
        CLIP_SPECIALS, "<|startoftext|> $A <|endoftext|>", ["<|startoftext|>", "<|endoftext|>"], words
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=core,
        bos_token="<|startoftext|>",
        eos_token="<|endoftext|>",
        pad_token="<|endoftext|>",
        unk_token="<unk>",
        model_max_length=model_max_length,
    )


def build_clip_text_model(
    vocab_size: int, hidden_size: int = 64, layers: int = 2, heads: int = 2, max_length: int = 32
):
    """A tiny ``CLIPTextModel`` whose pooled output (``hidden_size`` wide) feeds FLUX's ``pooled_projections``.

    Example:
        >>> build_clip_text_model(80).config.eos_token_id
        1
    """
    from transformers import CLIPTextConfig, CLIPTextModel

    config = CLIPTextConfig(
        vocab_size=vocab_size,
        hidden_size=hidden_size,
        intermediate_size=2 * hidden_size,
        num_attention_heads=heads,
        num_hidden_layers=layers,
        max_position_embeddings=max_length,
        bos_token_id=0,
        eos_token_id=1,
        pad_token_id=1,
        projection_dim=hidden_size,
        attention_dropout=0.0,
        dropout=0.0,
    )
    return CLIPTextModel(config).eval()


def build_t5_encoder(vocab_size: int, d_model: int = 128, layers: int = 2, heads: int = 4, d_ff: int = 256):
    """A tiny contextual ``T5EncoderModel`` (relative position bias gives it word order, which FLUX's text stream
    lacks: its text RoPE ids are all zero), dropout off.

    Example:
        >>> build_t5_encoder(80).config.d_model
        128
    """
    from transformers import T5Config, T5EncoderModel

    config = T5Config(
        vocab_size=vocab_size,
        d_model=d_model,
        d_kv=d_model // heads,
        d_ff=d_ff,
        num_layers=layers,
        num_heads=heads,
        relative_attention_num_buckets=16,
        relative_attention_max_distance=64,
        dropout_rate=0.0,
        feed_forward_proj="gated-gelu",
        pad_token_id=0,
        eos_token_id=1,
        decoder_start_token_id=0,
        is_encoder_decoder=False,
        use_cache=False,
    )
    return T5EncoderModel(config).eval()
