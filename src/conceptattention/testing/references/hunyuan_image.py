"""A deliberately naive float64 reference of ConceptAttention on HunyuanImage 2.1, for tests.

It re-runs the double-stream blocks of a ``HunyuanImageTransformer2DModel`` by hand with ONE full attention over
``[image, text, concepts]`` and an explicit boolean mask (image and text see the image and the unpadded text; concepts
see the image and/or the concepts, never the text). RoPE rotates the image rows only. Each concept is run through the
token refiner on its own, in a Python loop; ``temb`` is rebuilt from the timestep (and guidance). No code is shared
with the library's processors.
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
    key_mask,
    residual_update,
    rotate_rows,
)


def naive_hunyuan_image_scores(
    transformer: Any,
    inputs: dict[str, Any],
    concept_embeds: torch.Tensor,
    layers: list[int],
    space: str = "output",
    mode: str = "both",
    refine_concepts_together: bool = False,
) -> torch.Tensor:
    """Per-layer saliency scores ``[L, B, C, h·w]`` (float64) for the selected layers.

    ``refine_concepts_together`` (all concepts refined as one prompt) is a deliberately wrong variant.
    """
    model = copy.deepcopy(transformer).double()
    latents = inputs["hidden_states"].double()  # [B, c, H, W]
    timestep = inputs["timestep"].double()
    guidance = inputs.get("guidance")
    temb = model.time_guidance_embed(timestep, guidance=None if guidance is None else guidance.double())  # [B, d]
    cos, sin = model.rope(latents)  # [h·w, D] each
    image = model.x_embedder(latents)  # [B, I, d]
    text_mask = inputs["encoder_attention_mask"].bool()  # [B, T]
    text = model.context_embedder(inputs["encoder_hidden_states"].double(), timestep, text_mask)  # [B, T, d]
    batch, num_image = image.shape[:2]
    rows = []
    for sample in range(batch):
        step = timestep[sample : sample + 1]
        if refine_concepts_together:
            rows.append(model.context_embedder(concept_embeds.double()[None], step)[0])
            continue
        refined = [
            model.context_embedder(concept_embeds[index].double()[None, None], step)[0, 0]
            for index in range(concept_embeds.shape[0])
        ]
        rows.append(torch.stack(refined))  # [C, d]
    concepts = torch.stack(rows)  # [B, C, d]
    num_text = text.shape[1]
    layout = Layout.image_first(num_text, num_image, concepts.shape[1])  # [image, text, concepts]
    valid_keys = torch.cat([torch.ones(batch, num_image, dtype=torch.bool), text_mask], dim=1)  # [B, I + T]
    allowed = layout.mask(mode, joint=key_mask(valid_keys))  # [B, S, S]

    def rope(x: torch.Tensor) -> torch.Tensor:
        return apply_rotary_emb(x, (cos, sin), sequence_dim=1)

    scores = []
    for index, block in blocks_until(model.transformer_blocks, layers):
        attn = block.attn
        n_img, *img_mod = block.norm1(image, emb=temb)  # img_mod: gate, shift2, scale2, gate2, each [B, d]
        n_txt, *txt_mod = block.norm1_context(text, emb=temb)
        n_con, *con_mod = block.norm1_context(concepts, emb=temb)
        query, key, value = joint_qkv(attn, [(n_img, False), (n_txt, True), (n_con, True)])  # [B, S, H, D]
        query, key = rotate_rows(query, layout.image, rope), rotate_rows(key, layout.image, rope)  # image rows only
        output = concept_attention(query, key, value, allowed, layout, mode)  # [B, S, H·D]
        if index in layers:
            scores.append(concept_scores(space, query, key, value, output, layout))
        o_img, o_txt, o_con = output[:, layout.image], output[:, layout.text], output[:, layout.concepts]
        image = residual_update(image, attn.to_out[0](o_img), block.norm2, block.ff, *img_mod)
        text = residual_update(text, attn.to_add_out(o_txt), block.norm2_context, block.ff_context, *txt_mod)
        concepts = residual_update(concepts, attn.to_add_out(o_con), block.norm2_context, block.ff_context, *con_mod)
    return torch.stack(scores)  # [L, B, C, h·w]
