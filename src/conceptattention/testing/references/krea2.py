"""A deliberately naive float64 reference of the single-stream ConceptAttention extension on Krea 2, for tests.

The text fusion, text projection, timestep embedding and RoPE tables are diffusers' own modules run in float64 on a
copy of the model (the concepts go through ``text_fusion`` as one sequence and ``txt_in``). The blocks are re-run by
hand with ONE full attention over ``[text, image, concepts]`` (shared grouped-query projections, RMS QK-norm, RoPE
written out; concepts at position ``(0, 0, 0)``) and an explicit boolean mask: padded text tokens are no keys, text and
image never see the concepts, the concepts see the image and/or each other by mode. Every row takes the block's one
modulation; the sigmoid output gate multiplies every row's attention output before ``to_out``. No code is shared with
the library's processors.
"""

from __future__ import annotations

import copy
from typing import Any

import torch
import torch.nn.functional as F

from .common import (
    Layout,
    blocks_until,
    concept_attention,
    concept_scores,
    interleaved_rope,
    key_mask,
    per_sample,
    split_heads,
)


def _rms(norm: Any, x: torch.Tensor) -> torch.Tensor:
    """Krea 2's zero-centred RMSNorm (multiplier ``1 + weight``) written out in float64: ``[..., n]``."""
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + norm.eps) * (1.0 + norm.weight)


def naive_krea2_scores(
    transformer: Any,
    inputs: dict[str, Any],
    concept_embeds: torch.Tensor,
    layers: list[int],
    space: str = "output",
    mode: str = "both",
    variant: str = "extension",
) -> torch.Tensor:
    """Per-layer saliency scores ``[L, B, C, I]`` (float64) for the selected blocks.

    ``variant="see_text"`` (concepts also attend to the text) and ``variant="ungated"`` (output-space scores on the
    attention output before the sigmoid gate) are deliberately wrong variants.
    """
    model = copy.deepcopy(transformer).double()
    config = model.config
    valid_text = inputs["encoder_attention_mask"]  # [B, T] bool
    temb = model.time_embed(inputs["timestep"].double(), dtype=torch.float64)  # [B, 1, d]
    temb_mod = model.time_mod_proj(F.gelu(temb, approximate="tanh"))  # [B, 1, 6d]
    text = model.txt_in(
        model.text_fusion(inputs["encoder_hidden_states"].double(), attention_mask=valid_text[:, None, None, :])
    )  # [B, T, d]
    image = model.img_in(inputs["hidden_states"].double())  # [B, I, d]
    stack = concept_embeds.double().unflatten(-1, (config.num_text_layers, config.text_hidden_dim))[None]
    concepts = per_sample(model.txt_in(model.text_fusion(stack))[0], image.shape[0])  # [B, C, d]
    cos, sin = (f.double() for f in model.rotary_emb(inputs["position_ids"]))  # [T + I, D] each
    count = concepts.shape[1]
    cos = torch.cat([cos, torch.ones(count, cos.shape[1], dtype=cos.dtype)])  # concepts at position (0, 0, 0)
    sin = torch.cat([sin, torch.zeros(count, sin.shape[1], dtype=sin.dtype)])
    layout = Layout.text_first(text.shape[1], image.shape[1], count)
    valid = torch.cat([valid_text, torch.ones(image.shape[:2], dtype=torch.bool)], dim=1)  # [B, T + I]
    allowed = layout.mask(mode, key_mask(valid))  # [B, S, S]
    if variant == "see_text":
        allowed[:, layout.concepts, layout.text] = valid_text[:, None, :]

    scores = []
    for index, block in blocks_until(model.transformer_blocks, layers):
        attn = block.attn
        groups = attn.num_heads // attn.num_kv_heads
        prescale, preshift, pregate, postscale, postshift, postgate = (
            temb_mod.unflatten(-1, (6, -1)) + block.scale_shift_table
        ).unbind(-2)  # [B, 1, d] each
        sequence = torch.cat([text, image, concepts], dim=1)  # [B, S, d]
        normed = (1 + prescale) * _rms(block.norm1, sequence) + preshift
        query = _rms(attn.norm_q, split_heads(attn.to_q(normed), attn.num_heads))  # [B, S, H, D]
        query = interleaved_rope(query, cos, sin)
        key = interleaved_rope(_rms(attn.norm_k, split_heads(attn.to_k(normed), attn.num_kv_heads)), cos, sin)
        key = key.repeat_interleave(groups, 2)  # [B, S, H_kv, D] -> [B, S, H, D]
        value = split_heads(attn.to_v(normed), attn.num_kv_heads).repeat_interleave(groups, 2)  # [B, S, H, D]
        output = concept_attention(query, key, value, allowed, layout, mode)  # [B, S, H·D]
        gated = output * torch.sigmoid(attn.to_gate(normed))
        if index in layers:
            scores.append(concept_scores(space, query, key, value, output if variant == "ungated" else gated, layout))
        sequence = sequence + pregate * attn.to_out[0](gated)
        sequence = sequence + postgate * block.ff((1 + postscale) * _rms(block.norm2, sequence) + postshift)
        text, image, concepts = sequence.split([text.shape[1], image.shape[1], count], dim=1)
    return torch.stack(scores)  # [L, B, C, I]
