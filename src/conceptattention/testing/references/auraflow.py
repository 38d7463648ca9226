"""A deliberately naive float64 reference of ConceptAttention on AuraFlow, for tests.

It re-runs the joint (MM-DiT) blocks of an ``AuraFlowTransformer2DModel`` by hand with ONE full attention over
``[registers + text, image, concepts]`` and an explicit boolean mask (text and image never see concepts; concepts see
the image and/or the concepts, never the text), with AuraFlow's post-norm residual updates. No code is shared with the
library's processors.
"""

from __future__ import annotations

import copy
from typing import Any

import torch

from .common import (
    Layout,
    blocks_until,
    concept_attention,
    concept_scores,
    joint_qkv,
    per_sample,
    residual_update,
)


def naive_auraflow_scores(
    transformer: Any,
    inputs: dict[str, Any],
    concept_embeds: torch.Tensor,
    layers: list[int],
    space: str = "output",
    mode: str = "both",
) -> torch.Tensor:
    """Per-layer saliency scores ``[L, B, C, I]`` (float64) for the selected layers."""
    model = copy.deepcopy(transformer).double()
    hidden = model.pos_embed(inputs["hidden_states"].double())  # [B, I, d]
    batch, num_image = hidden.shape[:2]
    temb = model.time_step_proj(model.time_step_embed(inputs["timestep"].double()).double())  # [B, d]
    text = model.context_embedder(inputs["encoder_hidden_states"].double())  # [B, T, d]
    text = torch.cat([model.register_tokens.repeat(batch, 1, 1), text], dim=1)  # [B, 8 + T, d]
    concepts = per_sample(model.context_embedder(concept_embeds.double()), batch)  # [B, C, d]
    layout = Layout.text_first(text.shape[1], num_image, concepts.shape[1])  # the registers count as text
    allowed = layout.mask(mode)  # [S, S]

    scores = []
    for index, block in blocks_until(model.joint_transformer_blocks, layers):
        attn = block.attn
        n_img, *img_mod = block.norm1(hidden, emb=temb)  # img_mod: gate, shift2, scale2, gate2, each [B, d]
        n_txt, *txt_mod = block.norm1_context(text, emb=temb)
        n_con, *con_mod = block.norm1_context(concepts, emb=temb)
        query, key, value = joint_qkv(attn, [(n_txt, True), (n_img, False), (n_con, True)])  # [B, S, H, D]
        output = concept_attention(query, key, value, allowed, layout, mode)  # [B, S, H·D]
        if index in layers:
            scores.append(concept_scores(space, query, key, value, output, layout))
        o_txt, o_img, o_con = output[:, layout.text], output[:, layout.image], output[:, layout.concepts]
        # AuraFlow: the MLP reads the normalised attention update but adds onto the block's input
        hidden = residual_update(hidden, attn.to_out[0](o_img), block.norm2, block.ff, *img_mod, mlp_onto_input=True)
        text = residual_update(
            text, attn.to_add_out(o_txt), block.norm2_context, block.ff_context, *txt_mod, mlp_onto_input=True
        )
        concepts = residual_update(
            concepts, attn.to_add_out(o_con), block.norm2_context, block.ff_context, *con_mod, mlp_onto_input=True
        )
    return torch.stack(scores)  # [L, B, C, I]
