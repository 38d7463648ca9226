"""Drift guard: every concept processor names the diffusers code it depends on, fingerprinted on diffusers 0.42.1.

Every processor now runs diffusers' own processor through an ``AttentionView`` and depends on *where* that processor
passes the image tensors (its capture points: which modules it calls, in which order relative to QK-norm and RoPE);
a processor that re-implemented a stock body (``COPIES_STOCK``) would depend on the body itself. When the installed
diffusers changes any of these functions, the test fails and says which adapter to re-check.
"""

from __future__ import annotations

import diffusers
import pytest

from conceptattention.adapters import get_adapter, supported_models
from conceptattention.adapters.processor import (
    STOCK_SOURCES_VERSION,
    resolve_dotted,
    source_fingerprint,
    stock_source_drift,
)


def _adapters():
    rows = supported_models()
    from conceptattention.adapters import _BUILTIN_ADAPTERS, MIN_DIFFUSERS, _diffusers_release

    usable = [name for name in _BUILTIN_ADAPTERS if _diffusers_release() >= MIN_DIFFUSERS[name]]
    assert [row["transformer"] for row in rows] == usable  # every adapter usable on the installed diffusers
    return [(row["family"], get_adapter_by_name(row["transformer"])) for row in rows]


def get_adapter_by_name(transformer_name: str):
    from conceptattention.adapters import _builtin

    adapter = _builtin(transformer_name)
    assert adapter is not None
    return adapter


@pytest.mark.parametrize(("family", "adapter"), _adapters(), ids=[family for family, _ in _adapters()])
def test_stock_sources_unchanged(family, adapter):
    processor = adapter.processor_class
    assert processor.STOCK_SOURCES, f"{processor.__name__} names no diffusers source it depends on"
    drifted = stock_source_drift(processor)
    how = "re-implements" if processor.COPIES_STOCK else "takes its image tensors from"
    found = {path: source_fingerprint(resolve_dotted(path)) for path in drifted}
    assert not drifted, (
        f"diffusers {diffusers.__version__} changed {', '.join(drifted)}, which {processor.__name__} ({family}) {how} "
        f"(checked against diffusers {STOCK_SOURCES_VERSION}). Re-check {processor.__module__} against the new source, "
        f"then add its fingerprint to STOCK_SOURCES: {found}"
    )


@pytest.mark.parametrize(("family", "adapter"), _adapters(), ids=[family for family, _ in _adapters()])
def test_every_stock_processor_is_fingerprinted(family, adapter):
    """Each diffusers processor an adapter accepts (plain, fused, IP-Adapter) is covered by the fingerprints."""
    stock = adapter.stock_processor_class
    if stock is None:  # adapters that check the processors themselves subclass the one stock processor they take
        classes = tuple(base for base in adapter.processor_class.__mro__ if base.__module__.startswith("diffusers."))
    else:
        classes = stock if isinstance(stock, tuple) else (stock,)
    paths = {path for path, _ in adapter.processor_class.STOCK_SOURCES}
    assert classes
    for cls in classes:
        assert f"{cls.__module__}.{cls.__qualname__}.__call__" in paths, (family, cls.__name__)


def _single_block_adapters():
    return [(family, adapter) for family, adapter in _adapters() if getattr(adapter, "single_processor_class", None)]


@pytest.mark.parametrize(("family", "adapter"), _single_block_adapters(), ids=[f for f, _ in _single_block_adapters()])
def test_single_block_sources_unchanged(family, adapter):
    """The single-block processors of the single-stream extension (FLUX.1 and the families sharing its single
    blocks) name the stock processor, the single block's forward and its modulation, all unchanged."""
    processor = adapter.single_processor_class
    paths = [path for path, _ in processor.STOCK_SOURCES]
    stock = adapter.single_stock_processor_class
    assert f"{stock.__module__}.{stock.__qualname__}.__call__" in paths, family
    assert any(path.endswith("SingleTransformerBlock.forward") for path in paths), family
    drifted = stock_source_drift(processor)
    found = {path: source_fingerprint(resolve_dotted(path)) for path in drifted}
    assert not drifted, f"diffusers changed {drifted}, which {processor.__name__} ({family}) mirrors: {found}"


def test_fingerprint_ignores_comments_and_docstrings_but_not_code():
    base = _fingerprint_of_text("def f(x):\n    return x + 1\n")
    assert base == _fingerprint_of_text('def f(x):\n    """Docs."""\n    # a comment\n    return (x + 1)\n')
    assert base != _fingerprint_of_text("def f(x):\n    return x + 2\n")


def _fingerprint_of_text(text: str) -> str:
    import linecache
    import types

    filename = f"<fingerprint-{abs(hash(text))}>"
    linecache.cache[filename] = (len(text), None, text.splitlines(True), filename)
    namespace: dict = {}
    exec(compile(text, filename, "exec"), namespace)  # noqa: S102
    function = namespace["f"]
    assert isinstance(function, types.FunctionType)
    return source_fingerprint(function)


def test_resolve_dotted_reaches_module_functions():
    from diffusers.models.transformers import transformer_flux

    assert resolve_dotted("diffusers.models.transformers.transformer_flux._get_qkv_projections") is (
        transformer_flux._get_qkv_projections
    )


def test_get_adapter_unaffected():
    from conceptattention.testing import tiny_flux_transformer

    assert get_adapter(tiny_flux_transformer()).processor_class.STOCK_SOURCES


def test_drift_is_reported_for_a_changed_source():
    path = "diffusers.models.transformers.transformer_flux._get_qkv_projections"

    class Pinned:
        STOCK_SOURCES = ((path, "0" * 64),)

    class CheckedTwice:  # an older release's fingerprint and the installed one
        STOCK_SOURCES = ((path, ("0" * 64, source_fingerprint(resolve_dotted(path)))),)

    assert stock_source_drift(Pinned) == [path]
    assert stock_source_drift(CheckedTwice) == []
