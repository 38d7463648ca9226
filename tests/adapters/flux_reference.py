"""A deliberately naive reference of ConceptAttention on FLUX.1, for tests.

It re-runs the double-stream blocks of a ``FluxTransformer2DModel`` by hand, in float64, with ONE full attention over
the concatenation ``[text, image, concepts]`` and an explicit boolean mask (text and image never see concepts;
concepts see image and/or concepts according to the mode, never the text). It shares no code with the library's
processors, so agreement is evidence that the optimised path (concept rows only, keys reused from the joint
attention) implements the method.
"""

from __future__ import annotations

import copy
import math
from typing import Any

import torch
from diffusers.models.embeddings import apply_rotary_emb


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
    concepts = model.context_embedder(concept_embeds.double()).unsqueeze(0).repeat(batch, 1, 1)  # [B, C, d]
    num_text, num_concepts = text.shape[1], concepts.shape[1]
    ids = torch.cat([inputs["txt_ids"], inputs["img_ids"]], dim=0)  # [T + I, 3]
    cos, sin = model.pos_embed(ids)

    total = num_text + num_image + num_concepts
    allowed = torch.zeros(total, total, dtype=torch.bool)
    text_rows = slice(0, num_text)
    image_rows = slice(num_text, num_text + num_image)
    concept_rows = slice(num_text + num_image, total)
    allowed[: num_text + num_image, : num_text + num_image] = True  # text and image see text and image only
    if mode in ("both", "cross"):
        allowed[concept_rows, image_rows] = True
    if mode in ("both", "self"):
        allowed[concept_rows, concept_rows] = True

    scores = []
    for index, block in enumerate(model.transformer_blocks):
        if index > max(layers):
            break
        attn = block.attn
        heads, head_dim = attn.heads, attn.head_dim

        def split(x: torch.Tensor, heads: int = heads, head_dim: int = head_dim) -> torch.Tensor:
            return x.unflatten(-1, (heads, head_dim))  # [B, S, H, D]

        n_img, gate, shift2, scale2, gate2 = block.norm1(hidden, emb=temb)
        n_txt, c_gate, c_shift2, c_scale2, c_gate2 = block.norm1_context(text, emb=temb)
        n_con, k_gate, k_shift2, k_scale2, k_gate2 = block.norm1_context(concepts, emb=temb_concepts)
        query = torch.cat(
            [
                attn.norm_added_q(split(attn.add_q_proj(n_txt))),
                attn.norm_q(split(attn.to_q(n_img))),
                attn.norm_added_q(split(attn.add_q_proj(n_con))),
            ],
            dim=1,
        )  # [B, T + I + C, H, D]
        key = torch.cat(
            [
                attn.norm_added_k(split(attn.add_k_proj(n_txt))),
                attn.norm_k(split(attn.to_k(n_img))),
                attn.norm_added_k(split(attn.add_k_proj(n_con))),
            ],
            dim=1,
        )  # [B, T + I + C, H, D]
        value = torch.cat(
            [split(attn.add_v_proj(n_txt)), split(attn.to_v(n_img)), split(attn.add_v_proj(n_con))], dim=1
        )  # [B, T + I + C, H, D]
        # RoPE on text and image rows; concepts keep position 0 (identity rotation), as FLUX.1 text tokens
        rotated = slice(0, num_text + num_image)
        query = torch.cat([apply_rotary_emb(query[:, rotated], (cos, sin), sequence_dim=1), query[:, concept_rows]], 1)
        key = torch.cat([apply_rotary_emb(key[:, rotated], (cos, sin), sequence_dim=1), key[:, concept_rows]], 1)

        logits = torch.einsum("bqhd,bkhd->bhqk", query, key) / math.sqrt(head_dim)  # [B, H, S, S]
        logits = logits.masked_fill(~allowed, float("-inf"))
        if mode == "none":
            logits[:, :, concept_rows] = 0.0  # placeholder rows, replaced below
        weights = torch.softmax(logits, dim=-1)
        output = torch.einsum("bhqk,bkhd->bqhd", weights, value)  # [B, S, H, D]
        if mode == "none":
            output[:, concept_rows] = value[:, concept_rows]
        output = output.flatten(2, 3)  # [B, S, H·D]
        o_txt, o_img, o_con = output[:, text_rows], output[:, image_rows], output[:, concept_rows]

        if index in layers:
            if space == "output":
                scores.append(torch.einsum("bcd,bid->bci", o_con, o_img))
            elif space == "cross_attention":
                q_img, k_con = query[:, image_rows], key[:, concept_rows]
                scores.append(torch.einsum("bihd,bchd->bci", q_img, k_con) / heads / math.sqrt(head_dim))
            elif space == "value":
                v_img, v_con = value[:, image_rows], value[:, concept_rows]
                scores.append(torch.einsum("bihd,bchd->bci", v_img, v_con) / heads)

        hidden = hidden + gate.unsqueeze(1) * attn.to_out[0](o_img)
        hidden = hidden + gate2.unsqueeze(1) * block.ff(block.norm2(hidden) * (1 + scale2[:, None]) + shift2[:, None])
        text = text + c_gate.unsqueeze(1) * attn.to_add_out(o_txt)
        text = text + c_gate2.unsqueeze(1) * block.ff_context(
            block.norm2_context(text) * (1 + c_scale2[:, None]) + c_shift2[:, None]
        )
        concepts = concepts + k_gate.unsqueeze(1) * attn.to_add_out(o_con)
        concepts = concepts + k_gate2.unsqueeze(1) * block.ff_context(
            block.norm2_context(concepts) * (1 + k_scale2[:, None]) + k_shift2[:, None]
        )
    return torch.stack(scores)  # [L, B, C, I]
