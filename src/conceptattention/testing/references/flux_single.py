"""A deliberately naive float64 reference of the single-stream extension on FLUX.1's single blocks, for tests.

The double-block references (``flux_reference``, ``flux_like_reference``, ``chroma_reference``) hand their streams
over to :func:`naive_single_blocks` when the selection reaches past the double blocks. It re-runs the single blocks
by hand with ONE full attention over ``[text, image, concepts]`` through the shared ``to_q/k/v`` and ``norm_q/k`` and
an explicit boolean mask (text and image never see concepts; concepts see the image and/or the concepts according
to the mode, never the text), the modulation and the parallel attention/MLP update written out. No code is shared
with the library's processors.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F

from .common import (
    Layout,
    concept_attention,
    concept_scores,
    joint_qkv,
    layer_norm,
    modulate,
    rotate_rows,
)


#: ``(block index among the single blocks, stream)`` -> ``(shift, scale, gate)``, each ``[B, d]``; stream is
#: ``"tokens"`` (text and image) or ``"concepts"``.
Modulation = Callable[[int, str], tuple[torch.Tensor, torch.Tensor, torch.Tensor]]


def silu_rows(block: Any, conditioning: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``AdaLayerNormZeroSingle`` written out: ``block.norm.linear(silu(conditioning [B, d_t]))`` in three ``[B, d]``."""
    shift, scale, gate = block.norm.linear(F.silu(conditioning)).chunk(3, dim=1)
    return shift, scale, gate


def mlp_branch(block: Any, x: torch.Tensor) -> torch.Tensor:
    """The block's MLP branch on ``x [B, S, d]``: ``gelu_tanh(proj_mlp(x))``, or Ovis-Image's ``silu(gate)·h``."""
    projected = block.proj_mlp(x)
    if projected.shape[-1] == 2 * block.mlp_hidden_dim:  # Ovis-Image: [h, gate]
        hidden, gate = projected.split(block.mlp_hidden_dim, dim=-1)
        return F.silu(gate) * hidden
    return F.gelu(projected, approximate="tanh")


def naive_single_blocks(
    blocks: Any,
    text: torch.Tensor,
    hidden: torch.Tensor,
    concepts: torch.Tensor,
    modulation: Modulation,
    rope: Callable[[torch.Tensor], torch.Tensor] | None,
    allowed: torch.Tensor,
    layers: list[int],
    first_index: int,
    space: str,
    mode: str,
) -> list[torch.Tensor]:
    """Scores ``[B, C, I]`` of the selected single blocks (layer index ``first_index + k`` for block ``k``).

    Args:
        blocks: The single blocks (float64).
        text, hidden, concepts: The streams leaving the last double block, ``[B, T, d]``, ``[B, I, d]``, ``[B, C, d]``.
        modulation: Each block's ``(shift, scale, gate)`` of the tokens and of the concepts.
        rope: Rotation of the text + image rows ``[B, T + I, H, D]`` (concepts: identity), or None.
        allowed: The ``[S, S]`` (or ``[B, S, S]``) mask over ``[text, image, concepts]``.
        layers: The selected layer indices (double and single).
        first_index: Layer index of the first single block (the number of double blocks).
        space, mode: The score space and the concept-attention mode.
    """
    layout = Layout.text_first(text.shape[1], hidden.shape[1], concepts.shape[1])
    tokens = torch.cat([text, hidden], dim=1)  # [B, T + I, d]
    scores = []
    for offset, block in enumerate(blocks):
        index = first_index + offset
        if index > max(layers):
            break
        shift, scale, gate = modulation(offset, "tokens")
        c_shift, c_scale, c_gate = modulation(offset, "concepts")
        n_tok = modulate(layer_norm(tokens), shift, scale)
        n_con = modulate(layer_norm(concepts), c_shift, c_scale)
        query, key, value = joint_qkv(block.attn, [(n_tok, False), (n_con, False)])  # shared weights, [B, S, H, D]
        if rope is not None:
            query = rotate_rows(query, slice(0, layout.joint), rope)
            key = rotate_rows(key, slice(0, layout.joint), rope)
        output = concept_attention(query, key, value, allowed, layout, mode)  # [B, S, H·D]
        if index in layers:
            scores.append(concept_scores(space, query, key, value, output, layout))
        o_tok, o_con = output[:, : layout.joint], output[:, layout.concepts]
        tokens = tokens + gate[:, None] * block.proj_out(torch.cat([o_tok, mlp_branch(block, n_tok)], dim=2))
        concepts = concepts + c_gate[:, None] * block.proj_out(torch.cat([o_con, mlp_branch(block, n_con)], dim=2))
    return scores
