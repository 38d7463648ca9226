"""A deliberately naive float64 reference of ConceptAttention on HunyuanVideo 1.5, for tests.

It rebuilds the text stream as the model does (refined prompt + type 0, ByT5 glyphs + type 1, image embeddings + type
2, valid tokens first, padding zeroed) and re-runs the blocks by hand with ONE full attention over
``[video, text, concepts]`` and an explicit boolean mask (a video or valid text query sees the video and the valid
text; a padded text query sees nothing; concepts see the video and/or the concepts). RoPE rotates the video rows
only. Each concept is refined on its own and gets the type-0 embedding. No code is shared with the library.
"""

from __future__ import annotations

import copy
from typing import Any

import torch
from diffusers.models.embeddings import apply_rotary_emb

from .common import (
    Layout,
    blocks_until,
    concept_attention,
    concept_scores,
    joint_qkv,
    residual_update,
    rotate_rows,
)


def _text_stream(model: Any, inputs: dict[str, Any], timestep: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The text stream ``[B, T, d]`` and its validity ``[B, T]`` as ``HunyuanVideo15Transformer3DModel`` builds them."""
    mask = inputs["encoder_attention_mask"].bool()
    mask_2 = inputs["encoder_attention_mask_2"].bool()
    text = model.context_embedder(inputs["encoder_hidden_states"].double(), timestep, inputs["encoder_attention_mask"])
    text = text + model.cond_type_embed.weight[0]
    glyphs = model.context_embedder_2(inputs["encoder_hidden_states_2"].double()) + model.cond_type_embed.weight[1]
    image_embeds = inputs["image_embeds"].double()
    images = model.image_embedder(image_embeds)
    text_to_video = bool((image_embeds == 0).all())
    if text_to_video:
        images = images * 0.0
    images = images + model.cond_type_embed.weight[2]
    mask_3 = torch.full(images.shape[:2], not text_to_video)
    streams, valid = [], []
    for index in range(text.shape[0]):
        parts = [(images[index], mask_3[index]), (glyphs[index], mask_2[index]), (text[index], mask[index])]
        rows = [x[m] for x, m in parts] + [x[~m] if k == 0 else torch.zeros_like(x[~m]) for k, (x, m) in enumerate(parts)]
        flags = [m[m] for _, m in parts] + [m[~m] for _, m in parts]
        streams.append(torch.cat(rows))
        valid.append(torch.cat(flags))
    return torch.stack(streams), torch.stack(valid)


def naive_hunyuan_video15_scores(
    transformer: Any,
    inputs: dict[str, Any],
    concept_embeds: torch.Tensor,
    layers: list[int],
    space: str = "output",
    mode: str = "both",
    concept_type: int | None = 0,
) -> torch.Tensor:
    """Per-layer saliency scores ``[L, B, C, F·h·w]`` (float64) for the selected layers.

    ``concept_type`` ``None`` (no type embedding on the concepts) or ``1`` (the glyph type) are deliberately wrong.
    """
    model = copy.deepcopy(transformer).double()
    latents = inputs["hidden_states"].double()  # [B, c, F, H, W]
    timestep = inputs["timestep"].double()
    temb = model.time_embed(timestep)  # [B, d]
    cos, sin = model.rope(latents)  # [F·h·w, D] each
    video = model.x_embedder(latents)  # [B, I, d]
    text, valid_text = _text_stream(model, inputs, timestep)  # [B, T, d], [B, T]
    batch, num_video = video.shape[:2]
    rows = []
    for sample in range(batch):
        refined = [
            model.context_embedder(concept_embeds[index].double()[None, None], timestep[sample : sample + 1])[0, 0]
            for index in range(concept_embeds.shape[0])
        ]
        rows.append(torch.stack(refined))  # [C, d]
    concepts = torch.stack(rows)  # [B, C, d]
    if concept_type is not None:
        concepts = concepts + model.cond_type_embed.weight[concept_type]
    layout = Layout.image_first(text.shape[1], num_video, concepts.shape[1])  # [video, text, concepts]
    valid = torch.cat([torch.ones(batch, num_video, dtype=torch.bool), valid_text], dim=1)  # [B, I + T]
    allowed = layout.mask(mode, joint=valid[:, :, None] & valid[:, None, :])  # [B, S, S]

    def rope(x: torch.Tensor) -> torch.Tensor:
        return apply_rotary_emb(x, (cos, sin), sequence_dim=1)

    scores = []
    for index, block in blocks_until(model.transformer_blocks, layers):
        attn = block.attn
        n_vid, *vid_mod = block.norm1(video, emb=temb)  # vid_mod: gate, shift2, scale2, gate2, each [B, d]
        n_txt, *txt_mod = block.norm1_context(text, emb=temb)
        n_con, *con_mod = block.norm1_context(concepts, emb=temb)
        query, key, value = joint_qkv(attn, [(n_vid, False), (n_txt, True), (n_con, True)])  # [B, S, H, D]
        query, key = rotate_rows(query, layout.image, rope), rotate_rows(key, layout.image, rope)  # video rows only
        output = concept_attention(query, key, value, allowed, layout, mode)  # [B, S, H·D]
        if index in layers:
            scores.append(concept_scores(space, query, key, value, output, layout))
        o_vid, o_txt, o_con = output[:, layout.image], output[:, layout.text], output[:, layout.concepts]
        video = residual_update(video, attn.to_out[0](o_vid), block.norm2, block.ff, *vid_mod)
        text = residual_update(text, attn.to_add_out(o_txt), block.norm2_context, block.ff_context, *txt_mod)
        concepts = residual_update(concepts, attn.to_add_out(o_con), block.norm2_context, block.ff_context, *con_mod)
    return torch.stack(scores)  # [L, B, C, F·h·w]
