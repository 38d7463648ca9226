"""A deliberately naive float64 reference of ConceptAttention on Qwen-Image, for tests.

It re-runs the blocks of a ``QwenImageTransformer2DModel`` by hand with ONE full attention over
``[text, image, concepts]`` and an explicit boolean mask (text and image see the unpadded text and the image;
concepts see the image and/or the concepts, never the text). The MSRoPE rotation is done by hand in complex128 from
the model's frequency table: image rows from the model's image frequencies, text token ``j`` at row
``max(h//2, w//2) + j``, every concept at row ``max(h//2, w//2) + T``. No code is shared with the library's processors.
"""

from __future__ import annotations

import copy
from typing import Any

import torch

from .common import (
    Layout,
    blocks_until,
    concept_scores,
    key_mask,
    layer_norm_double_block,
    per_sample,
)


def _rotate(x: torch.Tensor, freqs: torch.Tensor) -> torch.Tensor:
    """Rotate ``x [B, S, H, D]`` by complex ``freqs [S, D/2]`` (interleaved real/imaginary pairs)."""
    pairs = torch.view_as_complex(x.double().reshape(*x.shape[:-1], -1, 2).contiguous())  # [B, S, H, D/2]
    return torch.view_as_real(pairs * freqs.to(torch.complex128)[None, :, None]).flatten(3)  # [B, S, H, D]


def naive_qwenimage_scores(
    transformer: Any,
    inputs: dict[str, Any],
    concept_embeds: torch.Tensor,
    layers: list[int],
    space: str = "output",
    mode: str = "both",
    concept_position: int | None = None,
) -> torch.Tensor:
    """Per-layer saliency scores ``[L, B, C, I]`` (float64) for the selected layers.

    ``concept_position`` overrides the concepts' text position (default ``T``, right after the padded prompt).
    """
    model = copy.deepcopy(transformer).double()
    hidden = model.img_in(inputs["hidden_states"].double())  # [B, I, d]
    batch, num_image = hidden.shape[:2]
    timestep = inputs["timestep"].double()
    if model.zero_cond_t:
        timestep = torch.cat([timestep, timestep * 0], dim=0)  # [2B]
    temb = model.time_text_embed(timestep, hidden)  # [B or 2B, d]
    temb = temb[:batch]  # text (and, with a single image shape, the image) use the first half
    text = model.txt_in(model.txt_norm(inputs["encoder_hidden_states"].double()))  # [B, T, d]
    concepts = per_sample(model.txt_in(model.txt_norm(concept_embeds.double())), batch)  # [B, C, d]
    num_text, num_concepts = text.shape[1], concepts.shape[1]
    layout = Layout.text_first(num_text, num_image, num_concepts)

    frames, grid_h, grid_w = inputs["img_shapes"][0][0]
    image_freqs, _ = model.pos_embed(inputs["img_shapes"], max_txt_seq_len=num_text, device=hidden.device)  # [I, D/2]
    start = max(grid_h // 2, grid_w // 2)  # scale_rope: text positions continue after the centred image grid
    table = model.pos_embed.pos_freqs  # [4096, D/2] complex
    position = num_text if concept_position is None else concept_position
    freqs = torch.cat(
        [table[start : start + num_text], image_freqs.cpu(), table[start + position].expand(num_concepts, -1)], dim=0
    )  # [T + I + C, D/2]

    text_keys = inputs.get("encoder_hidden_states_mask")
    text_keys = torch.ones(batch, num_text, dtype=torch.bool) if text_keys is None else text_keys.bool()  # [B, T]
    valid_keys = torch.cat([text_keys, torch.ones(batch, num_image, dtype=torch.bool)], dim=1)  # [B, T + I]
    allowed = layout.mask(mode, joint=key_mask(valid_keys))  # [B, S, S]: everyone sees the unpadded text, the image

    scores = []
    for index, block in blocks_until(model.transformer_blocks, layers):
        image_mod = [*block.img_mod(temb).chunk(6, dim=-1)]  # shift, scale, gate, shift2, scale2, gate2: [B, d]
        text_mod = [*block.txt_mod(temb).chunk(6, dim=-1)]
        attention, (hidden, text, concepts) = layer_norm_double_block(  # concepts modulated as text
            block.attn, (hidden, text, concepts), (image_mod, text_mod, text_mod), (block.img_mlp, block.txt_mlp),
            layout, allowed, mode, lambda x: _rotate(x, freqs),
        )
        if index in layers:
            scores.append(concept_scores(space, *attention, layout))
    return torch.stack(scores)  # [L, B, C, I]
