"""Fixtures of the web-app tests: the shipped toy model behind a service, free ports, and the requirement policy.

Requirement policy: the app's optional dependencies (Gradio; Playwright and Debian's ``chromium`` for the browser
test) must be present in CI, where a missing one FAILS the tests. CI runs ``.ci/run`` with ``CI=true`` set by the
runner; ``CONCEPTATTENTION_REQUIRE_APP_DEPS=1`` gives the same behaviour locally. Elsewhere (a developer machine
without the extra) the tests are skipped with the command that installs what is missing:
``pip install -e '.[app]' playwright`` and ``sudo bash scripts/install_browser.sh``.
"""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Iterator

import pytest
import torch

from conceptattention.app import MapService
from conceptattention.models import load_model


def dependencies_required() -> bool:
    """True in CI (``CI`` set to anything but ``false``/``0``) or with ``CONCEPTATTENTION_REQUIRE_APP_DEPS=1``."""
    ci = os.environ.get("CI", "").strip().lower()
    return ci not in ("", "0", "false", "no") or os.environ.get("CONCEPTATTENTION_REQUIRE_APP_DEPS") == "1"


def require(available: bool, what: str, how: str) -> None:
    """Fail (CI) or skip (elsewhere) the calling test when ``what`` is not available."""
    if available:
        return
    message = f"{what} is not installed; {how}"
    if dependencies_required():
        pytest.fail(f"{message} (required in CI)", pytrace=False)
    pytest.skip(message)


def require_module(name: str, how: str) -> None:
    """:func:`require` for an importable module."""
    require(importlib.util.find_spec(name) is not None, f"the Python package {name!r}", how)


@pytest.fixture(scope="session", autouse=True)
def gradio_cache(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """Keep Gradio's (and gradio_client's) file cache inside pytest's temporary folders, not in /tmp/gradio."""
    previous = os.environ.get("GRADIO_TEMP_DIR")
    os.environ["GRADIO_TEMP_DIR"] = str(tmp_path_factory.mktemp("gradio-cache"))
    yield
    if previous is None:
        os.environ.pop("GRADIO_TEMP_DIR", None)
    else:
        os.environ["GRADIO_TEMP_DIR"] = previous


@pytest.fixture(autouse=True)
def offline(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("GRADIO_ANALYTICS_ENABLED", "False")


@pytest.fixture(scope="session")
def toy_model():
    """The shipped ShapesWorld model (loaded once)."""
    torch.set_num_threads(1)
    return load_model()


@pytest.fixture
def service(toy_model, tmp_path) -> Iterator[MapService]:
    """A fresh service (own work folder) on the shared toy model."""
    yield MapService(toy_model, work_dir=tmp_path / "work")
