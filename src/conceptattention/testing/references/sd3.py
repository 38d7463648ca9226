"""A deliberately naive reference of ConceptAttention on SD3 / SD3.5, for tests.

It re-runs the ``JointTransformerBlock`` s of an ``SD3Transformer2DModel`` by hand, in float64, with ONE full attention
over the concatenation ``[image, text, concepts]`` and an explicit boolean mask (image and text never see concepts;
concepts see image and/or concepts according to the mode, never the text). Modulations, QK-norms, SD3.5's dual
attention and the ``context_pre_only`` last block are written out from the module weights. It shares no code with the
library's processors, so agreement is evidence that the optimised path (concept rows only, keys reused from the joint
attention, stream advanced by the block's text modules) implements the method.
"""

from __future__ import annotations

import copy
from typing import Any

import torch

from .common import (
    Layout,
    blocks_until,
    concept_attention,
    concept_scores,
    joint_qkv,
    layer_norm,
    masked_attention,
    modulate,
    per_sample,
    residual_update,
    silu_modulation,
    stream_qkv,
)


def _qk_norm(norm: Any, x: torch.Tensor) -> torch.Tensor:
    """RMS norm of ``x [B, S, H, D]`` over the head dimension with the module's weight (identity without a norm)."""
    if norm is None:
        return x
    x = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + norm.eps)
    if norm.weight is not None:
        x = x * norm.weight
    return x + norm.bias if getattr(norm, "bias", None) is not None else x


def naive_sd3_scores(
    transformer: Any,
    inputs: dict[str, Any],
    concept_embeds: torch.Tensor,
    layers: list[int],
    space: str = "output",
    mode: str = "both",
    conditioning: str = "null_pooled",
) -> torch.Tensor:
    """Per-layer saliency scores ``[L, B, C, I]`` (float64) for the selected layers."""
    model = copy.deepcopy(transformer).double()
    latents = inputs["hidden_states"].double()
    image = model.pos_embed(latents)  # [B, I, d] (patchify + sin-cos positions)
    batch, num_image = image.shape[:2]
    timestep = inputs["timestep"]
    pooled = inputs["pooled_projections"].double()
    temb = model.time_text_embed(timestep, pooled)  # [B, d]
    temb_concepts = temb if conditioning == "prompt" else model.time_text_embed(timestep, torch.zeros_like(pooled))
    text = model.context_embedder(inputs["encoder_hidden_states"].double())  # [B, T, d]
    concepts = per_sample(model.context_embedder(concept_embeds.double()), batch)  # [B, C, d]
    layout = Layout.image_first(text.shape[1], num_image, concepts.shape[1])  # [image, text, concepts]
    allowed = layout.mask(mode, device=latents.device)  # [S, S]

    scores = []
    for index, block in blocks_until(model.transformer_blocks, layers):
        attn = block.attn
        if block.use_dual_attention:
            shift, scale, gate, shift2, scale2, gate2, shift_x, scale_x, gate_x = silu_modulation(block.norm1, temb, 9)
        else:
            shift, scale, gate, shift2, scale2, gate2 = silu_modulation(block.norm1, temb, 6)
        normalized_image = layer_norm(image)  # [B, I, d]
        n_img = modulate(normalized_image, shift, scale)
        if block.context_pre_only:  # AdaLayerNormContinuous: (scale, shift), no gates
            c_scale, c_shift = silu_modulation(block.norm1_context, temb, 2)
            k_scale, k_shift = silu_modulation(block.norm1_context, temb_concepts, 2)
        else:
            c_shift, c_scale, *txt_mod = silu_modulation(block.norm1_context, temb, 6)  # txt_mod: gate, shift2, ...
            k_shift, k_scale, *con_mod = silu_modulation(block.norm1_context, temb_concepts, 6)
        n_txt = modulate(layer_norm(text), c_shift, c_scale)
        n_con = modulate(layer_norm(concepts), k_shift, k_scale)

        streams = [(n_img, False), (n_txt, True), (n_con, True)]
        query, key, value = joint_qkv(attn, streams, qk_norm=_qk_norm)  # [B, I + T + C, H, D]
        output = concept_attention(query, key, value, allowed, layout, mode)  # [B, S, H·D]
        if index in layers:
            scores.append(concept_scores(space, query, key, value, output, layout))
        o_img, o_txt, o_con = output[:, layout.image], output[:, layout.text], output[:, layout.concepts]

        image = image + gate[:, None] * attn.to_out[0](o_img)
        if block.use_dual_attention:  # image-only self-attention attn2 on its own modulation
            attn2 = block.attn2
            n_x = modulate(normalized_image, shift_x, scale_x)  # the block's input, not the update
            everything = torch.ones(num_image, num_image, dtype=torch.bool, device=latents.device)
            self_attention = masked_attention(*stream_qkv(attn2, n_x, False, _qk_norm), everything)  # [B, I, H, D]
            image = image + gate_x[:, None] * attn2.to_out[0](self_attention.flatten(2, 3))
        image = image + gate2[:, None] * block.ff(modulate(layer_norm(image), shift2, scale2))
        if block.context_pre_only:
            continue  # the text stream (and with it the concept stream) ends in the last block
        text = residual_update(text, attn.to_add_out(o_txt), layer_norm, block.ff_context, *txt_mod)
        concepts = residual_update(concepts, attn.to_add_out(o_con), layer_norm, block.ff_context, *con_mod)
    return torch.stack(scores)  # [L, B, C, I]
