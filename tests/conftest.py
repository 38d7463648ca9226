"""Fixtures shared by several test folders."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch


@pytest.fixture(scope="module")
def single_thread() -> Iterator[None]:
    """Run a module's tests on one torch thread, restored afterwards. Tiny models run 10-20x faster on one thread when
    the machine's two cores are shared (measured: a tiny Chroma forward 0.5 s with 2 threads under load, 0.03 s
    with 1)."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)
