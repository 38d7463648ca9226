"""A deliberately naive float64 reference of ConceptAttention on CogView4, for tests.

It re-runs the blocks of a ``CogView4Transformer2DModel`` by hand with ONE full attention over
``[text, image, concepts]`` (shared ``to_q/k/v``, LayerNorm QK-norm) and an explicit boolean mask. The adaptive
LayerNorm is written out from its ``linear`` weights: the image rows take the image modulation, text and concept rows
the text modulation. RoPE (CogView4's half-split convention) rotates the image rows only. ``temb`` is rebuilt from the
timestep and size conditioning. No code is shared with the library's processors.
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
    modulate,
    per_sample,
    rotate_rows,
    stream_qkv,
)


def _rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotary embedding on the two halves of the head dimension: ``[B, S, H, D]`` with ``cos/sin [S, D]``."""
    first, second = x.chunk(2, dim=-1)  # [B, S, H, D/2] each
    rotated = torch.cat([-second, first], dim=-1)  # [B, S, H, D]
    return x * cos[None, :, None] + rotated * sin[None, :, None]


def _modulation(block: Any, temb: torch.Tensor) -> dict[str, list[torch.Tensor]]:
    """The twelve modulation vectors ``[B, d]`` of ``norm1`` by stream: shift, scale, gate, shift2, scale2, gate2."""
    chunks = block.norm1.linear(temb).chunk(12, dim=1)  # image and text interleaved
    return {"image": list(chunks[0::2]), "text": list(chunks[1::2])}


def naive_cogview4_scores(
    transformer: Any,
    inputs: dict[str, Any],
    concept_embeds: torch.Tensor,
    layers: list[int],
    space: str = "output",
    mode: str = "both",
    concept_stream: str = "text",
) -> torch.Tensor:
    """Per-layer saliency scores ``[L, B, C, I]`` (float64) for the selected layers.

    ``concept_stream="image"`` (concepts modulated like image tokens) is a deliberately wrong variant.
    """
    model = copy.deepcopy(transformer).double()
    latents = inputs["hidden_states"].double()  # [B, c, H, W]
    cos, sin = (x.double() for x in model.rope(latents))  # [I, D] each
    image, text = model.patch_embed(latents, inputs["encoder_hidden_states"].double())  # [B, I, d], [B, T, d]
    temb = F.silu(
        model.time_condition_embed(
            inputs["timestep"].double(),
            inputs["original_size"].double(),
            inputs["target_size"].double(),
            inputs["crop_coords"].double(),
            torch.float64,
        )
    )  # [B, d_t]
    batch = image.shape[0]
    concepts = per_sample(model.patch_embed.text_proj(concept_embeds.double()), batch)  # [B, C, d]
    layout = Layout.text_first(text.shape[1], image.shape[1], concepts.shape[1])  # [text, image, concepts]
    allowed = layout.mask(mode)  # [S, S]

    def rope(x: torch.Tensor) -> torch.Tensor:
        return _rotate(x, cos, sin)

    def layer_norm(x: torch.Tensor) -> torch.Tensor:
        return F.layer_norm(x, x.shape[-1:], eps=1e-5)

    scores = []
    for index, block in blocks_until(model.transformer_blocks, layers):
        attn = block.attn1
        mods = _modulation(block, temb)
        streams = {"text": (text, mods["text"]), "image": (image, mods["image"]), "concepts": (concepts, mods[concept_stream])}
        normed = [modulate(layer_norm(x), m[0], m[1]) for x, m in streams.values()]
        query, key, value = stream_qkv(attn, torch.cat(normed, dim=1), False)  # [B, S, H, D], shared weights
        query, key = rotate_rows(query, layout.image, rope), rotate_rows(key, layout.image, rope)  # image rows only
        output = concept_attention(query, key, value, allowed, layout, mode)  # [B, S, H·D]
        if index in layers:
            scores.append(concept_scores(space, query, key, value, output, layout))
        projected = attn.to_out[0](output)  # [B, S, d]
        updated = []
        for (x, m), rows in zip(streams.values(), (layout.text, layout.image, layout.concepts)):
            x = x + projected[:, rows] * m[2][:, None]
            x = x + block.ff(modulate(layer_norm(x), m[3], m[4])) * m[5][:, None]
            updated.append(x)
        text, image, concepts = updated
    return torch.stack(scores)  # [L, B, C, I]
