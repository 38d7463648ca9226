"""Drift guard for the zoo adapters: each concept processor names the diffusers code it runs untouched through its
attention view (``STOCK_SOURCES``, fingerprinted on diffusers 0.42.1); when the installed diffusers changes any of it,
this fails and names the adapter to re-check. The fingerprint is the capture issue's (SHA-256 of the function's syntax
tree without docstrings), so these entries also satisfy its ``tests/adapters/test_stock_drift.py`` once merged."""

from __future__ import annotations

import ast
import hashlib
import importlib
import inspect
import textwrap
from typing import Any

import diffusers
import pytest

from conceptattention.adapters import _builtin


ZOO = {
    "bria": "BriaTransformer2DModel",
    "longcat_image": "LongCatImageTransformer2DModel",
    "ovis_image": "OvisImageTransformer2DModel",
    "hunyuan_image": "HunyuanImageTransformer2DModel",
    "hunyuan_video15": "HunyuanVideo15Transformer3DModel",
    "cogview4": "CogView4Transformer2DModel",
    "mochi": "MochiTransformer3DModel",
    "z_image": "ZImageTransformer2DModel",
    "krea2": "Krea2Transformer2DModel",
}


def _resolve(path: str) -> Any:
    parts = path.split(".")
    for split in range(len(parts) - 1, 0, -1):
        try:
            target: Any = importlib.import_module(".".join(parts[:split]))
        except ImportError:
            continue
        for name in parts[split:]:
            target = getattr(target, name)
        return target
    raise ImportError(path)


def _fingerprint(obj: Any) -> str:
    tree = ast.parse(textwrap.dedent(inspect.getsource(obj)))
    for node in ast.walk(tree):
        body = getattr(node, "body", None)
        if (
            isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef | ast.Module)
            and body
            and isinstance(body[0], ast.Expr)
            and isinstance(body[0].value, ast.Constant)
            and isinstance(body[0].value.value, str)
        ):
            node.body = body[1:] or [ast.Pass()]
    return hashlib.sha256(ast.dump(tree, include_attributes=False).encode()).hexdigest()


@pytest.mark.parametrize("family", sorted(ZOO))
def test_stock_sources_unchanged_and_cover_the_stock_processor(family):
    adapter = _builtin(ZOO[family])
    assert adapter is not None and adapter.name == family
    processor = adapter.processor_class
    assert processor.__dict__.get("STOCK_SOURCES"), f"{processor.__name__} names no diffusers source of its own"
    assert processor.COPIES_STOCK is False
    drifted = [path for path, digest in processor.STOCK_SOURCES if _fingerprint(_resolve(path)) != digest]
    assert not drifted, (
        f"diffusers {diffusers.__version__} changed {', '.join(drifted)}, which {processor.__name__} takes its image "
        f"tensors from (checked against diffusers 0.42.1): re-check {processor.__module__}, then update STOCK_SOURCES."
    )
    stock = adapter.stock_processor_class
    for cls in stock if isinstance(stock, tuple) else (stock,):
        assert f"{cls.__module__}.{cls.__qualname__}.__call__" in {path for path, _ in processor.STOCK_SOURCES}


def test_a_changed_source_is_detected():
    assert _fingerprint(_resolve("torch.nn.Linear.forward")) != "0" * 64
    assert _fingerprint(_resolve("torch.nn.Linear.forward")) != _fingerprint(_resolve("torch.nn.Conv2d.forward"))
