"""A deliberately naive float64 reference of ConceptAttention on HunyuanVideo, for tests.

It re-runs the double-stream blocks of a ``HunyuanVideoTransformer3DModel`` by hand with ONE full attention over
``[video, text, concepts]`` and an explicit boolean mask (video and text see the video and the unpadded text;
concepts see the video and/or the concepts, never the text). RoPE rotates the video rows only. Each concept is run
through the token refiner on its own, in a Python loop. No code is shared with the library's processors.
"""

from __future__ import annotations

import copy
import math
from typing import Any

import torch
from diffusers.models.embeddings import apply_rotary_emb


def naive_hunyuan_video_scores(
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
    timestep = inputs["timestep"].double()
    guidance = inputs["guidance"].double()
    pooled = inputs["pooled_projections"].double()
    cos, sin = model.rope(latents)  # [F·h·w, D] each
    temb, _ = model.time_text_embed(timestep, pooled, guidance)  # [B, d]
    concept_pooled = torch.zeros_like(pooled) if conditioning == "null_pooled" else pooled
    temb_concepts, _ = model.time_text_embed(timestep, concept_pooled, guidance)  # [B, d]
    video = model.x_embedder(latents)  # [B, I, d]
    text_mask = inputs["encoder_attention_mask"]  # [B, T]
    text = model.context_embedder(inputs["encoder_hidden_states"].double(), timestep, text_mask)  # [B, T, d]
    batch, num_video = video.shape[:2]
    rows = []
    for sample in range(batch):
        refined = [
            model.context_embedder(concept_embeds[index].double()[None, None], timestep[sample : sample + 1])[0, 0]
            for index in range(concept_embeds.shape[0])
        ]
        rows.append(torch.stack(refined))  # [C, d]
    concepts = torch.stack(rows)  # [B, C, d]
    num_text, num_concepts = text.shape[1], concepts.shape[1]

    total = num_video + num_text + num_concepts
    video_rows = slice(0, num_video)
    concept_rows = slice(num_video + num_text, total)
    valid_text = torch.arange(num_text)[None, :] < text_mask.sum(dim=1, keepdim=True)  # [B, T]
    allowed = torch.zeros(batch, total, total, dtype=torch.bool)
    allowed[:, : num_video + num_text, video_rows] = True
    allowed[:, : num_video + num_text, num_video : num_video + num_text] = valid_text[:, None, :]
    if mode in ("both", "cross"):
        allowed[:, concept_rows, video_rows] = True
    if mode in ("both", "self"):
        allowed[:, concept_rows, concept_rows] = True

    scores = []
    for index, block in enumerate(model.transformer_blocks):
        if index > max(layers):
            break
        attn = block.attn
        heads = attn.heads
        head_dim = attn.inner_dim // heads if hasattr(attn, "inner_dim") else video.shape[-1] // heads

        def split(x: torch.Tensor, heads: int = heads) -> torch.Tensor:
            return x.unflatten(-1, (heads, -1))  # [B, S, H, D]

        n_vid, gate, shift2, scale2, gate2 = block.norm1(video, emb=temb)
        n_txt, c_gate, c_shift2, c_scale2, c_gate2 = block.norm1_context(text, emb=temb)
        n_con, k_gate, k_shift2, k_scale2, k_gate2 = block.norm1_context(concepts, emb=temb_concepts)
        video_query = apply_rotary_emb(attn.norm_q(split(attn.to_q(n_vid))), (cos, sin), sequence_dim=1)
        video_key = apply_rotary_emb(attn.norm_k(split(attn.to_k(n_vid))), (cos, sin), sequence_dim=1)
        query = torch.cat(
            [
                video_query,
                attn.norm_added_q(split(attn.add_q_proj(n_txt))),
                attn.norm_added_q(split(attn.add_q_proj(n_con))),
            ],
            dim=1,
        )  # [B, I + T + C, H, D]
        key = torch.cat(
            [
                video_key,
                attn.norm_added_k(split(attn.add_k_proj(n_txt))),
                attn.norm_added_k(split(attn.add_k_proj(n_con))),
            ],
            dim=1,
        )  # [B, I + T + C, H, D]
        value = torch.cat(
            [split(attn.to_v(n_vid)), split(attn.add_v_proj(n_txt)), split(attn.add_v_proj(n_con))], dim=1
        )  # [B, I + T + C, H, D]

        logits = torch.einsum("bqhd,bkhd->bhqk", query, key) / math.sqrt(head_dim)  # [B, H, S, S]
        logits = logits.masked_fill(~allowed[:, None], float("-inf"))
        if mode == "none":
            logits[:, :, concept_rows] = 0.0  # placeholder rows, replaced below
        weights = torch.softmax(logits, dim=-1)
        output = torch.einsum("bhqk,bkhd->bqhd", weights, value)  # [B, S, H, D]
        if mode == "none":
            output[:, concept_rows] = value[:, concept_rows]
        output = output.flatten(2, 3)  # [B, S, H·D]
        o_vid, o_txt, o_con = (
            output[:, video_rows],
            output[:, num_video : num_video + num_text],
            output[:, concept_rows],
        )

        if index in layers:
            if space == "output":
                scores.append(torch.einsum("bcd,bid->bci", o_con, o_vid))
            elif space == "cross_attention":
                scores.append(
                    torch.einsum("bihd,bchd->bci", query[:, video_rows], key[:, concept_rows])
                    / heads
                    / math.sqrt(head_dim)
                )
            elif space == "value":
                scores.append(torch.einsum("bihd,bchd->bci", value[:, video_rows], value[:, concept_rows]) / heads)

        def update(x, o, proj, ff, norm2, g1, sh, sc, g2):
            x = x + proj(o) * g1[:, None]
            return x + g2[:, None] * ff(norm2(x) * (1 + sc[:, None]) + sh[:, None])

        video = update(video, o_vid, attn.to_out[0], block.ff, block.norm2, gate, shift2, scale2, gate2)
        text = update(
            text, o_txt, attn.to_add_out, block.ff_context, block.norm2_context, c_gate, c_shift2, c_scale2, c_gate2
        )
        concepts = update(
            concepts,
            o_con,
            attn.to_add_out,
            block.ff_context,
            block.norm2_context,
            k_gate,
            k_shift2,
            k_scale2,
            k_gate2,
        )
    return torch.stack(scores)  # [L, B, C, I]
