"""Building blocks shared by the naive float64 ConceptAttention references (``references/<family>.py``), for tests.

Every reference re-runs a joint-attention transformer by hand with ONE full attention over a sequence that ends in
the concept rows, ``[..., concepts]``, and an explicit boolean mask: the text and image tokens never see the concepts;
the concepts see the image and/or the concepts according to the mode, never the text. What is common to all of them
lives here, written out naively: the row layout and mask, the per-head projections, the masked softmax attention, the
concept-row scores in the three spaces, and the adaptive-LayerNorm modulation and residual updates. Nothing here
imports the library, so agreement with a reference stays evidence that the optimised path implements the method.

Shapes: ``B`` batch, ``S`` joint sequence length, ``H`` heads, ``D`` head dimension, ``d`` model width, ``I`` image
(or video) tokens, ``C`` concepts.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class Layout:
    """Row slices of the joint sequence; the concepts always come last."""

    text: slice
    image: slice
    concepts: slice

    @classmethod
    def text_first(cls, num_text: int, num_image: int, num_concepts: int) -> Layout:
        """``[text, image, concepts]`` (FLUX.1, Chroma, FLUX.2, Qwen-Image, AuraFlow, CogVideoX)."""
        joint = num_text + num_image
        return cls(slice(0, num_text), slice(num_text, joint), slice(joint, joint + num_concepts))

    @classmethod
    def image_first(cls, num_text: int, num_image: int, num_concepts: int) -> Layout:
        """``[image, text, concepts]`` (SD3, HunyuanVideo)."""
        joint = num_image + num_text
        return cls(slice(num_image, joint), slice(0, num_image), slice(joint, joint + num_concepts))

    @property
    def joint(self) -> int:
        """Number of text + image rows (the rows before the concepts)."""
        return self.concepts.start

    @property
    def total(self) -> int:
        """``S``, the length of the whole sequence."""
        return self.concepts.stop

    def mask(self, mode: str, joint: torch.Tensor | None = None, device: Any = None) -> torch.Tensor:
        """Boolean ``allowed[query, key]`` mask, ``[S, S]``, or ``[B, S, S]`` for a batched ``joint``.

        ``joint`` (``[J, J]`` or ``[B, J, J]``, ``J`` text + image rows) says which text/image rows see which; by
        default all of them see each other. Text and image never see the concepts; the concepts see the image
        (modes ``both``, ``cross``) and themselves (``both``, ``self``), never the text.
        """
        if joint is None:
            joint = torch.ones(self.joint, self.joint, dtype=torch.bool, device=device)
        allowed = torch.zeros(*joint.shape[:-2], self.total, self.total, dtype=torch.bool, device=joint.device)
        allowed[..., : self.joint, : self.joint] = joint
        if mode in ("both", "cross"):
            allowed[..., self.concepts, self.image] = True
        if mode in ("both", "self"):
            allowed[..., self.concepts, self.concepts] = True
        return allowed


def key_mask(valid_keys: torch.Tensor) -> torch.Tensor:
    """``[B, J]`` per-key validity -> ``[B, J, J]`` joint mask in which every row sees exactly the valid keys."""
    return valid_keys[:, None, :].expand(-1, valid_keys.shape[1], -1)


def blocks_until(blocks: Iterable[Any], layers: Sequence[int]) -> Iterator[tuple[int, Any]]:
    """``(index, block)`` for the blocks up to and including the deepest selected layer."""
    last = max(layers)
    for index, block in enumerate(blocks):
        if index > last:
            return
        yield index, block


def per_sample(embedded: torch.Tensor, batch: int) -> torch.Tensor:
    """The embedded concepts ``[C, d]`` repeated for every sample: ``[B, C, d]``."""
    return embedded.unsqueeze(0).repeat(batch, 1, 1)


# --- modulation ---------------------------------------------------------------------------------------------------


def layer_norm(x: torch.Tensor) -> torch.Tensor:
    """LayerNorm over the last dimension without affine weights, eps ``1e-6``: ``[..., d]`` -> ``[..., d]``."""
    return F.layer_norm(x, x.shape[-1:], eps=1e-6)


def silu_modulation(norm_module: Any, conditioning: torch.Tensor, chunks: int) -> list[torch.Tensor]:
    """``norm_module.linear(silu(conditioning))`` (``conditioning [B, d_t]``) split into ``chunks`` vectors ``[B, d]``."""
    return list(norm_module.linear(F.silu(conditioning)).chunk(chunks, dim=1))


def modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """``x [B, S, d] · (1 + scale) + shift`` with per-sample vectors ``shift, scale [B, d]``."""
    return x * (1 + scale[:, None]) + shift[:, None]


def ada_norm_zero(
    x: torch.Tensor,
    norm: Callable[[torch.Tensor], torch.Tensor],
    shift: torch.Tensor,
    scale: torch.Tensor,
    gate: torch.Tensor,
    shift2: torch.Tensor,
    scale2: torch.Tensor,
    gate2: torch.Tensor,
) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]]:
    """AdaLayerNormZero written out: ``modulate(norm(x))`` ``[B, S, d]`` and ``(gate, shift2, scale2, gate2)``.

    The six vectors are ``[B, d]``; the returned four feed :func:`residual_update`.
    """
    return modulate(norm(x), shift, scale), (gate, shift2, scale2, gate2)


def residual_update(
    x: torch.Tensor,
    attention_out: torch.Tensor,
    norm: Callable[[torch.Tensor], torch.Tensor],
    ff: Callable[[torch.Tensor], torch.Tensor],
    gate: torch.Tensor,
    shift2: torch.Tensor,
    scale2: torch.Tensor,
    gate2: torch.Tensor,
    mlp_onto_input: bool = False,
) -> torch.Tensor:
    """The gated residual updates of a DiT stream ``x [B, S, d]``.

    ``y = x + gate · attention_out`` (the projected attention output ``[B, S, d]``), then
    ``y + gate2 · ff(norm(y) · (1 + scale2) + shift2)``; the vectors are ``[B, d]``. With ``mlp_onto_input``
    (AuraFlow) the MLP term is added onto the block's input ``x`` instead of ``y``.
    """
    updated = x + gate[:, None] * attention_out
    return (x if mlp_onto_input else updated) + gate2[:, None] * ff(modulate(norm(updated), shift2, scale2))


# --- attention ----------------------------------------------------------------------------------------------------


def split_heads(x: torch.Tensor, heads: int) -> torch.Tensor:
    """``[B, S, H·D]`` -> ``[B, S, H, D]``."""
    return x.unflatten(-1, (heads, -1))


def call_norm(norm: Any, x: torch.Tensor) -> torch.Tensor:
    """Apply a QK-norm module to ``x [B, S, H, D]`` (identity when the model has none)."""
    return x if norm is None else norm(x)


def stream_qkv(
    attn: Any,
    x: torch.Tensor,
    context: bool,
    qk_norm: Callable[[Any, torch.Tensor], torch.Tensor] = call_norm,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Query, key and value ``[B, S, H, D]`` of one stream ``x [B, S, d]``.

    The image projections (``to_q/k/v``, ``norm_q/k``), or with ``context`` the added ones (``add_q/k/v_proj``,
    ``norm_added_q/k``) that text and concepts go through; ``qk_norm(norm_module, x)`` applies a QK-norm.
    """
    heads = attn.heads
    if context:
        projections = (attn.add_q_proj, attn.add_k_proj, attn.add_v_proj)
        norms = (attn.norm_added_q, attn.norm_added_k)
    else:
        projections = (attn.to_q, attn.to_k, attn.to_v)
        norms = (attn.norm_q, attn.norm_k)
    query = qk_norm(norms[0], split_heads(projections[0](x), heads))
    key = qk_norm(norms[1], split_heads(projections[1](x), heads))
    return query, key, split_heads(projections[2](x), heads)


def joint_qkv(
    attn: Any,
    streams: Sequence[tuple[torch.Tensor, bool]],
    qk_norm: Callable[[Any, torch.Tensor], torch.Tensor] = call_norm,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Query, key and value ``[B, S, H, D]`` of the streams ``(x [B, S_i, d], context)`` concatenated in order."""
    queries, keys, values = zip(*(stream_qkv(attn, x, context, qk_norm) for x, context in streams))
    return torch.cat(queries, dim=1), torch.cat(keys, dim=1), torch.cat(values, dim=1)


def interleaved_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotary embedding on interleaved pairs (CogVideoX's, Krea 2's and JoyImage's convention): ``x [B, S, H, D]``,
    ``cos/sin [S, D]`` (each pair's value repeated)."""
    real, imag = x.unflatten(-1, (-1, 2)).unbind(-1)  # [B, S, H, D/2] each
    rotated = torch.stack([-imag, real], dim=-1).flatten(-2)  # [B, S, H, D]
    return x * cos[None, :, None] + rotated * sin[None, :, None]


def rotate_rows(x: torch.Tensor, rows: slice, rotate: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
    """``x [B, S, H, D]`` with ``rotate`` (a RoPE) applied to the rows ``x[:, rows]`` only."""
    start = rows.start or 0
    return torch.cat([x[:, :start], rotate(x[:, rows]), x[:, rows.stop :]], dim=1)


def masked_attention(
    query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, allowed: torch.Tensor
) -> torch.Tensor:
    """Masked softmax attention on ``[B, S, H, D]`` with ``allowed`` ``[S, S]`` or ``[B, S, S]``: ``[B, S, H, D]``.

    Rows with no allowed key return zeros.
    """
    if allowed.ndim == 3:
        allowed = allowed[:, None]  # [B, 1, S, S], broadcast over the heads
    logits = torch.einsum("bqhd,bkhd->bhqk", query, key) / math.sqrt(query.shape[-1])  # [B, H, S, S]
    weights = torch.softmax(logits.masked_fill(~allowed, float("-inf")), dim=-1).nan_to_num(0.0)
    return torch.einsum("bhqk,bkhd->bqhd", weights, value)  # [B, S, H, D]


def concept_attention(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    allowed: torch.Tensor,
    layout: Layout,
    mode: str,
) -> torch.Tensor:
    """The joint attention output ``[B, S, H·D]`` (heads merged) of ``[B, S, H, D]`` inputs under ``allowed``.

    In mode ``none`` the concept rows attend to nothing and their output is their value.
    """
    output = masked_attention(query, key, value, allowed)  # [B, S, H, D]
    if mode == "none":
        output[:, layout.concepts] = value[:, layout.concepts]
    return output.flatten(2, 3)


def concept_scores(
    space: str,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    output: torch.Tensor,
    layout: Layout,
) -> torch.Tensor:
    """Concept-to-image saliency ``[B, C, I]`` of one layer, in float64.

    ``output`` space: dot products of the concept and image attention outputs (``output [B, S, H·D]``);
    ``cross_attention``: image queries against concept keys, averaged over heads and scaled by ``1/√D``;
    ``value``: image values against concept values, averaged over heads (``query, key, value [B, S, H, D]``).
    """
    image, concepts = layout.image, layout.concepts
    heads, head_dim = query.shape[2], query.shape[3]
    if space == "output":
        return torch.einsum("bcd,bid->bci", output[:, concepts], output[:, image])
    if space == "cross_attention":
        return torch.einsum("bihd,bchd->bci", query[:, image], key[:, concepts]) / heads / math.sqrt(head_dim)
    if space == "value":
        return torch.einsum("bihd,bchd->bci", value[:, image], value[:, concepts]) / heads
    raise ValueError(f"unknown space {space!r}")


# --- blocks -------------------------------------------------------------------------------------------------------


def joint_attention_update(
    attn: Any,
    streams: tuple[torch.Tensor, torch.Tensor, torch.Tensor],
    normed: tuple[torch.Tensor, torch.Tensor, torch.Tensor],
    modulations: tuple[Sequence[torch.Tensor], Sequence[torch.Tensor], Sequence[torch.Tensor]],
    mlps: tuple[tuple[Callable, Callable], tuple[Callable, Callable]],
    layout: Layout,
    allowed: torch.Tensor,
    mode: str,
    rotate: Callable[[torch.Tensor], torch.Tensor],
) -> tuple[tuple[torch.Tensor, ...], tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """The attention and residual half of a double-stream block whose streams are already normalised and modulated.

    ``streams = (image [B, I, d], text [B, T, d], concepts [B, C, d])`` and their ``normed`` inputs go through ONE
    masked attention (``allowed``) over the rows in ``layout``'s order (image projections for the image, the added
    ones for text and concepts), after ``rotate`` (the RoPE of the rows it rotates, on ``[B, S, H, D]``) of the
    queries and keys; then the gated residual updates (:func:`residual_update`) with ``modulations`` (each stream's
    ``gate, shift2, scale2, gate2``) and ``mlps = ((norm, ff) of the image, (norm, ff) of text and concepts)``.

    Returns:
        ``(query, key, value, output)`` of the attention (the :func:`concept_scores` inputs) and the advanced streams.
    """
    image, text, concepts = streams
    n_img, n_txt, n_con = normed
    img_mod, txt_mod, con_mod = modulations
    (norm_img, ff_img), (norm_ctx, ff_ctx) = mlps
    rows = [(n_txt, True), (n_img, False)] if layout.text.start == 0 else [(n_img, False), (n_txt, True)]
    query, key, value = joint_qkv(attn, [*rows, (n_con, True)])  # [B, S, H, D], in the layout's row order
    query, key = rotate(query), rotate(key)
    output = concept_attention(query, key, value, allowed, layout, mode)  # [B, S, H·D]
    o_img, o_txt, o_con = output[:, layout.image], output[:, layout.text], output[:, layout.concepts]
    image = residual_update(image, attn.to_out[0](o_img), norm_img, ff_img, *img_mod)
    text = residual_update(text, attn.to_add_out(o_txt), norm_ctx, ff_ctx, *txt_mod)
    concepts = residual_update(concepts, attn.to_add_out(o_con), norm_ctx, ff_ctx, *con_mod)
    return (query, key, value, output), (image, text, concepts)


def layer_norm_double_block(
    attn: Any,
    streams: tuple[torch.Tensor, torch.Tensor, torch.Tensor],
    modulation_rows: tuple[Sequence[torch.Tensor], Sequence[torch.Tensor], Sequence[torch.Tensor]],
    feed_forwards: tuple[Callable, Callable],
    layout: Layout,
    allowed: torch.Tensor,
    mode: str,
    rotate: Callable[[torch.Tensor], torch.Tensor],
) -> tuple[tuple[torch.Tensor, ...], tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """A double-stream block whose norms are parameter-free LayerNorms modulated by six explicit rows per stream
    (Chroma, FLUX.2, Qwen-Image): :func:`ada_norm_zero` of ``streams = (image, text, concepts)`` with
    ``modulation_rows`` (each ``shift, scale, gate, shift2, scale2, gate2``, ``[B, d]``), then
    :func:`joint_attention_update` with a LayerNorm before ``feed_forwards = (image MLP, text MLP)``.

    Returns:
        ``(query, key, value, output)`` of the attention (the :func:`concept_scores` inputs) and the advanced streams.
    """
    normed, modulations = zip(
        *(ada_norm_zero(x, layer_norm, *rows) for x, rows in zip(streams, modulation_rows, strict=True)), strict=True
    )
    image_ff, text_ff = feed_forwards
    mlps = ((layer_norm, image_ff), (layer_norm, text_ff))
    return joint_attention_update(attn, streams, normed, modulations, mlps, layout, allowed, mode, rotate)


def double_block(
    block: Any,
    streams: tuple[torch.Tensor, torch.Tensor, torch.Tensor],
    tembs: tuple[torch.Tensor, torch.Tensor],
    layout: Layout,
    allowed: torch.Tensor,
    mode: str,
    rotate: Callable[[torch.Tensor], torch.Tensor],
) -> tuple[tuple[torch.Tensor, ...], tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """One FLUX.1-style double-stream block (FLUX.1, its relatives, HunyuanVideo's family) run by hand: the
    ``streams`` (image, text, concepts) through ``norm1`` / ``norm1_context`` (AdaLayerNormZero) modulated by
    ``tembs = (temb of image and text, temb of the concepts)`` ``[B, d]``, then :func:`joint_attention_update` with
    ``norm2`` / ``norm2_context`` and ``ff`` / ``ff_context``.

    Returns:
        ``(query, key, value, output)`` of the attention (the :func:`concept_scores` inputs) and the advanced streams.
    """
    image, text, concepts = streams
    temb, temb_concepts = tembs
    n_img, *img_mod = block.norm1(image, emb=temb)  # img_mod: gate, shift2, scale2, gate2, each [B, d]
    n_txt, *txt_mod = block.norm1_context(text, emb=temb)
    n_con, *con_mod = block.norm1_context(concepts, emb=temb_concepts)
    mlps = ((block.norm2, block.ff), (block.norm2_context, block.ff_context))
    normed, modulations = (n_img, n_txt, n_con), (img_mod, txt_mod, con_mod)
    return joint_attention_update(block.attn, streams, normed, modulations, mlps, layout, allowed, mode, rotate)
