"""SD3 / SD3.5 adapter (``SD3Transformer2DModel``, ``StableDiffusion3Pipeline``) — method.md §6.4,
diffusers-hooking.md §2-4.

Concept tokens take the text stream's modules of every ``JointTransformerBlock``: ``norm1_context`` (modulation),
``add_{q,k,v}_proj``, ``norm_added_{q,k}`` (SD3.5's RMS QK-norm), ``to_add_out``, ``norm2_context`` and
``ff_context`` (chunked when ``_chunk_size`` is set). The joint attention concatenates ``[image, text]`` in the
(B, H, S, D) layout and has no RoPE (positions are absolute sin-cos embeddings added to the image patches only), so
concepts carry no position.

Quirks handled:

* **Last block** (``context_pre_only=True``): ``norm1_context`` is an ``AdaLayerNormContinuous`` (returns only the
  normalised tokens) and there is no ``to_add_out``/``ff_context``. Concepts still compute q/k/v, attention and
  scores there; the stream simply ends.
* **SD3.5-medium dual attention** (``dual_attention_layers``): ``attn`` and ``attn2`` share one processor instance;
  only ``attn`` gets the concept processor, ``attn2`` (image-only self-attention) keeps the stock one.
* **Classifier-free guidance**: the pipeline batches ``[uncond, cond]``; concepts are expanded to the whole batch and
  the maps come from the conditional half.
* **Skip-layer guidance** (SD3.5-medium): the extra transformer call with ``skip_layers`` is neither recorded nor
  counted as a step.

Concept conditioning (``concept_conditioning``): ``"prompt"`` uses the ``temb`` that the block receives (the official
SD3 ConceptAttention behaviour), captured by a block pre-hook; ``"null_pooled"`` (the library default, official for
FLUX.1) uses ``time_text_embed(timestep, 0)``, the timestep embedding with a zero pooled CLIP vector.

Concept text embeddings (the ``concept_text_encoder`` option of :class:`~conceptattention.ConceptAttentionConfig`,
``"clip"`` or ``"t5"``): by default the CLIP stream, as the
official SD3 code, but without its two bugs. Each concept is encoded on its own (one padded, masked batch), the
penultimate states of CLIP-L and CLIP-G are pooled over the concept's **content tokens** (never index 0, the start
token, which is the same vector for every concept; never the end token), concatenated (``768 + 1280 = 2048``) and
zero-padded (or cropped, when CLIP-L ⊕ CLIP-G is wider) to ``joint_attention_dim`` exactly as the pipeline lays out a
prompt's CLIP part. The CLIP stream is the
one the official SD3 maps (and so the paper's SD3.5 figures) were computed with, and it needs no T5 (pipelines are
often loaded without ``text_encoder_3``). ``ConceptAttention(pipe, concepts, concept_text_encoder="t5")`` pools T5
content tokens instead
(the prompt's other half; bidirectional, so every token sees the whole concept).
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Literal

import torch
import torch.nn.functional as F
from diffusers.models.attention import _chunked_feed_forward
from diffusers.models.attention_processor import FusedJointAttnProcessor2_0, JointAttnProcessor2_0
from torch import nn

from ..config import ConceptPooling, ConfigError
from ..core import concept_attention
from ..encoding import encode_masked_concepts, pool_token_states, tokenize_concepts
from .base import AdapterInputError, ConceptAdapter, bind_call, block_input_grabbers, captured_block_input
from .guidance import call_latents, guidance_half_slice, is_skip_layer_call, pipeline_guidance_on
from .processor import AttentionView, ConceptProcessorMixin, captured_qkv, check_captured
from .qk_norm import RMS_NORM_FINGERPRINTS, RMS_NORM_SOURCE, paired_rms_norm
from .real_images import ExplainBatch, ExplainRequest, area_resolution, flow_noised, image_pixels


if TYPE_CHECKING:
    from PIL import Image

    from ..session import ConceptSession

ConceptTextEncoder = Literal["clip", "t5"]

BLOCK_TEMB_KEY = "sd3_block_temb"
"""Call-inputs key of the running block's ``temb``, captured by the block pre-hooks."""

_CALL_ARGUMENTS = (
    "hidden_states",
    "encoder_hidden_states",
    "pooled_projections",
    "timestep",
    "block_controlnet_hidden_states",
    "joint_attention_kwargs",
    "return_dict",
    "skip_layers",
)


def _check_text_encoder(name: Any) -> ConceptTextEncoder:
    """``name`` if it is ``"clip"`` or ``"t5"``; a :class:`ConfigError` (a ``ValueError``) otherwise."""
    if name not in ("clip", "t5"):
        raise ConfigError(f"concept_text_encoder must be 'clip' or 't5' for SD3, got {name!r}.")
    return name


#: Modules of SD3's ``Attention`` whose outputs the concept branch takes (``to_out[0]``'s input is taken too).
SD3_TAPS = ("to_q", "to_k", "to_v", "norm_q", "norm_k", "to_qkv")


class SD3ConceptAttnProcessor(ConceptProcessorMixin):
    """SD3 joint-attention processor: runs diffusers' own processor untouched, and the concept branch beside it.

    The processor it replaces (``JointAttnProcessor2_0``, or ``FusedJointAttnProcessor2_0`` after
    ``fuse_qkv_projections()``) is called on an :class:`~conceptattention.adapters.processor.AttentionView` of the
    attention module, which hands the concept branch the image queries/keys/values (after QK-norm where the processor
    applies it) and the image attention output before ``to_out[0]``. No diffusers code is copied: outputs are
    bit-identical by construction. Calls without concept work (unrecorded steps, skip-layer-guidance calls,
    image-only self-attention) go straight to the original processor.

    Args:
        session: The shared run state.
        layer: Index of this block among the joint blocks.
        block: The ``JointTransformerBlock`` (held weakly; its text-stream norms and MLP are used).
        transformer: The ``SD3Transformer2DModel`` (held weakly; its text/time embedders are used).
        original: The processor being replaced; it computes the joint attention.

    Example:
        >>> from conceptattention import ConceptAttention
        >>> from conceptattention.testing.sd3 import tiny_sd3_inputs, tiny_sd3_transformer
        >>> model = tiny_sd3_transformer()
        >>> with ConceptAttention(model, concept_embeds=torch.randn(2, 48)) as ca:
        ...     _ = model(**tiny_sd3_inputs())
        >>> ca.maps.tensor.shape
        torch.Size([2, 1, 4, 6])
    """

    #: the stock processor(s) it runs through an AttentionView: their capture points (diffusers 0.42.1); see tests/adapters/test_stock_drift.py
    STOCK_SOURCES = (
        ("diffusers.models.attention_processor.JointAttnProcessor2_0.__call__", "ed23f45c129bf15987951f21976c9300ce330fb82418240f3e7643fa69558eb4"),
        ("diffusers.models.attention_processor.FusedJointAttnProcessor2_0.__call__", "9698a9bae7e74a59054fc1acd7c1bc74b8d0c2d2c444f129b1aac1b25094bdc3"),
        (RMS_NORM_SOURCE, RMS_NORM_FINGERPRINTS),  # the concept QK-norm mirrors it (qk_norm.py)
    )

    def __call__(
        self,
        attn: nn.Module,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        *args: Any,
        **kwargs: Any,
    ) -> Any:
        session = self.session
        call = session.call
        if (
            encoder_hidden_states is None
            or call is None
            or not session.needs_concepts()
            or is_skip_layer_call(call.inputs)
        ):
            return self.original(attn, hidden_states, encoder_hidden_states, attention_mask, *args, **kwargs)
        sink: dict[str, torch.Tensor] = {}
        outputs = self.original(
            AttentionView(attn, sink, SD3_TAPS), hidden_states, encoder_hidden_states, attention_mask, *args, **kwargs
        )
        check_captured(sink, (("to_k", "to_qkv"), ("to_out",)), self.original, "sd3")
        # the fused processor applies no QK-norm
        query, key, value = (x.transpose(1, 2) for x in captured_qkv(sink, attn.heads, hidden_states.shape[0]))
        # query, key, value: [B, I, H, D] -> [B, H, I, D]
        query = sink.get("norm_q", query)  # after QK-norm where the processor applied it
        key = sink.get("norm_k", key)
        fused = "to_qkv" in sink
        self._concept_branch(attn, sink["to_out"], query, key, value, hidden_states.shape[1], fused)
        return outputs

    def _initial_concepts(self, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Concept tokens after ``context_embedder`` ``[B, C, d]`` and their conditioning vector ``[B, d]``.

        Computed inside the forward (after offloading hooks have moved the embedders), with the activations' dtype.
        """
        session, transformer = self.session, self._transformer()
        assert session.call is not None and transformer is not None
        inputs = session.call.inputs
        batch = like.shape[0]
        concepts = self._concept_tokens(like, transformer.context_embedder)  # [B, C, d]
        if session.config.concept_conditioning == "prompt":
            conditioning = captured_block_input(session, BLOCK_TEMB_KEY, "The temb of SD3 block")
        else:  # "null_pooled": the timestep embedding with a zero pooled CLIP vector
            pooled = inputs["pooled_projections"]
            conditioning = transformer.time_text_embed(inputs["timestep"], torch.zeros_like(pooled))  # [B, d]
        return concepts, conditioning.expand(batch, -1)

    def _concept_branch(
        self,
        attn: nn.Module,
        image_output: torch.Tensor,
        query: torch.Tensor,
        key: torch.Tensor,
        value: torch.Tensor,
        num_image: int,
        fused: bool = False,
    ) -> None:
        session, block = self.session, self._block()
        call = session.call
        assert call is not None and block is not None
        if call.concept_hidden_states is None:
            call.concept_hidden_states, call.concept_conditioning = self._initial_concepts(image_output)
        concepts = call.concept_hidden_states  # [B, C, d]
        conditioning = call.concept_conditioning  # [B, d]
        config = session.config

        if block.context_pre_only:  # last block: AdaLayerNormContinuous, no gates, no MLP
            normed = block.norm1_context(concepts, conditioning)  # [B, C, d]
            gate_msa = shift_mlp = scale_mlp = gate_mlp = None
        else:
            normed, gate_msa, shift_mlp, scale_mlp, gate_mlp = block.norm1_context(concepts, emb=conditioning)
        if fused:  # as the fused processor treats the prompt: one projection, no QK-norm
            concept_qkv = attn.to_added_qkv(normed)  # [B, C, 3·H·D]
            concept_query, concept_key, concept_value = torch.split(concept_qkv, concept_qkv.shape[-1] // 3, dim=-1)
        else:
            concept_query, concept_key, concept_value = attn.add_q_proj(normed), attn.add_k_proj(normed), attn.add_v_proj(normed)
        concept_query = concept_query.unflatten(-1, (attn.heads, -1))  # [B, C, H, D]
        concept_key = concept_key.unflatten(-1, (attn.heads, -1))  # [B, C, H, D]
        concept_value = concept_value.unflatten(-1, (attn.heads, -1))  # [B, C, H, D]
        if not fused:  # QK-norm of both in one pass where both are RMSNorm (qk_norm.py), [B, C, H, D] each
            concept_query, concept_key = paired_rms_norm(attn.norm_added_q, attn.norm_added_k, concept_query, concept_key)
        # SD3 has no RoPE; the image keys/values are those of the joint attention (after QK-norm).
        image_key = key[:, :, :num_image].transpose(1, 2)  # [B, I, H, D]
        image_value = value[:, :, :num_image].transpose(1, 2)  # [B, I, H, D]
        concept_output = concept_attention(
            concept_query, concept_key, concept_value, image_key, image_value, config.concept_attention
        )  # [B, C, H, D]
        concept_output = concept_output.flatten(2, 3).to(image_output.dtype)  # [B, C, H·D]

        advance = self._record_scores(
            concept_output=concept_output,
            image_output=image_output,
            image_query=query[:, :, :num_image].transpose(1, 2),  # [B, I, H, D], a view
            concept_key=concept_key,
            image_value=image_value,
            concept_value=concept_value,
        )
        if not advance or block.context_pre_only:
            return
        # Advance the concept residual stream exactly as JointTransformerBlock advances the text stream.
        assert gate_msa is not None and shift_mlp is not None and scale_mlp is not None and gate_mlp is not None
        concepts = concepts + gate_msa.unsqueeze(1) * attn.to_add_out(concept_output)
        normed = block.norm2_context(concepts) * (1 + scale_mlp[:, None]) + shift_mlp[:, None]
        chunk_size = block._chunk_size
        if chunk_size is not None and normed.shape[block._chunk_dim] % chunk_size == 0:
            # Feed-forward chunking as the block does (the MLP is token-wise, so an indivisible concept count is
            # simply run in one piece: C tokens need no memory saving).
            feed_forward = _chunked_feed_forward(block.ff_context, normed, block._chunk_dim, chunk_size)
        else:
            feed_forward = block.ff_context(normed)
        call.concept_hidden_states = concepts + gate_mlp.unsqueeze(1) * feed_forward


class SD3Adapter(ConceptAdapter):
    """Adapter for Stable Diffusion 3 / 3.5 (``SD3Transformer2DModel``), incl. SD3.5's QK-norm and dual attention.

    Args:
        concept_text_encoder: ``"clip"`` (default: pooled CLIP-L ⊕ CLIP-G penultimate content-token states,
            zero-padded to ``joint_attention_dim``, as the prompt's CLIP part) or ``"t5"`` (pooled T5 content-token
            states). Deprecated: set ``ConceptAttentionConfig.concept_text_encoder`` instead (one option per
            ``ConceptAttention`` block, not one per registered adapter); kept for one release as the default of
            this instance, with a ``DeprecationWarning``.

    Example:
        >>> from conceptattention.adapters import get_adapter
        >>> from conceptattention.testing.sd3 import tiny_sd3_transformer
        >>> get_adapter(tiny_sd3_transformer()).name
        'sd3'
    """

    name = "sd3"
    attention_attribute = "attn"  # never attn2 (SD3.5 dual attention: image-only, shares the processor instance)
    processor_class = SD3ConceptAttnProcessor
    stock_processor_class = (JointAttnProcessor2_0, FusedJointAttnProcessor2_0)
    stock_processor_remedy = (
        "IP-Adapter, PAG or a custom processor is active: undo it first (e.g. `pipe.unload_ip_adapter()` or "
        "`transformer.set_default_attn_processor()`)."
    )
    transformer_classes = ("SD3Transformer2DModel",)
    pipeline_classes = ("StableDiffusion3Pipeline",)
    modality = "image"
    ip_adapter = "refused (SD3IPAdapterJointAttnProcessor2_0)"
    fused_qkv = "yes (SD3.5-medium: fails in diffusers itself)"
    official_default_layers = "all joint blocks (official SD3.5: 0-37)"
    tested = "adapter battery + naive reference for SD3 and an SD3.5-like config (dual attention, RMS QK-norm); CFG; skip-layer guidance; explain path; bf16/fp16 on an H100"

    concept_text_encoders = ("clip", "t5")
    #: the default text encoder of concepts (an instance attribute only under the deprecated constructor argument)
    concept_text_encoder: ConceptTextEncoder = "clip"

    def __init__(self, concept_text_encoder: ConceptTextEncoder | None = None) -> None:
        if concept_text_encoder is None:
            return
        warnings.warn(
            "SD3Adapter(concept_text_encoder=...) is deprecated and will be removed in the next release; pass "
            f"concept_text_encoder={concept_text_encoder!r} to ConceptAttention (or ConceptAttentionConfig) instead.",
            DeprecationWarning,
            stacklevel=2,
        )
        self.concept_text_encoder = _check_text_encoder(concept_text_encoder)

    # ----- structure -------------------------------------------------------------------------------------------

    def default_layers(self, num_blocks: int) -> tuple[int, ...]:
        """All joint blocks, as the official SD3.5 code (``layer_indices=None``)."""
        return tuple(range(num_blocks))

    def install_hooks(self, transformer: nn.Module, session: ConceptSession) -> list[Any]:
        """Block pre-hooks that hand each block's ``temb`` to its processor."""
        return block_input_grabbers(self.joint_blocks(transformer), session, "temb", BLOCK_TEMB_KEY)

    def is_auxiliary_call(self, call_inputs: dict[str, Any]) -> bool:
        """Skip-layer guidance's extra call (some blocks skipped): neither recorded nor counted as a step."""
        return is_skip_layer_call(call_inputs)

    # ----- per call -------------------------------------------------------------------------------------------

    def capture_call(self, transformer: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> dict[str, Any]:
        required = ("hidden_states", "pooled_projections", "timestep")
        bound = bind_call("SD3Transformer2DModel", _CALL_ARGUMENTS, args, kwargs, required)
        hidden_states = bound["hidden_states"]
        return {
            **call_latents(hidden_states),
            "pooled_projections": bound["pooled_projections"],
            "timestep": bound["timestep"],
            "skip_layers": bound.get("skip_layers"),
            "latent_shape": tuple(hidden_states.shape),
            "patch_size": int(transformer.config.patch_size),
        }

    def token_grid(self, call_inputs: dict[str, Any], num_image_tokens: int) -> tuple[int, int, int]:
        _, _, latent_height, latent_width = call_inputs["latent_shape"]
        patch = call_inputs["patch_size"]
        height, width = latent_height // patch, latent_width // patch
        if height * width != num_image_tokens:
            raise AdapterInputError(
                f"Cannot arrange {num_image_tokens} image tokens on the {height}x{width} grid of a "
                f"{latent_height}x{latent_width} latent with patch size {patch}."
            )
        return 1, height, width

    def size_multiple(self, pipeline: Any) -> int:
        return int(getattr(pipeline, "vae_scale_factor", 8)) * int(pipeline.transformer.config.patch_size)

    def cfg_batch_slice(self, batch_size: int, call_inputs: dict[str, Any], pipeline: Any | None) -> slice:
        """The conditional half of a batched ``[uncond, cond]`` call of ``StableDiffusion3Pipeline``.

        A call is taken as batched guidance when the pipeline has guidance on (``do_classifier_free_guidance``) and
        makes the call from its ``__call__`` (it feeds ``cat([latents] * 2)``); a direct transformer call while the
        pipeline still carries the guidance scale of an earlier generation is halved only when its two latent halves
        are identical, so that different rows (e.g. noise samples) are kept whole (see :func:`guidance_half_slice`).
        """
        return guidance_half_slice(
            batch_size, call_inputs, pipeline_guidance_on(pipeline, "do_classifier_free_guidance"), pipeline
        )

    # ----- text ---------------------------------------------------------------------------------------------------

    def encode_concepts(
        self,
        pipeline: Any,
        concepts: Sequence[str],
        pooling: ConceptPooling,
        device: torch.device | None = None,
        *,
        text_encoder: ConceptTextEncoder | None = None,
    ) -> torch.Tensor:
        """Pooled concept embeddings ``[C, joint_attention_dim]`` (see the module docstring for the streams).

        ``text_encoder``: ``"clip"`` or ``"t5"``; ``None`` takes this adapter's default (``"clip"``).
        """
        device = device or getattr(pipeline, "_execution_device", None) or pipeline.transformer.device
        joint_dim = int(pipeline.transformer.config.joint_attention_dim)
        stream = self.concept_text_encoder if text_encoder is None else _check_text_encoder(text_encoder)
        if stream == "t5":
            tokenizer, text_encoder = getattr(pipeline, "tokenizer_3", None), getattr(pipeline, "text_encoder_3", None)
            if tokenizer is None or text_encoder is None:
                raise AdapterInputError(
                    "This SD3 pipeline has no T5 encoder (tokenizer_3/text_encoder_3) to encode concepts with "
                    "concept_text_encoder='t5'; use the default 'clip' or pass `concept_embeds=`."
                )
            max_length = min(512, getattr(tokenizer, "model_max_length", 512) or 512)
            pooled = encode_masked_concepts(tokenizer, text_encoder, concepts, pooling, device, max_length)  # [C, D_t5]
            if pooled.shape[-1] != joint_dim:
                raise AdapterInputError(
                    f"The T5 width {pooled.shape[-1]} differs from the transformer's joint_attention_dim {joint_dim}."
                )
            return pooled
        parts = []
        for tokenizer_name, encoder_name in (("tokenizer", "text_encoder"), ("tokenizer_2", "text_encoder_2")):
            tokenizer, text_encoder = getattr(pipeline, tokenizer_name, None), getattr(pipeline, encoder_name, None)
            if tokenizer is None or text_encoder is None:
                raise AdapterInputError(
                    f"This SD3 pipeline has no {encoder_name} to encode concepts with CLIP; pass `concept_embeds=` "
                    "or use concept_text_encoder='t5'."
                )
            max_length = getattr(tokenizer, "model_max_length", 77) or 77
            # Content tokens exclude the start token (index 0, identical for every concept) and the end token;
            # padding is excluded by the attention mask.
            input_ids, attention_mask, content_mask = tokenize_concepts(
                tokenizer, concepts, max_length, special_ids=(tokenizer.bos_token_id, tokenizer.eos_token_id)
            )
            content_mask[:, 0] = False  # the first position is always the start token, whatever its id
            with torch.no_grad():
                output = text_encoder(
                    input_ids.to(device), attention_mask=attention_mask.to(device), output_hidden_states=True
                )
            hidden = output.hidden_states[-2]  # [C, L, D_clip], penultimate layer as the pipeline (clip_skip=None)
            parts.append(pool_token_states(hidden, content_mask.to(hidden.device), pooling))  # [C, D_clip]
        clip = torch.cat(parts, dim=-1)  # [C, D_clip_l + D_clip_g]
        # [C, joint_attention_dim]: zero-padded, or cropped when CLIP-L ⊕ CLIP-G is wider (diffusers' own test
        # layout), exactly as StableDiffusion3Pipeline.encode_prompt lays out the prompt's CLIP part (F.pad with a
        # negative width crops)
        return F.pad(clip, (0, joint_dim - clip.shape[-1]))

    # ----- real images -------------------------------------------------------------------------------------------

    def explain_resolution(self, pipeline: Any, image_size: tuple[int, int]) -> tuple[int, int]:
        vae_scale = int(getattr(pipeline, "vae_scale_factor", 8))
        multiple = self.size_multiple(pipeline)
        side = int(getattr(pipeline, "default_sample_size", 128)) * vae_scale
        return area_resolution(image_size, side * side, multiple)

    def explain_batch(self, pipeline: Any, image: Image.Image, request: ExplainRequest) -> ExplainBatch:
        """VAE-encode (shift, scale), noise by flow matching ``x_t = (1 - t)·x_0 + t·ε``, timestep ``t·1000``.

        ``guidance_scale`` is unused (SD3 has no guidance embedding; the real-image path runs one conditional call).
        """
        device = pipeline._execution_device
        transformer, vae = pipeline.transformer, pipeline.vae
        pixels = image_pixels(pipeline, image, request.height, request.width)  # [1, 3, H, W]
        with torch.no_grad():
            latents = vae.encode(pixels).latent_dist.mode()  # [1, c, H/s, W/s]
        shift = getattr(vae.config, "shift_factor", None) or 0.0
        latents = (latents - shift) * vae.config.scaling_factor
        num = len(request.seeds)
        noisy = flow_noised(latents, request, device)  # [N, c, h, w]
        tokenizer_3 = getattr(pipeline, "tokenizer_3", None)
        max_sequence_length = min(256, getattr(tokenizer_3, "model_max_length", 256) or 256)
        with torch.no_grad():
            prompt_embeds, _, pooled, _ = pipeline.encode_prompt(
                prompt=request.caption,
                prompt_2=None,
                prompt_3=None,
                device=device,
                num_images_per_prompt=num,
                do_classifier_free_guidance=False,
                max_sequence_length=max_sequence_length,
            )
        if request.image_pooled == "zero":
            pooled = torch.zeros_like(pooled)
        dtype = transformer.dtype
        kwargs = {
            "hidden_states": noisy.to(dtype),
            "encoder_hidden_states": prompt_embeds.to(dtype),
            "pooled_projections": pooled.to(dtype),
            "timestep": torch.full((num,), request.noise_level * 1000.0, device=device, dtype=dtype),
            "return_dict": False,
        }
        return ExplainBatch(transformer_kwargs=kwargs, latent_shape=tuple(latents.shape))


