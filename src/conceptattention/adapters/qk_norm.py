"""QK-norm of the concept queries and keys in one pass: diffusers' ``RMSNorm`` computes each with eight element-wise
kernels; the concept branch normalises its (few) query and key rows together, with the same operations in the same
order and dtypes, so the result is the two modules' outputs bit for bit with fewer kernel launches (SD3.5 and
Qwen-Image: 16 -> 10 per block, docs/benchmarks.md). FLUX.1 and its clones use ``torch.nn.RMSNorm``
(``F.rms_norm``, which PyTorch runs as one fused kernel on CUDA): their modules run as they are.

Only exact ``diffusers.models.normalization.RMSNorm`` pairs with the same ``eps``, weights of one dtype and device
(or no weights) and no bias are fused; anything else (LayerNorm, subclasses, Ascend NPU kernels, ``None``) runs the
modules themselves.
"""

from __future__ import annotations

import torch
from torch import nn


#: The diffusers code the fused pass mirrors (a ``STOCK_SOURCES`` entry of the processors that use it): diffusers
#: 0.41.0-0.42.1, and 0.38.0-0.40.0 (re-checked: only the Ascend NPU branch differs).
RMS_NORM_SOURCE = "diffusers.models.normalization.RMSNorm.forward"
RMS_NORM_FINGERPRINTS = (
    "f678ce6bd2e653c22ddb363d0904be3e1896fc7fdcaca70ecba7d0a00ebba4b6",
    "9726cf5792dcf0a0e2f255790235fe6ebdd88891db1eacf5849d5d58b9545805",
)


def _fusable(norm_q: nn.Module | None, norm_k: nn.Module | None) -> bool:
    from diffusers.models.normalization import RMSNorm
    from diffusers.utils import is_torch_npu_available

    if type(norm_q) is not RMSNorm or type(norm_k) is not RMSNorm:
        return False
    if norm_q.eps != norm_k.eps or norm_q.bias is not None or norm_k.bias is not None:
        return False
    weights = (norm_q.weight, norm_k.weight)
    if any(weight is None for weight in weights):
        return all(weight is None for weight in weights)
    if norm_q.weight.dtype != norm_k.weight.dtype or norm_q.weight.device != norm_k.weight.device:
        return False
    return not is_torch_npu_available()


def paired_rms_norm(
    norm_q: nn.Module | None, norm_k: nn.Module | None, query: torch.Tensor, key: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """``norm_q(query)``, ``norm_k(key)`` (each skipped where the module is None), computed in one pass when both
    are plain diffusers ``RMSNorm`` modules of the same kind.

    Args:
        norm_q, norm_k: The attention's QK-norm modules for the concept rows (e.g. ``norm_added_q``/``norm_added_k``).
        query, key: ``[B, C, H, D]`` each, same shape and dtype.

    Returns:
        The normalised query and key ``[B, C, H, D]`` (views of one buffer when fused).

    Example:
        >>> from diffusers.models.normalization import RMSNorm
        >>> norm_q, norm_k = RMSNorm(8, eps=1e-6), RMSNorm(8, eps=1e-6)
        >>> with torch.no_grad():
        ...     _ = norm_k.weight.mul_(2)
        >>> q, k = torch.randn(1, 3, 2, 8), torch.randn(1, 3, 2, 8)
        >>> fused_q, fused_k = paired_rms_norm(norm_q, norm_k, q, k)
        >>> torch.equal(fused_q, norm_q(q)), torch.equal(fused_k, norm_k(k))
        (True, True)
    """
    if query.shape != key.shape or query.dtype != key.dtype or not _fusable(norm_q, norm_k):
        return (
            query if norm_q is None else norm_q(query),
            key if norm_k is None else norm_k(key),
        )
    assert norm_q is not None and norm_k is not None
    # the operations of diffusers' RMSNorm.forward (non-NPU branch), on the query and key rows stacked
    hidden_states = torch.stack([query, key], dim=-3)  # [B, C, H, D] x 2 -> [B, C, 2, H, D]
    input_dtype = hidden_states.dtype
    variance = hidden_states.to(torch.float32).pow(2).mean(-1, keepdim=True)  # [B, C, 2, H, 1]
    hidden_states = hidden_states * torch.rsqrt(variance + norm_q.eps)
    if norm_q.weight is not None:
        weight = torch.stack([norm_q.weight, norm_k.weight]).unsqueeze(1)  # [D] x 2 -> [2, 1, D]
        if weight.dtype in (torch.float16, torch.bfloat16):
            hidden_states = hidden_states.to(weight.dtype)
        hidden_states = hidden_states * weight
    else:
        hidden_states = hidden_states.to(input_dtype)
    return hidden_states.select(-3, 0), hidden_states.select(-3, 1)  # [B, C, H, D] each
