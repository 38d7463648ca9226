"""The concept QK-norm in one pass (adapters/qk_norm.py) equals diffusers' two RMSNorm modules bit for bit, in every
dtype the models run in, and falls back to the modules where it cannot fuse."""

from __future__ import annotations

import pytest
import torch
from diffusers.models.normalization import RMSNorm
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode

from conceptattention.adapters.qk_norm import paired_rms_norm


def _pair(dtype, affine=True, eps=(1e-6, 1e-6)):
    generator = torch.Generator().manual_seed(0)
    norm_q, norm_k = RMSNorm(16, eps=eps[0], elementwise_affine=affine), RMSNorm(16, eps=eps[1], elementwise_affine=affine)
    if affine:
        with torch.no_grad():
            norm_q.weight.copy_(torch.randn(16, generator=generator))
            norm_k.weight.copy_(torch.randn(16, generator=generator))
    return norm_q.to(dtype), norm_k.to(dtype)


def _rows(dtype):
    generator = torch.Generator().manual_seed(1)
    return (torch.randn(2, 5, 3, 16, generator=generator) * 4).to(dtype), torch.randn(2, 5, 3, 16, generator=generator).to(dtype)


class _CountOps(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.count = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.count += 1
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("affine", [True, False], ids=["weights", "no-weights"])
def test_equals_the_modules_bit_for_bit(dtype, affine):
    norm_q, norm_k = _pair(dtype, affine)
    query, key = _rows(dtype)
    with torch.no_grad():
        fused_q, fused_k = paired_rms_norm(norm_q, norm_k, query, key)
        assert torch.equal(fused_q, norm_q(query)) and torch.equal(fused_k, norm_k(key))
        assert fused_q.dtype == norm_q(query).dtype


def test_fewer_ops_than_the_two_modules():
    norm_q, norm_k = _pair(torch.bfloat16)
    query, key = _rows(torch.bfloat16)
    with torch.no_grad():
        with _CountOps() as fused:
            paired_rms_norm(norm_q, norm_k, query, key)
        with _CountOps() as modules:
            norm_q(query), norm_k(key)
    assert fused.count < modules.count


@pytest.mark.parametrize(
    "case",
    ["different-eps", "layer-norm", "none", "subclass", "weight-dtypes"],
)
def test_falls_back_to_the_modules(case):
    norm_q, norm_k = _pair(torch.float32)
    query, key = _rows(torch.float32)
    if case == "different-eps":
        norm_q, norm_k = _pair(torch.float32, eps=(1e-6, 1e-5))
    elif case == "layer-norm":
        norm_k = nn.LayerNorm(16)
    elif case == "none":
        norm_k = None
    elif case == "subclass":
        norm_q = type("MyRMSNorm", (RMSNorm,), {"forward": lambda self, x: x * 2})(16, eps=1e-6)
    else:
        norm_k = norm_k.to(torch.float64)
        key = key.double()
    with torch.no_grad():
        fused_q, fused_k = paired_rms_norm(norm_q, norm_k, query, key)
        assert torch.equal(fused_q, norm_q(query) if norm_q is not None else query)
        assert torch.equal(fused_k, norm_k(key) if norm_k is not None else key)
