"""The adapter interface: everything ConceptAttention needs to know about one transformer architecture.

Besides :class:`ConceptAdapter`, this module holds what the interface's callers share: the setup checks (caches,
context parallelism) and the capture helpers (binding a call's arguments, block pre-hooks). The real-image (explain)
helpers live in :mod:`conceptattention.adapters.real_images` (re-exported here for adapters that import them from
``base``). Adapters are stateless singletons: per-run state lives on the session
(:attr:`~conceptattention.session.ConceptSession.adapter_state`), options on the config.
"""

from __future__ import annotations

import inspect
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from ..config import ConceptPooling
from ..encoding import encode_masked_concepts, pipeline_text_encoder
from ..errors import ConceptAttentionError
from .real_images import (  # noqa: F401 (the explain-path helpers, re-exported for adapters written against base)
    ExplainBatch,
    ExplainRequest,
    flow_noised,
    guidance_tensor,
    image_pixels,
    seeded_noise,
)


if TYPE_CHECKING:
    from PIL import Image

    from ..session import ConceptSession


class UnsupportedSetupError(ConceptAttentionError, RuntimeError):
    """The model is set up in a way that would give silently wrong maps (caching, checkpointing, parallelism...)."""


class AdapterInputError(ConceptAttentionError, ValueError):
    """A pipeline, call or image an adapter cannot read (no text encoder, tokens that do not fit the latent grid, an
    unsupported input layout...); the message says which and what to do."""


class ConceptAdapter(ABC):
    """Architecture-specific pieces of ConceptAttention. One subclass per family, registered in the registry.

    Subclasses describe the joint blocks, build the attention processor that runs the concept stream, encode
    concept strings with the pipeline's text encoder, and prepare inputs for the real-image path.

    Attributes:
        name: Short family name (``"flux"``).
        transformer_classes: Names of the diffusers transformer classes handled.
        pipeline_classes: Names of the diffusers pipelines that drive them.
        modality: ``"image"`` or ``"video"``.
        official_default_layers: Human-readable description of the default layer choice.
        tested: How the adapter is tested (shown in the README's table of supported models).
        fused_qkv: ``fuse_qkv_projections()`` support, for that table.
        ip_adapter: IP-Adapter support, for that table (``"yes"``, ``"refused"``, ``"not offered by diffusers"``...).
        blocks_attribute: The transformer's list of joint blocks (``"transformer_blocks"``).
        attention_attribute: The attention module of a joint block whose processor is replaced (``"attn"``).
        processor_class: The concept processor, built as ``processor_class(session, layer, block, transformer,
            original_processor)``.
        stock_processor_class: The diffusers processor(s) it takes over; :meth:`check_model` refuses any other.
        stock_processor_remedy: What else may be installed and how to undo it (for that message).
        concept_text_encoders: The choices of ``ConceptAttentionConfig.concept_text_encoder`` (the first is the
            default) where the family offers several text encoders for concepts; :meth:`encode_concepts` then takes
            ``text_encoder=``. Empty: one encoder, the option is refused.
    """

    name: str = ""
    blocks_attribute: str = "transformer_blocks"
    attention_attribute: str = "attn"
    processor_class: type | None = None
    stock_processor_class: type | tuple[type, ...] | None = None
    stock_processor_remedy: str = ""
    transformer_classes: tuple[str, ...] = ()
    pipeline_classes: tuple[str, ...] = ()
    modality: str = "image"
    official_default_layers: str = ""
    tested: str = "adapter battery (tiny random model + tiny offline pipeline), naive float64 reference for every space/mode"
    ip_adapter: str = "not offered by diffusers"
    fused_qkv: str = "yes"
    concept_text_encoders: tuple[str, ...] = ()

    # ----- structure -------------------------------------------------------------------------------------------

    def joint_blocks(self, transformer: nn.Module) -> list[nn.Module]:
        """The joint (double-stream) blocks in execution order."""
        return list(getattr(transformer, self.blocks_attribute))

    def layer_blocks(self, transformer: nn.Module) -> list[tuple[str, nn.Module]]:
        """Every block ``layers=`` may select, in execution order, with its module path: the joint blocks (indices
        ``0..J-1``), then any blocks the concept stream continues into (FLUX.1's single blocks: ``J..``)."""
        return [(self.block_path(index), block) for index, block in enumerate(self.joint_blocks(transformer))]

    def block_path(self, index: int) -> str:
        """Module path of joint block ``index`` inside the transformer (``"transformer_blocks.15"``)."""
        return f"{self.blocks_attribute}.{index}"

    def attention_module(self, block: nn.Module) -> nn.Module:
        """The attention module of a joint block whose processor is replaced."""
        return getattr(block, self.attention_attribute)

    def default_layers(self, num_blocks: int) -> tuple[int, ...]:
        """Default layer selection: the last four joint blocks (FLUX.1: 15-18, as the official code)."""
        return tuple(range(max(0, num_blocks - 4), num_blocks))

    def make_processor(
        self, session: ConceptSession, layer: int, block: nn.Module, original_processor: Any, transformer: nn.Module
    ) -> Any:
        """Build the concept-attention processor for joint block ``layer`` (replacing ``original_processor``)."""
        if self.processor_class is None:
            raise NotImplementedError(f"The {self.name!r} adapter defines no processor_class.")
        return self.processor_class(session, layer, block, transformer, original_processor)

    def check_model(self, transformer: nn.Module) -> None:
        """Raise :class:`UnsupportedSetupError` for set-ups that this adapter cannot handle faithfully (by default:
        a joint block whose attention does not run :attr:`stock_processor_class`)."""
        if self.stock_processor_class is not None and self.processor_class is not None:
            self.check_stock_processors(
                transformer,
                self.stock_processor_class,
                self.processor_class,
                attribute=self.attention_attribute,
                remedy=self.stock_processor_remedy,
            )

    def require_qk_norm(self, transformer: nn.Module, message: str) -> None:
        """Raise :class:`UnsupportedSetupError` with ``message`` unless the attention module
        (:attr:`attention_attribute`) of every joint block has a QK-norm (``norm_q`` and ``norm_k``), where the concept
        branch takes the image queries and keys."""
        for block in self.joint_blocks(transformer):
            attn = getattr(block, self.attention_attribute)
            if attn.norm_q is None or attn.norm_k is None:
                raise UnsupportedSetupError(message)

    def check_stock_processors(
        self,
        transformer: nn.Module,
        stock: type | tuple[type, ...],
        concept: type,
        *,
        attribute: str = "attn",
        remedy: str = "",
    ) -> None:
        """Raise unless every joint block's attention runs diffusers' ``stock`` processor (or our ``concept`` one).

        Args:
            transformer: The transformer.
            stock: The processor class(es) the concept processor takes over (exact types: subclasses may change the
                math), e.g. the plain and the fused-projection processor.
            concept: The adapter's concept processor class (already installed: a re-entry, refused elsewhere).
            attribute: Name of the attention module in a block, for the message (``"attn"``, ``"attn1"``).
            remedy: What set-up replaced it and how to undo it, appended to the message.

        Raises:
            UnsupportedSetupError: naming the block, the processor found and the way out.
        """
        stocks = stock if isinstance(stock, tuple) else (stock,)
        names = " or ".join(cls.__name__ for cls in stocks)
        for index, block in enumerate(self.joint_blocks(transformer)):
            processor = self.attention_module(block).processor
            if type(processor) not in stocks and not isinstance(processor, concept):
                raise UnsupportedSetupError(
                    f"{self.block_path(index)}.{attribute} uses {type(processor).__name__}, not diffusers' "
                    f"{names}. ConceptAttention would drop it; {remedy or 'restore the default processor.'}"
                )

    # ----- per call -------------------------------------------------------------------------------------------

    @abstractmethod
    def capture_call(self, transformer: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> dict[str, Any]:
        """Pick from a transformer call's arguments what the processors need (never computes anything)."""

    @abstractmethod
    def token_grid(self, call_inputs: dict[str, Any], num_image_tokens: int) -> tuple[int, int, int]:
        """``(frames, h, w)`` of the image tokens of a call; ``frames·h·w`` must equal ``num_image_tokens``."""

    def size_multiple(self, pipeline: Any) -> int:
        """Image height and width must be multiples of this (VAE downsampling × patch size)."""
        return int(getattr(pipeline, "vae_scale_factor", 8)) * 2

    def cfg_batch_slice(self, batch_size: int, call_inputs: dict[str, Any], pipeline: Any | None) -> slice:
        """Rows of the batch whose maps are reported (default: all).

        Pipelines that batch classifier-free guidance as ``[uncond, cond]`` return ``slice(batch_size // 2, None)``
        while guidance is on (read from the pipeline, e.g. ``pipeline.do_classifier_free_guidance``); ``pipeline``
        is None when a bare transformer is driven.
        """
        return slice(None)

    def is_auxiliary_call(self, call_inputs: dict[str, Any]) -> bool:
        """Whether a transformer call is an auxiliary guidance call to ignore (e.g. SD3 skip-layer guidance)."""
        return False

    def observe_call(self, session: ConceptSession, call_inputs: dict[str, Any]) -> None:
        """Relate a transformer call to the earlier calls of the same run (after :meth:`capture_call`).

        Adapters are shared singletons, so state kept between calls (e.g. Chroma's detection of the unconditional
        call of true CFG) lives in ``session.adapter_state``; what the adapter concludes goes into ``call_inputs``
        (read by :meth:`is_auxiliary_call`). The default keeps no state.
        """
        return None

    def install_hooks(self, transformer: nn.Module, session: ConceptSession) -> list[Any]:
        """Extra capture-only hooks (e.g. block pre-hooks that store a block's ``temb`` in the session).

        Returns:
            Handles with a ``remove()`` method; they are removed when the ``with`` block ends, also after errors.
        """
        return []

    # ----- text ---------------------------------------------------------------------------------------------------

    @abstractmethod
    def encode_concepts(
        self, pipeline: Any, concepts: Sequence[str], pooling: ConceptPooling, device: torch.device | None = None
    ) -> torch.Tensor:
        """Encode all concepts in one batched text-encoder call: ``[C, D_text]``."""

    # ----- real images -------------------------------------------------------------------------------------------

    def prepare_explain(
        self,
        pipeline: Any,
        image: Image.Image | Sequence[Image.Image],
        *,
        caption: str,
        noise_level: float,
        seeds: Sequence[int],
        height: int,
        width: int,
        guidance_scale: float = 3.5,
        image_pooled: str = "zero",
    ) -> ExplainBatch:
        """Encode an image (video models: or its frames), noise it once per seed, and build one batched call.

        Validates what every family shares (``image_pooled``, the size multiple), then calls :meth:`explain_batch`.

        Raises:
            ValueError: for an unknown ``image_pooled`` or a size that is not a multiple of :meth:`size_multiple`.
        """
        if image_pooled not in ("zero", "caption"):
            raise AdapterInputError(f"image_pooled must be 'zero' or 'caption', got {image_pooled!r}.")
        multiple = self.size_multiple(pipeline)
        if height % multiple or width % multiple:
            raise AdapterInputError(
                f"height and width must be multiples of {multiple} for this {self.name} model, got {height}x{width}."
            )
        request = ExplainRequest(
            caption=caption,
            noise_level=float(noise_level),
            seeds=tuple(int(seed) for seed in seeds),
            height=int(height),
            width=int(width),
            guidance_scale=float(guidance_scale),
            image_pooled=image_pooled,
        )
        return self.explain_batch(pipeline, image, request)

    def explain_batch(
        self, pipeline: Any, image: Image.Image | Sequence[Image.Image], request: ExplainRequest
    ) -> ExplainBatch:
        """The family's part of :meth:`prepare_explain`: the transformer call for a validated request."""
        raise NotImplementedError(f"The {self.name!r} adapter has no real-image (explain) path yet.")

    def explain_resolution(self, pipeline: Any, image_size: tuple[int, int]) -> tuple[int, int]:
        """Default ``(height, width)`` for the real-image path (aspect ratio kept)."""
        raise NotImplementedError(f"The {self.name!r} adapter has no real-image (explain) path yet.")


#: diffusers hook-name prefixes of the cache accelerators (``diffusers.hooks``) -> the cache's name.
_CACHE_HOOK_PREFIXES = {
    "fbc_": "FirstBlockCache",
    "faster_cache": "FasterCache",
    "pyramid_attention_broadcast": "PyramidAttentionBroadcast",
    "taylorseer_cache": "TaylorSeerCache",
    "mag_cache": "MagCache",
    "sea_cache": "SeaCache",
    "text_kv_cache": "TextKVCache",
}


def active_cache(transformer: nn.Module) -> str | None:
    """The name of the diffusers cache accelerator active on ``transformer`` (``"FirstBlockCache"``...), or None.

    Finds caches enabled with ``transformer.enable_cache(config)`` and caches applied with the ``diffusers.hooks``
    functions (``apply_first_block_cache``...), which leave their hooks on the blocks.

    Example:
        >>> from diffusers import FirstBlockCacheConfig
        >>> from conceptattention.testing.flux import tiny_flux_transformer
        >>> model = tiny_flux_transformer()
        >>> model.enable_cache(FirstBlockCacheConfig(threshold=0.2))
        >>> active_cache(model)
        'FirstBlockCache'
    """
    config = getattr(transformer, "_cache_config", None)
    if config is not None:
        return type(config).__name__.removesuffix("Config")
    for module in transformer.modules():
        registry = getattr(module, "_diffusers_hook", None)
        for hook_name in getattr(registry, "_hook_order", ()):
            for prefix, cache in _CACHE_HOOK_PREFIXES.items():
                if hook_name.startswith(prefix):
                    return cache
    return None


def cache_refusal(cache: str) -> UnsupportedSetupError:
    """The error for an active cache accelerator: what it breaks and how to turn it off."""
    return UnsupportedSetupError(
        f"The {cache} cache accelerator is enabled on the transformer: it skips or reuses blocks and attention "
        "between steps, so concept maps would be missing or stale (ConceptAttention supports no cache exactly). "
        "Call `transformer.disable_cache()` (e.g. `pipe.transformer.disable_cache()`) before entering "
        "ConceptAttention, and `enable_cache(...)` again afterwards if you want it back."
    )


def common_checks(transformer: nn.Module) -> None:
    """Checks shared by all adapters: cache accelerators and context parallelism.

    Raises:
        UnsupportedSetupError: with the way out in the message.
    """
    cache = active_cache(transformer)
    if cache is not None:
        raise cache_refusal(cache)
    if getattr(transformer, "_parallel_config", None) is not None:
        raise UnsupportedSetupError(
            "Context/tensor parallelism is enabled on the transformer: image tokens are sharded across ranks, but "
            "concept attention needs every image key. Run ConceptAttention without `enable_parallelism`."
        )


def encode_concepts_masked(
    pipeline: Any,
    concepts: Sequence[str],
    pooling: ConceptPooling,
    device: torch.device | None,
    description: str,
    max_length: int,
    names: tuple[str, str] = ("tokenizer", "text_encoder"),
) -> torch.Tensor:
    """All concepts in one masked batch through the pipeline's (T5-like) text encoder, as these pipelines encode
    prompts, each pooled over its own tokens: ``[C, D_text]``.

    Args:
        pipeline: The diffusers pipeline.
        concepts: The concept words.
        pooling: How a concept's token states become one vector.
        device: Where to run the encoder (default: the pipeline's execution device, else the encoder's).
        description: The start of the error when the pipeline lacks the encoder (``"This Flux pipeline has no T5
            text encoder"``).
        max_length: The pipeline's default prompt length, capped by the tokenizer's ``model_max_length``.
        names: The pipeline attributes of the tokenizer and the text encoder.

    Raises:
        ValueError: if the pipeline has no such tokenizer or encoder, pointing to ``concept_embeds=``.
    """
    tokenizer, text_encoder = pipeline_text_encoder(pipeline, *names, description)
    device = device or getattr(pipeline, "_execution_device", None) or text_encoder.device
    max_length = min(max_length, getattr(tokenizer, "model_max_length", max_length) or max_length)
    return encode_masked_concepts(tokenizer, text_encoder, concepts, pooling, device, max_length)  # [C, D_text]


def bind_call(
    model: str,
    names: Sequence[str],
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    required: Sequence[str],
    keyword_only: Sequence[str] = (),
) -> dict[str, Any]:
    """A transformer call's arguments by name (positional ones in ``names`` order); refuse missing required ones.

    Args:
        model: Class name, for the message.
        names: The ``forward`` parameters that may come positionally, in order.
        args: Positional arguments of the call.
        kwargs: Keyword arguments of the call.
        required: Names that must be given and not ``None``.
        keyword_only: Further names read from ``kwargs`` only.

    Raises:
        ValueError: naming every missing argument.

    Example:
        >>> bind_call("M", ("x", "t"), (1,), {"t": 2}, required=("x", "t"))
        {'x': 1, 't': 2}
    """
    bound = dict(zip(names, args))
    bound.update({name: kwargs[name] for name in (*names, *keyword_only) if name in kwargs})
    missing = [name for name in required if bound.get(name) is None]
    if missing:
        raise AdapterInputError(f"{model} was called without {', '.join(missing)}; ConceptAttention needs them.")
    return bound


def block_input_grabbers(
    blocks: Sequence[nn.Module], session: ConceptSession, argument: str, key: str, last_layer: int | None = None
) -> list[Any]:
    """Capture-only pre-hooks storing ``<block argument>`` in ``session.call.inputs[key]``.

    The hooks hold no per-block value (no layer index), so a compiled block class traces one graph for all blocks.

    Args:
        blocks: The joint blocks, in order.
        session: The run state (only recorded calls are captured).
        argument: Name of the block ``forward`` argument to capture (``"temb"``, ``"temb_mod_txt"``...).
        key: Key in the call inputs.
        last_layer: No hooks after this block (default: the session's last layer).

    Returns:
        The hook handles.

    Example:
        >>> from conceptattention.testing.flux2 import tiny_flux2_transformer
        >>> from conceptattention.session import ConceptSession
        >>> from conceptattention.config import ConceptAttentionConfig
        >>> model = tiny_flux2_transformer()
        >>> session = ConceptSession(ConceptAttentionConfig(), torch.zeros(1, 24), (0,), effective_softmax=False)
        >>> handles = block_input_grabbers(list(model.transformer_blocks), session, "temb_mod_txt", "mod")
        >>> len(handles)
        1
        >>> for handle in handles:
        ...     handle.remove()
    """
    last_layer = session.last_layer if last_layer is None else last_layer
    handles = []
    for layer, block in enumerate(blocks):
        if layer > last_layer:
            break
        handles.append(
            block.register_forward_pre_hook(_grabber(session, block, argument, key), with_kwargs=True)
        )
    return handles


def _grabber(session: ConceptSession, block: nn.Module, argument: str, key: str) -> Callable[..., None]:
    parameters = list(inspect.signature(block.forward).parameters.values())
    names = [parameter.name for parameter in parameters]
    if argument not in names:
        raise TypeError(f"{type(block).__name__}.forward has no argument {argument!r}.")
    position = names.index(argument)
    default = parameters[position].default
    default = None if default is inspect.Parameter.empty else default

    def grab(module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        call = session.call
        if call is None or not call.recording:
            return
        # gradient checkpointing passes positional arguments (no inspect.signature.bind here: it breaks compiled
        # graphs)
        if argument in kwargs:
            value = kwargs[argument]
        else:
            value = args[position] if len(args) > position else default
        call.inputs[key] = value

    return grab


def captured_block_input(session: ConceptSession, key: str, what: str) -> Any:
    """The block input that :func:`block_input_grabbers` stored for the running joint block.

    Args:
        session: The run state.
        key: The call-inputs key the grabber used.
        what: Description for the message (``"the temb of an AuraFlow block"``).

    Raises:
        UnsupportedSetupError: if no block pre-hook ran before the attention (a block or attention module called directly).
    """
    call = session.call
    captured = None if call is None else call.inputs.get(key)
    if captured is None:
        raise UnsupportedSetupError(
            f"{what} was not captured (its block pre-hook did not run before the attention). Call the transformer "
            "itself, not a block or attention module directly."
        )
    return captured
