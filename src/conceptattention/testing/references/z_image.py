"""A deliberately naive float64 reference of the single-stream ConceptAttention extension on Z-Image, for tests.

The part before the main blocks is diffusers' own code (patchify, ``noise_refiner`` / ``context_refiner``, RoPE
tables), run in float64 on a copy of the model; the concepts go through ``cap_embedder`` and the ``context_refiner``
blocks as one caption-like sequence, all at the caption's first position ``(1, 0, 0)``. The main blocks are then re-run
by hand, one sample at a time (so no batch padding), with ONE full attention over ``[image (padded to 32), caption
(padded to 32), concepts]`` (shared ``to_q/k/v``, RMS QK-norm, RoPE on every row) and an explicit boolean mask:
image and caption rows see each other and never the concepts; the concepts see the real image rows (not the image
padding) and/or each other according to the mode. Every row takes the one modulation ``adaLN_modulation(adaln_input)``
of the block (Z-Image has no separate text modulation). No code is shared with the library's processors.
"""

from __future__ import annotations

import copy
from typing import Any

import torch

from .common import Layout, blocks_until, concept_attention, concept_scores, stream_qkv


def _rope(x: torch.Tensor, freqs: torch.Tensor) -> torch.Tensor:
    """Interleaved-pair rotary embedding, written out in real arithmetic: ``x [1, S, H, D]``, ``freqs [S, D/2]``
    complex (``cos + i·sin``)."""
    even, odd = x[..., 0::2], x[..., 1::2]  # [1, S, H, D/2] each
    cos, sin = freqs.real.double()[None, :, None], freqs.imag.double()[None, :, None]  # [1, S, 1, D/2]
    return torch.stack([even * cos - odd * sin, even * sin + odd * cos], dim=-1).flatten(-2)  # [1, S, H, D]


def naive_z_image_scores(
    transformer: Any,
    inputs: dict[str, Any],
    concept_embeds: torch.Tensor,
    layers: list[int],
    space: str = "output",
    mode: str = "both",
    variant: str = "extension",
) -> torch.Tensor:
    """Per-layer saliency scores ``[L, B, C, I]`` (float64) for the selected main blocks.

    ``variant="no_refiner"`` (concepts skip the ``context_refiner``) and ``variant="see_text"`` (concepts also attend
    to the caption) are deliberately wrong variants.
    """
    model = copy.deepcopy(transformer).double()
    images = [x.double() for x in inputs["x"]]
    captions = [c.double() for c in inputs["cap_feats"]]
    adaln = model.t_embedder(inputs["t"].double() * model.t_scale)  # [B, 256 or d]
    x, cap, _, x_ids, cap_ids, x_pad, cap_pad = model.patchify_and_embed(images, captions, 2, 1)
    x_lens, cap_lens = [len(t) for t in x], [len(t) for t in cap]
    x = model.all_x_embedder["2-1"](torch.cat(x))
    x, x_freqs, x_mask, _, _ = model._prepare_sequence(list(x.split(x_lens)), x_ids, x_pad, model.x_pad_token)
    for layer in model.noise_refiner:
        x = layer(x, x_mask, x_freqs, adaln)
    cap = model.cap_embedder(torch.cat(cap))
    cap, cap_freqs, cap_mask, _, _ = model._prepare_sequence(list(cap.split(cap_lens)), cap_ids, cap_pad, model.cap_pad_token)
    for layer in model.context_refiner:
        cap = layer(cap, cap_mask, cap_freqs)
    count = concept_embeds.shape[0]
    concept_ids = torch.tensor([[1, 0, 0]] * count, dtype=torch.int32)  # [C, 3]
    concept_freqs = model.rope_embedder(concept_ids)  # [C, D/2]
    concepts = model.cap_embedder(concept_embeds.double())[None]  # [1, C, d]
    if variant != "no_refiner":
        for layer in model.context_refiner:
            concepts = layer(concepts, None, concept_freqs[None])

    num_image = images[0].shape[1] * (images[0].shape[2] // 2) * (images[0].shape[3] // 2)  # frames · h · w (patch 2)
    per_sample = []
    for b in range(len(images)):
        streams = [x[b : b + 1, : x_lens[b]], cap[b : b + 1, : cap_lens[b]], concepts]  # [1, S_i, d] each
        freqs = torch.cat([x_freqs[b, : x_lens[b]], cap_freqs[b, : cap_lens[b]], concept_freqs])  # [S, D/2]
        image_rows = slice(0, num_image)  # the real image tokens; rows num_image..x_len are the image padding
        joint = x_lens[b] + cap_lens[b]
        layout = Layout(text=slice(x_lens[b], joint), image=image_rows, concepts=slice(joint, joint + count))
        allowed = layout.mask(mode)  # [S, S]
        if variant == "see_text":
            allowed[layout.concepts, layout.text] = True
        scores = []
        for index, block in blocks_until(model.layers, layers):
            scale_msa, gate_msa, scale_mlp, gate_mlp = block.adaLN_modulation(adaln[b : b + 1]).chunk(4, dim=1)
            sequence = torch.cat(streams, dim=1)  # [1, S, d]
            normed = block.attention_norm1(sequence) * (1 + scale_msa[:, None])
            query, key, value = stream_qkv(block.attention, normed, False)  # [1, S, H, D]
            query, key = _rope(query, freqs), _rope(key, freqs)
            output = concept_attention(query, key, value, allowed, layout, mode)  # [1, S, H·D]
            if index in layers:
                scores.append(concept_scores(space, query, key, value, output, layout))  # [1, C, I]
            sequence = sequence + gate_msa.tanh()[:, None] * block.attention_norm2(block.attention.to_out[0](output))
            mlp = block.feed_forward(block.ffn_norm1(sequence) * (1 + scale_mlp[:, None]))
            sequence = sequence + gate_mlp.tanh()[:, None] * block.ffn_norm2(mlp)
            streams = list(sequence.split([s.shape[1] for s in streams], dim=1))
        per_sample.append(torch.cat(scores))  # [L, C, I]
    return torch.stack(per_sample, dim=1)  # [L, B, C, I]
