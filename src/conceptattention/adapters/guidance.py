"""How pipelines run classifier-free guidance, as the adapters must know it to report the conditional maps only.

**Batched** (``[uncond, cond]`` halves of one call: SD3, CogVideoX, Mochi, Bria, HiDream, JoyImage Edit Plus...):
:func:`guidance_half_slice` keeps the second half when guidance is on and the two latent halves are identical.

**Two calls per step** (no diffusers ``cache_context``):

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


def pipeline_guidance_on(pipeline: Any | None, attribute: str) -> bool:
    """Read a pipeline's guidance switch without failing on pipelines that were never called."""
    if pipeline is None:
        return False
    try:
        return bool(getattr(pipeline, attribute))
    except (AttributeError, TypeError):
        return False


def batch_halves_identical(latents: torch.Tensor) -> bool:
    """Whether a latent batch is two identical halves, as pipelines feed it under batched guidance.

    Args:
        latents: ``[B, ...]``, the transformer's ``hidden_states``.

    Returns:
        True when ``B`` is even and ``latents[:B//2]`` equals ``latents[B//2:]`` exactly.

    Example:
        >>> batch_halves_identical(torch.cat([torch.ones(1, 4, 2, 2)] * 2))
        True
    """
    batch = latents.shape[0]
    if batch % 2:
        return False
    return bool(torch.equal(latents[: batch // 2], latents[batch // 2 :]))


def guidance_half_slice(batch_size: int, call_inputs: dict[str, Any], guidance_on: bool) -> slice:
    """Rows to report for a call of a pipeline that batches classifier-free guidance as ``[uncond, cond]``.

    A call is taken as a guidance batch when guidance is on and the two halves of its latent batch are identical
    (SD3 and CogVideoX pipelines feed ``cat([latents] * 2)``; ``call_inputs["identical_halves"]``, see
    :func:`batch_halves_identical`). The second test keeps direct transformer calls whole (e.g. the real-image path,
    whose rows are different noise samples) even while the pipeline still carries the guidance scale of an earlier
    generation.

    Args:
        batch_size: Rows of the call's batch.
        call_inputs: The captured call inputs (``skip_layers`` calls are never halved).
        guidance_on: The pipeline's guidance switch.

    Returns:
        ``slice(batch_size // 2, None)`` for a guidance batch, else ``slice(None)``.

    Example:
        >>> guidance_half_slice(2, {"identical_halves": True}, guidance_on=True)
        slice(1, None, None)
        >>> guidance_half_slice(2, {"identical_halves": False}, guidance_on=True)
        slice(None, None, None)
    """
    if not guidance_on or batch_size % 2 or is_skip_layer_call(call_inputs):
        return slice(None)
    return slice(batch_size // 2, None) if call_inputs.get("identical_halves", False) else slice(None)


def is_skip_layer_call(call_inputs: dict[str, Any]) -> bool:
    """Whether a transformer call is skip-layer guidance's extra call (some blocks are skipped)."""
    skip_layers = call_inputs.get("skip_layers")
    return skip_layers is not None and len(skip_layers) > 0
