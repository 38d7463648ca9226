"""A deliberately naive reference of ConceptAttention on CogVideoX, for tests.

It re-runs the ``CogVideoXBlock`` s of a ``CogVideoXTransformer3DModel`` by hand, in float64, with ONE full attention
over ``[text, video, concepts]`` and an explicit boolean mask (text and video never see concepts; concepts see
video and/or concepts according to the mode, never the text). The expert adaptive LayerNorms are written out from
their weights (concepts take the text modulation), RoPE rotates the video queries/keys only, and there are exactly C
concept rows (no padding slots). It shares no code with the library's processors.
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
    modulate,
    per_sample,
    rotate_rows,
    silu_modulation,
    stream_qkv,
)


def _expert_norm(norm: Any, temb: torch.Tensor, x: torch.Tensor, stream: str) -> tuple[torch.Tensor, torch.Tensor]:
    """CogVideoXLayerNormZero written out: the video or the text modulation of ``x [B, S, d]``, and its gate
    ``[B, 1, d]``."""
    shift, scale, gate, text_shift, text_scale, text_gate = silu_modulation(norm, temb, 6)  # [B, d] each
    if stream == "text":
        shift, scale, gate = text_shift, text_scale, text_gate
    normalized = F.layer_norm(x, x.shape[-1:], norm.norm.weight, norm.norm.bias, norm.norm.eps)
    return modulate(normalized, shift, scale), gate[:, None]


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
    concepts = per_sample(model.patch_embed.text_proj(concept_embeds.double()), batch)  # [B, C, d]
    layout = Layout.text_first(num_text, video.shape[1], concepts.shape[1])  # [text, video, concepts]
    allowed = layout.mask(mode, device=latents.device)  # [S, S]
    rotary = inputs.get("image_rotary_emb")
    cos, sin = (rotary[0].double(), rotary[1].double()) if rotary is not None else (None, None)

    def rope(x: torch.Tensor) -> torch.Tensor:
        return interleaved_rope(x, cos, sin)

    scores = []
    for index, block in blocks_until(model.transformer_blocks, layers):
        attn = block.attn1
        n_txt, g_txt = _expert_norm(block.norm1, temb, text, "text")
        n_vid, g_vid = _expert_norm(block.norm1, temb, video, "video")
        n_con, g_con = _expert_norm(block.norm1, temb, concepts, "text")
        rows = torch.cat([n_txt, n_vid, n_con], dim=1)  # [B, T + V + C, d] (shared q/k/v weights)
        query, key, value = stream_qkv(attn, rows, False)  # [B, S, H, D]
        if cos is not None:  # RoPE on the video rows only
            query, key = rotate_rows(query, layout.image, rope), rotate_rows(key, layout.image, rope)
        output = concept_attention(query, key, value, allowed, layout, mode)  # [B, S, H·D]
        if index in layers:
            scores.append(concept_scores(space, query, key, value, output, layout))

        projected = attn.to_out[0](output)  # [B, S, d]; the text output enters here
        text = text + g_txt * projected[:, layout.text]
        video = video + g_vid * projected[:, layout.image]
        concepts = concepts + g_con * projected[:, layout.concepts]
        n_txt, g_txt = _expert_norm(block.norm2, temb, text, "text")
        n_vid, g_vid = _expert_norm(block.norm2, temb, video, "video")
        n_con, g_con = _expert_norm(block.norm2, temb, concepts, "text")
        text = text + g_txt * block.ff(n_txt)
        video = video + g_vid * block.ff(n_vid)
        concepts = concepts + g_con * block.ff(n_con)
    return torch.stack(scores)  # [L, B, C, V]
