"""Shared fixtures of the adapter tests (proposed as tests/adapters/conftest.py)."""

from __future__ import annotations

import pytest
import torch


# the shared battery lives in the package (for adapter authors); rewrite its asserts as in a test module, so that a
# failing check shows the values it compared
pytest.register_assert_rewrite(
    "conceptattention.testing.battery", "conceptattention.testing.zoo_battery", "conceptattention.testing.flux_like_battery"
)


@pytest.fixture(scope="module", autouse=True)
def single_thread():
    """Tiny models run 10-20x faster on one thread when the machine's two cores are shared (measured: a tiny Chroma
    forward 0.5 s with 2 threads under load, 0.03 s with 1)."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)
