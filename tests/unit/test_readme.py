"""The README stays true: its set-up commands and its table of supported models (generated from the registry)."""

from __future__ import annotations

import importlib.util
from pathlib import Path


ROOT = Path(__file__).resolve().parents[2]


def load_table_script():
    spec = importlib.util.spec_from_file_location("supported_models_table", ROOT / "scripts" / "supported_models_table.py")
    module = importlib.util.module_from_spec(spec)
    assert spec.loader is not None
    spec.loader.exec_module(module)
    return module


def test_readme_table_is_generated_from_the_registry():
    readme = (ROOT / "README.md").read_text()
    start = readme.index("<!-- supported-models:start")
    start = readme.index("\n", start) + 1
    end = readme.index("<!-- supported-models:end -->")
    assert readme[start:end].strip() == load_table_script().table().strip()


def test_readme_opens_with_the_two_commands():
    lines = (ROOT / "README.md").read_text().splitlines()[:8]
    assert any(line.startswith("make demo") for line in lines)
    assert any(line.startswith("make test") for line in lines)
    makefile = (ROOT / "Makefile").read_text()
    assert "\ndemo:" in makefile and "\ntest:" in makefile
    assert "make test" in (ROOT / ".ci" / "run").read_text()


def test_every_builtin_adapter_module_imports():
    from conceptattention.adapters import _BUILTIN_ADAPTERS, supported_models

    assert len(supported_models()) == len(_BUILTIN_ADAPTERS)
