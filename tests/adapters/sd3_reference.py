"""A deliberately naive reference of ConceptAttention on SD3 / SD3.5, for tests.

It re-runs the ``JointTransformerBlock`` s of an ``SD3Transformer2DModel`` by hand, in float64, with ONE full attention
over the concatenation ``[image, text, concepts]`` and an explicit boolean mask (image and text never see concepts;
concepts see image and/or concepts according to the mode, never the text). Modulations, QK-norms, SD3.5's dual
attention and the ``context_pre_only`` last block are written out from the module weights. It shares no code with the
library's processors, so agreement is evidence that the optimised path (concept rows only, keys reused from the joint
attention, stream advanced by the block's text modules) implements the method.
"""

from __future__ import annotations

import copy
import math
from typing import Any

import torch
import torch.nn.functional as F


def _modulation(norm_module: Any, conditioning: torch.Tensor, chunks: int) -> list[torch.Tensor]:
    """``linear(silu(conditioning))`` split into ``chunks`` vectors ``[B, d]``."""
    return list(norm_module.linear(F.silu(conditioning)).chunk(chunks, dim=1))


def _layer_norm(x: torch.Tensor) -> torch.Tensor:
    return F.layer_norm(x, x.shape[-1:], eps=1e-6)


def _qk_norm(norm: Any, x: torch.Tensor) -> torch.Tensor:
    """RMS norm over the head dimension with the module's weight (identity without a norm)."""
    if norm is None:
        return x
    x = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + norm.eps)
    if norm.weight is not None:
        x = x * norm.weight
    return x + norm.bias if getattr(norm, "bias", None) is not None else x


def _attention(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, allowed: torch.Tensor) -> torch.Tensor:
    """Masked softmax attention on ``[B, S, H, D]``; rows with no allowed key return zeros."""
    logits = torch.einsum("bqhd,bkhd->bhqk", query, key) / math.sqrt(query.shape[-1])  # [B, H, S, S]
    logits = logits.masked_fill(~allowed, float("-inf"))
    weights = torch.softmax(logits, dim=-1).nan_to_num(0.0)
    return torch.einsum("bhqk,bkhd->bqhd", weights, value)  # [B, S, H, D]


def naive_sd3_scores(
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
    latents = inputs["hidden_states"].double()
    image = model.pos_embed(latents)  # [B, I, d] (patchify + sin-cos positions)
    batch, num_image = image.shape[:2]
    timestep = inputs["timestep"]
    pooled = inputs["pooled_projections"].double()
    temb = model.time_text_embed(timestep, pooled)  # [B, d]
    temb_concepts = temb if conditioning == "prompt" else model.time_text_embed(timestep, torch.zeros_like(pooled))
    text = model.context_embedder(inputs["encoder_hidden_states"].double())  # [B, T, d]
    concepts = model.context_embedder(concept_embeds.double()).unsqueeze(0).repeat(batch, 1, 1)  # [B, C, d]
    num_text, num_concepts = text.shape[1], concepts.shape[1]

    total = num_image + num_text + num_concepts
    image_rows = slice(0, num_image)
    text_rows = slice(num_image, num_image + num_text)
    concept_rows = slice(num_image + num_text, total)
    allowed = torch.zeros(total, total, dtype=torch.bool, device=latents.device)
    allowed[: num_image + num_text, : num_image + num_text] = True  # image and text see image and text only
    if mode in ("both", "cross"):
        allowed[concept_rows, image_rows] = True
    if mode in ("both", "self"):
        allowed[concept_rows, concept_rows] = True

    scores = []
    for index, block in enumerate(model.transformer_blocks):
        if index > max(layers):
            break
        attn = block.attn
        heads = attn.heads
        head_dim = attn.to_q.out_features // heads

        def split(x: torch.Tensor, heads: int = heads, head_dim: int = head_dim) -> torch.Tensor:
            return x.unflatten(-1, (heads, head_dim))  # [B, S, H, D]

        if block.use_dual_attention:
            shift, scale, gate, shift2, scale2, gate2, shift_x, scale_x, gate_x = _modulation(block.norm1, temb, 9)
        else:
            shift, scale, gate, shift2, scale2, gate2 = _modulation(block.norm1, temb, 6)
        normalized_image = _layer_norm(image)  # [B, I, d]
        n_img = normalized_image * (1 + scale[:, None]) + shift[:, None]
        if block.context_pre_only:  # AdaLayerNormContinuous: (scale, shift), no gates
            c_scale, c_shift = _modulation(block.norm1_context, temb, 2)
            k_scale, k_shift = _modulation(block.norm1_context, temb_concepts, 2)
        else:
            c_shift, c_scale, c_gate, c_shift2, c_scale2, c_gate2 = _modulation(block.norm1_context, temb, 6)
            k_shift, k_scale, k_gate, k_shift2, k_scale2, k_gate2 = _modulation(block.norm1_context, temb_concepts, 6)
        n_txt = _layer_norm(text) * (1 + c_scale[:, None]) + c_shift[:, None]
        n_con = _layer_norm(concepts) * (1 + k_scale[:, None]) + k_shift[:, None]

        query = torch.cat(
            [
                _qk_norm(attn.norm_q, split(attn.to_q(n_img))),
                _qk_norm(attn.norm_added_q, split(attn.add_q_proj(n_txt))),
                _qk_norm(attn.norm_added_q, split(attn.add_q_proj(n_con))),
            ],
            dim=1,
        )  # [B, I + T + C, H, D]
        key = torch.cat(
            [
                _qk_norm(attn.norm_k, split(attn.to_k(n_img))),
                _qk_norm(attn.norm_added_k, split(attn.add_k_proj(n_txt))),
                _qk_norm(attn.norm_added_k, split(attn.add_k_proj(n_con))),
            ],
            dim=1,
        )  # [B, I + T + C, H, D]
        value = torch.cat(
            [split(attn.to_v(n_img)), split(attn.add_v_proj(n_txt)), split(attn.add_v_proj(n_con))], dim=1
        )  # [B, I + T + C, H, D]
        output = _attention(query, key, value, allowed)
        if mode == "none":
            output[:, concept_rows] = value[:, concept_rows]
        output = output.flatten(2, 3)  # [B, S, H·D]
        o_img, o_txt, o_con = output[:, image_rows], output[:, text_rows], output[:, concept_rows]

        if index in layers:
            if space == "output":
                scores.append(torch.einsum("bcd,bid->bci", o_con, o_img))
            elif space == "cross_attention":
                q_img, k_con = query[:, image_rows], key[:, concept_rows]
                scores.append(torch.einsum("bihd,bchd->bci", q_img, k_con) / heads / math.sqrt(head_dim))
            elif space == "value":
                v_img, v_con = value[:, image_rows], value[:, concept_rows]
                scores.append(torch.einsum("bihd,bchd->bci", v_img, v_con) / heads)

        image = image + gate[:, None] * attn.to_out[0](o_img)
        if block.use_dual_attention:  # image-only self-attention attn2 on its own modulation
            attn2 = block.attn2
            n_x = normalized_image * (1 + scale_x[:, None]) + shift_x[:, None]  # the block's input, not the update
            self_attention = _attention(
                _qk_norm(attn2.norm_q, split(attn2.to_q(n_x))),
                _qk_norm(attn2.norm_k, split(attn2.to_k(n_x))),
                split(attn2.to_v(n_x)),
                torch.ones(num_image, num_image, dtype=torch.bool, device=latents.device),
            ).flatten(2, 3)  # [B, I, H·D]
            image = image + gate_x[:, None] * attn2.to_out[0](self_attention)
        image = image + gate2[:, None] * block.ff(_layer_norm(image) * (1 + scale2[:, None]) + shift2[:, None])
        if block.context_pre_only:
            continue  # the text stream (and with it the concept stream) ends in the last block
        text = text + c_gate[:, None] * attn.to_add_out(o_txt)
        text = text + c_gate2[:, None] * block.ff_context(_layer_norm(text) * (1 + c_scale2[:, None]) + c_shift2[:, None])
        concepts = concepts + k_gate[:, None] * attn.to_add_out(o_con)
        concepts = concepts + k_gate2[:, None] * block.ff_context(
            _layer_norm(concepts) * (1 + k_scale2[:, None]) + k_shift2[:, None]
        )
    return torch.stack(scores)  # [L, B, C, I]
