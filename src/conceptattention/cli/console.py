"""What the command line prints besides its own output: library noise silenced, warnings as one line each.

Inside :func:`quiet_console` (every subcommand runs in it):

- diffusers' and transformers' loading bars ("Loading pipeline components...", "Loading weights") are off, through
  the libraries' own switches; the denoising bar (one tqdm bar per run) stays;
- known messages that are wrong or useless for this program are dropped by logging filters on the libraries'
  loggers: transformers' "``CLIPImageProcessor`` requires torchvision" (the image processors of the pipelines are
  not used), diffusers' "``float16`` ... cannot run with ``cpu`` device ... running them will fail" (it runs) and
  its advice to install accelerate on every load (a plain install has none; see :data:`SILENCED_MESSAGES`);
- Python warnings print as ``conceptattention: warning: <message>``, without the file name and source line.

Everything is restored on exit, so calling :func:`conceptattention.cli.main.main` in a process leaves no trace.
"""

from __future__ import annotations

import contextlib
import importlib
import logging
import warnings
from collections.abc import Iterator
from typing import Any


#: (logger name, text in the message) of the library messages the command line drops.
SILENCED_MESSAGES: tuple[tuple[str, str], ...] = (
    ("transformers.utils.import_utils", "requires torchvision (not installed); falling back to"),
    ("diffusers.pipelines.pipeline_utils", "cannot run with `cpu` device"),
    ("diffusers.modular_pipelines.modular_pipeline", "cannot run with `cpu` device"),
    # without accelerate (a plain install: it comes with the eval extra) every load advises installing it
    ("diffusers.pipelines.pipeline_utils", "Cannot initialize model with low cpu memory usage"),
    ("diffusers.models.modeling_utils", "Cannot initialize model with low cpu memory usage"),
)

#: Start of the Python warnings the command line drops: diffusers' deprecation of the ``torch_dtype`` argument that
#: loading a local folder passes (a note for the program's authors, not for its users).
SILENCED_WARNINGS: tuple[str, ...] = ("`torch_dtype` is deprecated",)


class _DropMessages(logging.Filter):
    """Drops records whose message contains ``text``."""

    def __init__(self, text: str) -> None:
        super().__init__()
        self.text = text

    def filter(self, record: logging.LogRecord) -> bool:
        return self.text not in record.getMessage()


def _format_warning(
    message: Warning | str, category: type[Warning], filename: str, lineno: int, line: str | None = None
) -> str:
    """``warnings.formatwarning`` of the command line: one line, no file name or source line.

    (Replacing the format rather than ``warnings.showwarning`` keeps ``warnings.catch_warnings(record=True)``, and
    so ``pytest.warns``, working around a command.)
    """
    return f"conceptattention: warning: {message}\n"


def _disable_library_progress_bars(switched: list[tuple[Any, bool]]) -> None:
    """Switch off diffusers' and transformers' loading bars; appends (their logging module, was enabled)."""
    for name in ("diffusers.utils.logging", "transformers.utils.logging"):
        module = importlib.import_module(name)
        switched.append((module, bool(module.is_progress_bar_enabled())))
        module.disable_progress_bar()


@contextlib.contextmanager
def quiet_console(load_libraries: bool = True) -> Iterator[None]:
    """Silence the libraries' known noise and print warnings as one line, for the duration of a command.

    Args:
        load_libraries: Also switch off diffusers' and transformers' loading bars (imports both; False for
            commands that do not load a model).

    Example:
        >>> import warnings
        >>> with quiet_console(load_libraries=False):
        ...     warnings.warn("careful")  # stderr: conceptattention: warning: careful
    """
    filters = [(logging.getLogger(name), _DropMessages(text)) for name, text in SILENCED_MESSAGES]
    switched: list[tuple[Any, bool]] = []
    previous_format = warnings.formatwarning  # catch_warnings restores the filters, not the format
    try:
        for logger, drop in filters:
            logger.addFilter(drop)
        if load_libraries:
            _disable_library_progress_bars(switched)
        with warnings.catch_warnings():
            warnings.formatwarning = _format_warning
            for text in SILENCED_WARNINGS:
                warnings.filterwarnings("ignore", message=text)
            yield
    finally:
        warnings.formatwarning = previous_format
        for module, was_enabled in switched:
            if was_enabled:
                module.enable_progress_bar()
        for logger, drop in filters:
            logger.removeFilter(drop)
