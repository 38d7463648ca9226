"""conceptattention: interpretable concept saliency maps from multi-modal diffusion transformers.

Implements ConceptAttention (Helbling et al., ICML 2025, arXiv:2502.04320) on unmodified diffusers pipelines.

Example:
    >>> from conceptattention import ConceptAttention
    >>> from conceptattention.testing import tiny_flux_pipeline
    >>> pipe = tiny_flux_pipeline()
    >>> with ConceptAttention(pipe, ["dragon", "rock", "sky"]) as ca:
    ...     image = pipe("a dragon on a rock", height=32, width=32, num_inference_steps=2,
    ...                  max_sequence_length=32).images[0]
    >>> ca.maps.concepts
    ('dragon', 'rock', 'sky')
"""

from __future__ import annotations

import importlib
import sys
import types
from typing import TYPE_CHECKING, Any


if TYPE_CHECKING:
    from .adapters import (
        ConceptAdapter,
        UnsupportedModelError,
        UnsupportedSetupError,
        get_adapter,
        register_adapter,
        supported_models,
    )
    from .capture import ConceptAttention, NoMapsError
    from .config import ConceptAttentionConfig, ConfigError
    from .encoding import ConceptError
    from .errors import ConceptAttentionError
    from .explain import explain, explain_video
    from .maps import ConceptMaps


__version__ = "0.1.0"

# Public name -> the submodule defining it. They are imported on first access (PEP 562), so that
# ``import conceptattention`` (and the command line's --help) does not import torch and diffusers.
_EXPORTS: dict[str, str] = {
    "ConceptAdapter": "adapters",
    "UnsupportedModelError": "adapters",
    "UnsupportedSetupError": "adapters",
    "get_adapter": "adapters",
    "register_adapter": "adapters",
    "supported_models": "adapters",
    "ConceptAttention": "capture",
    "NoMapsError": "capture",
    "ConceptAttentionConfig": "config",
    "ConfigError": "config",
    "ConceptError": "encoding",
    "ConceptAttentionError": "errors",
    "explain": "explain",
    "explain_video": "explain",
    "ConceptMaps": "maps",
}

__all__ = [
    "ConceptAdapter",
    "ConceptAttention",
    "ConceptAttentionConfig",
    "ConceptAttentionError",
    "ConceptError",
    "ConceptMaps",
    "ConfigError",
    "NoMapsError",
    "UnsupportedModelError",
    "UnsupportedSetupError",
    "__version__",
    "explain",
    "explain_video",
    "get_adapter",
    "register_adapter",
    "supported_models",
]


def __getattr__(name: str) -> Any:
    """Import a public name's submodule on first access (``conceptattention.ConceptAttention``)."""
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    globals()[name] = value  # later accesses skip this function
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))


class _Package(types.ModuleType):
    """This package's module type: ``conceptattention.explain`` stays the function once its submodule is imported.

    (Importing ``conceptattention.explain`` sets the package attribute to the submodule; the eager import this
    replaces rebound it to the function, and so does this.)
    """

    def __setattr__(self, name: str, value: Any) -> None:
        if name == "explain" and isinstance(value, types.ModuleType):
            value = value.explain
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package
