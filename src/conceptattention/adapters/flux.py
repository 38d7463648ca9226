"""FLUX.1 adapter (``FluxTransformer2DModel``, ``FluxPipeline``) — method.md §6.2, diffusers-hooking.md §2-3.

Concept tokens take the text stream's modules of every double-stream block: ``norm1_context`` (modulation),
``add_{q,k,v}_proj``, ``norm_added_{q,k}``, ``to_add_out``, ``norm2_context`` and ``ff_context``. FLUX.1 text ids
are all zero, so RoPE is the identity for concepts. Single-stream blocks are never touched.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import torch
from diffusers.models.attention_dispatch import dispatch_attention_fn
from diffusers.models.embeddings import apply_rotary_emb
from diffusers.models.transformers.transformer_flux import FluxAttnProcessor, _get_qkv_projections
from torch import nn

from ..config import ConceptPooling
from ..core import concept_attention_packed
from ..encoding import encode_masked_concepts, pipeline_text_encoder
from .base import (
    ConceptAdapter,
    ExplainBatch,
    ExplainRequest,
    bind_call,
    flow_noised,
    guidance_tensor,
    image_pixels,
)
from .processor import ConceptProcessorMixin


if TYPE_CHECKING:
    from PIL import Image



class FluxConceptAttnProcessor(ConceptProcessorMixin, FluxAttnProcessor):
    """Flux double-block processor that also advances the concept stream and records saliency scores.

    Adapted from diffusers 0.42.1 ``FluxAttnProcessor.__call__``; the joint-attention path is the stock one, op for
    op (so the image is bit-identical), and only the concept branch is new. Calls in which no concept work is needed
    (layers after the last selected one, unrecorded steps) go straight to the stock processor.

    Args:
        session: The shared run state.
        layer: Index of this block among the double-stream blocks.
        block: The ``FluxTransformerBlock`` (held weakly; its text-stream norms and MLP are used).
        transformer: The ``FluxTransformer2DModel`` (held weakly; its text/time embedders are used).
        original: The processor being replaced (its attention backend and parallel config are kept).
    """

    def __call__(
        self,
        attn: nn.Module,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        image_rotary_emb: torch.Tensor | None = None,
    ) -> Any:
        session = self.session
        if encoder_hidden_states is None or not session.needs_concepts(self.layer):
            return super().__call__(attn, hidden_states, encoder_hidden_states, attention_mask, image_rotary_emb)

        # ---- concept tokens: modulation and projections with the text stream's modules ----
        call, block = session.call, self._block()
        assert call is not None and block is not None
        if call.concept_hidden_states is None:
            call.concept_hidden_states, call.concept_conditioning = self._initial_concepts(hidden_states)
        concepts = call.concept_hidden_states  # [B, C, d]
        normed, gate_msa, shift_mlp, scale_mlp, gate_mlp = block.norm1_context(concepts, emb=self._concept_conditioning())
        concept_query, concept_key, concept_value = self._concept_projections(attn, normed)
        concept_query = attn.norm_added_q(concept_query.unflatten(-1, (-1, attn.head_dim)))  # [B, C, H, D]
        concept_key = attn.norm_added_k(concept_key.unflatten(-1, (-1, attn.head_dim)))  # [B, C, H, D]
        concept_value = concept_value.unflatten(-1, (-1, attn.head_dim))  # [B, C, H, D]
        num_concepts = concept_key.shape[1]

        # ---- stock joint attention (diffusers 0.42.1 FluxAttnProcessor), keeping the pre-projection outputs ----
        # The concept keys/values are appended to the stock concatenation (one copy instead of two); the joint
        # attention reads the first T + I rows, which hold exactly the stock values.
        query, key, value, encoder_query, encoder_key, encoder_value = _get_qkv_projections(
            attn, hidden_states, encoder_hidden_states
        )
        query = query.unflatten(-1, (-1, attn.head_dim))  # [B, I, H, D]
        key = key.unflatten(-1, (-1, attn.head_dim))  # [B, I, H, D]
        value = value.unflatten(-1, (-1, attn.head_dim))  # [B, I, H, D]
        query = attn.norm_q(query)
        key = attn.norm_k(key)
        encoder_query = encoder_query.unflatten(-1, (-1, attn.head_dim))  # [B, T, H, D]
        encoder_key = encoder_key.unflatten(-1, (-1, attn.head_dim))  # [B, T, H, D]
        encoder_value = encoder_value.unflatten(-1, (-1, attn.head_dim))  # [B, T, H, D]
        encoder_query = attn.norm_added_q(encoder_query)
        encoder_key = attn.norm_added_k(encoder_key)
        query = torch.cat([encoder_query, query], dim=1)  # [B, T + I, H, D]
        key = torch.cat([encoder_key, key, concept_key], dim=1)  # [B, T + I + C, H, D]
        value = torch.cat([encoder_value, value, concept_value], dim=1)  # [B, T + I + C, H, D]
        if image_rotary_emb is not None:
            query = apply_rotary_emb(query, image_rotary_emb, sequence_dim=1)
            # FLUX.1 text (and concept) ids are zero: the concept rows get the identity rotation
            key = apply_rotary_emb(key, self._with_identity_rows(image_rotary_emb, num_concepts), sequence_dim=1)
        num_joint = query.shape[1]
        hidden_states = dispatch_attention_fn(
            query,
            key[:, :num_joint],
            value[:, :num_joint],
            attn_mask=attention_mask,
            backend=self._attention_backend,
            parallel_config=self._parallel_config,
        )
        hidden_states = hidden_states.flatten(2, 3)  # [B, T + I, H·D]
        hidden_states = hidden_states.to(query.dtype)
        num_text = encoder_hidden_states.shape[1]
        encoder_hidden_states, hidden_states = hidden_states.split_with_sizes(
            [num_text, hidden_states.shape[1] - num_text], dim=1
        )  # [B, T, H·D], [B, I, H·D]

        # ---- concept attention, scores, and the concept residual stream ----
        concept_output = concept_attention_packed(
            concept_query,
            key[:, num_text:],  # [B, I + C, H, D]: image keys after QK-norm and RoPE, then concept keys
            value[:, num_text:],  # [B, I + C, H, D]
            num_concepts,
            session.config.concept_attention,
            self._attend,
        )
        concept_output = concept_output.flatten(2, 3).to(query.dtype)  # [B, C, H·D]
        self._record_and_advance(
            attn,
            block,
            concepts,
            concept_output,
            image_output=hidden_states,
            image_query=query[:, num_text:],
            concept_key=concept_key,
            image_value=value[:, num_text:num_joint],
            concept_value=concept_value,
            modulation=(gate_msa, shift_mlp, scale_mlp, gate_mlp),
        )

        hidden_states = attn.to_out[0](hidden_states.contiguous())
        hidden_states = attn.to_out[1](hidden_states)
        encoder_hidden_states = attn.to_add_out(encoder_hidden_states.contiguous())
        return hidden_states, encoder_hidden_states

    def _with_identity_rows(self, rotary_emb: tuple[torch.Tensor, torch.Tensor], count: int) -> tuple[torch.Tensor, ...]:
        """RoPE tables extended by ``count`` identity rows (cos 1, sin 0), cached for the current call."""
        call = self.session.call
        assert call is not None
        cached = call.inputs.get("_rope_with_concepts")
        if cached is not None and cached[0] is rotary_emb[0]:
            return cached[1]
        cos, sin = rotary_emb  # [T + I, D] each
        extended = (
            torch.cat([cos, cos.new_ones(count, cos.shape[1])], dim=0),  # [T + I + C, D]
            torch.cat([sin, sin.new_zeros(count, sin.shape[1])], dim=0),  # [T + I + C, D]
        )
        call.inputs["_rope_with_concepts"] = (rotary_emb[0], extended)
        return extended

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
    ) -> None:
        """Record the layer's scores (if selected) and advance the concept stream as the block advances text."""
        session = self.session
        if not self._record_scores(
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


class FluxAdapter(ConceptAdapter):
    """Adapter for FLUX.1 [dev]/[schnell] and every model built on ``FluxTransformer2DModel``.

    Example:
        >>> from conceptattention.adapters import get_adapter
        >>> from conceptattention.testing import tiny_flux_transformer
        >>> get_adapter(tiny_flux_transformer()).name
        'flux'
    """

    name = "flux"
    processor_class = FluxConceptAttnProcessor
    stock_processor_class = FluxAttnProcessor
    stock_processor_remedy = (
        "an IP-Adapter or a custom processor is loaded: unload it (e.g. `pipe.unload_ip_adapter()`) or call "
        "`transformer.set_default_attn_processor()`."
    )
    transformer_classes = ("FluxTransformer2DModel",)
    pipeline_classes = ("FluxPipeline",)
    modality = "image"
    official_default_layers = "last 4 double blocks (FLUX.1: 15-18)"
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
            raise ValueError(
                f"Cannot arrange {num_image_tokens} image tokens on the {height}x{width} grid given by img_ids "
                "(reference-image tokens or custom ids are not supported)."
            )
        return 1, height, width

    def encode_concepts(
        self, pipeline: Any, concepts: Sequence[str], pooling: ConceptPooling, device: torch.device | None = None
    ) -> torch.Tensor:
        tokenizer, text_encoder = pipeline_text_encoder(
            pipeline, "tokenizer_2", "text_encoder_2", "This Flux pipeline has no T5 text encoder"
        )
        device = device or getattr(pipeline, "_execution_device", None) or text_encoder.device
        max_length = min(512, getattr(tokenizer, "model_max_length", 512) or 512)
        return encode_masked_concepts(tokenizer, text_encoder, concepts, pooling, device, max_length)  # [C, D_text]

    # ----- real images -------------------------------------------------------------------------------------------

    def explain_resolution(self, pipeline: Any, image_size: tuple[int, int]) -> tuple[int, int]:
        vae_scale = int(getattr(pipeline, "vae_scale_factor", 8))
        multiple = vae_scale * 2
        side = int(getattr(pipeline, "default_sample_size", 128)) * vae_scale
        width, height = image_size
        scale = math.sqrt(side * side / float(width * height))
        height = max(multiple, int(round(height * scale / multiple)) * multiple)
        width = max(multiple, int(round(width * scale / multiple)) * multiple)
        return height, width

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
