"""A deliberately naive float64 reference of ConceptAttention on Chroma, for tests.

It re-runs the double-stream blocks of a ``ChromaTransformer2DModel`` by hand with ONE full attention over
``[text, image, concepts]`` and an explicit boolean mask: text and image see text and image (minus the padded text
keys that the model's ``attention_mask`` hides), concepts see the image and/or the concepts according to the mode and
never the text. The per-block modulation rows are sliced from the approximator output by hand. No code is shared with
the library's processors.
"""

from __future__ import annotations

import copy
import math
from typing import Any

import torch
from diffusers.models.embeddings import apply_rotary_emb


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
    concepts = model.context_embedder(concept_embeds.double()).unsqueeze(0).repeat(batch, 1, 1)  # [B, C, d]
    num_text, num_concepts = text.shape[1], concepts.shape[1]
    cos, sin = model.pos_embed(torch.cat([inputs["txt_ids"], inputs["img_ids"]], dim=0))  # [T + I, D] each

    total = num_text + num_image + num_concepts
    image_rows = slice(num_text, num_text + num_image)
    concept_rows = slice(num_text + num_image, total)
    allowed = torch.zeros(batch, total, total, dtype=torch.bool)
    token_mask = inputs.get("attention_mask")
    if token_mask is None:
        token_mask = torch.ones(batch, num_text + num_image, dtype=torch.bool)
    token_mask = token_mask.bool()  # [B, T + I]
    # the block's mask is mask_i AND mask_j over the text+image tokens
    allowed[:, : num_text + num_image, : num_text + num_image] = token_mask[:, :, None] & token_mask[:, None, :]
    if mode in ("both", "cross"):
        allowed[:, concept_rows, image_rows] = True
    if mode in ("both", "self"):
        allowed[:, concept_rows, concept_rows] = True

    num_blocks, num_single = len(model.transformer_blocks), len(model.single_transformer_blocks)
    scores = []
    for index, block in enumerate(model.transformer_blocks):
        if index > max(layers):
            break
        attn = block.attn
        heads, head_dim = attn.heads, attn.head_dim
        image_offset = 3 * num_single + 6 * index
        text_offset = 3 * num_single + 6 * num_blocks + 6 * index
        temb_image = modulation[:, image_offset : image_offset + 6]  # [B, 6, d]
        temb_text = modulation[:, text_offset : text_offset + 6]  # [B, 6, d]
        temb_concepts = temb_text
        if concept_modulation_block is not None:
            wrong_offset = 3 * num_single + 6 * num_blocks + 6 * concept_modulation_block
            temb_concepts = modulation[:, wrong_offset : wrong_offset + 6]  # [B, 6, d]

        def modulate(x: torch.Tensor, rows: torch.Tensor) -> tuple[torch.Tensor, ...]:
            shift, scale, gate, shift2, scale2, gate2 = rows.unbind(1)  # each [B, d]
            normed = torch.nn.functional.layer_norm(x, x.shape[-1:], eps=1e-6)
            return normed * (1 + scale[:, None]) + shift[:, None], gate, shift2, scale2, gate2

        def split(x: torch.Tensor, heads: int = heads, head_dim: int = head_dim) -> torch.Tensor:
            return x.unflatten(-1, (heads, head_dim))  # [B, S, H, D]

        n_img, gate, shift2, scale2, gate2 = modulate(hidden, temb_image)
        n_txt, c_gate, c_shift2, c_scale2, c_gate2 = modulate(text, temb_text)
        n_con, k_gate, k_shift2, k_scale2, k_gate2 = modulate(concepts, temb_concepts)
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
        rotated = slice(0, num_text + num_image)  # concepts keep position 0 (identity), as Chroma's text
        query = torch.cat([apply_rotary_emb(query[:, rotated], (cos, sin), sequence_dim=1), query[:, concept_rows]], 1)
        key = torch.cat([apply_rotary_emb(key[:, rotated], (cos, sin), sequence_dim=1), key[:, concept_rows]], 1)

        logits = torch.einsum("bqhd,bkhd->bhqk", query, key) / math.sqrt(head_dim)  # [B, H, S, S]
        logits = logits.masked_fill(~allowed[:, None], float("-inf"))
        if mode == "none":
            logits[:, :, concept_rows] = 0.0  # placeholder rows, replaced below
        weights = torch.softmax(logits, dim=-1).nan_to_num(0.0)  # fully masked padding rows give 0
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

        def mlp_update(x: torch.Tensor, o: torch.Tensor, proj: Any, ff: Any, g1: Any, sh: Any, sc: Any, g2: Any):
            x = x + g1[:, None] * proj(o)
            normed = torch.nn.functional.layer_norm(x, x.shape[-1:], eps=1e-6) * (1 + sc[:, None]) + sh[:, None]
            return x + g2[:, None] * ff(normed)

        hidden = mlp_update(hidden, o_img, attn.to_out[0], block.ff, gate, shift2, scale2, gate2)
        text = mlp_update(text, o_txt, attn.to_add_out, block.ff_context, c_gate, c_shift2, c_scale2, c_gate2)
        concepts = mlp_update(concepts, o_con, attn.to_add_out, block.ff_context, k_gate, k_shift2, k_scale2, k_gate2)
    return torch.stack(scores)  # [L, B, C, I]
