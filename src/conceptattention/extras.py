"""Optional dependencies ("extras"): imported only where used, with a message that names the extra to install.

A plain ``pip install conceptattention`` runs ``generate``, ``explain``, ``env`` and the library; the extras add
``eval`` (torchmetrics, h5py, accelerate: ``evaluate``/``ablate``), ``app`` (gradio: the web app) and ``video``
(imageio: GIF/MP4 files of video models). Modules that need one import it through :func:`lazy_module` /
:func:`lazy_function` or :func:`require`, so importing them never fails; using the missing part raises
:class:`MissingExtraError` ("... install conceptattention[eval] ...").

Example:
    >>> from conceptattention.extras import require
    >>> require("json").__name__
    'json'
    >>> require("no_such_module_xyz", "eval")
    Traceback (most recent call last):
    ...
    conceptattention.extras.MissingExtraError: This needs no_such_module_xyz, which is not installed: install conceptattention[eval] (pip install 'conceptattention[eval]').
"""

from __future__ import annotations

import importlib
import importlib.util
from collections.abc import Callable
from types import ModuleType
from typing import Any

from .errors import ConceptAttentionError


__all__ = ["EXTRAS", "MissingExtraError", "lazy_function", "lazy_module", "missing_modules", "require", "require_extra"]

#: The import names of each extra of ``pyproject.toml``.
EXTRAS: dict[str, tuple[str, ...]] = {
    "eval": ("torchmetrics", "h5py", "accelerate"),
    "app": ("gradio",),
    "video": ("imageio", "imageio_ffmpeg"),
    "masks": ("pycocotools",),
    "dataset": ("pycocotools", "accelerate"),
}


class MissingExtraError(ConceptAttentionError, ModuleNotFoundError, RuntimeError):
    """An optional dependency is not installed; the message names the extra that provides it.

    A :class:`ModuleNotFoundError` (``except ImportError`` catches it) and a :class:`RuntimeError` (the command line
    reports it as one error line, exit status 2, without a traceback).
    """


def _install_hint(extra: str) -> str:
    return f"install conceptattention[{extra}] (pip install 'conceptattention[{extra}]')"


def _extra_of(module: str) -> str:
    top = module.split(".")[0]
    for extra, modules in EXTRAS.items():
        if top in modules:
            return extra
    raise KeyError(f"{top!r} belongs to no extra; pass extra=")


def require(module: str, extra: str | None = None, purpose: str = "This") -> ModuleType:
    """Import ``module`` (an optional dependency), or raise :class:`MissingExtraError` naming its extra.

    Args:
        module: Import name, e.g. ``"h5py"`` or ``"torchmetrics.functional.classification"``.
        extra: The extra that provides it (default: looked up in :data:`EXTRAS`).
        purpose: What needs it, for the message (e.g. ``"Reading gtsegs_ijcv.mat"``).

    Returns:
        The imported module.

    Raises:
        MissingExtraError: The module (or its top-level package) is not installed. Other import errors (a broken
            installation) propagate unchanged.

    Example:
        >>> require("math").sqrt(4.0)
        2.0
    """
    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as error:
        top = module.split(".")[0]
        if error.name is None or error.name.split(".")[0] != top:
            raise  # something the optional package itself imports is missing: not ours to explain
        extra = extra or _extra_of(module)
        raise MissingExtraError(
            f"{purpose} needs {top}, which is not installed: {_install_hint(extra)}.", name=top
        ) from None


def missing_modules(extra: str) -> list[str]:
    """The import names of ``extra`` that cannot be found (nothing is imported).

    Example:
        >>> missing_modules("eval")  # with the eval extra installed
        []
    """
    missing = []
    for module in EXTRAS[extra]:
        try:
            found = importlib.util.find_spec(module) is not None
        except (ImportError, ValueError):
            found = False
        if not found:
            missing.append(module)
    return missing


def require_extra(extra: str, purpose: str) -> None:
    """Raise :class:`MissingExtraError` unless every module of ``extra`` is installed.

    Args:
        extra: A key of :data:`EXTRAS`.
        purpose: What needs it, for the message (e.g. ``"conceptattention evaluate"``).

    Example:
        >>> require_extra("eval", "conceptattention evaluate")  # installed: nothing happens
    """
    missing = missing_modules(extra)
    if missing:
        raise MissingExtraError(
            f"{purpose} needs the {extra!r} extra ({', '.join(missing)} not installed): {_install_hint(extra)}.",
            name=missing[0],
        )


class _LazyModule:
    """A stand-in for an optional module: imported on first attribute access (see :func:`lazy_module`)."""

    def __init__(self, module: str, extra: str | None) -> None:
        self._lazy_name = module
        self._lazy_extra = extra

    def __getattr__(self, attribute: str) -> Any:
        return getattr(require(self._lazy_name, self._lazy_extra), attribute)

    def __repr__(self) -> str:
        return f"<lazy module {self._lazy_name!r}>"


def lazy_module(module: str, extra: str | None = None) -> Any:
    """A module-level stand-in for an optional module, imported on first use (``h5py = lazy_module("h5py")``).

    Example:
        >>> json = lazy_module("json", "eval")
        >>> json.dumps([1])
        '[1]'
    """
    return _LazyModule(module, extra)


def lazy_function(module: str, name: str, extra: str | None = None) -> Callable[..., Any]:
    """A function of an optional module, imported on its first call.

    Example:
        >>> dumps = lazy_function("json", "dumps", "eval")
        >>> dumps({"a": 1})
        '{"a": 1}'
    """

    def call(*args: Any, **kwargs: Any) -> Any:
        return getattr(require(module, extra), name)(*args, **kwargs)

    call.__name__ = call.__qualname__ = name
    call.__doc__ = f"``{module}.{name}``, imported on first call (extra: {extra or _extra_of(module)})."
    return call
