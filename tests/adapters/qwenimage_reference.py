"""A deliberately naive float64 reference of ConceptAttention on Qwen-Image, for tests.

It re-runs the blocks of a ``QwenImageTransformer2DModel`` by hand with ONE full attention over
``[text, image, concepts]`` and an explicit boolean mask (text and image see the unpadded text and the image;
concepts see the image and/or the concepts, never the text). The MSRoPE rotation is done by hand in complex128 from
the model's frequency table: image rows from the model's image frequencies, text token ``j`` at row
``max(h//2, w//2) + j``, every concept at row ``max(h//2, w//2) + T``. No code is shared with the library's processors.
"""

from __future__ import annotations

import copy
import math
from typing import Any

import torch


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
    concepts = model.txt_in(model.txt_norm(concept_embeds.double())).unsqueeze(0).repeat(batch, 1, 1)  # [B, C, d]
    num_text, num_concepts = text.shape[1], concepts.shape[1]

    frames, grid_h, grid_w = inputs["img_shapes"][0][0]
    image_freqs, _ = model.pos_embed(inputs["img_shapes"], max_txt_seq_len=num_text, device=hidden.device)  # [I, D/2]
    start = max(grid_h // 2, grid_w // 2)  # scale_rope: text positions continue after the centred image grid
    table = model.pos_embed.pos_freqs  # [4096, D/2] complex
    position = num_text if concept_position is None else concept_position
    freqs = torch.cat(
        [table[start : start + num_text], image_freqs.cpu(), table[start + position].expand(num_concepts, -1)], dim=0
    )  # [T + I + C, D/2]

    total = num_text + num_image + num_concepts
    image_rows = slice(num_text, num_text + num_image)
    concept_rows = slice(num_text + num_image, total)
    text_keys = inputs.get("encoder_hidden_states_mask")
    text_keys = torch.ones(batch, num_text, dtype=torch.bool) if text_keys is None else text_keys.bool()  # [B, T]
    allowed = torch.zeros(batch, total, total, dtype=torch.bool)
    allowed[:, : num_text + num_image, :num_text] = text_keys[:, None, :]
    allowed[:, : num_text + num_image, image_rows] = True
    if mode in ("both", "cross"):
        allowed[:, concept_rows, image_rows] = True
    if mode in ("both", "self"):
        allowed[:, concept_rows, concept_rows] = True

    def layer_norm(x: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.layer_norm(x, x.shape[-1:], eps=1e-6)

    def modulate(x: torch.Tensor, params: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        shift, scale, gate = params.chunk(3, dim=-1)  # [B, d] each
        return x * (1 + scale[:, None]) + shift[:, None], gate[:, None]

    scores = []
    for index, block in enumerate(model.transformer_blocks):
        if index > max(layers):
            break
        attn = block.attn
        heads = attn.heads
        head_dim = attn.inner_dim // heads
        image_mod1, image_mod2 = block.img_mod(temb).chunk(2, dim=-1)
        text_mod1, text_mod2 = block.txt_mod(temb).chunk(2, dim=-1)

        def split(x: torch.Tensor, heads: int = heads, head_dim: int = head_dim) -> torch.Tensor:
            return x.unflatten(-1, (heads, head_dim))  # [B, S, H, D]

        n_img, g_img = modulate(layer_norm(hidden), image_mod1)
        n_txt, g_txt = modulate(layer_norm(text), text_mod1)
        n_con, g_con = modulate(layer_norm(concepts), text_mod1)
        query = torch.cat(
            [
                attn.norm_added_q(split(attn.add_q_proj(n_txt))),
                attn.norm_q(split(attn.to_q(n_img))),
                attn.norm_added_q(split(attn.add_q_proj(n_con))),
            ],
            dim=1,
        )  # [B, T + I + C, H, D]
        key = torch.cat(
            [
                attn.norm_added_k(split(attn.add_k_proj(n_txt))),
                attn.norm_k(split(attn.to_k(n_img))),
                attn.norm_added_k(split(attn.add_k_proj(n_con))),
            ],
            dim=1,
        )  # [B, T + I + C, H, D]
        value = torch.cat(
            [split(attn.add_v_proj(n_txt)), split(attn.to_v(n_img)), split(attn.add_v_proj(n_con))], dim=1
        )  # [B, T + I + C, H, D]
        query, key = _rotate(query, freqs), _rotate(key, freqs)

        logits = torch.einsum("bqhd,bkhd->bhqk", query, key) / math.sqrt(head_dim)  # [B, H, S, S]
        logits = logits.masked_fill(~allowed[:, None], float("-inf"))
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

        def update(x, o, proj, gate, norm_mlp_params, mlp):
            x = x + gate * proj(o)
            modulated, gate2 = modulate(layer_norm(x), norm_mlp_params)
            return x + gate2 * mlp(modulated)

        hidden = update(hidden, o_img, attn.to_out[0], g_img, image_mod2, block.img_mlp)
        text = update(text, o_txt, attn.to_add_out, g_txt, text_mod2, block.txt_mlp)
        concepts = update(concepts, o_con, attn.to_add_out, g_con, text_mod2, block.txt_mlp)
    return torch.stack(scores)  # [L, B, C, I]
