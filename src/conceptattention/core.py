"""Model-independent math of ConceptAttention.

Helbling, Meral, Hoover, Yanardag, Chau, "ConceptAttention: Diffusion Transformers Learn Highly Interpretable
Features", ICML 2025, arXiv:2502.04320. This module implements, for one joint attention layer:

* the concept attention: ``o_c = softmax(q_c · [k_c; k_x]^T / sqrt(D)) · [v_c; v_x]``, computed for the
  C concept query rows only (never a second full attention over image tokens);
* the saliency scores (``S = o_c · o_x^T``, the "output" space) and the two baseline spaces (``q_x · k_c`` per
  head, ``v_x · v_c`` per head);
* the aggregation: softmax over concepts per (layer, step), then a streaming mean (or the mean of raw scores,
  then a softmax).

Nothing here knows about diffusers. Shapes use ``B`` batch, ``C`` concepts, ``I`` image tokens, ``H`` heads,
``D`` head dimension. Attention tensors use the (B, S, H, D) layout of diffusers' ``dispatch_attention_fn``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F

from .config import ConceptAttentionMode, NormalizationOrder, Space


AttentionFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


def sdpa_bshd(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
    """Scaled dot-product attention on (B, S, H, D) tensors (the diffusers dispatch layout).

    Args:
        query: ``[B, Q, H, D]``.
        key: ``[B, K, H, D]``.
        value: ``[B, K, H, D]``.

    Returns:
        ``[B, Q, H, D]``.

    Example:
        >>> q = k = v = torch.randn(1, 3, 2, 4)
        >>> sdpa_bshd(q, k, v).shape
        torch.Size([1, 3, 2, 4])
    """
    out = F.scaled_dot_product_attention(query.transpose(1, 2), key.transpose(1, 2), value.transpose(1, 2))  # [B, H, Q, D]
    return out.transpose(1, 2)  # [B, Q, H, D]


def concept_attention(
    concept_query: torch.Tensor,
    concept_key: torch.Tensor,
    concept_value: torch.Tensor,
    image_key: torch.Tensor,
    image_value: torch.Tensor,
    mode: ConceptAttentionMode = "both",
    attention_fn: AttentionFn = sdpa_bshd,
) -> torch.Tensor:
    """Attention of the C concept queries over the keys that ``mode`` allows (``concept_attention`` option).

    Only the concept rows are computed: the cost is ``C × (C + I)`` per head.

    Args:
        concept_query: ``[B, C, H, D]`` (after QK-norm and concept RoPE).
        concept_key: ``[B, C, H, D]``.
        concept_value: ``[B, C, H, D]``.
        image_key: ``[B, I, H, D]``, the very image keys of the joint attention (after QK-norm and RoPE).
        image_value: ``[B, I, H, D]``.
        mode: ``"both"`` keys ``[concepts; image]``; ``"cross"`` image only; ``"self"`` concepts only; ``"none"``
            returns the concept values (no attention).
        attention_fn: ``(q, k, v) -> out`` on (B, S, H, D) tensors, e.g. diffusers' ``dispatch_attention_fn``.

    Returns:
        ``o_c``: ``[B, C, H, D]``.

    Example:
        >>> cq = ck = cv = torch.randn(1, 2, 4, 8)
        >>> ik = iv = torch.randn(1, 16, 4, 8)
        >>> concept_attention(cq, ck, cv, ik, iv).shape
        torch.Size([1, 2, 4, 8])
    """
    if mode == "none":
        return concept_value
    if mode == "self":
        return attention_fn(concept_query, concept_key, concept_value)
    if mode == "cross":
        return attention_fn(concept_query, image_key, image_value)
    if mode == "both":
        key = torch.cat([concept_key, image_key], dim=1)  # [B, C + I, H, D]
        value = torch.cat([concept_value, image_value], dim=1)  # [B, C + I, H, D]
        return attention_fn(concept_query, key, value)
    raise ValueError(f"Unknown concept attention mode {mode!r}; expected 'both', 'cross', 'self' or 'none'.")


def concept_attention_packed(
    concept_query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    num_concepts: int,
    mode: ConceptAttentionMode = "both",
    attention_fn: AttentionFn = sdpa_bshd,
) -> torch.Tensor:
    """:func:`concept_attention` on keys and values already laid out as ``[image; concepts]``.

    Adapters that append the concept keys/values to the joint attention's own concatenation get the image and
    concept rows as one contiguous block, so no extra copy of the image keys is made.

    Args:
        concept_query: ``[B, C, H, D]``.
        key: ``[B, I + C, H, D]``: image keys (as used by the joint attention) followed by the concept keys.
        value: ``[B, I + C, H, D]``.
        num_concepts: ``C``.
        mode: ``"both"``, ``"cross"``, ``"self"`` or ``"none"`` (see :func:`concept_attention`).
        attention_fn: ``(q, k, v) -> out`` on (B, S, H, D) tensors.

    Returns:
        ``o_c``: ``[B, C, H, D]``.

    Example:
        >>> cq = torch.randn(1, 2, 4, 8)
        >>> kv = torch.randn(1, 18, 4, 8)
        >>> concept_attention_packed(cq, kv, kv, num_concepts=2).shape
        torch.Size([1, 2, 4, 8])
    """
    num_image = key.shape[1] - num_concepts
    if mode == "both":
        return attention_fn(concept_query, key, value)
    if mode == "cross":
        return attention_fn(concept_query, key[:, :num_image], value[:, :num_image])
    if mode == "self":
        return attention_fn(concept_query, key[:, num_image:], value[:, num_image:])
    if mode == "none":
        return value[:, num_image:]
    raise ValueError(f"Unknown concept attention mode {mode!r}; expected 'both', 'cross', 'self' or 'none'.")


def output_space_scores(concept_output: torch.Tensor, image_output: torch.Tensor) -> torch.Tensor:
    """Saliency logits in the attention-output space: raw dot products over ``d = H·D``.

    Args:
        concept_output: ``[B, C, d]``, concept attention outputs (heads concatenated, before the output projection).
        image_output: ``[B, I, d]``, image attention outputs of the same layer (before the output projection).

    Returns:
        ``[B, C, I]`` float32.

    Example:
        >>> output_space_scores(torch.ones(1, 2, 3), torch.ones(1, 5, 3)).shape
        torch.Size([1, 2, 5])
    """
    return torch.bmm(concept_output.float(), image_output.float().transpose(1, 2))  # [B, C, I]


def per_head_scores(image_side: torch.Tensor, concept_side: torch.Tensor, scale: float = 1.0) -> torch.Tensor:
    """Per-head dot products averaged over heads: ``mean_h(x_{i,h} · c_{c,h}) · scale``.

    Used for the cross-attention space (image queries · concept keys) and the value space (image values · concept
    values).

    Args:
        image_side: ``[B, I, H, D]``.
        concept_side: ``[B, C, H, D]``.
        scale: Multiplies the dot products (e.g. ``1/sqrt(D)``).

    Returns:
        ``[B, C, I]`` float32.

    Example:
        >>> per_head_scores(torch.ones(1, 5, 2, 3), torch.ones(1, 4, 2, 3)).shape
        torch.Size([1, 4, 5])
    """
    num_heads = image_side.shape[2]
    # mean over heads of per-head dot products == full dot product over H·D divided by H
    image_flat = image_side.flatten(2, 3).float()  # [B, I, H·D]
    concept_flat = concept_side.flatten(2, 3).float()  # [B, C, H·D]
    return torch.bmm(concept_flat, image_flat.transpose(1, 2)) * (scale / num_heads)  # [B, C, I]


def saliency_scores(
    space: Space,
    *,
    concept_output: torch.Tensor | None = None,
    image_output: torch.Tensor | None = None,
    image_query: torch.Tensor | None = None,
    concept_key: torch.Tensor | None = None,
    image_value: torch.Tensor | None = None,
    concept_value: torch.Tensor | None = None,
    scale_cross_attention: bool = True,
    per_head: bool = False,
) -> torch.Tensor:
    """Saliency logits of one layer in the requested space (the ``space`` option).

    Args:
        space: ``"output"`` needs ``concept_output [B, C, d]`` and ``image_output [B, I, d]``;
            ``"cross_attention"`` needs ``image_query [B, I, H, D]`` and ``concept_key [B, C, H, D]``;
            ``"value"`` needs ``image_value [B, I, H, D]`` and ``concept_value [B, C, H, D]``.
        scale_cross_attention: Multiply cross-attention scores by ``1/sqrt(D)`` as attention does.
        per_head: Per-head logits ``[B, C, H, I]`` whose mean over heads is the usual ``[B, C, I]``: output space
            ``H · (o_c,h · o_x,h)`` (head ``h``'s share of the dot product over ``d = H·D``, times ``H``; the number
            of heads is read from ``concept_key [B, C, H, D]``, which must be given), cross-attention space
            ``q_x,h · k_c,h`` (``/ sqrt(D)``), value space ``v_x,h · v_c,h``.

    Returns:
        ``[B, C, I]`` float32 (``[B, C, H, I]`` with ``per_head``).

    Example:
        >>> s = saliency_scores("output", concept_output=torch.ones(1, 2, 4), image_output=torch.ones(1, 3, 4))
        >>> s.shape
        torch.Size([1, 2, 3])
        >>> kw = dict(concept_output=torch.randn(1, 2, 8), image_output=torch.randn(1, 3, 8), concept_key=torch.randn(1, 2, 4, 2))
        >>> heads = saliency_scores("output", per_head=True, **kw)
        >>> heads.shape, torch.allclose(heads.mean(2), saliency_scores("output", **kw), atol=1e-5)
        (torch.Size([1, 2, 4, 3]), True)
    """
    if per_head:
        return _per_head_saliency(space, concept_output, image_output, image_query, concept_key, image_value, concept_value, scale_cross_attention)
    if space == "output":
        assert concept_output is not None and image_output is not None
        return output_space_scores(concept_output, image_output)
    if space == "cross_attention":
        assert image_query is not None and concept_key is not None
        scale = 1.0 / math.sqrt(image_query.shape[-1]) if scale_cross_attention else 1.0
        return per_head_scores(image_query, concept_key, scale)
    if space == "value":
        assert image_value is not None and concept_value is not None
        return per_head_scores(image_value, concept_value)
    raise ValueError(f"Unknown space {space!r}; expected 'output', 'cross_attention' or 'value'.")


def _per_head_saliency(
    space: Space,
    concept_output: torch.Tensor | None,
    image_output: torch.Tensor | None,
    image_query: torch.Tensor | None,
    concept_key: torch.Tensor | None,
    image_value: torch.Tensor | None,
    concept_value: torch.Tensor | None,
    scale_cross_attention: bool,
) -> torch.Tensor:
    """``saliency_scores(..., per_head=True)``: ``[B, C, H, I]``."""
    if space == "output":
        assert concept_output is not None and image_output is not None and concept_key is not None
        num_heads = concept_key.shape[2]
        concept_side = concept_output.float().unflatten(-1, (num_heads, -1)) * num_heads  # [B, C, H, D], times H
        image_side = image_output.float().unflatten(-1, (num_heads, -1))  # [B, I, H, D]
    elif space == "cross_attention":
        assert image_query is not None and concept_key is not None
        scale = 1.0 / math.sqrt(image_query.shape[-1]) if scale_cross_attention else 1.0
        concept_side, image_side = concept_key.float() * scale, image_query.float()  # [B, C, H, D], [B, I, H, D]
    elif space == "value":
        assert image_value is not None and concept_value is not None
        concept_side, image_side = concept_value.float(), image_value.float()  # [B, C, H, D], [B, I, H, D]
    else:
        raise ValueError(f"Unknown space {space!r}; expected 'output', 'cross_attention' or 'value'.")
    return torch.einsum("bchd,bihd->bchi", concept_side, image_side)  # [B, C, H, I]


def select_heads(head_scores: torch.Tensor, heads: tuple[int, ...] | None) -> torch.Tensor:
    """Mean of the selected heads' scores: ``[B, C, H, I]`` -> ``[B, C, I]`` (all heads when ``heads`` is None).

    Raises:
        ValueError: a head index outside ``0..H-1``.

    Example:
        >>> select_heads(torch.arange(4.0).reshape(1, 1, 4, 1), (1, 3)).flatten().tolist()
        [2.0]
    """
    num_heads = head_scores.shape[2]
    if heads is None:
        return head_scores.mean(2)
    if max(heads) >= num_heads:
        raise ValueError(f"heads={list(heads)} selects a head the model does not have (it has {num_heads}: 0..{num_heads - 1}).")
    return head_scores[:, :, list(heads)].mean(2)  # [B, C, I]


def word_pooling_matrix(word_of_token: torch.Tensor, num_words: int) -> torch.Tensor:
    """``[W, T']`` matrix whose row ``w`` averages the scores of word ``w``'s tokens (``1 / n_w`` on them).

    Args:
        word_of_token: ``[T']`` long: the word index of each kept text token.
        num_words: ``W``.

    Example:
        >>> word_pooling_matrix(torch.tensor([0, 0, 1]), 2).tolist()
        [[0.5, 0.5, 0.0], [0.0, 0.0, 1.0]]
    """
    one_hot = F.one_hot(word_of_token, num_words).T.float()  # [W, T']
    return one_hot / one_hot.sum(dim=1, keepdim=True)


def pool_word_scores(token_scores: torch.Tensor, pooling: torch.Tensor) -> torch.Tensor:
    """Scores per label: each label's mean token score, on axis 1: ``[B, T', ...]`` -> ``[B, W, ...]``.

    Applied to the raw scores (``[B, T', I]``, or per head ``[B, T', H, I]``), before any softmax over concepts.

    Example:
        >>> pool_word_scores(torch.tensor([[[1.0], [3.0], [5.0]]]), word_pooling_matrix(torch.tensor([0, 0, 1]), 2))
        tensor([[[2.],
                 [5.]]])
    """
    pooled = torch.tensordot(pooling.to(token_scores), token_scores, dims=([1], [1]))  # [W, B, ...]
    return pooled.movedim(0, 1)  # [B, W, ...]


class ScoreAccumulator:
    """Streaming mean of per-(layer, step) saliency scores, kept on the scores' device.

    With ``softmax`` and ``order="per_layer"`` (the paper), each ``[B, C, I]`` score tensor is turned into
    probabilities over concepts before it is averaged; with ``order="after_mean"`` the raw scores are averaged and
    the softmax is applied at the end. The mean raw scores ("logits") are always kept too.

    Args:
        softmax: Softmax over the concept axis.
        temperature: Scores are divided by it before the softmax.
        order: ``"per_layer"`` or ``"after_mean"``.
        keep_per_step: Also keep every added tensor (moved to the CPU) with its ``(step, layer)`` key.
        reduce_batch: Average over the batch axis too (each row counts as one more sample, e.g. the noise samples
            of the real-image path); the result then has batch size 1.

    Example:
        >>> acc = ScoreAccumulator(softmax=True)
        >>> acc.add(torch.zeros(1, 2, 3), step=0, layer=0)
        >>> maps, logits = acc.result()
        >>> maps[0, :, 0].tolist()
        [0.5, 0.5]
    """

    def __init__(
        self,
        softmax: bool = True,
        temperature: float = 1.0,
        order: NormalizationOrder = "per_layer",
        keep_per_step: bool = False,
        reduce_batch: bool = False,
    ) -> None:
        self.softmax = softmax
        self.reduce_batch = reduce_batch
        self.temperature = float(temperature)
        self.order = order
        self.keep_per_step = keep_per_step
        self.logit_sum: torch.Tensor | None = None  # [B, C, I] float32
        self.probability_sum: torch.Tensor | None = None  # [B, C, I] float32
        self.count = 0
        self.per_step: dict[tuple[int, int], torch.Tensor] = {}

    def add(self, scores: torch.Tensor, step: int, layer: int) -> None:
        """Fold one layer's scores ``[B, C, I]`` into the running sums."""
        self.add_layers(scores.unsqueeze(0), step, (layer,))  # [B, C, I] -> [1, B, C, I]

    def add_layers(self, scores: torch.Tensor, step: int, layers: Sequence[int]) -> None:
        """Fold the scores of several layers of one step, ``[L, B, C, I]``, into the running sums at once (one
        softmax and one sum for all of them: a few kernels per transformer call instead of a few per layer).

        Example:
            >>> acc = ScoreAccumulator()
            >>> acc.add_layers(torch.zeros(2, 1, 2, 3), step=0, layers=(3, 4))
            >>> acc.count, acc.result()[0][0, :, 0].tolist()
            (2, [0.5, 0.5])
        """
        scores = scores.float()
        if self.keep_per_step:
            for layer, layer_scores in zip(layers, scores, strict=True):
                self.per_step[(step, layer)] = layer_scores.detach().cpu()
        per_layer_softmax = self.softmax and self.order == "per_layer"
        probabilities = torch.softmax(self._tempered(scores), dim=2) if per_layer_softmax else None  # [L, B, C, I]
        summed_axes = (0, 1) if self.reduce_batch else (0,)  # the layers (and, with reduce_batch, the rows)
        weight = scores.shape[0] * (scores.shape[1] if self.reduce_batch else 1)
        scores = scores.sum(summed_axes, keepdim=self.reduce_batch)  # [B, C, I], or [1, C, I]
        if probabilities is not None:
            probabilities = probabilities.sum(summed_axes, keepdim=self.reduce_batch)  # like scores
        if self.reduce_batch:
            scores, probabilities = scores[0], probabilities[0] if probabilities is not None else None  # [1, C, I]
        if self.logit_sum is not None and self.logit_sum.shape != scores.shape:
            raise ValueError(
                f"Scores of shape {tuple(scores.shape)} cannot be averaged with earlier scores of shape "
                f"{tuple(self.logit_sum.shape)}: batch size, concepts or image size changed within one run. "
                "Use a new ConceptAttention block (or call .reset()) for each generation."
            )
        if self.logit_sum is None:
            self.logit_sum = scores
        else:
            self.logit_sum.add_(scores)
        if probabilities is not None:
            if self.probability_sum is None:
                self.probability_sum = probabilities
            else:
                self.probability_sum.add_(probabilities)
        self.count += weight

    def _tempered(self, scores: torch.Tensor) -> torch.Tensor:
        """``scores / temperature`` (no division, so no kernel, at temperature 1)."""
        return scores if self.temperature == 1.0 else scores / self.temperature

    def result(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The aggregated maps and mean logits, both ``[B, C, I]`` float32.

        Raises:
            RuntimeError: if nothing was added.
        """
        if self.count == 0 or self.logit_sum is None:
            raise RuntimeError("No scores were recorded.")
        logits = self.logit_sum / self.count
        if not self.softmax:
            return logits, logits
        if self.order == "per_layer":
            assert self.probability_sum is not None
            return self.probability_sum / self.count, logits
        return torch.softmax(self._tempered(logits), dim=1), logits
