"""A capture view for diffusers attention processors that the zoo adapters (CogView4, Mochi) run untouched.

:class:`TapView` stands in for an attention module when its stock processor is called: every attribute is the
module's, except the named submodules, whose calls also leave a tensor in a ``sink`` dict (keyed by the submodule's
name). The processor runs the same modules in the same order, so its outputs are bit-identical by construction, and
nothing is registered on the model.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal

import torch
from torch import nn


TapKind = Literal["output", "copy", "input"]


class _Tap:
    """A module call that also keeps its output, a copy of it (the processor may rotate it in place) or its input."""

    def __init__(self, module: nn.Module, sink: dict[str, torch.Tensor], key: str, kind: TapKind) -> None:
        self.module, self.sink, self.key, self.kind = module, sink, key, kind

    def __call__(self, hidden_states: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        output = self.module(hidden_states, *args, **kwargs)
        if self.kind == "input":
            self.sink[self.key] = hidden_states
        else:
            self.sink[self.key] = output.clone() if self.kind == "copy" else output
        return output


class TapView:
    """Stand-in for an attention module whose ``taps`` submodules record into ``sink``.

    Args:
        attn: The attention module.
        sink: Where the taps leave their tensors, keyed by submodule name.
        taps: Submodule name -> ``"output"``, ``"copy"`` (a clone of the output) or ``"input"``. ``"to_out"`` taps
            ``to_out[0]`` (the attention output before the output projection, with ``"input"``).

    Example:
        >>> lin = torch.nn.Linear(2, 2)
        >>> holder = torch.nn.Module(); holder.to_v = lin; holder.heads = 1
        >>> sink = {}
        >>> view = TapView(holder, sink, {"to_v": "output"})
        >>> _ = view.to_v(torch.ones(1, 2)); sorted(sink), view.heads
        (['to_v'], 1)
    """

    def __init__(self, attn: nn.Module, sink: dict[str, torch.Tensor], taps: Mapping[str, TapKind]) -> None:
        self._attn = attn
        for name, kind in taps.items():
            if name == "to_out":
                self.to_out = (_Tap(attn.to_out[0], sink, name, kind), *attn.to_out[1:])
            else:
                setattr(self, name, _Tap(getattr(attn, name), sink, name, kind))

    def __getattr__(self, name: str) -> Any:
        return getattr(self._attn, name)


def missing_taps(sink: Mapping[str, torch.Tensor], names: tuple[str, ...], processor: Any, module: str) -> None:
    """Raise if the stock processor did not pass through every tapped submodule (diffusers changed it).

    Raises:
        RuntimeError: naming the submodules and the adapter module to re-check.
    """
    missing = [name for name in names if name not in sink]
    if missing:
        raise RuntimeError(
            f"{type(processor).__name__} did not call {', '.join(missing)} of the attention module, where "
            f"ConceptAttention takes its tensors. The installed diffusers changed this processor: re-check "
            f"conceptattention.adapters.{module}."
        )


__all__ = ["TapView", "missing_taps"]
