"""Drift guard for the zoo adapters, beyond ``test_stock_drift.py`` (which checks every built-in adapter's
``STOCK_SOURCES`` fingerprints against the installed diffusers): each zoo concept processor names diffusers code of its
own, runs the stock processor untouched (no copied body), and its fingerprints cover the stock processor's ``__call__``."""

from __future__ import annotations

import pytest

from conceptattention.adapters import MIN_DIFFUSERS, _builtin, _diffusers_release
from conceptattention.adapters.processor import stock_source_drift


ZOO = {
    "bria": "BriaTransformer2DModel",
    "bria_fibo": "BriaFiboTransformer2DModel",
    "longcat_image": "LongCatImageTransformer2DModel",
    "ovis_image": "OvisImageTransformer2DModel",
    "hidream_image": "HiDreamImageTransformer2DModel",
    "hunyuan_image": "HunyuanImageTransformer2DModel",
    "joyimage": "JoyImageEditTransformer3DModel",
    "joyimage_edit_plus": "JoyImageEditPlusTransformer3DModel",
    "hunyuan_video15": "HunyuanVideo15Transformer3DModel",
    "cogview4": "CogView4Transformer2DModel",
    "mochi": "MochiTransformer3DModel",
    "z_image": "ZImageTransformer2DModel",
    "krea2": "Krea2Transformer2DModel",
}
USABLE = sorted(family for family, name in ZOO.items() if _diffusers_release() >= MIN_DIFFUSERS[name])


@pytest.mark.parametrize("family", USABLE)
def test_stock_sources_unchanged_and_cover_the_stock_processor(family):
    adapter = _builtin(ZOO[family])
    assert adapter is not None and adapter.name == family
    processor = adapter.processor_class
    assert processor.__dict__.get("STOCK_SOURCES"), f"{processor.__name__} names no diffusers source of its own"
    assert processor.COPIES_STOCK is False
    assert not stock_source_drift(processor), f"re-check {processor.__module__} against the installed diffusers"
    covered = {path for path, _ in processor.STOCK_SOURCES}
    stock = adapter.stock_processor_class
    for cls in stock if isinstance(stock, tuple) else (stock,):
        assert f"{cls.__module__}.{cls.__qualname__}.__call__" in covered
