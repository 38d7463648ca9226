"""A deliberately naive reference of ConceptAttention on CogVideoX, for tests.

It re-runs the ``CogVideoXBlock`` s of a ``CogVideoXTransformer3DModel`` by hand, in float64, with ONE full attention
over ``[text, video, concepts]`` and an explicit boolean mask (text and video never see concepts; concepts see
video and/or concepts according to the mode, never the text). The expert adaptive LayerNorms are written out from
their weights (concepts take the text modulation), RoPE rotates the video queries/keys only, and there are exactly C
concept rows (no padding slots). It shares no code with the library's processors.
"""

from __future__ import annotations

import copy
import math
from typing import Any

import torch
import torch.nn.functional as F


def _rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotary embedding on interleaved pairs (CogVideoX's convention): ``[B, S, H, D]`` with ``cos/sin [S, D]``."""
    real, imag = x.unflatten(-1, (-1, 2)).unbind(-1)  # [B, S, H, D/2] each
    rotated = torch.stack([-imag, real], dim=-1).flatten(-2)  # [B, S, H, D]
    return x * cos[None, :, None] + rotated * sin[None, :, None]


def naive_cogvideox_scores(
    transformer: Any,
    inputs: dict[str, Any],
    concept_embeds: torch.Tensor,
    layers: list[int],
    space: str = "output",
    mode: str = "both",
) -> torch.Tensor:
    """Per-layer saliency scores ``[L, B, C, V]`` (float64) for the selected layers."""
    model = copy.deepcopy(transformer).double()
    latents = inputs["hidden_states"].double()  # [B, F, c, H, W]
    prompt = inputs["encoder_hidden_states"].double()  # [B, T, D_text]
    batch = latents.shape[0]
    temb = model.time_embedding(model.time_proj(inputs["timestep"]).double())  # [B, d_t]
    sequence = model.patch_embed(prompt, latents)  # [B, T + V, d] (text projection, patches, positions)
    num_text = prompt.shape[1]
    text, video = sequence[:, :num_text], sequence[:, num_text:]
    concepts = model.patch_embed.text_proj(concept_embeds.double()).unsqueeze(0).repeat(batch, 1, 1)  # [B, C, d]
    num_video, num_concepts = video.shape[1], concepts.shape[1]
    rotary = inputs.get("image_rotary_emb")
    cos, sin = (rotary[0].double(), rotary[1].double()) if rotary is not None else (None, None)

    total = num_text + num_video + num_concepts
    text_rows = slice(0, num_text)
    video_rows = slice(num_text, num_text + num_video)
    concept_rows = slice(num_text + num_video, total)
    allowed = torch.zeros(total, total, dtype=torch.bool, device=latents.device)
    allowed[: num_text + num_video, : num_text + num_video] = True  # text and video see text and video only
    if mode in ("both", "cross"):
        allowed[concept_rows, video_rows] = True
    if mode in ("both", "self"):
        allowed[concept_rows, concept_rows] = True

    scores = []
    for index, block in enumerate(model.transformer_blocks):
        if index > max(layers):
            break
        attn = block.attn1
        heads = attn.heads
        head_dim = attn.to_q.out_features // heads

        def split(x: torch.Tensor, heads: int = heads, head_dim: int = head_dim) -> torch.Tensor:
            return x.unflatten(-1, (heads, head_dim))  # [B, S, H, D]

        def expert_norm(norm: Any, x: torch.Tensor, stream: str) -> tuple[torch.Tensor, torch.Tensor]:
            """CogVideoXLayerNormZero written out: the video or the text modulation of ``x``, and its gate."""
            shift, scale, gate, text_shift, text_scale, text_gate = norm.linear(F.silu(temb)).chunk(6, dim=1)
            if stream == "text":
                shift, scale, gate = text_shift, text_scale, text_gate
            normalized = F.layer_norm(x, x.shape[-1:], norm.norm.weight, norm.norm.bias, norm.norm.eps)
            return normalized * (1 + scale[:, None]) + shift[:, None], gate[:, None]

        n_txt, g_txt = expert_norm(block.norm1, text, "text")
        n_vid, g_vid = expert_norm(block.norm1, video, "video")
        n_con, g_con = expert_norm(block.norm1, concepts, "text")
        rows = torch.cat([n_txt, n_vid, n_con], dim=1)  # [B, T + V + C, d] (shared q/k/v weights)
        query = attn.norm_q(split(attn.to_q(rows)))  # [B, S, H, D]
        key = attn.norm_k(split(attn.to_k(rows)))  # [B, S, H, D]
        value = split(attn.to_v(rows))  # [B, S, H, D]
        if cos is not None:  # RoPE on the video rows only
            query = torch.cat([query[:, text_rows], _rotate(query[:, video_rows], cos, sin), query[:, concept_rows]], 1)
            key = torch.cat([key[:, text_rows], _rotate(key[:, video_rows], cos, sin), key[:, concept_rows]], 1)

        logits = torch.einsum("bqhd,bkhd->bhqk", query, key) / math.sqrt(head_dim)  # [B, H, S, S]
        logits = logits.masked_fill(~allowed, float("-inf"))
        output = torch.einsum("bhqk,bkhd->bqhd", torch.softmax(logits, dim=-1).nan_to_num(0.0), value)
        if mode == "none":
            output[:, concept_rows] = value[:, concept_rows]
        output = output.flatten(2, 3)  # [B, S, H·D]
        o_vid, o_con = output[:, video_rows], output[:, concept_rows]  # the text output enters via to_out below

        if index in layers:
            if space == "output":
                scores.append(torch.einsum("bcd,bvd->bcv", o_con, o_vid))
            elif space == "cross_attention":
                q_vid, k_con = query[:, video_rows], key[:, concept_rows]
                scores.append(torch.einsum("bvhd,bchd->bcv", q_vid, k_con) / heads / math.sqrt(head_dim))
            elif space == "value":
                v_vid, v_con = value[:, video_rows], value[:, concept_rows]
                scores.append(torch.einsum("bvhd,bchd->bcv", v_vid, v_con) / heads)

        projected = attn.to_out[0](output)  # [B, S, d]
        text = text + g_txt * projected[:, text_rows]
        video = video + g_vid * projected[:, video_rows]
        concepts = concepts + g_con * projected[:, concept_rows]
        n_txt, g_txt = expert_norm(block.norm2, text, "text")
        n_vid, g_vid = expert_norm(block.norm2, video, "video")
        n_con, g_con = expert_norm(block.norm2, concepts, "text")
        text = text + g_txt * block.ff(n_txt)
        video = video + g_vid * block.ff(n_vid)
        concepts = concepts + g_con * block.ff(n_con)
    return torch.stack(scores)  # [L, B, C, V]
