"""Fixtures shared by several test folders."""

from __future__ import annotations

import socket
from collections.abc import Iterator

import pytest
import torch
from torch.utils._python_dispatch import _get_current_dispatch_mode_stack, _pop_mode


@pytest.fixture(autouse=True)
def no_leaked_dispatch_mode() -> Iterator[None]:
    """Fail the test that leaves a ``TorchDispatchMode`` on the stack (e.g. entered in a forward pre-hook whose
    forward hook never ran because the call raised): a leaked mode slows every later test and silently stops
    ``torch.compile`` (every later compile counted 0 graphs). The stack is emptied for the next test either way."""
    yield
    leaked = _get_current_dispatch_mode_stack()
    while _get_current_dispatch_mode_stack():
        _pop_mode()
    assert not leaked, f"the test left dispatch mode(s) on the stack: {[type(mode).__name__ for mode in leaked]}"


@pytest.fixture(scope="module")
def single_thread() -> Iterator[None]:
    """Run a module's tests on one torch thread, restored afterwards. Tiny models run 10-20x faster on one thread when
    the machine's two cores are shared (measured: a tiny Chroma forward 0.5 s with 2 threads under load, 0.03 s
    with 1)."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def free_port() -> int:
    """A TCP port that was free on 127.0.0.1 a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]
