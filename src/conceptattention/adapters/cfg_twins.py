"""True classifier-free guidance run as two plain transformer calls per step (no diffusers ``cache_context``).

``ChromaPipeline``, ``Krea2Pipeline`` and ``JoyImageEditPipeline`` call the transformer twice per denoising step on
the very same latent tensor object: first with the prompt, then with the negative prompt. No ``cache_context`` names
the second call, so the adapter recognises it: a call that gets the previous call's latent tensor (the same object)
with another prompt tensor is the unconditional twin of that call, neither recorded nor counted as a step. Calling a
bare transformer twice on one latent tensor with two different prompt tensors inside one ``with`` block is therefore
read as true CFG as well. The previous call lives in ``session.adapter_state``, so adapters stay stateless and each
``with`` block starts without one.
"""

from __future__ import annotations

import weakref
from typing import TYPE_CHECKING, Any

import torch


if TYPE_CHECKING:
    from ..session import ConceptSession

#: Key of the captured call inputs holding weak references to the call's latent and prompt tensors.
CALL_TENSORS_KEY = "cfg_twin_call_tensors"
#: Key of the captured call inputs flagging the unconditional twin call.
TWIN_KEY = "cfg_twin_unconditional"
#: Key of ``session.adapter_state`` holding the previous call's :data:`CALL_TENSORS_KEY` entry.
PREVIOUS_CALL_KEY = "cfg_twin_previous_call"


def call_tensors(latents: Any, prompt: Any) -> dict[str, Any]:
    """The entry :meth:`SequentialCFGTwins.observe_call` reads, for an adapter's ``capture_call`` result: weak
    references (the call inputs outlive the call) to the call's latent and prompt tensors, or None when either is not
    a tensor.

    Example:
        >>> latents, prompt = torch.zeros(1, 4, 8), torch.zeros(1, 3, 8)
        >>> refs = call_tensors(latents, prompt)[CALL_TENSORS_KEY]
        >>> refs[0]() is latents and refs[1]() is prompt
        True
    """
    if not (isinstance(latents, torch.Tensor) and isinstance(prompt, torch.Tensor)):
        return {CALL_TENSORS_KEY: None}
    return {CALL_TENSORS_KEY: (weakref.ref(latents), weakref.ref(prompt))}


class SequentialCFGTwins:
    """Adapter mixin (list it before the adapter base class): the second of two calls on one latent tensor object
    with another prompt tensor is the unconditional call of true CFG. The adapter's ``capture_call`` must include
    :func:`call_tensors` of the call's latents and prompt in what it returns.

    Example:
        >>> from types import SimpleNamespace
        >>> twins, session = SequentialCFGTwins(), SimpleNamespace(adapter_state={})
        >>> latents, prompt, negative = torch.zeros(1, 4, 8), torch.zeros(1, 3, 8), torch.ones(1, 3, 8)
        >>> flags = []
        >>> for text in (prompt, negative):  # one step of true CFG: prompt, then negative prompt
        ...     inputs = call_tensors(latents, text)
        ...     twins.observe_call(session, inputs)
        ...     flags.append(twins.is_auxiliary_call(inputs))
        >>> flags
        [False, True]
    """

    def observe_call(self, session: ConceptSession, call_inputs: dict[str, Any]) -> None:
        """Flag the call that gets the very latent tensor of the previous call with another prompt tensor."""
        current = call_inputs.get(CALL_TENSORS_KEY)
        previous = session.adapter_state.get(PREVIOUS_CALL_KEY)
        twin = (
            current is not None
            and previous is not None
            and previous[0]() is current[0]()
            and previous[1]() is not current[1]()
        )
        call_inputs[TWIN_KEY] = twin
        # after a twin the next call starts a new step: it must bring new latents to be a twin again
        session.adapter_state[PREVIOUS_CALL_KEY] = None if twin else current

    def is_auxiliary_call(self, call_inputs: dict[str, Any]) -> bool:
        """The unconditional call of the pipeline's true CFG: neither recorded nor counted as a step."""
        return bool(call_inputs.get(TWIN_KEY, False))
