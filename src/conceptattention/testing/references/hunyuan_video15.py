"""A deliberately naive float64 reference of ConceptAttention on HunyuanVideo 1.5, for tests.

It rebuilds the text stream as the model does (refined prompt + type 0, ByT5 glyphs + type 1, image embeddings + type
2, valid tokens first, padding zeroed) and re-runs the blocks by hand with ONE full attention over
``[video, text, concepts]`` and an explicit boolean mask (a video or valid text query sees the video and the valid
text; a padded text query sees nothing; concepts see the video and/or the concepts). RoPE rotates the video rows
only. Each concept is refined on its own and gets the type-0 embedding. The blocks run as HunyuanVideo's reference
runs them (:func:`.hunyuan_video.double_stream_scores`). No code is shared with the library.
"""

from __future__ import annotations

import copy
from typing import Any

import torch

from .common import Layout
from .hunyuan_video import double_stream_scores, refine_each_concept


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
    concepts = refine_each_concept(model, concept_embeds, timestep)  # [B, C, d]
    if concept_type is not None:
        concepts = concepts + model.cond_type_embed.weight[concept_type]
    layout = Layout.image_first(text.shape[1], num_video, concepts.shape[1])  # [video, text, concepts]
    valid = torch.cat([torch.ones(batch, num_video, dtype=torch.bool), valid_text], dim=1)  # [B, I + T]
    allowed = layout.mask(mode, joint=valid[:, :, None] & valid[:, None, :])  # [B, S, S]

    return double_stream_scores(
        model, layout, allowed, (video, text, concepts), (temb, temb), (cos, sin), layers, space, mode
    )  # [L, B, C, F·h·w]
