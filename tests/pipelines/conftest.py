"""Shared fixtures of the pipeline-surface tests."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="module", autouse=True)
def one_thread(single_thread: None) -> None:
    """Every module here runs on one thread (``single_thread``, tests/conftest.py)."""
