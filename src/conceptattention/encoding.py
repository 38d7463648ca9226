"""Concept text encoding helpers: validation of concept strings and pooling of token states (``concept_pooling`` in docs/method.md, "Options")."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from .config import ConceptPooling
from .errors import ConceptAttentionError


class ConceptError(ConceptAttentionError, ValueError):
    """An invalid concept list."""


def concept_key(concept: str) -> str:
    """The form under which two concepts count as the same: whitespace collapsed, case folded.

    ``"Sea"``, ``"sea "`` and ``"SEA"`` give the same maps (the text encoders see the same words), so a concept list
    holding two of them is refused as a duplicate.

    Example:
        >>> concept_key("  Red   Car ")
        'red car'
    """
    return " ".join(concept.split()).casefold()


def duplicate_concepts(concepts: Sequence[str]) -> list[str]:
    """The concepts that repeat an earlier one up to case and whitespace (see :func:`concept_key`), in order.

    Example:
        >>> duplicate_concepts(["sea", "Sea ", "sky", "SKY"])
        ['Sea ', 'SKY']
    """
    seen: set[str] = set()
    repeated: list[str] = []
    for concept in concepts:
        key = concept_key(concept)
        if key in seen:
            repeated.append(concept)
        seen.add(key)
    return repeated


def validate_concepts(concepts: Sequence[str] | str) -> tuple[str, ...]:
    """Check a concept list: non-empty, strings, no empty strings, no duplicates (up to case and whitespace).

    Args:
        concepts: e.g. ``["dragon", "rock", "sky"]``.

    Returns:
        The concepts with whitespace collapsed (``" red  car "`` → ``"red car"``), as a tuple.

    Raises:
        ConceptError: with the offending entry named. ``"Sea"`` and ``"sea "`` are the same concept (see
            :func:`concept_key`).

    Example:
        >>> validate_concepts([" sky", "red car"])
        ('sky', 'red car')
        >>> validate_concepts(["Sea", "sea "])
        Traceback (most recent call last):
        ...
        conceptattention.encoding.ConceptError: Concept 'sea' is given twice (as 'Sea' and 'sea', ignoring case and spaces); each concept must be unique.
    """
    if isinstance(concepts, str):
        raise ConceptError(f"concepts must be a list of strings, not one string ({concepts!r}); write [{concepts!r}].")
    concepts = list(concepts)
    if not concepts:
        raise ConceptError("The concept list is empty; give at least one concept, e.g. ['dog', 'grass', 'sky'].")
    cleaned: list[str] = []
    first_by_key: dict[str, str] = {}
    for index, concept in enumerate(concepts):
        if not isinstance(concept, str):
            raise ConceptError(f"Concept #{index} is {type(concept).__name__} ({concept!r}); concepts must be strings.")
        stripped = " ".join(concept.split())
        if not stripped:
            raise ConceptError(f"Concept #{index} is empty or only whitespace; remove it.")
        key = concept_key(stripped)
        if key in first_by_key:
            first = first_by_key[key]
            spelled = "" if first == stripped else f" (as {first!r} and {stripped!r}, ignoring case and spaces)"
            raise ConceptError(f"Concept {stripped!r} is given twice{spelled}; each concept must be unique.")
        first_by_key[key] = stripped
        cleaned.append(stripped)
    return tuple(cleaned)


def pool_token_states(hidden_states: torch.Tensor, content_mask: torch.Tensor, pooling: ConceptPooling) -> torch.Tensor:
    """Pool each concept's content-token states into one vector.

    Args:
        hidden_states: ``[C, L, D]`` encoder outputs of the padded batch of concepts.
        content_mask: ``[C, L]`` bool, True on the concept's own tokens (no BOS/EOS/padding).
        pooling: ``"mean"`` (over content tokens), ``"first"`` or ``"last"`` content token.

    Returns:
        ``[C, D]``.

    Example:
        >>> h = torch.arange(6.0).reshape(1, 3, 2)
        >>> pool_token_states(h, torch.tensor([[True, True, False]]), "mean")
        tensor([[1., 2.]])
    """
    if content_mask.shape != hidden_states.shape[:2]:
        raise ValueError(f"content_mask {tuple(content_mask.shape)} does not match states {tuple(hidden_states.shape)}")
    counts = content_mask.sum(dim=1)  # [C]
    if bool((counts == 0).any()):
        raise ConceptError("A concept has no content tokens after tokenisation (it encodes to special tokens only).")
    if pooling == "mean":
        weights = content_mask.to(hidden_states.dtype).unsqueeze(-1)  # [C, L, 1]
        return (hidden_states * weights).sum(dim=1) / counts.to(hidden_states.dtype).unsqueeze(-1)  # [C, D]
    positions = torch.arange(content_mask.shape[1], device=content_mask.device).expand_as(content_mask)  # [C, L]
    if pooling == "first":
        index = torch.where(content_mask, positions, content_mask.shape[1]).min(dim=1).values  # [C]
    elif pooling == "last":
        index = torch.where(content_mask, positions, -1).max(dim=1).values  # [C]
    else:
        raise ValueError(f"Unknown concept pooling {pooling!r}; expected 'mean', 'first' or 'last'.")
    return hidden_states[torch.arange(hidden_states.shape[0], device=hidden_states.device), index]  # [C, D]


def tokenize_concepts(
    tokenizer: Any, concepts: Sequence[str], max_length: int | None, special_ids: Sequence[int | None]
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Tokenise all concepts as one padded batch, refusing (not truncating) concepts that are too long.

    Args:
        tokenizer: A Hugging Face tokenizer.
        concepts: The concept strings.
        max_length: The longest sequence allowed (special tokens included); None = the tokenizer's limit.
        special_ids: Token ids that are not content (BOS, EOS, padding); None entries are ignored.

    Returns:
        ``input_ids [C, L]``, ``attention_mask [C, L]`` and ``content_mask [C, L]`` (bool).

    Raises:
        ConceptError: if a concept is longer than ``max_length`` tokens.
    """
    limit = max_length or getattr(tokenizer, "model_max_length", None)
    encoded = tokenizer(list(concepts), padding="longest", truncation=False, return_tensors="pt")
    input_ids = encoded["input_ids"]  # [C, L]
    attention_mask = encoded.get("attention_mask")
    if attention_mask is None:
        attention_mask = torch.ones_like(input_ids)
    lengths = attention_mask.sum(dim=1)  # [C]
    if limit is not None and limit < 10**9:
        for concept, length in zip(concepts, lengths.tolist()):
            if length > limit:
                raise ConceptError(
                    f"Concept {concept!r} is {length} tokens long; this text encoder allows at most {limit}. "
                    "Use a shorter phrase."
                )
    content_mask = attention_mask.bool()
    for token_id in special_ids:
        if token_id is not None:
            content_mask &= input_ids != token_id
    return input_ids, attention_mask, content_mask


@dataclass(frozen=True)
class PromptWords:
    """The words of a prompt as its text encoder sees them (see :func:`prompt_words`).

    Attributes:
        words: The words, as spelled in the prompt (the tokenizer's pre-tokenisation decides what a word is).
        token_index: ``[T']`` long: positions, in the padded token sequence, of the tokens that belong to a word
            (special tokens and padding are left out).
        word_of_token: ``[T']`` long: the word (index into ``words``) of each of those tokens.
    """

    words: tuple[str, ...]
    token_index: torch.Tensor
    word_of_token: torch.Tensor


def prompt_words(tokenizer: Any, prompt: str, max_length: int) -> PromptWords:
    """Split a prompt into words and their tokens with a fast tokenizer's ``word_ids()`` and character offsets.

    The prompt is tokenised as the pipeline does (special tokens added, truncated at ``max_length``); tokens with no
    word (BOS/EOS, padding) are dropped, and a word cut by the truncation keeps the tokens the model saw.

    Raises:
        ConceptError: a slow tokenizer (no word ids), or a prompt without words.

    Example:
        >>> from conceptattention.testing import tiny_t5_tokenizer
        >>> split = prompt_words(tiny_t5_tokenizer(), "a red car", 32)
        >>> split.words, split.word_of_token.tolist()
        (('a', 'red', 'car'), [0, 1, 1, 1, 2, 2, 2])
    """
    if not getattr(tokenizer, "is_fast", False):
        raise ConceptError(
            f"Prompt-word maps need a fast tokenizer (word ids and offsets); {type(tokenizer).__name__} is not one."
        )
    encoded = tokenizer(prompt, max_length=max_length, truncation=True, add_special_tokens=True)
    word_ids = encoded.word_ids()
    positions = [position for position, word in enumerate(word_ids) if word is not None]
    if not positions:
        raise ConceptError(f"The prompt {prompt!r} has no words to map.")
    order: dict[int, int] = {}  # the tokenizer's word id -> our word index, in order of appearance
    for position in positions:
        order.setdefault(word_ids[position], len(order))
    words = []
    for word_id in order:
        span = encoded.word_to_chars(word_id)
        words.append(prompt[span.start : span.end])
    return PromptWords(
        words=tuple(words),
        token_index=torch.tensor(positions, dtype=torch.long),
        word_of_token=torch.tensor([order[word_ids[position]] for position in positions], dtype=torch.long),
    )


def unique_labels(words: Sequence[str], taken: Sequence[str] = ()) -> tuple[str, ...]:
    """Map labels for prompt words: a word that repeats an earlier word or a concept (up to case and spaces) gets
    ``#2``, ``#3``... (its occurrence number).

    Example:
        >>> unique_labels(["a", "cube", "on", "a", "Sky"], taken=["sky"])
        ('a', 'cube', 'on', 'a#2', 'Sky#2')
    """
    seen = {concept_key(concept) for concept in taken}
    labels = []
    for word in words:
        label, number = word, 1
        while concept_key(label) in seen:
            number += 1
            label = f"{word}#{number}"
        seen.add(concept_key(label))
        labels.append(label)
    return tuple(labels)


def pipeline_text_encoder(pipeline: Any, tokenizer_name: str, encoder_name: str, description: str) -> tuple[Any, Any]:
    """A pipeline's ``(tokenizer, text_encoder)`` pair for encoding concepts.

    Args:
        pipeline: The diffusers pipeline.
        tokenizer_name: Attribute of the tokenizer (``"tokenizer_2"``).
        encoder_name: Attribute of the text encoder (``"text_encoder_2"``).
        description: The pipeline and encoder for the message (``"This Flux pipeline has no T5 text encoder"``).

    Raises:
        ValueError: if either is missing, pointing to ``concept_embeds=``.
    """
    tokenizer, text_encoder = getattr(pipeline, tokenizer_name, None), getattr(pipeline, encoder_name, None)
    if tokenizer is None or text_encoder is None:
        raise ValueError(
            f"{description} ({tokenizer_name}/{encoder_name}) to encode concepts; pass `concept_embeds=` (a "
            "[C, D_text] tensor of text-encoder outputs) instead."
        )
    return tokenizer, text_encoder


def encode_masked_concepts(
    tokenizer: Any,
    text_encoder: Any,
    concepts: Sequence[str],
    pooling: ConceptPooling,
    device: torch.device | str,
    max_length: int | None,
) -> torch.Tensor:
    """All concepts in one padded, masked batch through an encoder whose first output is the token states (T5,
    UMT5), pooled over the content tokens: ``[C, D_text]``.

    Example:
        >>> from conceptattention.testing import tiny_t5_text_model, tiny_t5_tokenizer
        >>> tokenizer = tiny_t5_tokenizer()
        >>> encode_masked_concepts(tokenizer, tiny_t5_text_model(tokenizer, 16), ["dog", "red car"], "mean", "cpu", 64).shape
        torch.Size([2, 16])
    """
    special_ids = (tokenizer.eos_token_id, tokenizer.pad_token_id, getattr(tokenizer, "bos_token_id", None))
    input_ids, attention_mask, content_mask = tokenize_concepts(tokenizer, concepts, max_length, special_ids)
    with torch.no_grad():
        hidden = text_encoder(input_ids=input_ids.to(device), attention_mask=attention_mask.to(device))[0]  # [C, L, D]
    return pool_token_states(hidden, content_mask.to(hidden.device), pooling)  # [C, D_text]


def pipeline_text_encoders(pipeline: Any) -> list[nn.Module]:
    """The text encoders of a diffusers pipeline: its ``nn.Module`` components named ``text_encoder*``.

    Example:
        >>> from conceptattention.testing import tiny_flux_pipeline
        >>> [type(encoder).__name__ for encoder in pipeline_text_encoders(tiny_flux_pipeline())]
        ['CLIPTextModel', 'T5EncoderModel']
    """
    components = getattr(pipeline, "components", None) or {}
    return [
        module
        for name, module in components.items()
        if name.startswith("text_encoder") and isinstance(module, nn.Module)
    ]


def _rng_devices(pipeline: Any, encoders: Sequence[nn.Module]) -> dict[str, list[int]]:
    """Non-CPU devices (by device type, as indices) that the encoders' weights or the pipeline's execution live on."""
    devices = {tensor.device for encoder in encoders for tensor in (*encoder.parameters(), *encoder.buffers())}
    try:
        execution = getattr(pipeline, "_execution_device", None)  # offloaded encoders run there, not where they sit
    except Exception:  # an unusual component set; the weights' devices are then all we know
        execution = None
    if execution is not None:
        devices.add(torch.device(execution))
    indices: dict[str, set[int]] = {}
    for device in devices:
        if device.type in ("cpu", "meta"):
            continue
        index = device.index
        if index is None:  # e.g. "cuda": the current device of that type
            index = getattr(torch.get_device_module(device.type), "current_device", lambda: 0)()
        indices.setdefault(device.type, set()).add(int(index))
    return {device_type: sorted(found) for device_type, found in indices.items()}


@contextlib.contextmanager
def isolated_text_encoding(pipeline: Any) -> Iterator[None]:
    """Run the pipeline's text encoders in eval mode under forked random states, leaving both as they were.

    Concept encoding must not draw from the caller's random generators: a text encoder left in train mode (as
    diffusers' own tests build them) draws its dropout from the global generator, which would change every later
    generator-free draw (latents after ``torch.manual_seed``) and the pipeline's own prompt encoding. Inside this
    context the encoders are in eval mode (no dropout), and the CPU generator and those of every accelerator the
    encoders or the pipeline's execution device use are forked (``torch.random.fork_rng``), so whatever is drawn
    is discarded on exit. Each submodule's ``training`` flag is restored exactly on exit, also after errors, so the
    pipeline's own calls behave as before.

    Args:
        pipeline: A diffusers pipeline (its ``text_encoder*`` components are used; none is fine).

    Example:
        >>> from conceptattention.testing import tiny_flux_pipeline
        >>> pipe = tiny_flux_pipeline()
        >>> _ = pipe.text_encoder_2.train()
        >>> state = torch.get_rng_state()
        >>> with isolated_text_encoding(pipe):
        ...     pipe.text_encoder_2.training, torch.rand(1).shape
        (False, torch.Size([1]))
        >>> pipe.text_encoder_2.training, torch.equal(torch.get_rng_state(), state)
        (True, True)
    """
    encoders = pipeline_text_encoders(pipeline)
    flags = [(module, module.training) for encoder in encoders for module in encoder.modules()]
    with contextlib.ExitStack() as stack:
        forked = _rng_devices(pipeline, encoders)
        if not forked:
            stack.enter_context(torch.random.fork_rng(devices=[]))  # CPU generator only
        for device_type, indices in forked.items():  # each also forks the CPU generator
            stack.enter_context(torch.random.fork_rng(devices=indices, device_type=device_type))
        try:
            for encoder in encoders:
                encoder.eval()
            yield
        finally:
            for module, training in flags:
                module.training = training


def encode_concepts_isolated(
    adapter: Any, pipeline: Any, concepts: Sequence[str], pooling: ConceptPooling, text_encoder: str | None = None
) -> torch.Tensor:
    """``adapter.encode_concepts(pipeline, concepts, pooling)`` under :func:`isolated_text_encoding`: ``[C, D_text]``.

    The caller's random state and the encoders' train/eval modes are exactly as before afterwards. ``text_encoder``
    (``ConceptAttentionConfig.concept_text_encoder``) is passed on only when set, to families that offer a choice.

    Example:
        >>> from conceptattention.adapters import get_adapter
        >>> from conceptattention.testing import tiny_flux_pipeline
        >>> pipe = tiny_flux_pipeline()
        >>> encode_concepts_isolated(get_adapter(pipe), pipe, ["dog", "sky"], "mean").shape
        torch.Size([2, 32])
    """
    with isolated_text_encoding(pipeline):
        if text_encoder is None:
            return adapter.encode_concepts(pipeline, concepts, pooling)  # [C, D_text]
        return adapter.encode_concepts(pipeline, concepts, pooling, text_encoder=text_encoder)  # [C, D_text]
