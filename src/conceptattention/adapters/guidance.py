"""How pipelines run classifier-free guidance, as the adapters must know it to report the conditional maps only.

**Batched** (``[uncond, cond]`` halves of one call: SD3, CogVideoX, Mochi, Bria, HiDream, JoyImage Edit Plus...):
:func:`guidance_half_slice` keeps the second half of a call the pipeline makes from its own ``__call__`` while its
guidance is on (it feeds ``cat([latents] * 2)`` then), decided on the host with no read of the latents. Only a
transformer call made from outside that ``__call__`` while the pipeline still has guidance on (a user's direct call,
after a guided generation) is halved by comparing its two latent halves: the one case with no host-side signal.
Limit: a transformer call with an even batch that user code makes *inside* the pipeline's ``__call__`` while guidance
is on (e.g. from a step callback) is taken as a guidance batch too.

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

import functools
import inspect
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
#: Key of the captured call inputs holding a weak reference to the call's latent batch (see :func:`call_latents`).
LATENTS_KEY = "cfg_latents"


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

    A device-to-host synchronisation: :func:`guidance_half_slice` calls it only for a transformer call made outside
    the pipeline's ``__call__`` while the pipeline has guidance on.

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


def call_latents(latents: Any) -> dict[str, Any]:
    """The entry :func:`guidance_half_slice` reads, for an adapter's ``capture_call`` result: a weak reference (the
    call inputs outlive the call) to the call's latent batch, or None when it is not a tensor. Nothing is read from
    the tensor here.

    Example:
        >>> latents = torch.zeros(2, 4, 8)
        >>> call_latents(latents)[LATENTS_KEY]() is latents
        True
    """
    return {LATENTS_KEY: weakref.ref(latents) if isinstance(latents, torch.Tensor) else None}


@functools.cache
def _call_codes(pipeline_class: type) -> tuple[Any, ...]:
    """The code objects of the ``__call__`` methods of a pipeline class and its bases (decorators unwrapped)."""
    methods = (vars(klass).get("__call__") for klass in pipeline_class.__mro__)
    codes = (getattr(inspect.unwrap(method), "__code__", None) for method in methods if callable(method))
    return tuple(code for code in codes if code is not None)


@torch.compiler.disable  # the stack of the real frames (a whole-model compile traces the capture hook: one break)
def pipeline_call_running(pipeline: Any) -> bool:
    """Whether the caller runs inside ``pipeline.__call__``: some frame of the Python stack is a ``__call__`` of the
    pipeline's class (or of a base class) whose ``self`` is this pipeline. Host-side only (no tensor is read).

    Example:
        >>> class Pipeline:
        ...     def __call__(self):
        ...         return pipeline_call_running(self)
        >>> pipe = Pipeline()
        >>> pipe(), pipeline_call_running(pipe)
        (True, False)
    """
    codes = _call_codes(type(pipeline))
    frame = inspect.currentframe()
    try:
        while frame is not None:
            # compared by identity: code objects that torch.compile generates may not be hashable
            code = frame.f_code
            if any(code is candidate for candidate in codes) and frame.f_locals.get("self") is pipeline:
                return True
            frame = frame.f_back
        return False
    finally:
        del frame  # no reference cycle through the frames


def guidance_half_slice(
    batch_size: int, call_inputs: dict[str, Any], guidance_on: bool, pipeline: Any | None = None
) -> slice:
    """Rows to report for a call of a pipeline that batches classifier-free guidance as ``[uncond, cond]``.

    With guidance on, a call is a guidance batch when the pipeline makes it from its own ``__call__``
    (:func:`pipeline_call_running`; the pipelines feed ``cat([latents] * 2)`` then): decided on the host, no
    device-to-host synchronisation per call. A call made from outside that ``__call__`` (a direct transformer call
    while the pipeline still carries the guidance scale of an earlier generation) has no host-side signal: it is a
    guidance batch only when its two latent halves are identical (:func:`batch_halves_identical` of the latents in
    ``call_inputs`` (:func:`call_latents`), a synchronisation), so that a batch of different rows is kept whole. The
    real-image path never gets here: its batch is noise samples, never halved (``ConceptAttention._begin_call``).

    Args:
        batch_size: Rows of the call's batch.
        call_inputs: The captured call inputs (``skip_layers`` calls are never halved).
        guidance_on: The pipeline's guidance switch.
        pipeline: The pipeline of the ``with`` block (None: a bare transformer, no ``__call__`` to look for).

    Returns:
        ``slice(batch_size // 2, None)`` for a guidance batch, else ``slice(None)``.

    Example:
        >>> rows, twins = torch.arange(4.0).view(2, 2), torch.ones(2, 2)  # [B, ...] latents: B = 2
        >>> different = call_latents(rows)
        >>> guidance_half_slice(2, different, guidance_on=True)  # a direct call with two different rows
        slice(None, None, None)
        >>> guidance_half_slice(2, call_latents(twins), guidance_on=True)  # a direct call with identical halves
        slice(1, None, None)
        >>> class Pipeline:
        ...     def __call__(self, inputs):  # as a pipeline calls its transformer: no look at the latents
        ...         return guidance_half_slice(2, inputs, guidance_on=True, pipeline=self)
        >>> Pipeline()(different)
        slice(1, None, None)
    """
    if not guidance_on or batch_size % 2 or is_skip_layer_call(call_inputs):
        return slice(None)
    half = slice(batch_size // 2, None)
    if pipeline is not None and pipeline_call_running(pipeline):
        return half
    reference = call_inputs.get(LATENTS_KEY)
    latents = reference() if reference is not None else None
    return half if latents is not None and batch_halves_identical(latents) else slice(None)


def is_skip_layer_call(call_inputs: dict[str, Any]) -> bool:
    """Whether a transformer call is skip-layer guidance's extra call (some blocks are skipped)."""
    skip_layers = call_inputs.get("skip_layers")
    return skip_layers is not None and len(skip_layers) > 0
