"""State shared by the concept-attention processors of one ``with ConceptAttention(...)`` block.

The session knows nothing of a particular architecture: adapters read and write it from their processors.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from typing import Any

import torch

from .config import ConceptAttentionConfig
from .core import ScoreAccumulator, word_pooling_matrix
from .encoding import ConceptError, PromptWords, unique_labels


class EarlyExit(Exception):
    """Raised by a processor after the last needed joint block on the explain path; caught by the caller."""


@dataclass
class TransformerCall:
    """What the processors of one transformer forward call need (captured before the forward runs).

    Attributes:
        step: Index of this recorded call (0 = first).
        recording: Whether this call's scores are recorded (step selected and not an unconditional CFG call).
        inputs: Architecture-specific inputs captured from the forward's arguments (timestep, ids, ...).
        concept_hidden_states: The concept residual stream ``[B, C, d]``, created lazily by the first joint block.
        concept_conditioning: The concept stream's modulation input ``[B, d_t]`` (architecture-specific).
        scores: ``[L_sel + 1, B, C, I]`` float32: the scores of each selected layer (row ``L_sel`` takes the
            scores of the unselected layers and is never read), written on the activations' device.
        block_counter: 0-d long tensor: how many concept blocks have run in this call (the layer index). A tensor,
            not a Python int, so that compiled blocks do not specialise on it (one graph serves every block).
        score_slots: ``[last_layer + 1]`` long tensor: the row of ``scores`` that each layer writes.
        blocks_before_buffers: Unselected blocks run eagerly before the buffers existed (start of ``block_counter``).
        head_scores: ``{layer: [B, C, H, I]}`` per-head scores of the selected layers (``keep_heads=True`` only).
    """

    step: int
    recording: bool
    inputs: dict[str, Any] = field(default_factory=dict)
    concept_hidden_states: torch.Tensor | None = None
    concept_conditioning: Any = None
    scores: torch.Tensor | None = None
    block_counter: torch.Tensor | None = None
    score_slots: torch.Tensor | None = None
    blocks_before_buffers: int = 0
    head_scores: dict[int, torch.Tensor] = field(default_factory=dict)


class ConceptSession:
    """Run-time state: concept embeddings, the current call, and the score accumulator.

    Args:
        config: The run's options.
        concept_embeds: ``[C, D_text]`` concept embeddings in the text encoder's output space (before the model's
            text input projection).
        selected_layers: Absolute indices of the joint blocks whose scores are averaged.
        effective_softmax: Softmax over concepts (False for a single concept).
        reduce_batch: Average the maps over the batch too (noise samples of the real-image path).
    """

    def __init__(
        self,
        config: ConceptAttentionConfig,
        concept_embeds: torch.Tensor,
        selected_layers: tuple[int, ...],
        effective_softmax: bool,
        reduce_batch: bool = False,
    ) -> None:
        self.config = config
        self.concept_embeds = concept_embeds
        self.selected_layers = tuple(sorted(selected_layers))
        self._selected = frozenset(self.selected_layers)
        self._slot_of = {layer: slot for slot, layer in enumerate(self.selected_layers)}
        self.last_layer = self.selected_layers[-1]
        self.effective_softmax = effective_softmax
        self.reduce_batch = reduce_batch
        self.accumulator = self._new_accumulator()
        self.stop_after_last_layer = False
        self.num_recorded_calls = 0
        self.call: TransformerCall | None = None
        self.grid_inputs: dict[str, Any] | None = None  # inputs of the first recorded call, for the token grid
        self.batch_slice: slice = slice(None)
        # what the (stateless, shared) adapter keeps between the transformer calls of this run, e.g. Chroma's
        # previous call for true-CFG detection (ConceptAdapter.observe_call); kept by reset()
        self.adapter_state: dict[str, Any] = {}
        self.head_accumulator = self._new_accumulator() if config.keep_heads else None
        self.prompt_words: PromptWords | None = None  # the prompt's words, when prompt-word maps are on
        self.word_labels: tuple[str, ...] = ()
        self.score_pooling: torch.Tensor | None = None  # [C + W, C + T'] (concepts, then word means of tokens)

    def _new_accumulator(self) -> ScoreAccumulator:
        return ScoreAccumulator(
            softmax=self.effective_softmax,
            temperature=self.config.temperature,
            order=self.config.normalization_order,
            keep_per_step=self.config.keep_per_step,
            reduce_batch=self.reduce_batch,
        )

    @property
    def num_concepts(self) -> int:
        return int(self.concept_embeds.shape[0])

    def set_prompt_words(self, words: PromptWords, concepts: tuple[str, ...]) -> None:
        """Map the words of the prompt too (after the ``concepts``): their scores are the mean scores of their
        tokens, taken before the softmax over concepts and words.

        Raises:
            ConceptError: the prompt's words differ from those of maps already recorded in this block.
        """
        labels = unique_labels(words.words, taken=concepts)
        if self.accumulator.count and labels != self.word_labels:
            raise ConceptError(
                f"The prompt changed within one ConceptAttention block ({' '.join(self.word_labels)!r} -> "
                f"{' '.join(labels)!r}); prompt-word maps of two prompts cannot be averaged. Call .reset() between runs."
            )
        num_concepts = len(concepts)
        num_words, num_tokens = len(words.words), int(words.token_index.numel())
        pooling = torch.zeros(num_concepts + num_words, num_concepts + num_tokens)  # [C + W, C + T']
        pooling[:num_concepts, :num_concepts] = torch.eye(num_concepts)
        pooling[num_concepts:, num_concepts:] = word_pooling_matrix(words.word_of_token, num_words)
        self.prompt_words, self.word_labels, self.score_pooling = words, labels, pooling
        if num_concepts + num_words == 1 and self.effective_softmax:
            warnings.warn(
                "Softmax over a single concept is identically 1; using the raw scores instead.", UserWarning, stacklevel=2
            )
            self.effective_softmax = False
            self.accumulator = self._new_accumulator()
            self.head_accumulator = self._new_accumulator() if self.config.keep_heads else None

    def begin_call(self, inputs: dict[str, Any], unconditional: bool) -> TransformerCall:
        """Start a transformer forward call. Unconditional (true-CFG) calls are not recorded and not counted."""
        if unconditional:
            self.call = TransformerCall(step=-1, recording=False, inputs=inputs)
            return self.call
        step = self.num_recorded_calls
        self.num_recorded_calls += 1
        timesteps = self.config.timesteps
        recording = timesteps is None or step in timesteps
        self.call = TransformerCall(step=step, recording=recording, inputs=inputs)
        return self.call

    def needs_concepts(self) -> bool:
        """Whether the concept stream runs during the current call (a recorded call; the processors are only
        installed on the joint blocks up to the last selected one)."""
        call = self.call
        return call is not None and call.recording

    def is_selected(self, layer: int) -> bool:
        return layer in self._selected

    def _ensure_buffers(self, call: TransformerCall, scores: torch.Tensor) -> None:
        """Allocate the call's score buffer, slot table and block counter (in the first joint block)."""
        if call.scores is not None:
            return
        num_slots = len(self.selected_layers)
        slots = torch.full((self.last_layer + 1,), num_slots, dtype=torch.long)
        slots[list(self.selected_layers)] = torch.arange(num_slots)
        call.score_slots = slots.to(scores.device)
        call.block_counter = torch.full((), call.blocks_before_buffers, dtype=torch.long, device=scores.device)
        call.scores = scores.new_zeros((num_slots + 1, *scores.shape))  # [L_sel + 1, B, C, I]

    def record(self, scores: torch.Tensor) -> None:
        """Store the ``[B, C, I]`` scores of the joint block that is running, and count the block (compiled path).

        Per-block Python state (the layer index, whether it is selected) is never read here: the row is looked up
        with a tensor counter, so a compiled block (``compile_repeated_blocks``) traces one graph for all blocks.
        The selected rows are folded into the accumulator when the transformer call ends (:meth:`end_call`).
        """
        call = self.call
        assert call is not None
        scores = scores.float()
        self._ensure_buffers(call, scores)
        assert call.block_counter is not None and call.score_slots is not None and call.scores is not None
        slot = call.score_slots.index_select(0, call.block_counter.view(1))  # [1]
        call.scores.index_copy_(0, slot, scores.unsqueeze(0))
        call.block_counter.add_(1)

    def record_layer(self, layer: int, scores: torch.Tensor, head_scores: torch.Tensor | None = None) -> None:
        """Eager path of :meth:`record` for a selected layer: the row is known on the host. ``head_scores``
        (``[B, C, H, I]``, with ``keep_heads``) are kept for this layer too."""
        call = self.call
        assert call is not None
        if head_scores is not None:
            call.head_scores[layer] = head_scores.float()
        scores = scores.float()
        self._ensure_buffers(call, scores)
        assert call.block_counter is not None and call.scores is not None
        call.scores[self._slot_of[layer]].copy_(scores)
        call.block_counter.add_(1)  # kept in step for blocks that run compiled in the same call

    def skip_layer(self) -> None:
        """Eager path for an unselected layer: no scores are computed, the block is only counted."""
        call = self.call
        assert call is not None
        if call.block_counter is None:
            call.blocks_before_buffers += 1
        else:
            call.block_counter.add_(1)

    def end_call(self) -> None:
        """Fold the selected layers' scores of the current call into the accumulator, then drop the per-call state
        (the concept stream) so that nothing large outlives the forward. Safe to call more than once."""
        call, self.call = self.call, None
        if call is None or call.scores is None:
            return
        if self.grid_inputs is None:
            self.grid_inputs = call.inputs
        layers = self.selected_layers
        rows = call.scores[: len(layers), self.batch_slice]  # [L_sel + 1, B, C, I] -> [L_sel, B', C, I]
        self.accumulator.add_layers(rows, step=call.step, layers=layers)  # all selected layers at once
        if self.head_accumulator is not None:
            for layer in layers:
                self.head_accumulator.add(call.head_scores[layer][self.batch_slice], step=call.step, layer=layer)

    def reset(self) -> None:
        """Forget the recorded scores and the call counter."""
        self.accumulator = self._new_accumulator()
        self.head_accumulator = self._new_accumulator() if self.config.keep_heads else None
        self.num_recorded_calls = 0
        self.call = None
        self.grid_inputs = None
