"""State shared by the concept-attention processors of one ``with ConceptAttention(...)`` block.

The session knows nothing of a particular architecture: adapters read and write it from their processors.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from .config import ConceptAttentionConfig
from .core import ScoreAccumulator


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
    """

    step: int
    recording: bool
    inputs: dict[str, Any] = field(default_factory=dict)
    concept_hidden_states: torch.Tensor | None = None
    concept_conditioning: Any = None


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
        self.last_layer = self.selected_layers[-1]
        self.effective_softmax = effective_softmax
        self.reduce_batch = reduce_batch
        self.accumulator = self._new_accumulator()
        self.stop_after_last_layer = False
        self.num_recorded_calls = 0
        self.call: TransformerCall | None = None
        self.grid_inputs: dict[str, Any] | None = None  # inputs of the first recorded call, for the token grid
        self.batch_slice: slice = slice(None)

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

    def end_call(self) -> None:
        """Drop the per-call state (the concept stream) so that nothing large outlives the forward."""
        self.call = None

    def needs_concepts(self, layer: int) -> bool:
        """Whether the concept stream must run in joint block ``layer`` during the current call."""
        call = self.call
        return call is not None and call.recording and layer <= self.last_layer

    def is_selected(self, layer: int) -> bool:
        return layer in self._selected

    def record(self, layer: int, scores: torch.Tensor) -> None:
        """Add the ``[B, C, I]`` scores of a selected layer of the current call."""
        assert self.call is not None
        if self.grid_inputs is None:
            self.grid_inputs = self.call.inputs
        self.accumulator.add(scores[self.batch_slice], step=self.call.step, layer=layer)

    def reset(self) -> None:
        """Forget the recorded scores and the call counter."""
        self.accumulator = self._new_accumulator()
        self.num_recorded_calls = 0
        self.call = None
        self.grid_inputs = None
