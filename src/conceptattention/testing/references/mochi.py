"""A deliberately naive float64 reference of ConceptAttention on Mochi 1, for tests.

It re-runs the blocks of a ``MochiTransformer3DModel`` by hand with ONE full attention over
``[video, text, concepts]`` and an explicit boolean mask (video and valid text see the video and the valid text; padded
text tokens see nothing; concepts see the video and/or the concepts). The modulated RMS norms are written out in
float64 from the modules' ``linear`` weights; Mochi's interleaved RoPE rotates the video rows only. The concept stream
is modulated by the time embedding alone (``"null_pooled"``) or the prompt's ``temb`` (``"prompt"``), and is not
advanced after the ``context_pre_only`` last block. No code is shared with the library's processors.
"""

from __future__ import annotations

import copy
from typing import Any

import torch
import torch.nn.functional as F

from .common import Layout, blocks_until, concept_attention, concept_scores, joint_qkv, rotate_rows


def _rms(x: torch.Tensor, eps: float) -> torch.Tensor:
    """RMS norm over the last dimension without weights: ``[..., d]`` -> ``[..., d]``."""
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps)


def _rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotary embedding on interleaved pairs: ``x [B, S, H, D]``, ``cos/sin [S, H, D/2]``."""
    even, odd = x[..., 0::2], x[..., 1::2]
    return torch.stack([even * cos - odd * sin, even * sin + odd * cos], dim=-1).flatten(-2)


def _stream_update(
    x: torch.Tensor, attention_out: torch.Tensor, ff: Any, modulation: list[torch.Tensor], eps: float
) -> torch.Tensor:
    """Mochi's residual updates of a stream ``x [B, S, d]`` with ``(gate_msa, scale_mlp, gate_mlp)``, each ``[B, d]``."""
    gate_msa, scale_mlp, gate_mlp = modulation
    x = x + _rms(attention_out, eps) * torch.tanh(gate_msa)[:, None]
    return x + _rms(ff(_rms(x, eps) * (1 + scale_mlp[:, None])), eps) * torch.tanh(gate_mlp)[:, None]


def _modulate(norm: Any, x: torch.Tensor, temb: torch.Tensor, eps: float) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """``MochiRMSNormZero`` (four chunks) or, for a ``context_pre_only`` block, ``MochiLayerNormContinuous``."""
    if hasattr(norm, "linear_1"):  # context_pre_only: scale only
        return _rms(x, eps) * (1 + norm.linear_1(F.silu(temb))[:, None]), []
    scale_msa, gate_msa, scale_mlp, gate_mlp = norm.linear(F.silu(temb)).chunk(4, dim=1)
    return _rms(x, eps) * (1 + scale_msa[:, None]), [gate_msa, scale_mlp, gate_mlp]


def naive_mochi_scores(
    transformer: Any,
    inputs: dict[str, Any],
    concept_embeds: torch.Tensor,
    layers: list[int],
    space: str = "output",
    mode: str = "both",
    conditioning: str = "null_pooled",
) -> torch.Tensor:
    """Per-layer saliency scores ``[L, B, C, F·h·w]`` (float64) for the selected layers."""
    model = copy.deepcopy(transformer).double()
    latents = inputs["hidden_states"].double()  # [B, c, F, H, W]
    batch, _, frames, height, width = latents.shape
    patch = model.config.patch_size
    timestep = inputs["timestep"].double()
    mask = inputs["encoder_attention_mask"].bool()  # [B, T]
    embed = model.time_embed
    time_emb = embed.timestep_embedder(embed.time_proj(timestep).double())  # [B, d]
    temb = time_emb + embed.pooler(inputs["encoder_hidden_states"].double(), inputs["encoder_attention_mask"])
    text = embed.caption_proj(inputs["encoder_hidden_states"].double())  # [B, T, d_text]
    temb_concepts = time_emb if conditioning == "null_pooled" else temb
    concepts = embed.caption_proj(concept_embeds.double()).unsqueeze(0).repeat(batch, 1, 1)  # [B, C, d_text]
    video = model.patch_embed(latents.permute(0, 2, 1, 3, 4).flatten(0, 1))  # [B·F, h·w, d]
    video = video.unflatten(0, (batch, frames)).flatten(1, 2)  # [B, F·h·w, d]
    cos, sin = model.rope(
        model.pos_frequencies.double(), frames, height // patch, width // patch, dtype=torch.float64
    )  # [F·h·w, H, D/2] each
    num_video = video.shape[1]
    layout = Layout.image_first(text.shape[1], num_video, concepts.shape[1])  # [video, text, concepts]
    valid = torch.cat([torch.ones(batch, num_video, dtype=torch.bool), mask], dim=1)  # [B, I + T]
    allowed = layout.mask(mode, joint=valid[:, :, None] & valid[:, None, :])  # [B, S, S]

    def rope(x: torch.Tensor) -> torch.Tensor:
        return _rotate(x, cos, sin)

    scores = []
    for index, block in blocks_until(model.transformer_blocks, layers):
        attn, eps = block.attn1, block.norm1.norm.eps
        n_vid, vid_mod = _modulate(block.norm1, video, temb, eps)
        n_txt, txt_mod = _modulate(block.norm1_context, text, temb, eps)
        n_con, con_mod = _modulate(block.norm1_context, concepts, temb_concepts, eps)
        query, key, value = joint_qkv(attn, [(n_vid, False), (n_txt, True), (n_con, True)])  # [B, S, H, D]
        query, key = rotate_rows(query, layout.image, rope), rotate_rows(key, layout.image, rope)  # video rows only
        output = concept_attention(query, key, value, allowed, layout, mode)  # [B, S, H·D]
        if index in layers:
            scores.append(concept_scores(space, query, key, value, output, layout))
        if block.context_pre_only:
            break
        o_vid, o_txt, o_con = output[:, layout.image], output[:, layout.text], output[:, layout.concepts]
        video = _stream_update(video, attn.to_out[0](o_vid), block.ff, vid_mod, eps)
        text = _stream_update(text, attn.to_add_out(o_txt), block.ff_context, txt_mod, eps)
        concepts = _stream_update(concepts, attn.to_add_out(o_con), block.ff_context, con_mod, eps)
    return torch.stack(scores)  # [L, B, C, F·h·w]
