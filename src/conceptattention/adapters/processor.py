"""State and helpers shared by every concept-attention processor (FLUX.1, Chroma, Flux.2, Qwen-Image, HunyuanVideo,
SD3, CogVideoX, AuraFlow, ...): the attention views that capture the stock processor's tensors, the stock-source
fingerprints, the per-block concept text features of Bria-Fibo and HiDream-I1, and the mixin that records the
scores; the native-SDPA fast path serves the dispatch-based (diffusers ``AttentionModuleMixin``) ones."""

from __future__ import annotations

import ast
import hashlib
import importlib
import inspect
import textwrap
import weakref
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import torch
from diffusers.models.attention_dispatch import dispatch_attention_fn
from torch import nn

from ..core import (
    concept_attention,
    pool_word_scores,
    saliency_scores,
    sdpa_bshd,
    select_heads,
)
from ..session import EarlyExit
from .base import UnsupportedSetupError


if TYPE_CHECKING:
    from ..session import ConceptSession


class _Tap:
    """A module call that also keeps its input (``keep_input``), its output or a copy of its output (``copy``: for
    processors that rotate the tensor in place afterwards) in ``sink[key]``."""

    def __init__(
        self, module: nn.Module, sink: dict[str, torch.Tensor], key: str, keep_input: bool = False, copy: bool = False
    ) -> None:
        self.module = module
        self.sink = sink
        self.key = key
        self.keep_input = keep_input
        self.copy = copy

    def __call__(self, hidden_states: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        output = self.module(hidden_states, *args, **kwargs)
        if self.keep_input:
            self.sink[self.key] = hidden_states
        else:
            self.sink[self.key] = output.clone() if self.copy else output
        return output


class AttentionView:
    """Stand-in for an attention module, handed to diffusers' own processor: every attribute is the module's, except
    that the ``taps`` (e.g. ``("norm_k", "to_v", "to_qkv")``) also leave their output in ``sink[name]`` and
    ``to_out[0]`` leaves its *input* (the attention output before the output projection) in ``sink["to_out"]``.

    The stock processor runs unchanged on it (same modules, same operations, same order), so the model's outputs
    are bit-identical by construction, and nothing is registered on the model, so nothing can leak. A tap whose
    module is absent (``None``, e.g. no QK-norm) is left as it is. Taps named in ``copies`` keep a clone of the
    output (CogView4's processor rotates its normed queries and keys in place). Modules named in ``inputs`` (e.g.
    ``("to_add_out",)``: the prompt rows of the attention output) leave their *input* in ``sink[name]``.

    Example:
        >>> from conceptattention.testing.flux import tiny_flux_transformer
        >>> attn = tiny_flux_transformer().transformer_blocks[0].attn
        >>> sink = {}
        >>> view = AttentionView(attn, sink, ("norm_k",))
        >>> view.heads == attn.heads
        True
    """

    def __init__(
        self,
        attn: nn.Module,
        sink: dict[str, torch.Tensor],
        taps: tuple[str, ...],
        copies: tuple[str, ...] = (),
        inputs: tuple[str, ...] = (),
    ) -> None:
        self._attn = attn
        for name in (*taps, *inputs):
            module = getattr(attn, name, None)
            if module is not None:
                setattr(self, name, _Tap(module, sink, name, keep_input=name in inputs, copy=name in copies))
        to_out = getattr(attn, "to_out", None)
        if to_out is not None:
            self.to_out = (_Tap(to_out[0], sink, "to_out", keep_input=True), *to_out[1:])

    def __getattr__(self, name: str) -> Any:
        return getattr(self._attn, name)


class ProjectionTapView:
    """An attention module for diffusers' processor in which the modules named in ``outputs`` leave their output and
    those named in ``inputs`` their input in ``sink`` (for modules that :class:`AttentionView` does not cover:
    HiDream's ``to_out`` is a plain ``Linear``, JoyImage's output projection is ``img_attn_proj``).

    Example:
        >>> from conceptattention.testing import tiny_hidream_image_transformer
        >>> attn = tiny_hidream_image_transformer().double_stream_blocks[0].block.attn1
        >>> view = ProjectionTapView(attn, {}, outputs=("k_rms_norm",), inputs=("to_out",))
        >>> view.heads == attn.heads
        True
    """

    def __init__(
        self, attn: nn.Module, sink: dict[str, torch.Tensor], outputs: tuple[str, ...], inputs: tuple[str, ...] = ()
    ) -> None:
        self._attn = attn
        for name in outputs:
            setattr(self, name, _Tap(getattr(attn, name), sink, name))
        for name in inputs:
            setattr(self, name, _Tap(getattr(attn, name), sink, name, keep_input=True))

    def __getattr__(self, name: str) -> Any:
        return getattr(self._attn, name)


def check_captured(
    sink: dict[str, torch.Tensor], groups: tuple[tuple[str, ...], ...], processor: Any, module: str
) -> None:
    """Raise unless ``sink`` holds one key of every group (what the stock processor must have passed through).

    Raises:
        RuntimeError: naming what is missing and the adapter module to re-check against the installed diffusers.
    """
    missing = [" / ".join(group) for group in groups if not any(key in sink for key in group)]
    if missing:
        raise UnsupportedSetupError(
            f"diffusers' {type(processor).__name__} did not call {', '.join(missing)} of the attention module, where "
            f"ConceptAttention takes the image tensors. The installed diffusers changed this processor: re-check "
            f"conceptattention.adapters.{module}."
        )


def captured_qkv(
    sink: dict[str, torch.Tensor], heads: int, batch_size: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The queries, keys and values ``[B, S, H, D]`` that the stock processor projected, before any QK-norm: split
    from the fused ``to_qkv`` output ``[B, S, 3·H·D]`` when the projections are fused, else the ``to_q`` / ``to_k`` /
    ``to_v`` outputs ``[B, S, H·D]`` (taps of an :class:`AttentionView`).

    Example:
        >>> q, k, v = captured_qkv({"to_qkv": torch.zeros(2, 5, 3 * 4 * 8)}, heads=4, batch_size=2)
        >>> q.shape
        torch.Size([2, 5, 4, 8])
    """
    if "to_qkv" in sink:  # fused projections
        qkv = sink["to_qkv"]  # [B, S, 3·H·D]
        query, key, value = torch.split(qkv, qkv.shape[-1] // 3, dim=-1)  # [B, S, H·D] each
    else:
        query, key, value = sink["to_q"], sink["to_k"], sink["to_v"]  # [B, S, H·D] each
    shape = (batch_size, -1, heads, key.shape[-1] // heads)  # [B, S, H·D] -> [B, S, H, D]
    return query.view(shape), key.view(shape), value.view(shape)


#: diffusers release against which every ``STOCK_SOURCES`` fingerprint was taken (and the adapters re-checked).
STOCK_SOURCES_VERSION = "0.42.1"


def resolve_dotted(path: str) -> Any:
    """The object at ``"package.module.Class.attribute"`` (the longest importable module prefix, then attributes).

    Example:
        >>> resolve_dotted("torch.nn.Linear.forward").__name__
        'forward'
    """
    parts = path.split(".")
    for split in range(len(parts) - 1, 0, -1):
        try:
            target: Any = importlib.import_module(".".join(parts[:split]))
        except ImportError:
            continue
        for name in parts[split:]:
            target = getattr(target, name)
        return target
    raise ImportError(f"Cannot import {path!r}.")


def source_fingerprint(obj: Any) -> str:
    """SHA-256 of a function's normalised source: its syntax tree without docstrings, so comments, formatting and
    docstrings do not count, any change to the code does.

    Example:
        >>> len(source_fingerprint(resolve_dotted("torch.nn.Linear.forward")))
        64
    """
    tree = ast.parse(textwrap.dedent(inspect.getsource(obj)))
    for node in ast.walk(tree):
        body = getattr(node, "body", None)
        if (
            isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef | ast.Module)
            and body
            and isinstance(body[0], ast.Expr)
            and isinstance(body[0].value, ast.Constant)
            and isinstance(body[0].value.value, str)
        ):
            node.body = body[1:] or [ast.Pass()]
    return hashlib.sha256(ast.dump(tree, include_attributes=False).encode()).hexdigest()


def stock_source_drift(processor_class: type) -> list[str]:
    """The diffusers functions in ``processor_class.STOCK_SOURCES`` whose installed source differs from every
    version the class was checked against (empty when nothing changed).

    ``STOCK_SOURCES`` entries are ``(dotted path, digest)`` or ``(dotted path, (digest, ...))``: one digest per
    diffusers release whose source was re-checked (their fingerprints may differ while the capture points hold).

    Example:
        >>> from conceptattention.adapters.flux import FluxConceptAttnProcessor
        >>> stock_source_drift(FluxConceptAttnProcessor)  # diffusers 0.42.1
        []
    """
    drifted = []
    for path, digests in processor_class.STOCK_SOURCES:
        accepted = (digests,) if isinstance(digests, str) else tuple(digests)
        if source_fingerprint(resolve_dotted(path)) not in accepted:
            drifted.append(path)
    return drifted


def native_backend_active() -> bool:
    """Whether diffusers' active attention backend is PyTorch's native SDPA (the default)."""
    from diffusers.models import attention_dispatch

    registry = getattr(attention_dispatch, "_AttentionBackendRegistry", None)
    if registry is None:
        return False
    backend, _ = registry.get_active_backend()
    return getattr(backend, "value", backend) == "native"


def with_prompt_rows(
    tensors: dict[str, torch.Tensor | None], prompt_rows: dict[str, torch.Tensor]
) -> dict[str, torch.Tensor | None]:
    """The score inputs with the prompt's word-token rows appended to the concept side (``concept_output``,
    ``concept_key``, ``concept_value``, on the concept axis 1); concept tensors that are ``None`` (no concepts) are
    replaced by the prompt rows.

    Example:
        >>> rows = {"concept_key": torch.zeros(1, 3, 2, 4)}
        >>> with_prompt_rows({"concept_key": torch.ones(1, 2, 2, 4)}, rows)["concept_key"].shape
        torch.Size([1, 5, 2, 4])
    """
    merged = dict(tensors)
    for name, rows in prompt_rows.items():
        concept_side = merged.get(name)
        merged[name] = rows if concept_side is None else torch.cat([concept_side, rows.to(concept_side.dtype)], dim=1)
    return merged


#: Keys of ``session.call.inputs``: the concepts' projected layer features of every double block, and the counter of
#: the double block running.
BLOCK_FEATURES_KEY = "concept_block_features"
BLOCK_COUNTER_KEY = "concept_block_counter"


def stash_block_features(
    session: ConceptSession, projections: Sequence[nn.Module], features: torch.Tensor, batch: int
) -> None:
    """Project the concepts' per-block text-encoder features once per call: block ``k``'s are
    ``projections[k](features[:, k])``; stored stacked ``[N, B, C, d']`` with a block counter (a tensor, so that the
    per-block code reads no Python layer index and a compiled block class traces one graph for all blocks).

    Args:
        session: The run state (``session.call.inputs`` receives them).
        projections: The model's per-block text projections (``caption_projection``).
        features: ``[C, N, D_enc]``, the concepts' features of the layers the ``N`` double blocks take.
        batch: Rows of the call's batch.
    """
    projected = torch.stack([projections[index](features[:, index]) for index in range(features.shape[1])])
    # projected: [N, C, d']
    session.call.inputs[BLOCK_FEATURES_KEY] = projected.unsqueeze(1).expand(-1, batch, -1, -1)  # [N, B, C, d']
    session.call.inputs[BLOCK_COUNTER_KEY] = torch.zeros(1, dtype=torch.long, device=features.device)


def next_block_features(session: ConceptSession) -> torch.Tensor:
    """The running double block's projected concept features ``[B, C, d']`` (:func:`stash_block_features`); advances
    the block counter."""
    counter = session.call.inputs[BLOCK_COUNTER_KEY]  # [1]: this double block's index
    features = session.call.inputs[BLOCK_FEATURES_KEY].index_select(0, counter)[0]  # [N, B, C, d'] -> [B, C, d']
    counter.add_(1)
    return features


class ConceptProcessorMixin:
    """Put first in the bases of a concept processor: ``class X(ConceptProcessorMixin, StockProcessor)``.

    Every concept processor lists in ``STOCK_SOURCES`` the diffusers functions it depends on, as ``(dotted path,
    source fingerprint)`` pairs taken on diffusers :data:`STOCK_SOURCES_VERSION`: the stock processor(s) it runs
    through an :class:`AttentionView` (their capture points) or, for ``COPIES_STOCK`` processors, the stock body
    whose joint-attention path it re-implements. ``tests/adapters/test_stock_drift.py`` fails when the installed
    diffusers differs, with the processor to re-check.

    Args:
        session: The shared run state.
        layer: Index of the processor's block among the joint blocks.
        block: The transformer block (held weakly; its text-stream norms and MLP are used).
        transformer: The transformer (held weakly; its text/time embedders are used).
        original: The diffusers processor being wrapped (``self.original``): it computes the joint attention; its
            attention backend and parallel config are read and written through this processor, so that
            ``set_attention_backend`` calls inside the ``with`` block reach it.
    """

    STOCK_SOURCES: tuple[tuple[str, str | tuple[str, ...]], ...] = ()
    COPIES_STOCK: bool = False

    def __init__(
        self, session: ConceptSession, layer: int, block: nn.Module, transformer: nn.Module, original: Any
    ) -> None:
        super().__init__()
        self.original = original
        self.session = session
        self.layer = layer
        # fixed at install: whether the explain path stops after this block. A plain bool, so a compiled block class
        # guards on its value (two graphs at most) instead of on the layer index (one graph per block)
        self.exits_after = session.stop_after_last_layer and layer >= session.last_layer
        # fixed at install too: whether a later block reads the concept stream (no block after the last selected
        # one runs the branch, so its update there would be computed for nothing)
        self.advances_stream = layer < session.last_layer
        self._block = weakref.ref(block)
        self._transformer = weakref.ref(transformer)

    # The attention backend and parallel config live on the wrapped diffusers processor, which computes the joint
    # attention: ``transformer.set_attention_backend(...)`` inside the ``with`` block reaches it through these.
    @property
    def _attention_backend(self) -> Any:
        return getattr(self.original, "_attention_backend", None)

    @_attention_backend.setter
    def _attention_backend(self, value: Any) -> None:
        self.original._attention_backend = value

    @property
    def _parallel_config(self) -> Any:
        return getattr(self.original, "_parallel_config", None)

    @_parallel_config.setter
    def _parallel_config(self, value: Any) -> None:
        self.original._parallel_config = value

    def _space_taps(self, *taps: str, query: str = "norm_q") -> tuple[str, ...]:
        """``taps``, with the image-query tap ``query`` appended for the cross-attention space (the only score space
        that reads the image queries)."""
        return (*taps, query) if self.session.config.space == "cross_attention" else taps

    def _run_on_view(
        self,
        attn: nn.Module,
        taps: tuple[str, ...],
        module: str,
        /,
        *args: Any,
        copies: tuple[str, ...] = (),
        **kwargs: Any,
    ) -> tuple[Any, dict[str, torch.Tensor]]:
        """Run the wrapped stock processor on an :class:`AttentionView` of ``attn`` keeping ``taps`` (``copies``
        cloned) and the ``to_out[0]`` input; ``args``/``kwargs`` are the processor's own after the attention module.

        Returns:
            The processor's outputs, untouched, and the sink of captured tensors.

        Raises:
            UnsupportedSetupError: when the processor did not pass through every tap and ``to_out`` (names the
                adapter module ``conceptattention.adapters.<module>`` to re-check).
        """
        sink: dict[str, torch.Tensor] = {}
        outputs = self.original(AttentionView(attn, sink, taps, copies=copies), *args, **kwargs)
        check_captured(sink, tuple((name,) for name in (*taps, "to_out")), self.original, module)
        return outputs, sink

    def _run_on_projection_view(
        self,
        attn: nn.Module,
        outputs: tuple[str, ...],
        inputs: tuple[str, ...],
        module: str,
        /,
        *args: Any,
        **kwargs: Any,
    ) -> tuple[Any, dict[str, torch.Tensor]]:
        """:meth:`_run_on_view` with a :class:`ProjectionTapView` (modules named in ``outputs`` keep their output,
        those in ``inputs`` their input); every one of them must have been called."""
        sink: dict[str, torch.Tensor] = {}
        result = self.original(ProjectionTapView(attn, sink, outputs, inputs), *args, **kwargs)
        check_captured(sink, tuple((name,) for name in (*outputs, *inputs)), self.original, module)
        return result, sink

    def _attend(self, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
        """Attention of the C concept rows on (B, S, H, D) tensors: the model's backend, or plain SDPA when that is
        PyTorch's native one (skips diffusers' dispatch bookkeeping, whose host-side cost matters for these tiny
        calls: the concept branch is launch-bound on a GPU). Same kernel either way."""
        if self._attention_backend is None and native_backend_active():
            return sdpa_bshd(query, key, value)
        return dispatch_attention_fn(query, key, value, backend=self._attention_backend)

    def _attend_and_record(
        self,
        concept_query: torch.Tensor,
        concept_key: torch.Tensor,
        concept_value: torch.Tensor,
        image_key: torch.Tensor,
        image_value: torch.Tensor,
        image_output: torch.Tensor,
        image_query: torch.Tensor | None,
        output_gate: torch.Tensor | None = None,
        attend: Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
    ) -> torch.Tensor | None:
        """The concept attention of this block (queries/keys/values ``[B, C, H, D]``, image keys/values
        ``[B, I, H, D]``, the config's concept-attention mode) and its recorded scores.

        Args:
            image_output: The image attention output before the output projection, ``[B, I, H·D]``.
            image_query: The image queries ``[B, I, H, D]`` (the cross-attention space), else None.
            output_gate: Multiplied into the concept attention output ``[B, C, H·D]`` before the cast (Krea 2's
                gated attention), else None.
            attend: The attention of the concept rows on ``[B, S, H, D]`` tensors (default :meth:`_attend`, the
                model's backend; AuraFlow passes its own scale).

        Returns:
            The concept attention output ``[B, C, H·D]`` in ``image_output``'s dtype, to advance the concept stream;
            None when no later block needs it (the last selected block).
        """
        concept_output = concept_attention(
            concept_query,
            concept_key,
            concept_value,
            image_key,
            image_value,
            self.session.config.concept_attention,
            self._attend if attend is None else attend,
        )
        concept_output = concept_output.flatten(2, 3)  # [B, C, H, D] -> [B, C, H·D]
        if output_gate is not None:
            concept_output = concept_output * output_gate
        concept_output = concept_output.to(image_output.dtype)
        recorded = self._record_scores(
            concept_output=concept_output,
            image_output=image_output,
            image_query=image_query,
            concept_key=concept_key,
            image_value=image_value,
            concept_value=concept_value,
        )
        return concept_output if recorded else None

    def _record_scores(self, prompt_rows: dict[str, torch.Tensor] | None = None, **tensors: torch.Tensor | None) -> bool:
        """Record this block's saliency scores; whether the concept stream must still advance (in every block but
        the last selected one: no later block reads it).

        ``tensors`` are the :func:`~conceptattention.core.saliency_scores` inputs (``concept_output``,
        ``image_output``, ``image_query``, ``concept_key``, ``image_value``, ``concept_value``). Every concept block
        computes its scores (a ``[B, C, I]`` product, small next to the block) and the session keeps the selected
        layers' ones: while compiling, no branch here reads the layer index, so a compiled block class traces a
        single graph; eagerly, unselected layers skip the scores.

        ``prompt_rows`` (prompt-word maps): the prompt's word tokens on the concept side, ``{"concept_output":
        [B, T', H·D], "concept_key": [B, T', H, D], "concept_value": [B, T', H, D]}``, appended after the concepts
        (which may be absent: ``None`` tensors when only prompt words are mapped).

        Raises:
            EarlyExit: after the last needed block on the explain path (nothing later has to run).
        """
        session = self.session
        if prompt_rows is not None:
            tensors = with_prompt_rows(tensors, prompt_rows)
        if torch.compiler.is_compiling():  # traced: no branch on the layer (one graph for every block)
            if session.config.keep_heads:
                raise UnsupportedSetupError("keep_heads=True is not available while the blocks run compiled.")
            session.record(self._layer_scores(tensors)[0])
        elif session.is_selected(self.layer):  # eager: unselected layers compute no scores
            scores, head_scores = self._layer_scores(tensors)
            session.record_layer(self.layer, scores, head_scores)  # [B, C, I], [B, C, H, I] or None
        else:
            session.skip_layer()
        if self.exits_after:  # explain path only
            session.end_call()
            raise EarlyExit()
        # while compiling, every block advances (not read: a compiled block class keeps its two graphs)
        return torch.compiler.is_compiling() or self.advances_stream

    def _layer_scores(self, tensors: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor | None]:
        """This layer's scores ``[B, C, I]`` (from the config's heads) and, with ``keep_heads``, the per-head scores
        ``[B, C, H, I]``. With prompt-word maps the concept side holds the concepts then the prompt's word tokens,
        and the scores are pooled to concepts then words (a word's score = the mean of its tokens' scores)."""
        session = self.session
        config = session.config
        options = {"scale_cross_attention": config.cross_attention_scale, **tensors}
        head_scores = None
        if config.heads is not None or config.keep_heads:
            head_scores = saliency_scores(config.space, per_head=True, **options)  # [B, C, H, I]
        if config.heads is None:
            scores = saliency_scores(config.space, **options)  # [B, C, I]
        else:
            assert head_scores is not None
            scores = select_heads(head_scores, config.heads)  # [B, C, I]
        if session.score_pooling is not None:
            scores = pool_word_scores(scores, session.score_pooling)  # [B, C + T', I] -> [B, C + W, I]
            if head_scores is not None:
                head_scores = pool_word_scores(head_scores, session.score_pooling)  # [B, C + W, H, I]
        return scores, head_scores if config.keep_heads else None

    def _concept_tokens(self, like: torch.Tensor, text_input: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
        """The concept embeddings ``[C, D_text]`` through the model's text input layer (``context_embedder``...),
        broadcast over the batch of ``like``: ``[B, C, d]``. Called inside the forward (after offloading hooks have
        moved the embedders), in the activations' dtype."""
        embeds = self.session.concept_embeds.to(device=like.device, dtype=like.dtype)  # [C, D_text]
        return text_input(embeds).unsqueeze(0).expand(like.shape[0], -1, -1)  # [C, d] -> [B, C, d]
