"""The ``conceptattention.testing`` package: one builder module per adapter module, every public builder re-exported,
and pytest needed only by the battery (never by the library or the CLI)."""

from __future__ import annotations

import importlib
import os
import pkgutil
import subprocess
import sys
from pathlib import Path

import conceptattention.adapters
import conceptattention.testing


SRC = Path(__file__).resolve().parents[2] / "src"
SHARED_ADAPTER_MODULES = {"base", "processor", "real_images", "guidance", "flux_single", "attention_inputs", "qk_norm"}  # shared by families: no builder


def run_without_pytest(code: str) -> subprocess.CompletedProcess:
    """Run ``code`` in a fresh Python in which ``import pytest`` fails, as in an install without the test extras."""
    probe = f"import sys\nsys.modules['pytest'] = None\n{code}"
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(SRC), os.environ.get("PYTHONPATH", "")]))
    return subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, env=env, timeout=300)


def test_every_adapter_module_has_a_builder_module_of_the_same_name():
    adapters = {info.name for info in pkgutil.iter_modules(conceptattention.adapters.__path__)}
    builders = {info.name for info in pkgutil.iter_modules(conceptattention.testing.__path__)}
    assert adapters - SHARED_ADAPTER_MODULES <= builders, sorted(adapters - SHARED_ADAPTER_MODULES - builders)


def test_every_public_builder_is_re_exported():
    for info in pkgutil.iter_modules(conceptattention.testing.__path__):
        if info.name in ("battery", "zoo_battery", "flux_like_battery", "references"):
            continue  # test helpers (they import pytest), imported by name
        module = importlib.import_module(f"conceptattention.testing.{info.name}")
        for name in (name for name in vars(module) if name.startswith("tiny_")):
            assert getattr(conceptattention.testing, name) is getattr(module, name), (info.name, name)
            assert name in conceptattention.testing.__all__


def test_library_cli_and_builders_import_without_pytest_the_battery_names_it():
    result = run_without_pytest(
        "import conceptattention, conceptattention.cli.main, conceptattention.testing\n"
        "from conceptattention.testing import tiny_flux_pipeline\n"
        "import conceptattention.testing.references.flux\n"
        "try:\n"
        "    import conceptattention.testing.battery\n"
        "except ModuleNotFoundError as error:\n"
        "    print('battery:', error.name)\n"
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "battery: pytest"
