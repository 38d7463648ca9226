"""A deliberately naive float64 reference of ConceptAttention on AuraFlow, for tests.

It re-runs the joint (MM-DiT) blocks of an ``AuraFlowTransformer2DModel`` by hand with ONE full attention over
``[registers + text, image, concepts]`` and an explicit boolean mask (text and image never see concepts; concepts see
the image and/or the concepts, never the text), with AuraFlow's post-norm residual updates. No code is shared with the
library's processors.
"""

from __future__ import annotations

import copy
import math
from typing import Any

import torch


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
    concepts = model.context_embedder(concept_embeds.double()).unsqueeze(0).repeat(batch, 1, 1)  # [B, C, d]
    num_text, num_concepts = text.shape[1], concepts.shape[1]

    total = num_text + num_image + num_concepts
    image_rows = slice(num_text, num_text + num_image)
    concept_rows = slice(num_text + num_image, total)
    allowed = torch.zeros(total, total, dtype=torch.bool)
    allowed[: num_text + num_image, : num_text + num_image] = True
    if mode in ("both", "cross"):
        allowed[concept_rows, image_rows] = True
    if mode in ("both", "self"):
        allowed[concept_rows, concept_rows] = True

    scores = []
    for index, block in enumerate(model.joint_transformer_blocks):
        if index > max(layers):
            break
        attn = block.attn
        heads = attn.heads
        head_dim = hidden.shape[-1] // heads

        def split(x: torch.Tensor, heads: int = heads) -> torch.Tensor:
            return x.unflatten(-1, (heads, -1))  # [B, S, H, D]

        n_img, gate, shift2, scale2, gate2 = block.norm1(hidden, emb=temb)
        n_txt, c_gate, c_shift2, c_scale2, c_gate2 = block.norm1_context(text, emb=temb)
        n_con, k_gate, k_shift2, k_scale2, k_gate2 = block.norm1_context(concepts, emb=temb)
        query = torch.cat(
            [
                attn.norm_added_q(split(attn.add_q_proj(n_txt))),
                attn.norm_q(split(attn.to_q(n_img))),
                attn.norm_added_q(split(attn.add_q_proj(n_con))),
            ],
            dim=1,
        )  # [B, S, H, D]
        key = torch.cat(
            [
                attn.norm_added_k(split(attn.add_k_proj(n_txt))),
                attn.norm_k(split(attn.to_k(n_img))),
                attn.norm_added_k(split(attn.add_k_proj(n_con))),
            ],
            dim=1,
        )  # [B, S, H, D]
        value = torch.cat(
            [split(attn.add_v_proj(n_txt)), split(attn.to_v(n_img)), split(attn.add_v_proj(n_con))], dim=1
        )  # [B, S, H, D]

        logits = torch.einsum("bqhd,bkhd->bhqk", query, key) / math.sqrt(head_dim)  # [B, H, S, S]
        logits = logits.masked_fill(~allowed, float("-inf"))
        if mode == "none":
            logits[:, :, concept_rows] = 0.0  # placeholder rows, replaced below
        weights = torch.softmax(logits, dim=-1)
        output = torch.einsum("bhqk,bkhd->bqhd", weights, value)  # [B, S, H, D]
        if mode == "none":
            output[:, concept_rows] = value[:, concept_rows]
        output = output.flatten(2, 3)  # [B, S, H·D]
        o_txt, o_img, o_con = output[:, :num_text], output[:, image_rows], output[:, concept_rows]

        if index in layers:
            if space == "output":
                scores.append(torch.einsum("bcd,bid->bci", o_con, o_img))
            elif space == "cross_attention":
                scores.append(
                    torch.einsum("bihd,bchd->bci", query[:, image_rows], key[:, concept_rows])
                    / heads
                    / math.sqrt(head_dim)
                )
            elif space == "value":
                scores.append(torch.einsum("bihd,bchd->bci", value[:, image_rows], value[:, concept_rows]) / heads)

        def post_norm_update(x, o, proj, norm2, ff, g1, sh, sc, g2):
            y = norm2(x + g1[:, None] * proj(o))
            return x + g2[:, None] * ff(y * (1 + sc[:, None]) + sh[:, None])

        hidden = post_norm_update(hidden, o_img, attn.to_out[0], block.norm2, block.ff, gate, shift2, scale2, gate2)
        text = post_norm_update(
            text, o_txt, attn.to_add_out, block.norm2_context, block.ff_context, c_gate, c_shift2, c_scale2, c_gate2
        )
        concepts = post_norm_update(
            concepts,
            o_con,
            attn.to_add_out,
            block.norm2_context,
            block.ff_context,
            k_gate,
            k_shift2,
            k_scale2,
            k_gate2,
        )
    return torch.stack(scores)  # [L, B, C, I]
