"""A deliberately naive float64 reference of ConceptAttention on JoyImage Edit and Edit Plus, for tests.

It re-runs the double-stream blocks by hand with ONE full attention over ``[image, text, concepts]`` and an explicit
boolean mask: image and text never see the concepts; the concepts see the **target** image rows (the first ``t·h·w``
visual rows: the model puts the generated image first and the reference images after it) and/or the concepts
according to the mode, never the text or the reference images. Scores are taken on the target rows. RoPE (interleaved
pairs) rotates the visual rows, and with ``rope_type="mrope"`` the text rows and the concepts (at the first text
position). Edit Plus inputs (``shape_list``: per sample the target, then references, then padding patches) get
per-sample RoPE tables and a key mask over the padding patches and the masked text, as the model builds them. No code
is shared with the library's processors.
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
    interleaved_rope,
    key_mask,
    per_sample,
    residual_update,
)


def _rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """``x [B, S, H, D]`` rotated by interleaved pairs with ``cos, sin`` ``[S, D]`` or per sample ``[B, S, D]``."""
    if cos.ndim == 2:
        return interleaved_rope(x, cos.double(), sin.double())
    rows = [interleaved_rope(x[i : i + 1], cos[i].double(), sin[i].double()) for i in range(x.shape[0])]
    return torch.cat(rows, dim=0)  # B x [1, S, H, D] -> [B, S, H, D]


def _packed(model: Any, inputs: dict[str, Any]) -> tuple[torch.Tensor, tuple[torch.Tensor, ...], torch.Tensor, int]:
    """Edit Plus: image tokens ``[B, N, d]``, per-sample RoPE ``(cos, sin)`` ``[B, N, D]`` (padding: identity), the
    valid image keys ``[B, N]`` and the target's token count."""
    patches = inputs["hidden_states"].double()  # [B, N, c, pt, ph, pw]
    batch, num = patches.shape[:2]
    image = model.img_in(patches.flatten(0, 1)).reshape(batch, num, -1)  # [B·N, d, 1, 1, 1] -> [B, N, d]
    cos = torch.ones(batch, num, model.config.hidden_size // model.config.num_attention_heads, dtype=torch.float64)
    sin = torch.zeros_like(cos)
    valid = torch.zeros(batch, num, dtype=torch.bool)
    for sample, shapes in enumerate(inputs["shape_list"]):
        row, offset = 0, 0
        for t, h, w in shapes:  # each component at frames offset..offset + t
            part_cos, part_sin = model._get_rotary_pos_embed_for_range((offset, 0, 0), (offset + t, h, w))
            cos[sample, row : row + t * h * w], sin[sample, row : row + t * h * w] = part_cos, part_sin
            row, offset = row + t * h * w, offset + t
        valid[sample, :row] = True
    t, h, w = inputs["shape_list"][0][0]
    return image, (cos, sin), valid, t * h * w


def _qkv(attn: Any, x: torch.Tensor, stream: str) -> tuple[torch.Tensor, ...]:
    """Query, key, value ``[B, S, H, D]`` of the ``img`` or ``txt`` stream (fused projection, per-head RMS norms)."""
    query, key, value = getattr(attn, f"{stream}_attn_qkv")(x).chunk(3, dim=-1)
    query, key, value = (t.unflatten(-1, (attn.heads, -1)) for t in (query, key, value))
    return getattr(attn, f"{stream}_attn_q_norm")(query), getattr(attn, f"{stream}_attn_k_norm")(key), value


def naive_joyimage_scores(
    transformer: Any,
    inputs: dict[str, Any],
    concept_embeds: torch.Tensor,
    layers: list[int],
    space: str = "output",
    mode: str = "both",
    concepts_see_references: bool = False,
) -> torch.Tensor:
    """Per-layer saliency scores ``[L, B, C, I_target]`` (float64) for the selected blocks.

    ``concepts_see_references`` lets the concepts attend to the reference images too (a deliberately wrong variant).
    """
    model = copy.deepcopy(transformer).double()
    latents = inputs["hidden_states"].double()
    packed = "shape_list" in inputs
    if packed:
        image, vis, valid_image, target = _packed(model, inputs)
    elif latents.ndim == 6:  # [B, n, c, t, h, w], target last -> first, items along the frame axis
        latents = torch.cat([latents[:, -1:], latents[:, :-1]], dim=1) if latents.shape[1] > 1 else latents
        batch, items, channels, frames, height, width = latents.shape
        latents = latents.permute(0, 2, 1, 3, 4, 5).reshape(batch, channels, items * frames, height, width)
        target_frames = frames
    else:
        target_frames = latents.shape[2]
    if not packed:
        pt, ph, pw = model.config.patch_size
        grid = [latents.shape[2] // pt, latents.shape[3] // ph, latents.shape[4] // pw]
        target = target_frames // pt * grid[1] * grid[2]
        image = model.img_in(latents).flatten(2).transpose(1, 2)  # [B, I, d]
    _, vec, text = model.condition_embedder(inputs["timestep"].double(), inputs["encoder_hidden_states"].double())
    vec = vec.unflatten(1, (6, -1))  # [B, 6, d]
    batch, num_image = image.shape[:2]
    concepts = per_sample(model.condition_embedder.text_embedder(concept_embeds.double()), batch)  # [B, C, d]
    num_text, num_concepts = text.shape[1], concepts.shape[1]
    mrope = model.config.rope_type == "mrope" and not packed
    if not packed:
        vis, txt = model.get_rotary_pos_embed(grid, num_text if mrope else None)  # ([I, D], [I, D]), text or None
    layout = Layout.image_first(num_text, num_image, num_concepts)
    joint = None
    if packed:  # the model's key mask: padding patches and masked text tokens are never attended to
        text_mask = inputs.get("encoder_hidden_states_mask")
        valid_text = torch.ones(batch, num_text, dtype=torch.bool) if text_mask is None else text_mask.bool()
        joint = key_mask(torch.cat([valid_image, valid_text], dim=1))  # [B, J, J]
    allowed = layout.mask(mode, joint)  # [S, S] or [B, S, S]
    if not concepts_see_references:
        allowed[..., layout.concepts, target:num_image] = False
    scored = Layout(layout.text, slice(0, target), layout.concepts)

    def rotate(x: torch.Tensor) -> torch.Tensor:  # [B, S, H, D]
        parts = [_rope(x[:, :num_image], *vis), x[:, layout.text], x[:, layout.concepts]]
        if mrope:
            parts[1] = _rope(parts[1], *txt)
            parts[2] = _rope(parts[2], txt[0][:1].expand(num_concepts, -1), txt[1][:1].expand(num_concepts, -1))
        return torch.cat(parts, dim=1)

    scores = []
    for index, block in blocks_until(model.double_blocks, layers):
        attn = block.attn
        img_mod, txt_mod = block.img_mod(vec), block.txt_mod(vec)  # 6 x [B, d]: shift, scale, gate, shift2, ...

        def pre(x: torch.Tensor, norm: Any, mod: list[torch.Tensor]) -> torch.Tensor:
            return norm(x) * (1 + mod[1][:, None]) + mod[0][:, None]

        streams = [
            _qkv(attn, pre(image, block.img_norm1, img_mod), "img"),
            _qkv(attn, pre(text, block.txt_norm1, txt_mod), "txt"),
            _qkv(attn, pre(concepts, block.txt_norm1, txt_mod), "txt"),
        ]
        query, key, value = (torch.cat(parts, dim=1) for parts in zip(*streams))  # [B, S, H, D]
        query, key = rotate(query), rotate(key)
        output = concept_attention(query, key, value, allowed, layout, mode)  # [B, S, H·D]
        if index in layers:
            scores.append(concept_scores(space, query, key, value, output, scored))
        o_img, o_txt, o_con = output[:, layout.image], output[:, layout.text], output[:, layout.concepts]
        image = residual_update(image, attn.img_attn_proj(o_img), block.img_norm2, block.img_mlp, *img_mod[2:])
        text = residual_update(text, attn.txt_attn_proj(o_txt), block.txt_norm2, block.txt_mlp, *txt_mod[2:])
        concepts = residual_update(concepts, attn.txt_attn_proj(o_con), block.txt_norm2, block.txt_mlp, *txt_mod[2:])
    return torch.stack(scores)  # [L, B, C, I_target]
