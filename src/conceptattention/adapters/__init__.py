"""Registry of architecture adapters, keyed by transformer class and looked up along the MRO.

Built-in adapters are imported lazily (on first lookup) so that ``import conceptattention`` stays cheap.

Example:
    >>> from conceptattention.adapters import supported_models
    >>> "FluxTransformer2DModel" in [row["transformer"] for row in supported_models()]
    True
"""

from __future__ import annotations

import importlib
from typing import Any

import torch
import torch._dynamo
from torch import nn

from .base import ConceptAdapter, ExplainBatch, UnsupportedSetupError, common_checks


__all__ = [
    "ConceptAdapter",
    "ExplainBatch",
    "UnsupportedModelError",
    "UnsupportedSetupError",
    "common_checks",
    "get_adapter",
    "register_adapter",
    "supported_models",
    "unwrap_compiled",
]

# transformer class name -> (module, adapter class name); filled lazily
_BUILTIN_ADAPTERS: dict[str, tuple[str, str]] = {
    "FluxTransformer2DModel": ("conceptattention.adapters.flux", "FluxAdapter"),
    "SD3Transformer2DModel": ("conceptattention.adapters.sd3", "SD3Adapter"),
    "CogVideoXTransformer3DModel": ("conceptattention.adapters.cogvideox", "CogVideoXAdapter"),
    "ChromaTransformer2DModel": ("conceptattention.adapters.chroma", "ChromaAdapter"),
    "Flux2Transformer2DModel": ("conceptattention.adapters.flux2", "Flux2Adapter"),
    "QwenImageTransformer2DModel": ("conceptattention.adapters.qwenimage", "QwenImageAdapter"),
    "HunyuanVideoTransformer3DModel": ("conceptattention.adapters.hunyuan_video", "HunyuanVideoAdapter"),
    "AuraFlowTransformer2DModel": ("conceptattention.adapters.auraflow", "AuraFlowAdapter"),
    "BriaTransformer2DModel": ("conceptattention.adapters.bria", "BriaAdapter"),
    "LongCatImageTransformer2DModel": ("conceptattention.adapters.longcat_image", "LongCatImageAdapter"),
    "OvisImageTransformer2DModel": ("conceptattention.adapters.ovis_image", "OvisImageAdapter"),
    "HunyuanImageTransformer2DModel": ("conceptattention.adapters.hunyuan_image", "HunyuanImageAdapter"),
}
_REGISTRY: dict[type | str, ConceptAdapter] = {}


class UnsupportedModelError(TypeError):
    """The transformer's architecture has no registered adapter."""


def register_adapter(transformer_class: type | str, adapter: ConceptAdapter) -> None:
    """Register ``adapter`` for a transformer class (or class name); subclasses inherit it.

    Args:
        transformer_class: A diffusers transformer class (or its name).
        adapter: A :class:`ConceptAdapter` instance.

    Example:
        >>> from conceptattention.adapters.flux import FluxAdapter
        >>> register_adapter("MyFluxLikeTransformer", FluxAdapter())
    """
    if not isinstance(adapter, ConceptAdapter):
        raise TypeError(f"adapter must be a ConceptAdapter instance, got {type(adapter).__name__}.")
    _REGISTRY[transformer_class] = adapter


def _builtin(name: str) -> ConceptAdapter | None:
    if name not in _BUILTIN_ADAPTERS:
        return None
    module_name, class_name = _BUILTIN_ADAPTERS[name]
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as error:
        if error.name != module_name:
            raise
        return None  # adapter module not (yet) part of this installation
    adapter = getattr(module, class_name)()
    _REGISTRY[name] = adapter
    return adapter


def unwrap_compiled(module: nn.Module) -> nn.Module:
    """The module inside ``torch.compile(module)`` (an ``OptimizedModule``), or ``module`` itself.

    Processors and hooks are installed on the inner module; the compiled wrapper runs it, so calls through
    ``pipe.transformer`` (compiled) reach them (the processor swap invalidates the compiled graph's guards).

    Example:
        >>> import torch
        >>> layer = torch.nn.Linear(2, 2)
        >>> unwrap_compiled(torch.compile(layer)) is layer
        True
    """
    while isinstance(module, torch._dynamo.eval_frame.OptimizedModule):
        module = module._orig_mod
    return module


def find_transformer(model: Any) -> nn.Module:
    """The denoiser of a pipeline (``pipe.transformer``) or the model itself, unwrapped from ``torch.compile``."""
    transformer = getattr(model, "transformer", None)
    if isinstance(transformer, nn.Module):
        return unwrap_compiled(transformer)
    if isinstance(model, nn.Module):
        return unwrap_compiled(model)
    raise UnsupportedModelError(
        f"Expected a diffusers pipeline with a `.transformer` or a transformer model, got {type(model).__name__}."
    )


def get_adapter(model: Any) -> ConceptAdapter:
    """The adapter for a pipeline or transformer.

    Raises:
        UnsupportedModelError: naming the supported classes and how to register an adapter.
    """
    transformer = find_transformer(model)
    for cls in type(transformer).__mro__:
        for key in (cls, cls.__name__):
            if key in _REGISTRY:
                return _REGISTRY[key]
        adapter = _builtin(cls.__name__)
        if adapter is not None:
            return adapter
    names = {row["transformer"] for row in supported_models()}
    names |= {key if isinstance(key, str) else key.__name__ for key in _REGISTRY}
    supported = ", ".join(sorted(names))
    raise UnsupportedModelError(
        f"ConceptAttention has no adapter for {type(transformer).__name__}. Supported transformers: {supported}. "
        "ConceptAttention needs a joint-attention (MM-DiT) model whose text stream has its own weights; to add an "
        "architecture, subclass conceptattention.adapters.ConceptAdapter and call "
        "conceptattention.register_adapter(YourTransformerClass, YourAdapter())."
    )


def supported_models() -> list[dict[str, str]]:
    """One row per built-in adapter: family, transformer class, pipelines, modality, default layers, tests."""
    rows = []
    for transformer_name in _BUILTIN_ADAPTERS:
        adapter = _REGISTRY.get(transformer_name) or _builtin(transformer_name)
        if adapter is None:
            continue
        rows.append(
            {
                "family": adapter.name,
                "transformer": transformer_name,
                "pipelines": ", ".join(adapter.pipeline_classes),
                "modality": adapter.modality,
                "default_layers": adapter.official_default_layers,
                "tested": adapter.tested,
            }
        )
    return rows
