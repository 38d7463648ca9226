"""A deliberately naive float64 reference of ConceptAttention on FLUX.2, for tests.

It re-runs the double-stream blocks of a ``Flux2Transformer2DModel`` by hand with ONE full attention over
``[text, image, concepts]`` and an explicit boolean mask (text and image never see concepts; concepts see the image
and/or the concepts, never the text). RoPE is computed once for the whole ``[text, image, concepts]`` id list, the
concepts at ``(t, 0, 0, max(l) + 1)``; the modulation is recomputed from the timestep. No code is shared with the
library's processors.
"""

from __future__ import annotations

import copy
import math
from typing import Any

import torch
from diffusers.models.embeddings import apply_rotary_emb


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
    image_mod = model.double_stream_modulation_img(temb).unsqueeze(1).chunk(6, dim=-1)  # 6 × [B, 1, d]
    text_mod = model.double_stream_modulation_txt(temb).unsqueeze(1).chunk(6, dim=-1)  # 6 × [B, 1, d]
    text = model.context_embedder(inputs["encoder_hidden_states"].double())  # [B, T, d]
    concepts = model.context_embedder(concept_embeds.double()).unsqueeze(0).repeat(batch, 1, 1)  # [B, C, d]
    num_text, num_concepts = text.shape[1], concepts.shape[1]

    txt_ids = inputs["txt_ids"][0] if inputs["txt_ids"].ndim == 3 else inputs["txt_ids"]  # [T, 4]
    img_ids = inputs["img_ids"][0] if inputs["img_ids"].ndim == 3 else inputs["img_ids"]  # [I, 4]
    concept_ids = torch.zeros(num_concepts, 4, dtype=txt_ids.dtype)  # [C, 4]
    concept_ids[:, 0] = txt_ids[0, 0]
    concept_ids[:, 3] = txt_ids[:, 3].max() + 1 if concept_l is None else concept_l
    cos, sin = model.pos_embed(torch.cat([txt_ids, img_ids, concept_ids], dim=0))  # [T + I + C, D] each

    total = num_text + num_image + num_concepts
    image_rows = slice(num_text, num_text + num_image)
    concept_rows = slice(num_text + num_image, total)
    allowed = torch.zeros(total, total, dtype=torch.bool)
    allowed[: num_text + num_image, : num_text + num_image] = True
    if mode in ("both", "cross"):
        allowed[concept_rows, image_rows] = True
    if mode in ("both", "self"):
        allowed[concept_rows, concept_rows] = True

    def layer_norm(x: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.layer_norm(x, x.shape[-1:], eps=1e-6)

    scores = []
    for index, block in enumerate(model.transformer_blocks):
        if index > max(layers):
            break
        attn = block.attn
        heads, head_dim = attn.heads, attn.head_dim

        def split(x: torch.Tensor, heads: int = heads, head_dim: int = head_dim) -> torch.Tensor:
            return x.unflatten(-1, (heads, head_dim))  # [B, S, H, D]

        streams = [hidden, text, concepts]
        mods = [image_mod, text_mod, text_mod]
        normed = [layer_norm(x) * (1 + m[1]) + m[0] for x, m in zip(streams, mods)]
        q_proj = [attn.to_q, attn.add_q_proj, attn.add_q_proj]
        k_proj = [attn.to_k, attn.add_k_proj, attn.add_k_proj]
        v_proj = [attn.to_v, attn.add_v_proj, attn.add_v_proj]
        q_norm = [attn.norm_q, attn.norm_added_q, attn.norm_added_q]
        k_norm = [attn.norm_k, attn.norm_added_k, attn.norm_added_k]
        order = [1, 0, 2]  # text, image, concepts
        query = torch.cat([q_norm[i](split(q_proj[i](normed[i]))) for i in order], dim=1)  # [B, S, H, D]
        key = torch.cat([k_norm[i](split(k_proj[i](normed[i]))) for i in order], dim=1)  # [B, S, H, D]
        value = torch.cat([split(v_proj[i](normed[i])) for i in order], dim=1)  # [B, S, H, D]
        query = apply_rotary_emb(query, (cos, sin), sequence_dim=1)
        key = apply_rotary_emb(key, (cos, sin), sequence_dim=1)

        logits = torch.einsum("bqhd,bkhd->bhqk", query, key) / math.sqrt(head_dim)  # [B, H, S, S]
        logits = logits.masked_fill(~allowed, float("-inf"))
        if mode == "none":
            logits[:, :, concept_rows] = 0.0  # placeholder rows, replaced below
        weights = torch.softmax(logits, dim=-1)
        output = torch.einsum("bhqk,bkhd->bqhd", weights, value)  # [B, S, H, D]
        if mode == "none":
            output[:, concept_rows] = value[:, concept_rows]
        output = output.flatten(2, 3)  # [B, S, H·D]
        o_txt, o_img, o_con = output[:, :num_text], output[:, image_rows], output[:, concept_rows]

        if index in layers:
            if space == "output":
                scores.append(torch.einsum("bcd,bid->bci", o_con, o_img))
            elif space == "cross_attention":
                scores.append(
                    torch.einsum("bihd,bchd->bci", query[:, image_rows], key[:, concept_rows])
                    / heads
                    / math.sqrt(head_dim)
                )
            elif space == "value":
                scores.append(torch.einsum("bihd,bchd->bci", value[:, image_rows], value[:, concept_rows]) / heads)

        def update(x: torch.Tensor, o: torch.Tensor, proj: Any, ff: Any, m: tuple[torch.Tensor, ...]) -> torch.Tensor:
            x = x + m[2] * proj(o)
            return x + m[5] * ff(layer_norm(x) * (1 + m[4]) + m[3])

        hidden = update(hidden, o_img, attn.to_out[0], block.ff, image_mod)
        text = update(text, o_txt, attn.to_add_out, block.ff_context, text_mod)
        concepts = update(concepts, o_con, attn.to_add_out, block.ff_context, text_mod)
    return torch.stack(scores)  # [L, B, C, I]
