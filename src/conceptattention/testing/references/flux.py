"""A deliberately naive reference of ConceptAttention on FLUX.1, for tests.

It re-runs the double-stream blocks of a ``FluxTransformer2DModel`` by hand, in float64, with ONE full attention over
the concatenation ``[text, image, concepts]`` and an explicit boolean mask (text and image never see concepts;
concepts see image and/or concepts according to the mode, never the text). It shares no code with the library's
processors, so agreement is evidence that the optimised path (concept rows only, keys reused from the joint
attention) implements the method. Layer indices past the double blocks continue into the single blocks
(``flux_single_reference``, the single-stream extension).
"""

from __future__ import annotations

import copy
from typing import Any

import torch
from diffusers.models.embeddings import apply_rotary_emb

from .common import (
    Layout,
    blocks_until,
    concept_scores,
    double_block,
    per_sample,
    rotate_rows,
)
from .flux_single import naive_single_blocks, silu_rows


def naive_flux_scores(
    transformer: Any,
    inputs: dict[str, Any],
    concept_embeds: torch.Tensor,
    layers: list[int],
    space: str = "output",
    mode: str = "both",
    conditioning: str = "null_pooled",
) -> torch.Tensor:
    """Per-layer saliency scores ``[L, B, C, I]`` (float64) for the selected layers."""
    model = copy.deepcopy(transformer).double()
    hidden = model.x_embedder(inputs["hidden_states"].double())  # [B, I, d]
    batch, num_image = hidden.shape[:2]
    timestep = inputs["timestep"].double() * 1000
    pooled = inputs["pooled_projections"].double()
    temb = model.time_text_embed(timestep, pooled)  # [B, d]
    concept_pooled = torch.zeros_like(pooled) if conditioning == "null_pooled" else pooled
    temb_concepts = model.time_text_embed(timestep, concept_pooled)  # [B, d]
    text = model.context_embedder(inputs["encoder_hidden_states"].double())  # [B, T, d]
    concepts = per_sample(model.context_embedder(concept_embeds.double()), batch)  # [B, C, d]
    layout = Layout.text_first(text.shape[1], num_image, concepts.shape[1])
    allowed = layout.mask(mode)  # [S, S]
    ids = torch.cat([inputs["txt_ids"], inputs["img_ids"]], dim=0)  # [T + I, 3]
    cos, sin = model.pos_embed(ids)

    def rope(x: torch.Tensor) -> torch.Tensor:
        return apply_rotary_emb(x, (cos, sin), sequence_dim=1)

    scores = []
    for index, block in blocks_until(model.transformer_blocks, layers):
        # RoPE on text and image rows; concepts keep position 0 (identity rotation), as FLUX.1 text tokens
        attention, (hidden, text, concepts) = double_block(
            block, (hidden, text, concepts), (temb, temb_concepts), layout, allowed, mode,
            lambda x: rotate_rows(x, slice(0, layout.joint), rope),
        )
        if index in layers:
            scores.append(concept_scores(space, *attention, layout))
    singles, first = model.single_transformer_blocks, len(model.transformer_blocks)  # indices past the doubles

    def modulation(k: int, stream: str) -> tuple[torch.Tensor, ...]:
        return silu_rows(singles[k], temb if stream == "tokens" else temb_concepts)

    scores += naive_single_blocks(singles, text, hidden, concepts, modulation, rope, allowed, layers, first, space, mode)
    return torch.stack(scores)  # [L, B, C, I]
