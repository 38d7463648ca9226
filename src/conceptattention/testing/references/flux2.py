"""A deliberately naive float64 reference of ConceptAttention on FLUX.2, for tests.

It re-runs the double-stream blocks of a ``Flux2Transformer2DModel`` by hand with ONE full attention over
``[text, image, concepts]`` and an explicit boolean mask (text and image never see concepts; concepts see the image
and/or the concepts, never the text). RoPE is computed once for the whole ``[text, image, concepts]`` id list, the
concepts at ``(t, 0, 0, max(l) + 1)``; the modulation is recomputed from the timestep. No code is shared with the
library's processors.
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
    layer_norm_double_block,
    per_sample,
)


def naive_flux2_scores(
    transformer: Any,
    inputs: dict[str, Any],
    concept_embeds: torch.Tensor,
    layers: list[int],
    space: str = "output",
    mode: str = "both",
    concept_l: int | None = None,
) -> torch.Tensor:
    """Per-layer saliency scores ``[L, B, C, I]`` (float64) for the selected layers.

    ``concept_l`` overrides the concepts' ``l`` coordinate (default: one past the prompt's last position).
    """
    model = copy.deepcopy(transformer).double()
    hidden = model.x_embedder(inputs["hidden_states"].double())  # [B, I, d]
    batch, num_image = hidden.shape[:2]
    guidance = inputs.get("guidance")
    temb = model.time_guidance_embed(
        inputs["timestep"].double() * 1000, None if guidance is None else guidance.double() * 1000
    )  # [B, d]
    # shift, scale, gate, shift2, scale2, gate2, each [B, d], shared by all double blocks
    image_mod = model.double_stream_modulation_img(temb).chunk(6, dim=-1)
    text_mod = model.double_stream_modulation_txt(temb).chunk(6, dim=-1)
    text = model.context_embedder(inputs["encoder_hidden_states"].double())  # [B, T, d]
    concepts = per_sample(model.context_embedder(concept_embeds.double()), batch)  # [B, C, d]
    num_text, num_concepts = text.shape[1], concepts.shape[1]
    layout = Layout.text_first(num_text, num_image, num_concepts)
    allowed = layout.mask(mode)  # [S, S]

    txt_ids = inputs["txt_ids"][0] if inputs["txt_ids"].ndim == 3 else inputs["txt_ids"]  # [T, 4]
    img_ids = inputs["img_ids"][0] if inputs["img_ids"].ndim == 3 else inputs["img_ids"]  # [I, 4]
    concept_ids = torch.zeros(num_concepts, 4, dtype=txt_ids.dtype)  # [C, 4]
    concept_ids[:, 0] = txt_ids[0, 0]
    concept_ids[:, 3] = txt_ids[:, 3].max() + 1 if concept_l is None else concept_l
    cos, sin = model.pos_embed(torch.cat([txt_ids, img_ids, concept_ids], dim=0))  # [T + I + C, D] each

    scores = []
    for index, block in blocks_until(model.transformer_blocks, layers):
        attention, (hidden, text, concepts) = layer_norm_double_block(  # concepts modulated as text
            block.attn, (hidden, text, concepts), (image_mod, text_mod, text_mod), (block.ff, block.ff_context),
            layout, allowed, mode,
            lambda x: apply_rotary_emb(x, (cos, sin), sequence_dim=1),  # every row, the concepts included
        )
        if index in layers:
            scores.append(concept_scores(space, *attention, layout))
    return torch.stack(scores)  # [L, B, C, I]
