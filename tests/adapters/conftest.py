"""Shared fixtures of the adapter tests (proposed as tests/adapters/conftest.py)."""

from __future__ import annotations

import pytest


# the shared battery lives in the package (for adapter authors); rewrite its asserts as in a test module, so that a
# failing check shows the values it compared
pytest.register_assert_rewrite(
    "conceptattention.testing.battery", "conceptattention.testing.zoo_battery", "conceptattention.testing.flux_like_battery"
)


@pytest.fixture(scope="module", autouse=True)
def one_thread(single_thread: None) -> None:
    """Every module here runs on one thread (``single_thread``, tests/conftest.py)."""
