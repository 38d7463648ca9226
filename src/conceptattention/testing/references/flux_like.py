"""A deliberately naive float64 reference of ConceptAttention on the FLUX.1 clones without pooled text (Bria,
Bria-Fibo, LongCat-Image, Ovis-Image), for tests.

It re-runs the double-stream blocks by hand with ONE full attention over ``[text, image, concepts]`` and an explicit
boolean mask (text and image never see concepts; concepts see image and/or concepts according to the mode, never the
text). ``temb`` is rebuilt from the timestep as each model's ``forward`` builds it, written out per class; concepts are
modulated by it. RoPE rotates the text and image rows with the ids of the call; concepts sit at id ``(0, 0, 0)``
(no rotation) unless ``concept_position`` names a text row whose rotation they take (a deliberately wrong variant).
Layer indices past the double blocks continue into the single blocks (``references.flux_single``). Bria-Fibo
rebuilds the second half of the text channels before each double block from a text-encoder layer of its own; the
reference does the same to the concepts with their per-layer features (``concept_embeds`` is then
``[C, D_joint + N·D_enc]``). No code is shared with the library's processors.
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
    per_sample,
    rotate_rows,
)
from .flux_single import naive_single_blocks, silu_rows


def _temb(model: Any, timestep: torch.Tensor, guidance: torch.Tensor | None) -> torch.Tensor:
    """``temb [B, d]`` as the class's ``forward`` computes it (float64)."""
    name = type(model).__name__
    if name in ("BriaTransformer2DModel", "BriaFiboTransformer2DModel"):  # raw timestep; optional guidance embedding added
        temb = model.time_embed(timestep, dtype=torch.float64)
        if guidance is not None and model.config.guidance_embeds:
            temb = temb + model.guidance_embed(guidance, dtype=torch.float64)
        return temb
    if name == "LongCatImageTransformer2DModel":
        return model.time_embed(timestep * 1000, torch.float64)
    if name == "OvisImageTransformer2DModel":
        return model.timestep_embedder(model.time_proj(timestep * 1000).double())
    raise TypeError(name)


def _text_input(model: Any, embeds: torch.Tensor, skip_norm: bool = False) -> torch.Tensor:
    """The text input layer: ``context_embedder`` (Ovis-Image: after ``context_embedder_norm``)."""
    if hasattr(model, "context_embedder_norm") and not skip_norm:
        embeds = model.context_embedder_norm(embeds)
    return model.context_embedder(embeds)


def _fibo_split(model: Any, concept_embeds: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor] | None]:
    """Bria-Fibo concepts ``[C, D_joint + N·D_enc]``: their ``encoder_hidden_states`` features and per-block layer
    features (other models: the embeddings and None)."""
    if not hasattr(model, "caption_projection"):
        return concept_embeds, None
    joint, per_layer = model.config.joint_attention_dim, model.config.text_encoder_dim
    layers = concept_embeds[:, joint:].unflatten(-1, (-1, per_layer))  # [C, N, D_enc]
    return concept_embeds[:, :joint], list(layers.unbind(1))


def _rebuild_half(stream: torch.Tensor, projection: Any, features: torch.Tensor) -> torch.Tensor:
    """Bria-Fibo's per-block text input: the stream's first half of channels, then ``projection(features)``."""
    projected = projection(features.double())  # [B or C, T, d/2] / [C, d/2]
    if projected.ndim == 2:
        projected = per_sample(projected, stream.shape[0])  # [B, C, d/2]
    return torch.cat([stream[..., : stream.shape[-1] // 2], projected], dim=-1)


def naive_flux_like_scores(
    transformer: Any,
    inputs: dict[str, Any],
    concept_embeds: torch.Tensor,
    layers: list[int],
    space: str = "output",
    mode: str = "both",
    concept_position: int | None = None,
    skip_text_norm: bool = False,
) -> torch.Tensor:
    """Per-layer saliency scores ``[L, B, C, I]`` (float64) for the selected layers.

    ``concept_position`` (text row whose RoPE the concepts take) and ``skip_text_norm`` (Ovis-Image without its text
    RMSNorm) give deliberately wrong variants.
    """
    model = copy.deepcopy(transformer).double()
    hidden = model.x_embedder(inputs["hidden_states"].double())  # [B, I, d]
    batch, num_image = hidden.shape[:2]
    guidance = inputs.get("guidance")
    temb = _temb(model, inputs["timestep"].double(), None if guidance is None else guidance.double())  # [B, d]
    text = _text_input(model, inputs["encoder_hidden_states"].double())  # [B, T, d]
    concept_embeds, concept_layers = _fibo_split(model, concept_embeds.double())
    concepts = per_sample(_text_input(model, concept_embeds, skip_text_norm), batch)  # [B, C, d]
    num_text, num_concepts = text.shape[1], concepts.shape[1]
    layout = Layout.text_first(num_text, num_image, num_concepts)
    allowed = layout.mask(mode)  # [S, S]
    ids = torch.cat([inputs["txt_ids"], inputs["img_ids"]], dim=0)  # [T + I, 3]
    if concept_position is not None:  # concepts at a text token's position (wrong variant)
        ids = torch.cat([ids, inputs["txt_ids"][concept_position].expand(num_concepts, -1)], dim=0)
    cos, sin = model.pos_embed(ids)  # [T + I (+ C), D] each
    rotated = slice(0, layout.joint if concept_position is None else layout.total)

    def rope(x: torch.Tensor) -> torch.Tensor:
        return apply_rotary_emb(x, (cos, sin), sequence_dim=1)

    scores = []
    for index, block in blocks_until(model.transformer_blocks, layers):
        if concept_layers is not None:  # Bria-Fibo: second half of text and concepts from layer `index`
            text = _rebuild_half(text, model.caption_projection[index], inputs["text_encoder_layers"][index])
            concepts = _rebuild_half(concepts, model.caption_projection[index], concept_layers[index])
        attention, (hidden, text, concepts) = double_block(
            block, (hidden, text, concepts), (temb, temb), layout, allowed, mode,
            lambda x: rotate_rows(x, rotated, rope),
        )
        if index in layers:
            scores.append(concept_scores(space, *attention, layout))
    singles, first = model.single_transformer_blocks, len(model.transformer_blocks)  # indices past the doubles

    def modulation(k: int, stream: str) -> tuple[torch.Tensor, ...]:
        return silu_rows(singles[k], temb)  # tokens and concepts alike

    scores += naive_single_blocks(singles, text, hidden, concepts, modulation, rope, allowed, layers, first, space, mode)
    return torch.stack(scores)  # [L, B, C, I]
