"""The ``ConceptAttention`` context manager: install concept processors, collect maps, always restore."""

from __future__ import annotations

import inspect
import warnings
from collections.abc import Sequence
from typing import Any

import torch
from diffusers.hooks.hooks import BaseState, HookRegistry, ModelHook, StateManager
from torch import nn

from .adapters import UnsupportedSetupError, find_transformer, get_adapter
from .adapters.base import active_cache, cache_refusal
from .config import ConceptAttentionConfig, ConfigError, model_defaults
from .encoding import ConceptError, encode_concepts_isolated, validate_concepts
from .encoding import prompt_words as split_prompt_words
from .errors import ConceptAttentionError
from .maps import ConceptMaps, ConceptMapsError
from .session import ConceptSession


PROMPT = "prompt"
"""``ConceptAttention(pipe, "prompt")``: map the prompt's words (see ``prompt_words``)."""

_HOOK_NAME = "conceptattention_call"
_ACTIVE_ATTRIBUTE = "_conceptattention_active"


def prompt_word_source(adapter: Any) -> Any:
    """The adapter class's own ``prompt_word_source`` method (``(adapter, pipeline, encode_prompt arguments) ->
    (fast tokenizer, prompt or None, max_length)``), or None when its class does not declare one itself: a subclass
    (e.g. Chroma of FLUX.1) must declare it, since its processor must hand over the prompt's text rows too.

    Example:
        >>> from conceptattention.adapters import get_adapter
        >>> from conceptattention.testing import tiny_flux_transformer
        >>> prompt_word_source(get_adapter(tiny_flux_transformer())) is not None
        True
    """
    return vars(type(adapter)).get("prompt_word_source")


class NoMapsError(ConceptAttentionError, RuntimeError):
    """Maps were requested before any were recorded."""


class _NoState(BaseState):
    def reset(self, *args: Any, **kwargs: Any) -> None:
        pass


def records_call(context_name: str | None) -> bool:
    """Whether a transformer call under the pipeline's ``cache_context(context_name)`` gives the maps.

    Pipelines with true classifier-free guidance name the unconditional call ``"uncond"``; diffusers' guiders name
    their calls after the prediction they give: ``"pred_cond"`` is the conditional one, while ``"pred_uncond"`` and the
    extra guidance calls (``"pred_cond_skip"``, ``"pred_cond_seg"``, ...) are not recorded.

    Example:
        >>> [records_call(name) for name in (None, "cond", "uncond", "pred_cond", "pred_uncond", "pred_cond_skip")]
        [True, True, False, True, False, False]
    """
    if context_name == "uncond":
        return False
    return not (isinstance(context_name, str) and context_name.startswith("pred_") and context_name != "pred_cond")


class _TransformerCallHook(ModelHook):
    """Capture-only diffusers hook on the transformer: starts and ends a call in the session.

    It is a *stateful* diffusers hook only so that diffusers hands it the pipeline's ``cache_context`` name, which
    tells the conditional call of true classifier-free guidance (``"cond"``) from the unconditional one.
    """

    _is_stateful = True

    def __init__(self, owner: ConceptAttention) -> None:
        super().__init__()
        self.owner = owner
        self.context_state = StateManager(_NoState)

    def pre_forward(self, module: nn.Module, *args: Any, **kwargs: Any) -> tuple[tuple[Any, ...], dict[str, Any]]:
        context = getattr(self.context_state, "_context", getattr(self.context_state, "_current_context", None))
        name = getattr(context, "name", context)  # diffusers >= 0.41: a CacheContext; before: the name (str)
        self.owner._begin_call(args, kwargs, unconditional=not records_call(name))
        return args, kwargs

    def post_forward(self, module: nn.Module, output: Any) -> Any:
        self.owner._end_call()
        return output

    def reset_state(self, module: nn.Module) -> nn.Module:
        return module


class ProcessorSwap:
    """Activation and exit of a context manager that swaps attention processors and hooks into a model.

    Subclasses set ``_active = False`` in ``__init__`` and define ``_install`` (swap in processors and hooks) and
    ``_restore`` (put the originals back; safe to call more than once and after a partial ``_install``). Their
    ``__enter__`` runs its checks, then :meth:`_activate`. Shared by :class:`ConceptAttention` and
    :class:`~conceptattention.evaluation.daam.DAAMRecorder`.
    """

    _active: bool

    def _install(self) -> None:
        raise NotImplementedError

    def _restore(self) -> None:
        raise NotImplementedError

    def _activate(self) -> None:
        """Install; if that fails part-way, restore what was installed and re-raise."""
        try:
            self._install()
        except BaseException:
            self._restore()
            raise
        self._active = True

    def __exit__(self, *exc_info: Any) -> None:
        self._restore()
        self._active = False


class ConceptAttention(ProcessorSwap):
    """Concept saliency maps from a multi-modal diffusion transformer, for the duration of a ``with`` block.

    Inside the block, every joint attention block also pushes one extra token per concept through the text
    stream's weights; concepts attend to the image (and each other), the image and prompt never attend to the
    concepts, so the pipeline's output is bit-identical. The maps are the softmax over concepts of the dot products
    between image and concept attention outputs, averaged over the selected layers and steps.

    Args:
        model: A diffusers pipeline (e.g. ``FluxPipeline``) or its transformer (e.g. ``FluxTransformer2DModel``).
        concepts: Concept strings, e.g. ``["dragon", "rock", "sky"]``. With a bare transformer, give
            ``concept_embeds`` as well (the names then only label the maps), or only ``concept_embeds``.
            ``"prompt"`` (the string, not in a list) maps the prompt's words only: the same as ``prompt_words=True``
            without concepts.
        concept_embeds: ``[C, D_text]`` precomputed concept embeddings in the text encoder's output space (FLUX.1:
            T5, ``joint_attention_dim``); skips text encoding.
        prompt_words: Also map every word of the prompt (after the concepts; no extra concept stream): each word's
            scores are taken from the prompt's own text tokens in the same space (output: the text rows of the
            attention output before ``to_add_out``; cross-attention: image queries · text keys; value: image values
            · text values), a word of several tokens gets the **mean of its tokens' raw scores, before the softmax**
            over concepts and words. Words come from the fast tokenizer's word ids (its pre-tokenisation: FLUX.1's
            T5 splits on spaces), special tokens and padding are left out; the prompt is read when the pipeline
            encodes it (one prompt per run; ``prompt_embeds=`` cannot be mapped). A word that repeats an earlier
            word or a concept is labelled ``word#2``, ``word#3``... FLUX.1 only: other families raise
            :class:`ConceptError` naming the family.
        config: A :class:`ConceptAttentionConfig`; or pass its fields as keyword options instead.
        **options: Fields of :class:`ConceptAttentionConfig` (``layers``, ``timesteps``, ``space``, ``softmax``...).

    Raises:
        ConceptError: empty, duplicate or empty-string concepts, or too long for the text encoder.
        UnsupportedModelError: the transformer class has no adapter.
        UnsupportedSetupError: cache accelerators, context parallelism, IP-Adapter processors, gradient
            checkpointing with gradients enabled.

    Example:
        >>> from conceptattention import ConceptAttention
        >>> from conceptattention.testing import tiny_flux_pipeline
        >>> pipe = tiny_flux_pipeline()
        >>> with ConceptAttention(pipe, ["dog", "sky"]) as ca:
        ...     image = pipe("a dog", height=32, width=32, num_inference_steps=2, max_sequence_length=32).images[0]
        >>> ca.maps.tensor.shape[:2]
        torch.Size([2, 1])
        >>> with ConceptAttention(pipe, ["sky"], prompt_words=True, keep_heads=True) as ca:
        ...     image = pipe("a dog", height=32, width=32, num_inference_steps=2, max_sequence_length=32).images[0]
        >>> ca.maps.concepts, tuple(ca.maps.head_maps.shape)  # [C + W, H, F, h, w]
        (('sky', 'a', 'dog'), (3, 2, 1, 16, 16))
    """

    def __init__(
        self,
        model: Any,
        concepts: Sequence[str] | str | None = None,
        *,
        concept_embeds: torch.Tensor | None = None,
        prompt_words: bool = False,
        config: ConceptAttentionConfig | None = None,
        **options: Any,
    ) -> None:
        if config is not None and options:
            raise ConfigError("Pass either config= or keyword options, not both.")
        self.config = config if config is not None else ConceptAttentionConfig(**options)
        self.model = model
        self.transformer = find_transformer(model)
        self.pipeline = None if isinstance(model, nn.Module) else model
        self.adapter = get_adapter(self.transformer)
        choices, chosen = self.adapter.concept_text_encoders, self.config.concept_text_encoder
        if chosen is not None and chosen not in choices:
            offered = f"one of {', '.join(map(repr, choices))}" if choices else "none: it has one text encoder"
            raise ConfigError(
                f"concept_text_encoder={chosen!r} is not offered by the {self.adapter.name} adapter ({offered})."
            )
        if isinstance(concepts, str) and concepts == PROMPT:
            concepts, prompt_words = None, True
        self.prompt_words = bool(prompt_words)
        if self.prompt_words:
            self._check_prompt_words()
        if self.prompt_words and concepts is None and concept_embeds is None:
            self.concepts, self._concept_embeds = (), None
        else:
            self.concepts, self._concept_embeds = self._check_concepts(concepts, concept_embeds)
        self.effective_softmax = self.config.softmax
        if self.config.softmax and len(self.concepts) == 1 and not self.prompt_words:
            warnings.warn(
                "Softmax over a single concept is identically 1; using the raw scores instead. Add contrasting "
                "concepts (e.g. a background word) for a softmax-normalised map.",
                UserWarning,
                stacklevel=2,
            )
            self.effective_softmax = False
        blocks = self.adapter.joint_blocks(self.transformer)
        # joint blocks, then the blocks the concept stream may continue into (FLUX.1's single blocks)
        self._layer_paths = [path for path, _ in self.adapter.layer_blocks(self.transformer)]
        self.layers = self._resolve_layers(len(blocks))
        self.session: ConceptSession | None = None
        self._reduce_batch = False
        self._stop_after_last_layer = False
        self._saved_processors: list[tuple[nn.Module, Any]] = []
        self._our_processors: list[Any] = []
        self._hook: _TransformerCallHook | None = None
        self._extra_handles: list[Any] = []
        self._created_registry = False
        self._had_instance_forward = False
        self._encode_prompt_saved: tuple[bool, Any] | None = None
        self._prompt_read = False
        self._active = False

    # ----- validation --------------------------------------------------------------------------------------------

    def _check_concepts(
        self, concepts: Sequence[str] | None, concept_embeds: torch.Tensor | None
    ) -> tuple[tuple[str, ...], torch.Tensor | None]:
        if concept_embeds is not None:
            if not isinstance(concept_embeds, torch.Tensor) or concept_embeds.ndim != 2:
                raise ConceptError("concept_embeds must be a [C, D_text] tensor (one row per concept).")
            if concept_embeds.shape[0] == 0:
                raise ConceptError("concept_embeds is empty; give at least one concept.")
            if not torch.isfinite(concept_embeds).all():
                raise ConceptError("concept_embeds contains NaN or infinite values.")
            if concepts is None:
                concepts = [f"concept_{index}" for index in range(concept_embeds.shape[0])]
            names = validate_concepts(concepts)
            if len(names) != concept_embeds.shape[0]:
                raise ConceptError(
                    f"{len(names)} concept names were given for {concept_embeds.shape[0]} concept embeddings."
                )
            return names, concept_embeds
        if concepts is None:
            raise ConceptError("Give concepts (strings) or concept_embeds (a [C, D_text] tensor).")
        names = validate_concepts(concepts)
        if self.pipeline is None:
            raise ConceptError(
                "Encoding concept strings needs the pipeline's text encoder, but a bare transformer was given. Pass the "
                "pipeline, or pass concept_embeds= (a [C, D_text] tensor of text-encoder outputs)."
            )
        return names, None

    def _check_prompt_words(self) -> None:
        if self.pipeline is None:
            raise ConceptError(
                "Prompt-word maps read the prompt from the pipeline, but a bare transformer was given; pass the pipeline."
            )
        if prompt_word_source(self.adapter) is None:
            raise ConceptError(
                f"Prompt-word maps are not implemented for the {self.adapter.name!r} family "
                f"({type(self.transformer).__name__}); they are available for FLUX.1. Map concepts instead."
            )

    def _resolve_layers(self, num_blocks: int) -> tuple[int, ...]:
        if num_blocks == 0:
            raise ConfigError(f"{type(self.transformer).__name__} has no joint blocks.")
        requested = self.config.layers
        if requested is None:
            requested = model_defaults(self.transformer).layers  # the model's recommendation, if it carries one
            if requested is None:
                return self.adapter.default_layers(num_blocks)
        resolved: list[int] = []
        paths = {path: index for index, path in enumerate(self._layer_paths)}
        extra = len(paths) - num_blocks  # blocks after the joint ones (FLUX.1's single blocks), selectable too
        for layer in requested:
            if isinstance(layer, str):
                if layer not in paths:
                    raise ConfigError(
                        f"Unknown layer {layer!r}; joint blocks are {self.adapter.block_path(0)} .. "
                        f"{self.adapter.block_path(num_blocks - 1)}"
                        + (f", then {self._layer_paths[num_blocks]} .. {self._layer_paths[-1]}." if extra else ".")
                    )
                index = paths[layer]
            else:
                if not -num_blocks <= layer < len(paths):
                    more = f", {num_blocks}..{len(paths) - 1} the blocks after them" if extra else ""
                    raise ConfigError(
                        f"Layer {layer} is out of range: {type(self.transformer).__name__} has {num_blocks} joint "
                        f"blocks (valid indices 0..{num_blocks - 1}{more}, or negative from the end of the joint "
                        "blocks)."
                    )
                index = layer % num_blocks if layer < 0 else layer
            if index in resolved:
                raise ConfigError(f"Layer {layer!r} is selected twice.")
            resolved.append(index)
        return tuple(sorted(resolved))

    # ----- install / restore ---------------------------------------------------------------------------------

    def __enter__(self) -> ConceptAttention:
        if self._active:
            raise UnsupportedSetupError("This ConceptAttention block is already active; it cannot be entered twice.")
        if getattr(self.transformer, _ACTIVE_ATTRIBUTE, False):
            raise UnsupportedSetupError(
                "Another ConceptAttention block is already active on this transformer; nested or concurrent blocks "
                "would corrupt each other's maps. Exit the other block first."
            )
        self.adapter.check_model(self.transformer)
        from .adapters import common_checks

        common_checks(self.transformer)
        self._check_heads()
        embeds = self._concept_embeds
        if embeds is None and not self.concepts:  # prompt words only: no concept stream
            embeds = torch.zeros(0, 0)
        elif embeds is None:
            embeds = encode_concepts_isolated(
                self.adapter,
                self.pipeline,
                self.concepts,
                self.config.concept_pooling,
                text_encoder=self.config.concept_text_encoder,
            )
        self.session = ConceptSession(
            self.config, embeds.detach(), self.layers, self.effective_softmax, reduce_batch=self._reduce_batch
        )
        self.session.stop_after_last_layer = self._stop_after_last_layer
        self._activate()
        return self

    def _check_heads(self) -> None:
        heads = self.config.heads
        if heads is None:
            return
        attention = self.adapter.attention_module(self.adapter.joint_blocks(self.transformer)[self.layers[0]])
        num_heads = getattr(attention, "heads", None)
        if isinstance(num_heads, int) and max(heads) >= num_heads:
            raise ConfigError(
                f"heads={list(heads)} selects a head that {type(self.transformer).__name__} does not have: its joint "
                f"blocks have {num_heads} heads (0..{num_heads - 1})."
            )

    def _install(self) -> None:
        assert self.session is not None
        setattr(self.transformer, _ACTIVE_ATTRIBUTE, True)
        if self.prompt_words:
            self._wrap_encode_prompt()
        for layer, (_, block) in enumerate(self.adapter.layer_blocks(self.transformer)):
            if layer > self.session.last_layer:
                break
            attention = self.adapter.attention_module(block)
            original = attention.processor
            processor = self.adapter.make_processor(self.session, layer, block, original, self.transformer)
            self._saved_processors.append((attention, original))
            attention.set_processor(processor)
            self._our_processors.append(processor)
        self._had_instance_forward = "forward" in vars(self.transformer)
        self._created_registry = getattr(self.transformer, "_diffusers_hook", None) is None
        registry = HookRegistry.check_if_exists_or_initialize(self.transformer)
        self._hook = _TransformerCallHook(self)
        registry.register_hook(self._hook, _HOOK_NAME)
        self._extra_handles = list(self.adapter.install_hooks(self.transformer, self.session))

    def _wrap_encode_prompt(self) -> None:
        """Read the prompt where the pipeline encodes it: ``pipeline.encode_prompt`` is shadowed by an instance
        attribute that records the prompt's words, then calls the original (restored on exit)."""
        pipeline = self.pipeline
        original = pipeline.encode_prompt
        self._encode_prompt_saved = ("encode_prompt" in vars(pipeline), vars(pipeline).get("encode_prompt"))
        signature = inspect.signature(original)

        def encode_prompt(*args: Any, **kwargs: Any) -> Any:
            bound = signature.bind(*args, **kwargs)
            bound.apply_defaults()
            self._read_prompt(bound.arguments)
            return original(*args, **kwargs)

        pipeline.encode_prompt = encode_prompt

    def _read_prompt(self, arguments: dict[str, Any]) -> None:
        """The words of the first prompt encoded since the last transformer call (a later one in the same run is
        the negative prompt of true classifier-free guidance)."""
        if self._prompt_read:
            return
        source = prompt_word_source(self.adapter)
        assert source is not None and self.session is not None
        tokenizer, prompt, max_length = source(self.adapter, self.pipeline, arguments)
        if prompt is None:
            raise ConceptError(
                "Prompt-word maps need the prompt's text, but the pipeline got prompt embeddings; pass prompt=... ."
            )
        if not isinstance(prompt, str):
            distinct = list(dict.fromkeys(prompt))
            if len(distinct) != 1:
                raise ConceptError(
                    f"Prompt-word maps take one prompt per run, got {len(distinct)} different prompts; run them one "
                    "at a time (num_images_per_prompt is fine)."
                )
            prompt = distinct[0]
        self.session.set_prompt_words(split_prompt_words(tokenizer, prompt, max_length), self.concepts)
        self.effective_softmax = self.session.effective_softmax
        self._prompt_read = True

    def _restore(self) -> None:
        """Put back every processor and remove the hook; safe to call more than once."""
        if self.session is not None:
            self.session.end_call()
        if self._encode_prompt_saved is not None:
            had, previous = self._encode_prompt_saved
            if had:
                self.pipeline.encode_prompt = previous
            else:
                vars(self.pipeline).pop("encode_prompt", None)
            self._encode_prompt_saved = None
        for handle in self._extra_handles:
            handle.remove()
        self._extra_handles = []
        for attention, original in reversed(self._saved_processors):
            attention.set_processor(original)
        self._saved_processors.clear()
        self._our_processors.clear()
        registry = getattr(self.transformer, "_diffusers_hook", None)
        if self._hook is not None and registry is not None and registry.get_hook(_HOOK_NAME) is not None:
            registry.remove_hook(_HOOK_NAME, recurse=False)
            if not registry._hook_order:  # also when the pipeline made the (empty) registry: unpin forward
                if self._created_registry:
                    del self.transformer._diffusers_hook
                if not self._had_instance_forward and "forward" in vars(self.transformer):
                    del self.transformer.forward
        self._hook = None
        if getattr(self.transformer, _ACTIVE_ATTRIBUTE, False):
            delattr(self.transformer, _ACTIVE_ATTRIBUTE)

    # ----- per call ---------------------------------------------------------------------------------------------

    def _begin_call(self, args: tuple[Any, ...], kwargs: dict[str, Any], unconditional: bool) -> None:
        assert self.session is not None
        if torch.is_grad_enabled() and getattr(self.transformer, "gradient_checkpointing", False):
            raise UnsupportedSetupError(
                "Gradient checkpointing is on and gradients are enabled: blocks would run twice and corrupt the "
                "concept stream. Run under torch.no_grad() or call transformer.disable_gradient_checkpointing()."
            )
        if getattr(self.transformer, "is_cache_enabled", False):  # enabled inside the with block
            raise cache_refusal(active_cache(self.transformer) or "enabled")
        for (attention, _), processor in zip(self._saved_processors, self._our_processors):
            if attention.processor is not processor:
                raise UnsupportedSetupError(
                    f"The attention processor of a joint block was replaced inside the ConceptAttention block (now "
                    f"{type(attention.processor).__name__}), e.g. by set_attn_processor, fuse_qkv_projections or "
                    "load_ip_adapter. Do that before entering the block."
                )
        if self.prompt_words and self.session.prompt_words is None:
            raise ConceptError(
                "Prompt-word maps: the transformer ran before the pipeline encoded a prompt; call the pipeline with "
                "prompt=... (a bare transformer call cannot be mapped to words)."
            )
        self._prompt_read = False  # the next prompt encoded belongs to the next run
        inputs = self.adapter.capture_call(self.transformer, args, kwargs)
        self.adapter.observe_call(self.session, inputs)
        unconditional = unconditional or self.adapter.is_auxiliary_call(inputs)
        call = self.session.begin_call(inputs, unconditional=unconditional)
        hidden_states = kwargs.get("hidden_states", args[0] if args else None)
        # the batch size: of the latents tensor, or as the adapter read it (Z-Image takes a list of latents)
        batch = hidden_states.shape[0] if isinstance(hidden_states, torch.Tensor) else inputs.get("batch_size")
        if call.recording and batch is not None:
            if self.config.batch_half == "all" or self._reduce_batch:  # explain batches noise samples, never CFG
                self.session.batch_slice = slice(None)  # decided first: the adapter may read the latents to decide
            else:
                self.session.batch_slice = self.adapter.cfg_batch_slice(int(batch), inputs, self.pipeline)

    def _end_call(self) -> None:
        if self.session is not None:
            self.session.end_call()

    # ----- results --------------------------------------------------------------------------------------------

    def reset(self) -> None:
        """Forget the maps recorded so far (e.g. between two generations in one block)."""
        if self.session is not None:
            self.session.reset()

    def _settings(self) -> dict[str, Any]:
        settings = self.config.to_dict()
        settings.update(
            {
                "architecture": self.adapter.name,
                "transformer_class": type(self.transformer).__name__,
                "resolved_layers": [self._layer_paths[index] for index in self.layers],
                "effective_softmax": self.effective_softmax,
                "prompt_words": list(self.session.word_labels) if self.session is not None and self.prompt_words else None,
            }
        )
        if self.session is not None:
            settings["recorded_steps"] = self.session.num_recorded_calls
        return settings

    @property
    def batch_maps(self) -> list[ConceptMaps]:
        """One :class:`ConceptMaps` per image of the batch.

        Raises:
            NoMapsError: if the pipeline has not been run inside the ``with`` block (or no step was selected).
        """
        session = self.session
        if session is None or session.accumulator.count == 0 or session.grid_inputs is None:
            raise NoMapsError(
                "No concept maps recorded; run the pipeline inside `with ConceptAttention(...)` (and check that "
                "`timesteps` selects steps that ran)."
            )
        maps, logits = session.accumulator.result()  # [B, C, I] each
        maps, logits = maps.detach().cpu(), logits.detach().cpu()
        frames, height, width = self.adapter.token_grid(session.grid_inputs, maps.shape[-1])
        maps = maps.reshape(maps.shape[0], maps.shape[1], frames, height, width)  # [B, C, F, h, w]
        logits = logits.reshape(logits.shape[0], logits.shape[1], frames, height, width)  # [B, C, F, h, w]
        head_maps = head_logits = None
        if session.head_accumulator is not None:
            head_maps, head_logits = (tensor.detach().cpu() for tensor in session.head_accumulator.result())  # [B, C, H, I]
            head_maps = head_maps.unflatten(-1, (frames, height, width))  # [B, C, H, F, h, w]
            head_logits = head_logits.unflatten(-1, (frames, height, width))  # [B, C, H, F, h, w]
        settings = self._settings()
        labels = self.concepts + session.word_labels
        return [
            ConceptMaps(
                labels,
                maps[index],
                logits[index],
                settings,
                head_maps=None if head_maps is None else head_maps[index],
                head_logits=None if head_logits is None else head_logits[index],
            )
            for index in range(maps.shape[0])
        ]

    @property
    def maps(self) -> ConceptMaps:
        """The :class:`ConceptMaps` of the (single) generated image.

        Raises:
            NoMapsError: before a run; ValueError if the batch held several images (use :attr:`batch_maps`).
        """
        all_maps = self.batch_maps
        if len(all_maps) != 1:
            raise ConceptMapsError(f"The run produced {len(all_maps)} images; use `.batch_maps` to get one map set per image.")
        return all_maps[0]

    @property
    def per_step_head_scores(self) -> dict[tuple[int, int], torch.Tensor]:
        """``{(step, layer): [B, C, H, I] per-head scores}`` with ``keep_heads=True`` and ``keep_per_step=True``."""
        if self.session is None:
            raise NoMapsError("No run yet.")
        if self.session.head_accumulator is None or not self.config.keep_per_step:
            raise ConfigError("Per-step head scores are kept only with keep_heads=True and keep_per_step=True.")
        return dict(self.session.head_accumulator.per_step)

    @property
    def per_step_scores(self) -> dict[tuple[int, int], torch.Tensor]:
        """``{(step, layer): [B, C, I] scores}`` when the config has ``keep_per_step=True``."""
        if self.session is None:
            raise NoMapsError("No run yet.")
        if not self.config.keep_per_step:
            raise ConfigError("Per-step scores are kept only with keep_per_step=True.")
        return dict(self.session.accumulator.per_step)
