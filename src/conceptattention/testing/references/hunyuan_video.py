"""A deliberately naive float64 reference of ConceptAttention on HunyuanVideo, for tests.

It re-runs the double-stream blocks of a ``HunyuanVideoTransformer3DModel`` by hand with ONE full attention over
``[video, text, concepts]`` and an explicit boolean mask (video and text see the video and the unpadded text;
concepts see the video and/or the concepts, never the text). RoPE rotates the video rows only. Each concept is run
through the token refiner on its own, in a Python loop. No code is shared with the library's processors.
"""

from __future__ import annotations

import copy
from typing import Any

import torch
from diffusers.models.embeddings import apply_rotary_emb

from .common import (
    Layout,
    blocks_until,
    concept_scores,
    double_block,
    key_mask,
    rotate_rows,
)


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
    concepts = refine_each_concept(model, concept_embeds, timestep)  # [B, C, d]
    num_text = text.shape[1]
    layout = Layout.image_first(num_text, num_video, concepts.shape[1])  # [video, text, concepts]

    valid_text = torch.arange(num_text)[None, :] < text_mask.sum(dim=1, keepdim=True)  # [B, T]
    valid_keys = torch.cat([torch.ones(batch, num_video, dtype=torch.bool), valid_text], dim=1)  # [B, I + T]
    allowed = layout.mask(mode, joint=key_mask(valid_keys))  # [B, S, S]: everyone sees the video, the unpadded text

    scores = double_stream_scores(
        model, layout, allowed, (video, text, concepts), (temb, temb_concepts), (cos, sin), layers, space, mode
    )
    return scores  # [L, B, C, F·h·w]


def refine_each_concept(model: Any, concept_embeds: torch.Tensor, timestep: torch.Tensor) -> torch.Tensor:
    """Each concept ``[D_text]`` through the model's token refiner (``context_embedder``) on its own, as a one-token
    prompt, at each sample's timestep: ``[B, C, d]`` (HunyuanVideo, HunyuanVideo 1.5, HunyuanImage)."""
    rows = []
    for sample in range(timestep.shape[0]):
        refined = [
            model.context_embedder(concept_embeds[index].double()[None, None], timestep[sample : sample + 1])[0, 0]
            for index in range(concept_embeds.shape[0])
        ]
        rows.append(torch.stack(refined))  # [C, d]
    return torch.stack(rows)  # [B, C, d]


def double_stream_scores(
    model: Any,
    layout: Layout,
    allowed: torch.Tensor,
    streams: tuple[torch.Tensor, torch.Tensor, torch.Tensor],
    tembs: tuple[torch.Tensor, torch.Tensor],
    rotary: tuple[torch.Tensor, torch.Tensor],
    layers: list[int],
    space: str,
    mode: str,
) -> torch.Tensor:
    """Per-layer scores ``[L, B, C, I]`` of HunyuanVideo-style double-stream blocks (HunyuanVideo, HunyuanVideo 1.5,
    HunyuanImage), run by hand on ``streams = (image or video [B, I, d], text [B, T, d], concepts [B, C, d])``:
    ``norm1`` / ``norm1_context`` modulated by ``tembs = (temb of image and text, temb of the concepts)`` ``[B, d]``,
    one masked attention (``allowed``, ``[B, S, S]``) over ``[image, text, concepts]`` with the RoPE table
    ``rotary = (cos, sin)`` ``[I, D]`` on the image rows only, then the residual updates (:func:`.common.double_block`).
    """

    def rope(x: torch.Tensor) -> torch.Tensor:
        return apply_rotary_emb(x, rotary, sequence_dim=1)

    scores = []
    for index, block in blocks_until(model.transformer_blocks, layers):
        attention, streams = double_block(
            block, streams, tembs, layout, allowed, mode, lambda x: rotate_rows(x, layout.image, rope)
        )  # RoPE on the image rows only
        if index in layers:
            scores.append(concept_scores(space, *attention, layout))
    return torch.stack(scores)  # [L, B, C, I]
