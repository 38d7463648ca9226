"""A deliberately naive float64 reference of ConceptAttention on HiDream-I1's double-stream blocks, for tests.

It re-runs the double-stream blocks by hand with ONE full attention over ``[image, text, concepts]`` and an explicit
boolean mask (image and text never see concepts; concepts see image and/or concepts according to the mode, never
the text). The text is rebuilt per block as the model's ``forward`` does: ``[T5, Llama layer llama_layers[-1]]`` is
the residual stream, the projected Llama layer ``llama_layers[k]`` is appended before block ``k`` and dropped after
it; each concept is three tokens treated the same way (its T5 and last-layer tokens residual, its layer-``k`` token
fresh per block), and its score is the mean of its three tokens' scores. Text and concept ids are zero (RoPE rows of
a zero id), image ids are the patch grid. A non-square image is padded to ``max_resolution`` as the model pads it:
the padding rows' keys are zero (every query, concepts included, still gives them logit 0) and the scores cover the
real patches only. No code is shared with the library's processors.
"""

from __future__ import annotations

import copy
from typing import Any

import torch

from .common import Layout, blocks_until, concept_attention, concept_scores, per_sample, residual_update


def _heads(x: torch.Tensor, heads: int) -> torch.Tensor:
    return x.unflatten(-1, (heads, -1))  # [B, S, H·D] -> [B, S, H, D]


def _rope_table(ids: torch.Tensor, axes: Any, theta: float = 10000.0) -> torch.Tensor:
    """HiDream's RoPE rotation matrices ``[B, S, 1, D/2, 2, 2]`` for ids ``[B, S, 3]``, in float64."""
    blocks = []
    for axis, dim in enumerate(axes):
        omega = 1.0 / theta ** (torch.arange(0, dim, 2, dtype=torch.float64) / dim)  # [dim/2]
        angles = ids[..., axis, None].double() * omega  # [B, S, dim/2]
        cos, sin = angles.cos(), angles.sin()
        blocks.append(torch.stack([cos, -sin, sin, cos], dim=-1).unflatten(-1, (2, 2)))  # [B, S, dim/2, 2, 2]
    return torch.cat(blocks, dim=-3).unsqueeze(2)  # [B, S, 1, D/2, 2, 2]


def _rotate(x: torch.Tensor, table: torch.Tensor) -> torch.Tensor:
    """``x [B, S, H, D]`` rotated pairwise by ``table``: ``(x0, x1) -> M · (x0, x1)`` per pair."""
    pairs = x.unflatten(-1, (-1, 1, 2))  # [B, S, H, D/2, 1, 2]
    return (table[..., 0] * pairs[..., 0] + table[..., 1] * pairs[..., 1]).flatten(-2)  # [B, S, H, D]


def _stream_qkv(attn: Any, x: torch.Tensor, text: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Query, key, value ``[B, S, H, D]`` of the image (``to_*``) or a text-like stream (``to_*_t``); QK RMS-norms act
    on the whole width before the heads are split."""
    suffix = "_t" if text else ""
    query = getattr(attn, f"q_rms_norm{suffix}")(getattr(attn, f"to_q{suffix}")(x))
    key = getattr(attn, f"k_rms_norm{suffix}")(getattr(attn, f"to_k{suffix}")(x))
    value = getattr(attn, f"to_v{suffix}")(x)
    return _heads(query, attn.heads), _heads(key, attn.heads), _heads(value, attn.heads)


def naive_hidream_scores(
    transformer: Any,
    inputs: dict[str, Any],
    concept_embeds: torch.Tensor,
    layers: list[int],
    space: str = "output",
    mode: str = "both",
    conditioning: str = "null_pooled",
) -> torch.Tensor:
    """Per-layer saliency scores ``[L, B, C, I]`` (float64) for the selected double-stream blocks.

    ``concept_embeds`` is ``[C, D_t5 + n·D_llama]``; ``conditioning`` is ``"null_pooled"`` (timestep embedding plus the
    pooled embedder of zeros) or ``"prompt"`` (the blocks' ``temb``).
    """
    model = copy.deepcopy(transformer).double()
    config = model.config
    hidden, masks, sizes, img_ids = model.patchify(inputs["hidden_states"].double())  # [B, I, p²c], ids [B, I, 3]
    real = int(sizes[0, 0] * sizes[0, 1])  # the h·w patches before any padding
    hidden = model.x_embedder(hidden)  # [B, I, d]
    batch, num_image = hidden.shape[:2]
    timestep_embedding = model.t_embedder(inputs["timesteps"].double(), torch.float64)  # [B, d]
    pooled = inputs["pooled_embeds"].double()
    temb = timestep_embedding + model.p_embedder(pooled)  # [B, d]
    concept_temb = temb if conditioning == "prompt" else timestep_embedding + model.p_embedder(torch.zeros_like(pooled))

    projections = model.caption_projection
    llama = inputs["encoder_hidden_states_llama3"].double()  # [L, B, T, D_llama]
    text_layers = [projections[i](llama[k]) for i, k in enumerate(config.llama_layers)]  # n x [B, T, d]
    text = torch.cat([projections[-1](inputs["encoder_hidden_states_t5"].double()), text_layers[-1]], dim=1)

    t5_width, llama_width = config.caption_channels
    embeds = concept_embeds.double()
    num_concepts = embeds.shape[0]
    concept_layers = embeds[:, t5_width:].unflatten(-1, (-1, llama_width))  # [C, n, D_llama]
    concept_layers = [projections[i](concept_layers[:, i]) for i in range(concept_layers.shape[1])]  # n x [C, d]
    concepts = per_sample(torch.cat([projections[-1](embeds[:, :t5_width]), concept_layers[-1]], dim=0), batch)

    scores = []
    for index, wrapper in blocks_until(model.double_stream_blocks, layers):
        block, attn = wrapper.block, wrapper.block.attn1
        text_k = torch.cat([text, text_layers[index]], dim=1)  # [B, T, d]
        concepts_k = torch.cat([concepts, per_sample(concept_layers[index], batch)], dim=1)  # [B, 3C, d]
        mod_i = block.adaLN_modulation(temb).chunk(12, dim=-1)[:6]  # shift, scale, gate, shift2, scale2, gate2
        mod_t = block.adaLN_modulation(temb).chunk(12, dim=-1)[6:]
        mod_c = block.adaLN_modulation(concept_temb).chunk(12, dim=-1)[6:]

        def pre(x: torch.Tensor, norm: Any, mod: tuple[torch.Tensor, ...]) -> torch.Tensor:
            return norm(x) * (1 + mod[1][:, None]) + mod[0][:, None]

        streams = [
            _stream_qkv(attn, pre(hidden, block.norm1_i, mod_i), text=False),
            _stream_qkv(attn, pre(text_k, block.norm1_t, mod_t), text=True),
            _stream_qkv(attn, pre(concepts_k, block.norm1_t, mod_c), text=True),
        ]
        query, key, value = (torch.cat(parts, dim=1) for parts in zip(*streams))  # [B, S, H, D]
        if masks is not None:  # zero keys on the padding rows, before RoPE (as the processor)
            key = torch.cat([key[:, :num_image] * masks[:, :, None, None], key[:, num_image:]], dim=1)
        layout = Layout.image_first(text_k.shape[1], num_image, concepts_k.shape[1])
        ids = torch.cat([img_ids.double(), torch.zeros(batch, layout.total - num_image, 3, dtype=torch.float64)], dim=1)
        table = _rope_table(ids, config.axes_dims_rope)  # text and concept ids 0: identity rotations
        query, key = _rotate(query, table), _rotate(key, table)
        output = concept_attention(query, key, value, layout.mask(mode), layout, mode)  # [B, S, H·D]
        if index in layers:
            scored = Layout(layout.text, slice(0, real), layout.concepts)
            per_token = concept_scores(space, query, key, value, output, scored)  # [B, 3C, I]
            scores.append(per_token.unflatten(1, (3, num_concepts)).mean(1))  # [B, C, I]
        o_img, o_txt, o_con = output[:, layout.image], output[:, layout.text], output[:, layout.concepts]
        gates = lambda mod: (mod[2], mod[3], mod[4], mod[5])  # noqa: E731 - gate, shift2, scale2, gate2
        hidden = residual_update(hidden, attn.to_out(o_img), block.norm3_i, block.ff_i, *gates(mod_i))
        text = residual_update(text_k, attn.to_out_t(o_txt), block.norm3_t, block.ff_t, *gates(mod_t))[:, : text.shape[1]]
        concepts = residual_update(concepts_k, attn.to_out_t(o_con), block.norm3_t, block.ff_t, *gates(mod_c))
        concepts = concepts[:, : 2 * num_concepts]
    return torch.stack(scores)  # [L, B, C, I]
