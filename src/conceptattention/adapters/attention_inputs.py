"""The queries, keys and values a stock diffusers processor hands to ``dispatch_attention_fn``, kept for the concept
branch: the joint tensors after QK-norm, RoPE and the text/image concatenation, exactly as the model attended with
them. Taking them there spares the concept branch re-applying RoPE to the image keys of every block (FLUX.1 at
1024²: 8 kernels and ≈ 660 MB of memory traffic per block, docs/benchmarks.md).

diffusers' attention dispatcher looks the backend function up in ``_AttentionBackendRegistry._backends`` on every
call. :func:`keep_attention_inputs` puts a pass-through wrapper in front of the function of the backend the processor
uses, for one processor call: the wrapper calls the registered function with the same arguments (so the attention,
and the model's output, are unchanged) and, in the thread that asked for it, keeps the first call's tensors. The
registry entry is restored when the last user in the process leaves, also after an exception. Nothing is wrapped
while ``torch.compile`` traces (the callers then re-apply RoPE, which the compiler fuses) or under context
parallelism (the backend sees sequence shards).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import torch


#: Keys of the sink that :func:`keep_attention_inputs` fills: the joint tensors ``[B, S, H, D]``.
ATTENTION_QUERY = "attention_query"
ATTENTION_KEY = "attention_key"
ATTENTION_VALUE = "attention_value"

#: The diffusers function whose backend lookup the wrapper relies on, and its source fingerprints (diffusers 0.42.1;
#: 0.38.0-0.41.0, re-checked: the same lookup without the member shortcut): a ``STOCK_SOURCES`` entry of the
#: processors that keep the attention inputs.
DISPATCH_SOURCE = "diffusers.models.attention_dispatch.dispatch_attention_fn"
DISPATCH_FINGERPRINTS = (
    "8e59722095f9b726ae2598fb900ac754f5ca50e0d9e7bc9bcbcd531886d3ade1",
    "9cbbbbc12641663adee25636318aaa04ea7a6a52d0df6b1592367df1bd00706c",
)

_thread_state = threading.local()
_registry_lock = threading.Lock()
#: backend name -> (the registered function the wrapper replaced, number of active users)
_wrapped: dict[Any, tuple[Callable[..., torch.Tensor], int]] = {}


class _KeepInputs:
    """Stands in for a registered attention backend function: calls it unchanged and, when the calling thread is
    inside :func:`keep_attention_inputs`, keeps the first call's ``query`` / ``key`` / ``value``."""

    def __init__(self, backend_fn: Callable[..., torch.Tensor]) -> None:
        self.backend_fn = backend_fn

    def __call__(self, *args: Any, **kwargs: Any) -> torch.Tensor:
        sink = getattr(_thread_state, "sink", None)
        if sink is not None and ATTENTION_KEY not in sink and "key" in kwargs:
            sink[ATTENTION_QUERY] = kwargs["query"]
            sink[ATTENTION_KEY] = kwargs["key"]
            sink[ATTENTION_VALUE] = kwargs["value"]
        return self.backend_fn(*args, **kwargs)


def _backend_name(processor: Any) -> Any:
    """The registry key of the backend ``processor`` dispatches to (its own, else the active one), or None."""
    from diffusers.models import attention_dispatch

    registry = getattr(attention_dispatch, "_AttentionBackendRegistry", None)
    names = getattr(attention_dispatch, "AttentionBackendName", None)
    if registry is None or names is None or not isinstance(getattr(registry, "_backends", None), dict):
        return None
    backend = getattr(processor, "_attention_backend", None)
    if backend is None:
        backend = registry._active_backend
    try:
        name = backend if isinstance(backend, names) else names(backend)
    except ValueError:
        return None
    return name if name in registry._backends else None


@contextmanager
def keep_attention_inputs(processor: Any, sink: dict[str, torch.Tensor]) -> Iterator[None]:
    """While the block runs, the first attention call of diffusers' dispatcher in this thread leaves its ``query``,
    ``key`` and ``value`` (``[B, S, H, D]``, as the backend received them) in ``sink`` under
    :data:`ATTENTION_QUERY`, :data:`ATTENTION_KEY` and :data:`ATTENTION_VALUE`.

    A no-op (``sink`` stays without them) while compiling, under context parallelism (``processor._parallel_config``)
    or when the backend cannot be resolved; callers fall back to their taps.

    Args:
        processor: The stock diffusers processor about to run (its ``_attention_backend`` picks the backend).
        sink: Receives the tensors.

    Example:
        >>> from diffusers.models.attention_dispatch import dispatch_attention_fn
        >>> class Processor:
        ...     _attention_backend = None
        ...     _parallel_config = None
        >>> q = torch.randn(1, 5, 2, 8)
        >>> sink = {}
        >>> with keep_attention_inputs(Processor(), sink):
        ...     out = dispatch_attention_fn(q, q, q)
        >>> sink[ATTENTION_KEY] is q, torch.equal(out, dispatch_attention_fn(q, q, q))
        (True, True)
    """
    name = None
    if not torch.compiler.is_compiling() and getattr(processor, "_parallel_config", None) is None:
        name = _backend_name(processor)
    if name is None:
        yield
        return
    from diffusers.models.attention_dispatch import _AttentionBackendRegistry

    with _registry_lock:
        if name in _wrapped:
            original, users = _wrapped[name]
            _wrapped[name] = (original, users + 1)
        else:
            original = _AttentionBackendRegistry._backends[name]
            _wrapped[name] = (original, 1)
            _AttentionBackendRegistry._backends[name] = _KeepInputs(original)
    outer = getattr(_thread_state, "sink", None)
    _thread_state.sink = sink
    try:
        yield
    finally:
        _thread_state.sink = outer
        with _registry_lock:
            original, users = _wrapped[name]
            if users > 1:
                _wrapped[name] = (original, users - 1)
            else:
                del _wrapped[name]
                registered = _AttentionBackendRegistry._backends.get(name)
                # leave a function someone registered meanwhile in place; put back the one we wrapped
                if isinstance(registered, _KeepInputs) and registered.backend_fn is original:
                    _AttentionBackendRegistry._backends[name] = original


def image_rows(
    sink: dict[str, torch.Tensor], start: int | None, stop: int | None = None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None:
    """The image rows ``[B, I, H, D]`` (views) of the kept joint query, key and value: sequence rows ``start:stop``
    (``[text, image]`` joint attentions: ``start`` = the number of text rows, or ``-I``; ``[image, text]`` ones:
    ``None, I``), or None when :func:`keep_attention_inputs` kept nothing.

    Example:
        >>> joint = torch.randn(1, 7, 2, 4)
        >>> rows = image_rows({ATTENTION_QUERY: joint, ATTENTION_KEY: joint, ATTENTION_VALUE: joint}, start=3)
        >>> rows[1].shape
        torch.Size([1, 4, 2, 4])
        >>> image_rows({ATTENTION_QUERY: joint, ATTENTION_KEY: joint, ATTENTION_VALUE: joint}, None, 4)[0].shape
        torch.Size([1, 4, 2, 4])
    """
    if ATTENTION_KEY not in sink:
        return None
    return tuple(sink[name][:, start:stop] for name in (ATTENTION_QUERY, ATTENTION_KEY, ATTENTION_VALUE))  # type: ignore[return-value]
