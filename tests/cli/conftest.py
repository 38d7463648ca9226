"""Shared fixtures of the command-line tests: the CLI runs offline, on a tiny FLUX pipeline saved to a folder."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from conceptattention.testing import tiny_flux_pipeline


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny 3-block FluxPipeline saved with ``save_pretrained`` (safetensors), loaded back offline by the CLI."""
    torch.set_num_threads(1)
    folder = tmp_path_factory.mktemp("models") / "tiny-flux"
    tiny_flux_pipeline(num_layers=3).save_pretrained(folder)
    return folder


@pytest.fixture(autouse=True)
def offline(monkeypatch: pytest.MonkeyPatch) -> None:
    """No command reaches the Hub."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
