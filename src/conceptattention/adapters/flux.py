"""FLUX.1 adapter (``FluxTransformer2DModel``, ``FluxPipeline``) — docs/models.md, docs/method.md.

Concept tokens take the text stream's modules of every double-stream block: ``norm1_context`` (modulation),
``add_{q,k,v}_proj``, ``norm_added_{q,k}``, ``to_add_out``, ``norm2_context`` and ``ff_context``. FLUX.1 text ids
are all zero, so RoPE is the identity for concepts. Single-stream blocks are touched only when ``layers=`` selects
one (indices past the double blocks): :mod:`conceptattention.adapters.flux_single`.
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import torch
from diffusers.models.embeddings import apply_rotary_emb
from diffusers.models.transformers.transformer_flux import FluxAttnProcessor, FluxIPAdapterAttnProcessor
from torch import nn

from ..config import ConceptPooling
from ..core import concept_attention, concept_attention_packed
from ..encoding import pipeline_text_encoder
from .attention_inputs import ATTENTION_KEY, DISPATCH_FINGERPRINTS, DISPATCH_SOURCE, image_rows, keep_attention_inputs
from .base import AdapterInputError, ConceptAdapter, UnsupportedSetupError, bind_call, encode_concepts_masked
from .flux_single import FluxSingleConceptAttnProcessor, SingleBlockLayers
from .processor import AttentionView, ConceptProcessorMixin, check_captured
from .qk_norm import RMS_NORM_FINGERPRINTS, RMS_NORM_SOURCE, paired_rms_norm
from .real_images import ExplainBatch, ExplainRequest, area_resolution, flow_noised, guidance_tensor, image_pixels


if TYPE_CHECKING:
    from PIL import Image



#: Modules of ``FluxAttention`` whose outputs the concept branch takes (``to_out[0]``'s input is taken too).
FLUX_TAPS = ("norm_q", "norm_k", "to_v", "to_qkv")
#: Modules of ``FluxAttention`` that hand over the prompt's text rows (prompt-word maps): text keys after QK-norm,
#: text values (plain or fused projection); ``to_add_out``'s input (the text attention output) is taken too.
FLUX_PROMPT_TAPS = ("norm_added_k", "add_v_proj", "to_added_qkv")


class FluxConceptAttnProcessor(ConceptProcessorMixin):
    """Flux double-block processor: runs diffusers' own processor untouched, and the concept branch beside it.

    The processor it replaces (diffusers' ``FluxAttnProcessor``, or ``FluxIPAdapterAttnProcessor`` with an
    IP-Adapter loaded) is called on an :class:`~conceptattention.adapters.processor.AttentionView` of the attention
    module, which hands the concept branch the image attention output before ``to_out[0]``; the image keys (after
    QK-norm and RoPE) and values are the image rows of what the processor hands to diffusers' attention dispatcher
    (:mod:`~conceptattention.adapters.attention_inputs`; while compiling, RoPE is re-applied to the tapped keys). No diffusers code is copied: the image path is the stock one, so outputs
    are bit-identical by construction. Calls in which no concept work is needed (unrecorded steps, single blocks)
    go straight to the original processor.

    Args:
        session: The shared run state.
        layer: Index of this block among the double-stream blocks.
        block: The ``FluxTransformerBlock`` (held weakly; its text-stream norms and MLP are used).
        transformer: The ``FluxTransformer2DModel`` (held weakly; its text/time embedders are used).
        original: The processor being replaced; it computes the joint attention.

    Example:
        >>> from conceptattention import ConceptAttention
        >>> from conceptattention.testing.flux import tiny_flux_inputs, tiny_flux_transformer
        >>> model = tiny_flux_transformer()
        >>> with ConceptAttention(model, concept_embeds=torch.randn(2, 32)) as ca:
        ...     _ = model(**tiny_flux_inputs())
        >>> type(model.transformer_blocks[0].attn.processor).__name__
        'FluxAttnProcessor'
    """

    #: the stock processor(s) it runs through an AttentionView: their capture points (diffusers 0.42.1); see tests/adapters/test_stock_drift.py
    STOCK_SOURCES = (
        (
            "diffusers.models.transformers.transformer_flux.FluxAttnProcessor.__call__",
            (  # diffusers 0.42.1, 0.38.0, 0.39.0, 0.40.0, 0.41.0, re-checked: only reshapes/annotations differ
            "7eb778467bc972f7971fd389505606c318b7a00d3d239c50d24019878a141cc4",
            "c215939789cdd8aa8e353b256b2e43bfb140becd3238f1fbb4dcd1bc54987c2b",
            ),
        ),
        ("diffusers.models.transformers.transformer_flux.FluxIPAdapterAttnProcessor.__call__", "5c61d7b4140acef095a31940deed1ff09b3c154577d65a1855e72b1412393109"),
        ("diffusers.models.transformers.transformer_flux._get_qkv_projections", "988dc64295fd8e55a2106625126f691c4bbbd05c6f1bc4ae18661a97d30c8730"),
        ("diffusers.models.transformers.transformer_flux._get_projections", "445b79ab35e5c95ee707ec24da8cf1c3c7cfd090f225ae086a3f6b04d96480c5"),
        ("diffusers.models.transformers.transformer_flux._get_fused_projections", "7b6e97d1e24fd16b40b4f8b40e14a9ebee0aff11620d8d0b67a8ea5f1e45fbc0"),
        # where the joint query/key/value are kept (attention_inputs.py): the dispatcher's backend lookup
        (DISPATCH_SOURCE, DISPATCH_FINGERPRINTS),
        # the concept QK-norm mirrors diffusers' RMSNorm where a subclass's model uses it (HunyuanImage); FLUX.1's
        # torch.nn.RMSNorm modules run as they are (qk_norm.py)
        (RMS_NORM_SOURCE, RMS_NORM_FINGERPRINTS),
    )

    def __init__(
        self, session: Any, layer: int, block: nn.Module, transformer: nn.Module, original: Any
    ) -> None:
        super().__init__(session, layer, block, transformer, original)
        # keyword arguments the attention module may pass (IP-Adapter) that the original processor takes
        accepted = inspect.signature(original.__call__).parameters
        self._ip_arguments = tuple(name for name in ("ip_hidden_states", "ip_adapter_masks") if name in accepted)

    def __call__(
        self,
        attn: nn.Module,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        image_rotary_emb: tuple[torch.Tensor, torch.Tensor] | None = None,
        ip_hidden_states: list[torch.Tensor] | None = None,
        ip_adapter_masks: torch.Tensor | None = None,
    ) -> Any:
        extra: dict[str, Any] = {}
        if "ip_hidden_states" in self._ip_arguments:
            extra["ip_hidden_states"] = ip_hidden_states
        if "ip_adapter_masks" in self._ip_arguments:
            extra["ip_adapter_masks"] = ip_adapter_masks
        session = self.session
        if encoder_hidden_states is None or not session.needs_concepts():
            return self.original(attn, hidden_states, encoder_hidden_states, attention_mask, image_rotary_emb, **extra)
        sink: dict[str, torch.Tensor] = {}
        words = session.prompt_words is not None
        # the joint query/key/value after QK-norm and RoPE, as the stock processor dispatches them (eagerly; the image
        # rows are [text, image][T:] here, subclasses with another layout override _image_tensors)
        with keep_attention_inputs(self.original, sink):
            outputs = self.original(
                AttentionView(attn, sink, FLUX_TAPS + FLUX_PROMPT_TAPS if words else FLUX_TAPS, inputs=("to_add_out",) if words else ()),
                hidden_states,
                encoder_hidden_states,
                attention_mask,
                image_rotary_emb,
                **extra,
            )
        check_captured(sink, (("norm_k",), ("to_v", "to_qkv"), ("to_out",)), self.original, "flux")
        if words:
            check_captured(sink, (("norm_added_k",), ("add_v_proj", "to_added_qkv"), ("to_add_out",)), self.original, "flux")
        self._concept_branch(attn, sink, encoder_hidden_states.shape[1], hidden_states, image_rotary_emb)
        return outputs

    def _concept_branch(
        self,
        attn: nn.Module,
        sink: dict[str, torch.Tensor],
        num_text: int,
        hidden_states: torch.Tensor,
        image_rotary_emb: tuple[torch.Tensor, torch.Tensor] | None,
    ) -> None:
        """Advance the concept stream through this block and record its scores, from the captured image tensors."""
        session = self.session
        call, block = session.call, self._block()
        assert call is not None and block is not None
        image = self._image_tensors(attn, sink, num_text, image_rotary_emb)
        prompt_rows = self._prompt_rows(attn, sink, num_text, image_rotary_emb) if session.prompt_words else None
        if session.num_concepts == 0:  # prompt words only: no concept stream to advance
            self._record_scores(
                prompt_rows=prompt_rows,
                image_output=image["image_output"],
                image_query=image["image_query"],
                image_value=image["image_value"],
            )
            return
        if call.concept_hidden_states is None:
            call.concept_hidden_states, call.concept_conditioning = self._initial_concepts(hidden_states)
        concepts = call.concept_hidden_states  # [B, C, d]
        normed, gate_msa, shift_mlp, scale_mlp, gate_mlp = block.norm1_context(concepts, emb=self._concept_conditioning())
        concept_query, concept_key, concept_value = self._concept_projections(attn, normed)
        concept_query, concept_key = paired_rms_norm(  # QK-norm of both in one pass, [B, C, H, D] each
            attn.norm_added_q,
            attn.norm_added_k,
            concept_query.unflatten(-1, (-1, attn.head_dim)),  # [B, C, H·D] -> [B, C, H, D]
            concept_key.unflatten(-1, (-1, attn.head_dim)),  # [B, C, H·D] -> [B, C, H, D]
        )
        concept_value = concept_value.unflatten(-1, (-1, attn.head_dim))  # [B, C, H, D]
        num_concepts = concept_key.shape[1]
        image_key, image_value, image_output = image["image_key"], image["image_value"], image["image_output"]
        image_query = image["image_query"]

        # ---- concept attention (FLUX.1 concept ids are zero: RoPE is the identity), scores, residual stream ----
        mode = session.config.concept_attention
        if mode == "both":  # keys [image; concepts], as the official code orders them
            key = torch.cat([image_key, concept_key], dim=1)  # [B, I + C, H, D]
            value = torch.cat([image_value, concept_value], dim=1)  # [B, I + C, H, D]
            concept_output = concept_attention_packed(concept_query, key, value, num_concepts, mode, self._attend)
        else:  # the other modes read one side only: no concatenation
            concept_output = concept_attention(
                concept_query, concept_key, concept_value, image_key, image_value, mode, self._attend
            )
        concept_output = concept_output.flatten(2, 3).to(image_output.dtype)  # [B, C, H·D]
        self._record_and_advance(
            attn,
            block,
            concepts,
            concept_output,
            image_output=image_output,
            image_query=image_query,
            concept_key=concept_key,
            image_value=image_value,
            concept_value=concept_value,
            modulation=(gate_msa, shift_mlp, scale_mlp, gate_mlp),
            prompt_rows=prompt_rows,
        )

    def _image_tensors(
        self,
        attn: nn.Module,
        sink: dict[str, torch.Tensor],
        num_text: int,
        image_rotary_emb: tuple[torch.Tensor, torch.Tensor] | None,
    ) -> dict[str, torch.Tensor | None]:
        """The image keys as the joint attention used them (RoPE, image rows of the tables, on the QK-normed keys),
        values ``[B, I, H, D]``, queries (RoPE'd for the cross-attention space) and output ``[B, I, H·D]``.

        Eagerly these are the image rows of the joint tensors the attention dispatcher received (views, nothing is
        recomputed); while compiling, RoPE is re-applied to the tapped QK-normed keys (the compiler fuses it)."""
        image_output = sink["to_out"]  # [B, I, H·D], before to_out[0]
        kept = image_rows(sink, *self._image_row_range(num_text, image_output.shape[1]))
        if kept is not None:
            image_query, image_key, image_value = kept  # [B, I, H, D] each, after RoPE
            return {"image_key": image_key, "image_value": image_value, "image_query": image_query, "image_output": image_output}
        image_key = sink["norm_k"]  # [B, I, H, D]
        image_value = sink["to_qkv"].chunk(3, dim=-1)[2] if "to_qkv" in sink else sink["to_v"]  # [B, I, H·D]
        image_value = image_value.unflatten(-1, (-1, attn.head_dim))  # [B, I, H, D]
        image_query = sink.get("norm_q")  # [B, I, H, D]
        if image_rotary_emb is not None:
            image_rope = (image_rotary_emb[0][num_text:], image_rotary_emb[1][num_text:])  # [I, D] each
            image_key = apply_rotary_emb(image_key, image_rope, sequence_dim=1)
            if self.session.config.space == "cross_attention" and image_query is not None:
                image_query = apply_rotary_emb(image_query, image_rope, sequence_dim=1)
        return {"image_key": image_key, "image_value": image_value, "image_query": image_query, "image_output": image_output}

    def _image_row_range(self, num_text: int, num_image: int) -> tuple[int | None, int | None]:
        """``(start, stop)`` of the image rows in the joint tensors the attention dispatcher receives: ``[text,
        image]`` here; subclasses whose processor orders them otherwise override it (HunyuanImage: ``[image, text]``)."""
        return num_text, None

    def _prompt_rows(
        self,
        attn: nn.Module,
        sink: dict[str, torch.Tensor],
        num_text: int,
        image_rotary_emb: tuple[torch.Tensor, torch.Tensor] | None,
    ) -> dict[str, torch.Tensor]:
        """The prompt's word tokens as the joint attention saw them, for prompt-word maps: their attention output
        before ``to_add_out`` ``[B, T', H·D]``, keys after QK-norm and RoPE (text rows) and values ``[B, T', H, D]``."""
        words = self.session.prompt_words
        assert words is not None
        if int(words.token_index.max()) >= num_text:
            raise UnsupportedSetupError(
                f"The prompt's words reach token {int(words.token_index.max())} but the transformer got {num_text} text "
                "tokens: the text the pipeline encoded is not the prompt that was read."
            )
        index = words.token_index.to(sink["to_add_out"].device)  # [T']
        text_key = sink["norm_added_k"]  # [B, T, H, D]
        if ATTENTION_KEY in sink:  # the text rows of the joint keys, after RoPE
            text_key = sink[ATTENTION_KEY][:, :num_text]  # [B, T, H, D]
        elif image_rotary_emb is not None:
            text_key = apply_rotary_emb(text_key, (image_rotary_emb[0][:num_text], image_rotary_emb[1][:num_text]), sequence_dim=1)
        text_value = sink["to_added_qkv"].chunk(3, dim=-1)[2] if "to_added_qkv" in sink else sink["add_v_proj"]  # [B, T, H·D]
        return {
            "concept_output": sink["to_add_out"].index_select(1, index),  # [B, T', H·D]
            "concept_key": text_key.index_select(1, index),  # [B, T', H, D]
            "concept_value": text_value.unflatten(-1, (-1, attn.head_dim)).index_select(1, index),  # [B, T', H, D]
        }

    def _concept_conditioning(self) -> torch.Tensor:
        """This block's modulation input of the concept stream (FLUX.1: one vector for the whole call).

        Subclasses whose blocks have their own modulation (Chroma: each block's ``temb[:, 6:]``) override it.
        """
        assert self.session.call is not None
        return self.session.call.concept_conditioning

    def _concept_projections(self, attn: nn.Module, concept_input: torch.Tensor) -> tuple[torch.Tensor, ...]:
        if getattr(attn, "fused_projections", False) and hasattr(attn, "to_added_qkv"):
            return attn.to_added_qkv(concept_input).chunk(3, dim=-1)
        return attn.add_q_proj(concept_input), attn.add_k_proj(concept_input), attn.add_v_proj(concept_input)

    def _initial_concepts(self, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Concept tokens after the text input layer ``[B, C, d]`` and their conditioning vector ``[B, d]``.

        Computed inside the forward (after offloading hooks have moved the embedders), with the activations' dtype.
        """
        session, transformer = self.session, self._transformer()
        assert session.call is not None and transformer is not None
        inputs = session.call.inputs
        batch = like.shape[0]
        concepts = self._concept_tokens(like, transformer.context_embedder)  # [B, C, d]
        # The concept conditioning vector, computed exactly as FluxTransformer2DModel.forward computes temb.
        timestep = inputs["timestep"].to(like.dtype) * 1000
        pooled = inputs["pooled_projections"]
        if session.config.concept_conditioning == "null_pooled":
            pooled = torch.zeros_like(pooled)
        guidance = inputs.get("guidance")
        if guidance is None:
            conditioning = transformer.time_text_embed(timestep, pooled)
        else:
            conditioning = transformer.time_text_embed(timestep, guidance.to(like.dtype) * 1000, pooled)
        return concepts, conditioning.expand(batch, -1)

    def _record_and_advance(
        self,
        attn: nn.Module,
        block: nn.Module,
        concepts: torch.Tensor,
        concept_output: torch.Tensor,
        *,
        image_output: torch.Tensor,
        image_query: torch.Tensor,
        concept_key: torch.Tensor,
        image_value: torch.Tensor,
        concept_value: torch.Tensor,
        modulation: tuple[torch.Tensor, ...],
        prompt_rows: dict[str, torch.Tensor] | None = None,
    ) -> None:
        """Record the layer's scores (if selected; with the prompt's word rows for prompt-word maps) and advance the
        concept stream as the block advances text."""
        session = self.session
        if not self._record_scores(
            prompt_rows=prompt_rows,
            concept_output=concept_output,
            image_output=image_output,
            image_query=image_query,
            concept_key=concept_key,
            image_value=image_value,
            concept_value=concept_value,
        ):
            return
        gate_msa, shift_mlp, scale_mlp, gate_mlp = modulation
        # the text stream's update, with fused multiply-adds (fewer small kernels than the block's own code)
        concepts = torch.addcmul(concepts, gate_msa.unsqueeze(1), attn.to_add_out(concept_output))
        normed = torch.addcmul(shift_mlp[:, None], block.norm2_context(concepts), 1 + scale_mlp[:, None])
        concepts = torch.addcmul(concepts, gate_mlp.unsqueeze(1), block.ff_context(normed))
        if concepts.dtype == torch.float16:
            concepts = concepts.clip(-65504, 65504)
        assert session.call is not None
        session.call.concept_hidden_states = concepts


_MODULE_VARIANTS: dict[type, type] = {}


def module_variant(processor_class: type) -> type:
    """``processor_class`` made an ``nn.Module`` too, for replacing a processor that holds weights (IP-Adapter).

    The replaced processor stays registered under ``processor.original``, so device moves, offloading hooks and
    ``state_dict`` still reach its weights while the ``with`` block is active (keys gain an ``original.`` infix).
    """
    if processor_class not in _MODULE_VARIANTS:
        _MODULE_VARIANTS[processor_class] = type(f"{processor_class.__name__}Module", (processor_class, nn.Module), {})
    return _MODULE_VARIANTS[processor_class]


class FluxAdapter(SingleBlockLayers, ConceptAdapter):
    """Adapter for FLUX.1 [dev]/[schnell] and every model built on ``FluxTransformer2DModel``.

    Layer indices past the double blocks select the single blocks (the single-stream extension, beyond the paper:
    :mod:`conceptattention.adapters.flux_single`).

    Example:
        >>> from conceptattention.adapters import get_adapter
        >>> from conceptattention.testing.flux import tiny_flux_transformer
        >>> get_adapter(tiny_flux_transformer()).name
        'flux'
    """

    name = "flux"
    processor_class = FluxConceptAttnProcessor
    stock_processor_class = (FluxAttnProcessor, FluxIPAdapterAttnProcessor)
    single_processor_class = FluxSingleConceptAttnProcessor
    single_stock_processor_class = FluxAttnProcessor
    stock_processor_remedy = "a custom processor is installed: call `transformer.set_default_attn_processor()`."
    transformer_classes = ("FluxTransformer2DModel",)
    pipeline_classes = ("FluxPipeline",)
    modality = "image"
    ip_adapter = "yes"
    official_default_layers = "last 4 double blocks (FLUX.1: 15-18)"

    def make_processor(
        self, session: Any, layer: int, block: nn.Module, original_processor: Any, transformer: nn.Module
    ) -> Any:
        """The concept processor wrapping ``original_processor`` (an ``nn.Module`` one when it holds weights)."""
        if self.is_single_layer(transformer, layer):
            return self.make_single_processor(session, layer, block, original_processor, transformer)
        assert self.processor_class is not None
        cls = self.processor_class
        if isinstance(original_processor, nn.Module):
            cls = module_variant(cls)
        return cls(session, layer, block, transformer, original_processor)
    tested = (
        "adapter battery + naive reference; true CFG; explain path; full-size FLUX.1-schnell architecture "
        "(random bf16 weights) bit-identical on an H100"
    )

    def capture_call(self, transformer: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> dict[str, Any]:
        names = ("hidden_states", "encoder_hidden_states", "pooled_projections", "timestep", "img_ids", "txt_ids", "guidance")
        required = ("pooled_projections", "timestep", "img_ids")
        bound = bind_call("FluxTransformer2DModel", names, args, kwargs, required)
        return {name: bound.get(name) for name in ("pooled_projections", "timestep", "img_ids", "guidance")}

    def token_grid(self, call_inputs: dict[str, Any], num_image_tokens: int) -> tuple[int, int, int]:
        img_ids = call_inputs["img_ids"]
        if img_ids.ndim == 3:  # deprecated batched ids
            img_ids = img_ids[0]
        img_ids = img_ids.detach().cpu()
        height = int(torch.unique(img_ids[:, 1]).numel())
        width = int(torch.unique(img_ids[:, 2]).numel())
        if height * width != num_image_tokens:
            raise AdapterInputError(
                f"Cannot arrange {num_image_tokens} image tokens on the {height}x{width} grid given by img_ids "
                "(reference-image tokens or custom ids are not supported)."
            )
        return 1, height, width

    def encode_concepts(
        self, pipeline: Any, concepts: Sequence[str], pooling: ConceptPooling, device: torch.device | None = None
    ) -> torch.Tensor:
        description = "This Flux pipeline has no T5 text encoder"
        names = ("tokenizer_2", "text_encoder_2")
        return encode_concepts_masked(pipeline, concepts, pooling, device, description, 512, names)  # [C, D_text]

    def prompt_word_source(self, pipeline: Any, arguments: dict[str, Any]) -> tuple[Any, str | list[str] | None, int]:
        """For prompt-word maps: the T5 tokenizer, the prompt T5 encodes (``prompt_2``, else ``prompt``; None when
        ``prompt_embeds`` are given) and its ``max_sequence_length``, from ``FluxPipeline.encode_prompt``'s bound
        arguments. Declared here, so FLUX.1 only: subclasses (Chroma, Flux-like families) do not inherit it."""
        tokenizer, _ = pipeline_text_encoder(pipeline, "tokenizer_2", "text_encoder_2", "This Flux pipeline has no T5 text encoder")
        prompt = None if arguments.get("prompt_embeds") is not None else (arguments.get("prompt_2") or arguments.get("prompt"))
        return tokenizer, prompt, int(arguments.get("max_sequence_length") or 512)

    # ----- real images -------------------------------------------------------------------------------------------

    def explain_resolution(self, pipeline: Any, image_size: tuple[int, int]) -> tuple[int, int]:
        vae_scale = int(getattr(pipeline, "vae_scale_factor", 8))
        multiple = vae_scale * 2
        side = int(getattr(pipeline, "default_sample_size", 128)) * vae_scale
        return area_resolution(image_size, side * side, multiple)

    def explain_batch(self, pipeline: Any, image: Image.Image, request: ExplainRequest) -> ExplainBatch:
        from diffusers import FluxPipeline

        device = pipeline._execution_device
        transformer = pipeline.transformer
        noisy, latent_shape = packed_noisy_latents(pipeline, image, request)  # [N, I, 4c]
        num = len(request.seeds)
        dtype = transformer.dtype
        max_sequence_length = min(512, getattr(pipeline.tokenizer_2, "model_max_length", 512) or 512)
        with torch.no_grad():
            prompt_embeds, pooled, text_ids = pipeline.encode_prompt(
                prompt=request.caption,
                prompt_2=None,
                device=device,
                num_images_per_prompt=num,
                max_sequence_length=max_sequence_length,
            )
        if request.image_pooled == "zero":
            pooled = torch.zeros_like(pooled)
        _, _, latent_height, latent_width = latent_shape
        img_ids = FluxPipeline._prepare_latent_image_ids(num, latent_height // 2, latent_width // 2, device, dtype)
        kwargs = {
            "hidden_states": noisy.to(dtype),
            "encoder_hidden_states": prompt_embeds.to(dtype),
            "pooled_projections": pooled.to(dtype),
            "timestep": torch.full((num,), request.noise_level, device=device, dtype=dtype),
            "img_ids": img_ids,
            "txt_ids": text_ids,
            "guidance": guidance_tensor(transformer, request, num, device),
            "return_dict": False,
        }
        return ExplainBatch(transformer_kwargs=kwargs, latent_shape=latent_shape)


def packed_noisy_latents(pipeline: Any, image: Image.Image, request: ExplainRequest) -> tuple[torch.Tensor, tuple[int, ...]]:
    """VAE-encode an image as FLUX.1-style pipelines do, pack 2×2, and noise it once per seed (rectified flow).

    Args:
        pipeline: A Flux-like pipeline (``vae`` with ``shift_factor``/``scaling_factor``, static ``_pack_latents``).
        image: The image (resized to the request's size, bicubic).
        request: Size, noise level and seeds.

    Returns:
        ``x_t`` of shape ``[N, I, 4c]`` (float32) and the shape of the clean latents ``(1, c, h, w)``.
    """
    vae = pipeline.vae
    pixels = image_pixels(pipeline, image, request.height, request.width)  # [1, 3, H, W]
    with torch.no_grad():
        latents = vae.encode(pixels).latent_dist.mode()  # [1, c, h, w]
    latents = (latents - vae.config.shift_factor) * vae.config.scaling_factor
    _, channels, latent_height, latent_width = latents.shape
    packed = type(pipeline)._pack_latents(latents, 1, channels, latent_height, latent_width)  # [1, I, 4c]
    return flow_noised(packed, request, pipeline._execution_device), tuple(latents.shape)
