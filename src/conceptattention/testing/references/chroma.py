"""A deliberately naive float64 reference of ConceptAttention on Chroma, for tests.

It re-runs the double-stream blocks of a ``ChromaTransformer2DModel`` by hand with ONE full attention over
``[text, image, concepts]`` and an explicit boolean mask: text and image see text and image (minus the padded text
keys that the model's ``attention_mask`` hides), concepts see the image and/or the concepts according to the mode and
never the text. The per-block modulation rows are sliced from the approximator output by hand. No code is shared with
the library's processors.
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
    layer_norm_double_block,
    per_sample,
    rotate_rows,
)
from .flux_single import naive_single_blocks


def naive_chroma_scores(
    transformer: Any,
    inputs: dict[str, Any],
    concept_embeds: torch.Tensor,
    layers: list[int],
    space: str = "output",
    mode: str = "both",
    concept_modulation_block: int | None = None,
) -> torch.Tensor:
    """Per-layer saliency scores ``[L, B, C, I]`` (float64) for the selected layers.

    ``concept_modulation_block`` (a deliberately wrong variant, for sensitivity tests) modulates the concepts of every
    block with that block's text rows instead of each block's own.
    """
    model = copy.deepcopy(transformer).double()
    hidden = model.x_embedder(inputs["hidden_states"].double())  # [B, I, d]
    batch, num_image = hidden.shape[:2]
    modulation = model.distilled_guidance_layer(model.time_text_embed(inputs["timestep"].double() * 1000))  # [B, M, d]
    text = model.context_embedder(inputs["encoder_hidden_states"].double())  # [B, T, d]
    concepts = per_sample(model.context_embedder(concept_embeds.double()), batch)  # [B, C, d]
    layout = Layout.text_first(text.shape[1], num_image, concepts.shape[1])
    cos, sin = model.pos_embed(torch.cat([inputs["txt_ids"], inputs["img_ids"]], dim=0))  # [T + I, D] each

    token_mask = inputs.get("attention_mask")
    if token_mask is None:
        token_mask = torch.ones(batch, layout.joint, dtype=torch.bool)
    token_mask = token_mask.bool()  # [B, T + I]
    # the block's mask is mask_i AND mask_j over the text+image tokens
    allowed = layout.mask(mode, joint=token_mask[:, :, None] & token_mask[:, None, :])  # [B, S, S]

    def rope(x: torch.Tensor) -> torch.Tensor:
        return apply_rotary_emb(x, (cos, sin), sequence_dim=1)

    def block_rows(block: int, stream_offset: int) -> list[torch.Tensor]:
        """The 6 modulation vectors ``[B, d]`` of a double block: shift, scale, gate, shift2, scale2, gate2."""
        offset = 3 * len(model.single_transformer_blocks) + stream_offset + 6 * block
        return list(modulation[:, offset : offset + 6].unbind(1))

    num_blocks = len(model.transformer_blocks)
    scores = []
    for index, block in blocks_until(model.transformer_blocks, layers):
        text_rows = block_rows(index, 6 * num_blocks)
        if concept_modulation_block is None:
            concept_rows = text_rows
        else:
            concept_rows = block_rows(concept_modulation_block, 6 * num_blocks)
        attention, (hidden, text, concepts) = layer_norm_double_block(  # fully masked padding rows give 0
            block.attn, (hidden, text, concepts), (block_rows(index, 0), text_rows, concept_rows),
            (block.ff, block.ff_context), layout, allowed, mode,
            lambda x: rotate_rows(x, slice(0, layout.joint), rope),  # concepts keep position 0 (identity), as text
        )
        if index in layers:
            scores.append(concept_scores(space, *attention, layout))

    def single_rows(k: int, stream: str) -> tuple[torch.Tensor, ...]:
        """Single block k's shift, scale, gate ``[B, d]`` (tokens and concepts alike)."""
        return tuple(modulation[:, 3 * k : 3 * k + 3].unbind(1))

    singles = model.single_transformer_blocks  # layer indices past the double blocks
    scores += naive_single_blocks(singles, text, hidden, concepts, single_rows, rope, allowed, layers, num_blocks, space, mode)
    return torch.stack(scores)  # [L, B, C, I]
