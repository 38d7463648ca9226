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
    concept_attention,
    concept_scores,
    joint_qkv,
    per_sample,
    residual_update,
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
        attn = block.attn
        n_img, *img_mod = block.norm1(hidden, emb=temb)  # img_mod: gate, shift2, scale2, gate2, each [B, d]
        n_txt, *txt_mod = block.norm1_context(text, emb=temb)
        n_con, *con_mod = block.norm1_context(concepts, emb=temb_concepts)
        query, key, value = joint_qkv(attn, [(n_txt, True), (n_img, False), (n_con, True)])  # [B, S, H, D]
        # RoPE on text and image rows; concepts keep position 0 (identity rotation), as FLUX.1 text tokens
        query, key = rotate_rows(query, slice(0, layout.joint), rope), rotate_rows(key, slice(0, layout.joint), rope)
        output = concept_attention(query, key, value, allowed, layout, mode)  # [B, S, H·D]
        if index in layers:
            scores.append(concept_scores(space, query, key, value, output, layout))
        o_txt, o_img, o_con = output[:, layout.text], output[:, layout.image], output[:, layout.concepts]
        hidden = residual_update(hidden, attn.to_out[0](o_img), block.norm2, block.ff, *img_mod)
        text = residual_update(text, attn.to_add_out(o_txt), block.norm2_context, block.ff_context, *txt_mod)
        concepts = residual_update(concepts, attn.to_add_out(o_con), block.norm2_context, block.ff_context, *con_mod)
    singles, first = model.single_transformer_blocks, len(model.transformer_blocks)  # indices past the doubles

    def modulation(k: int, stream: str) -> tuple[torch.Tensor, ...]:
        return silu_rows(singles[k], temb if stream == "tokens" else temb_concepts)

    scores += naive_single_blocks(singles, text, hidden, concepts, modulation, rope, allowed, layers, first, space, mode)
    return torch.stack(scores)  # [L, B, C, I]
