"""Shared fixtures of the command-line tests: the CLI runs offline, on a tiny FLUX pipeline saved to a folder."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

from conceptattention.testing import tiny_flux_pipeline

from ..conftest import free_port


def save_tiny_flux(tmp_path_factory: pytest.TempPathFactory, num_layers: int) -> Path:
    """A tiny FluxPipeline of ``num_layers`` blocks saved with ``save_pretrained`` (safetensors) to a new folder, for
    the CLI to load back offline; torch runs on one thread from here on."""
    torch.set_num_threads(1)
    folder = tmp_path_factory.mktemp("models") / "tiny-flux"
    tiny_flux_pipeline(num_layers=num_layers).save_pretrained(folder)
    return folder


def two_process_launch(module: str) -> list[str]:
    """The ``accelerate launch`` command line that runs ``python -m <module>`` as two CPU processes on this machine,
    on a free local port (the module's own arguments go after it)."""
    port = free_port()
    launcher = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2"]
    launcher += ["--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no"]
    return [*launcher, "--main_process_port", str(port), "-m", module]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny 3-block FluxPipeline saved to a folder (:func:`save_tiny_flux`)."""
    return save_tiny_flux(tmp_path_factory, num_layers=3)


@pytest.fixture(autouse=True)
def offline(monkeypatch: pytest.MonkeyPatch) -> None:
    """No command reaches the Hub."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
