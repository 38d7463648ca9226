"""The README stays true: its set-up commands and its table of supported models (generated from the registry)."""

from __future__ import annotations

from ..script_modules import ROOT, load_script


def load_table_script():
    return load_script("supported_models_table")


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
