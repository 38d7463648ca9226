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

from ..errors import ConceptAttentionError
from .base import ConceptAdapter, UnsupportedSetupError, common_checks
from .real_images import ExplainBatch


__all__ = [
    "ConceptAdapter",
    "ExplainBatch",
    "UnsupportedModelError",
    "UnsupportedSetupError",
    "common_checks",
    "get_adapter",
    "refused_models",
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
    "HunyuanVideo15Transformer3DModel": ("conceptattention.adapters.hunyuan_video15", "HunyuanVideo15Adapter"),
    "CogView4Transformer2DModel": ("conceptattention.adapters.cogview4", "CogView4Adapter"),
    "MochiTransformer3DModel": ("conceptattention.adapters.mochi", "MochiAdapter"),
    "BriaFiboTransformer2DModel": ("conceptattention.adapters.bria_fibo", "BriaFiboAdapter"),
    "HiDreamImageTransformer2DModel": ("conceptattention.adapters.hidream_image", "HiDreamImageAdapter"),
    "JoyImageEditTransformer3DModel": ("conceptattention.adapters.joyimage", "JoyImageAdapter"),
    "JoyImageEditPlusTransformer3DModel": ("conceptattention.adapters.joyimage", "JoyImageEditPlusAdapter"),
    # single-stream extension (beyond the paper; docs/models.md)
    "ZImageTransformer2DModel": ("conceptattention.adapters.z_image", "ZImageAdapter"),
    "Krea2Transformer2DModel": ("conceptattention.adapters.krea2", "Krea2Adapter"),
}
_REGISTRY: dict[type | str, ConceptAdapter] = {}
#: Oldest diffusers minor release each built-in adapter is tested with (docs/compatibility.md); older ones are refused.
MIN_DIFFUSERS: dict[str, tuple[int, int]] = dict.fromkeys(_BUILTIN_ADAPTERS, (0, 38))
MIN_DIFFUSERS["QwenImageTransformer2DModel"] = (0, 39)  # 0.38 hands the processor a prebuilt mask: no maps
MIN_DIFFUSERS["Krea2Transformer2DModel"] = (0, 39)  # first released in diffusers 0.39
MIN_DIFFUSERS["OvisImageTransformer2DModel"] = (0, 39)  # 0.38: encode_prompt has another signature
MIN_DIFFUSERS["JoyImageEditTransformer3DModel"] = (0, 39)  # first released in diffusers 0.39
MIN_DIFFUSERS["JoyImageEditPlusTransformer3DModel"] = (0, 40)  # first released in diffusers 0.40

#: Kinds of diffusers transformers that ConceptAttention refuses, with what the refusal says about them.
TWO_STREAM = "two-stream (adapter planned)"
SINGLE_STREAM = "single-stream (beyond the paper; extension planned)"
CROSS_ATTENTION = "cross-attention only (out of scope)"

# transformer class name -> (kind, evidence from the diffusers 0.42.1 source); docs/models.md has the full survey
_REFUSED: dict[str, tuple[str, str]] = {
    "Lumina2Transformer2DModel": (
        SINGLE_STREAM,
        "after separate context/noise refiners, Lumina2TransformerBlock runs [text, image] with one set of weights",
    ),
    "ErnieImageTransformer2DModel": (
        SINGLE_STREAM,
        "ErnieImageSharedAdaLNBlock runs text and image as one sequence with shared weights and modulation",
    ),
    "Flux3Transformer2DModel": (
        SINGLE_STREAM,
        "text and image first run in separate per-mode blocks that never attend to each other, then in joint "
        "single-stream blocks with shared weights (per-stream modulation only)",
    ),
    "QwenImage21Transformer2DModel": (
        SINGLE_STREAM,
        "QwenImage21TransformerBlock is single-stream: one sequence, one set of weights, shared modulation",
    ),
    "BriaFibo2Transformer2DModel": (
        SINGLE_STREAM,
        "perceiver 'gist' text tokens join the image sequence with shared weights, plus gated cross-attention to "
        "the text encoder in some blocks",
    ),
    "WanTransformer3DModel": (CROSS_ATTENTION, "WanTransformerBlock: attn1 video self-attention, attn2 cross-attention to fixed text"),
    "WanVACETransformer3DModel": (CROSS_ATTENTION, "Wan blocks: attn2 cross-attention to fixed text"),
    "SkyReelsV2Transformer3DModel": (CROSS_ATTENTION, "Wan-style blocks: attn2 cross-attention to fixed text"),
    "SanaTransformer2DModel": (CROSS_ATTENTION, "SanaTransformerBlock: linear self-attention, attn2 cross-attention"),
    "SanaVideoTransformer3DModel": (CROSS_ATTENTION, "Sana blocks: self-attention, attn2 cross-attention to fixed text"),
    "PixArtTransformer2DModel": (CROSS_ATTENTION, "BasicTransformerBlock: self-attention, attn2 cross-attention"),
    "Kandinsky5Transformer3DModel": (
        CROSS_ATTENTION,
        "decoder blocks: visual self_attention, cross_attention to text that is encoded once by separate blocks",
    ),
    "Kandinsky6Transformer3DModel": (
        CROSS_ATTENTION,
        "decoder blocks: visual self_attention, cross_attention to text that is encoded once by separate blocks",
    ),
    "LTXVideoTransformer3DModel": (CROSS_ATTENTION, "LTXVideoTransformerBlock: attn1 self-attention, attn2 cross-attention"),
    "HunyuanDiT2DModel": (CROSS_ATTENTION, "HunyuanDiTBlock: attn1 self-attention, attn2 cross-attention"),
}


class UnsupportedModelError(ConceptAttentionError, TypeError):
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


def _diffusers_release() -> tuple[int, int]:
    """``(major, minor)`` of the installed diffusers (a ``0.39.0.dev0`` build counts as 0.39)."""
    import diffusers
    from packaging.version import Version

    major, minor, *_ = (*Version(diffusers.__version__).release, 0, 0)
    return major, minor


def _check_diffusers(name: str) -> None:
    """Refuse a built-in adapter on a diffusers release older than it supports, naming the fix."""
    minimum = MIN_DIFFUSERS.get(name)
    if minimum is None or _diffusers_release() >= minimum:
        return
    import diffusers

    needed = f"{minimum[0]}.{minimum[1]}"
    raise UnsupportedModelError(
        f"ConceptAttention supports {name} on diffusers >= {needed}; this is diffusers {diffusers.__version__}. "
        f"Upgrade with: pip install 'diffusers>={needed},<0.43'."
    )


def _builtin(name: str) -> ConceptAdapter | None:
    if name not in _BUILTIN_ADAPTERS:
        return None
    _check_diffusers(name)
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
                if key == cls.__name__ and key in _BUILTIN_ADAPTERS:
                    _check_diffusers(key)  # a cached built-in adapter
                return _REGISTRY[key]
        adapter = _builtin(cls.__name__)
        if adapter is not None:
            return adapter
    names = {row["transformer"] for row in supported_models()}
    names |= {key if isinstance(key, str) else key.__name__ for key in _REGISTRY}
    supported = ", ".join(sorted(names))
    for cls in type(transformer).__mro__:
        if cls.__name__ in _REFUSED:
            raise UnsupportedModelError(_refusal(type(transformer).__name__, *_REFUSED[cls.__name__], supported))
    raise UnsupportedModelError(
        f"ConceptAttention has no adapter for {type(transformer).__name__}. Supported transformers: {supported}. "
        "ConceptAttention needs a joint-attention (MM-DiT) model whose text stream has its own weights; to add an "
        "architecture, subclass conceptattention.adapters.ConceptAdapter and call "
        "conceptattention.register_adapter(YourTransformerClass, YourAdapter())."
    )


def supported_models() -> list[dict[str, str]]:
    """One row per built-in adapter usable with the installed diffusers: family, transformer class, pipelines,
    modality, default layers, tests, supported diffusers range, and the features of the pipeline surface (attention
    path, ``torch.compile``, fused QKV, IP-Adapter, cache accelerators)."""
    import diffusers

    rows = []
    for transformer_name in _BUILTIN_ADAPTERS:
        minimum = MIN_DIFFUSERS[transformer_name]
        if _diffusers_release() < minimum:
            continue  # refused by get_adapter on this diffusers
        adapter = _REGISTRY.get(transformer_name) or _builtin(transformer_name)
        if adapter is None:
            continue
        processor = adapter.processor_class
        copies = bool(getattr(processor, "COPIES_STOCK", False))
        regional = bool(getattr(getattr(diffusers, transformer_name, None), "_repeated_blocks", None))
        rows.append(
            {
                "family": adapter.name,
                "transformer": transformer_name,
                "pipelines": ", ".join(adapter.pipeline_classes),
                "modality": adapter.modality,
                "default_layers": adapter.official_default_layers,
                "tested": adapter.tested,
                "diffusers": f">={minimum[0]}.{minimum[1]},<0.43",
                "attention": "re-implemented stock body (drift-tested)" if copies else "diffusers' own processor",
                "compile": "whole model + regional" if regional else "whole model",
                "fused_qkv": adapter.fused_qkv,
                "ip_adapter": adapter.ip_adapter,
                "caches": "refused by name",
            }
        )
    return rows


def _refusal(name: str, kind: str, evidence: str, supported: str) -> str:
    """The refusal message for a known transformer class that ConceptAttention does not support."""
    tail = (
        f"Supported transformers: {supported}. For an architecture with a two-stream joint attention, subclass "
        "conceptattention.adapters.ConceptAdapter and call conceptattention.register_adapter(YourTransformerClass, "
        "YourAdapter())."
    )
    if kind == SINGLE_STREAM:
        return (
            f"{name} is a single-stream transformer ({evidence}). ConceptAttention, as in the paper, runs concept "
            "tokens through a separate text stream's weights next to the image; a single-stream model has no such "
            "weights, so the method does not apply as published. Extending it to single-stream blocks (concepts "
            "through the shared weights with the text modulation) is beyond the paper and planned (it exists for "
            f"ZImageTransformer2DModel and Krea2Transformer2DModel); see docs/models.md. {tail}"
        )
    if kind == CROSS_ATTENTION:
        return (
            f"{name} is a cross-attention-only transformer ({evidence}): the image attends to a fixed text sequence "
            "that is never updated and there is no joint text-image attention for concept tokens to join, so "
            "ConceptAttention is out of scope for it. The DAAM-style cross-attention baseline "
            "(conceptattention.evaluation.daam) covers UNet pipelines (Stable Diffusion 1.x/2.x/XL) only and does "
            f"not support {name} either; see docs/models.md. {tail}"
        )
    return (
        f"{name} is a two-stream joint-attention transformer, the paper's setting ({evidence}), but ConceptAttention "
        f"has no adapter for it yet (planned; see docs/models.md). {tail}"
    )


def refused_models() -> list[dict[str, str]]:
    """One row per known diffusers transformer without an adapter: class, kind and the reason (README, docs).

    Example:
        >>> rows = {row["transformer"]: row["kind"] for row in refused_models()}
        >>> rows["WanTransformer3DModel"], rows["Lumina2Transformer2DModel"]
        ('cross-attention only (out of scope)', 'single-stream (beyond the paper; extension planned)')
    """
    return [
        {"transformer": name, "kind": kind, "reason": evidence} for name, (kind, evidence) in _REFUSED.items()
    ]
