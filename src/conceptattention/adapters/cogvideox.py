"""CogVideoX adapter (``CogVideoXTransformer3DModel``, ``CogVideoXPipeline``) — docs/models.md,
docs/method.md.

CogVideoX is not a separate-weight MM-DiT: text and video share ``to_q/k/v``, ``norm_q/k``, ``to_out`` and ``ff``;
only the adaptive LayerNorms give each stream its own modulation (``CogVideoXLayerNormZero`` returns a video and a
text modulation from one ``temb``). Concepts therefore take the **text** half of ``norm1(·, concepts, temb)`` and of
``norm2``, the shared projections, QK-norms, output projection and MLP, and the text gates — as the official
CogVideoX ConceptAttention does, but without its padding bug: only the C real concept tokens exist, so no padding
slot enters the attention or the softmax over concepts.

Positions: the joint attention concatenates ``[text, video]``; RoPE checkpoints (CogVideoX-5b, 1.5) rotate only the
video queries/keys, sin-cos checkpoints (CogVideoX-2b) add positions to the video patches only (the text slots get
zero). Concepts therefore carry no position, and their keys/values are ``[concepts; video]`` with the video keys
exactly as the joint attention used them (after QK-norm and RoPE).

Conditioning: CogVideoX has no pooled text vector, so ``"prompt"`` and ``"null_pooled"`` coincide: concepts use the
block's ``temb`` (the timestep embedding, plus ``ofs`` for image-to-video 1.5), captured by a block pre-hook.

Maps are per token frame: ``[C, F, h, w]`` with ``F`` the latent frames (CogVideoX 1.0; ``(num_frames - 1)/4 + 1``)
or ``F = latent frames / patch_size_t`` (1.5, latent frames padded to a multiple of 2 by the pipeline). See
:mod:`conceptattention.video` to lay them over the decoded frames. Under classifier-free guidance the pipeline
batches ``[uncond, cond]`` and the maps come from the conditional half.

Concept text embeddings: each concept is encoded on its own by the pipeline's T5 (one padded, masked batch) and its
content tokens (before ``</s>``) are pooled, never one token per concept.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import torch
from diffusers.models.attention_processor import CogVideoXAttnProcessor2_0, FusedCogVideoXAttnProcessor2_0
from torch import nn

from ..config import ConceptPooling
from ..core import concept_attention
from ..encoding import encode_masked_concepts, pipeline_text_encoder
from .base import (
    AdapterInputError,
    ConceptAdapter,
    UnsupportedSetupError,
    bind_call,
    block_input_grabbers,
    captured_block_input,
)
from .guidance import call_latents, guidance_half_slice
from .processor import AttentionView, ConceptProcessorMixin, captured_qkv, check_captured
from .real_images import ExplainBatch, ExplainRequest, area_resolution, image_pixels, seeded_noise


if TYPE_CHECKING:
    from PIL import Image

    from ..session import ConceptSession

BLOCK_TEMB_KEY = "cogvideox_block_temb"
"""Call-inputs key of the running block's ``temb``, captured by the block pre-hooks."""

_CALL_ARGUMENTS = (
    "hidden_states",
    "encoder_hidden_states",
    "timestep",
    "timestep_cond",
    "ofs",
    "image_rotary_emb",
    "attention_kwargs",
    "return_dict",
)


#: Modules of CogVideoX's ``Attention`` whose outputs the concept branch takes (``to_out[0]``'s input is taken too).
COGVIDEOX_TAPS = ("to_q", "to_k", "to_v", "norm_q", "norm_k", "to_qkv")


class CogVideoXConceptAttnProcessor(ConceptProcessorMixin):
    """CogVideoX attention processor: runs diffusers' own processor untouched, and the concept branch beside it.

    The processor it replaces (``CogVideoXAttnProcessor2_0``, or ``FusedCogVideoXAttnProcessor2_0`` after
    ``fuse_qkv_projections()``) is called on an :class:`~conceptattention.adapters.processor.AttentionView` of the
    attention module. It hands the concept branch the queries/keys/values of ``[text, video]`` after QK-norm (the
    processor then applies RoPE to their video rows *in place*, so the captured tensors hold exactly what the joint
    attention used) and the attention output before ``to_out[0]``. No diffusers code is copied: outputs are
    bit-identical by construction.

    Args:
        session: The shared run state.
        layer: Index of this block.
        block: The ``CogVideoXBlock`` (held weakly; its ``norm1``, ``norm2`` and ``ff`` are used).
        transformer: The ``CogVideoXTransformer3DModel`` (held weakly; its ``patch_embed.text_proj`` is used).
        original: The processor being replaced; it computes the joint attention.

    Example:
        >>> from conceptattention import ConceptAttention
        >>> from conceptattention.testing.cogvideox import tiny_cogvideox_inputs, tiny_cogvideox_transformer
        >>> model = tiny_cogvideox_transformer()
        >>> with ConceptAttention(model, concept_embeds=torch.randn(2, 32)) as ca:
        ...     _ = model(**tiny_cogvideox_inputs(model))
        >>> ca.maps.tensor.shape
        torch.Size([2, 2, 2, 3])
    """

    #: the stock processor(s) it runs through an AttentionView: their capture points (diffusers 0.42.1); see tests/adapters/test_stock_drift.py
    STOCK_SOURCES = (
        ("diffusers.models.attention_processor.CogVideoXAttnProcessor2_0.__call__", "692d60ab2cc8eb8d282326860a6e824e177e5e473bcf46508d855eac8a08ce4e"),
        ("diffusers.models.attention_processor.FusedCogVideoXAttnProcessor2_0.__call__", "3fd017b6f1b422202c2a308500072f60f1971c54f2a40cd83abe1bf7ffeeff1e"),
    )

    def __call__(
        self,
        attn: nn.Module,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        image_rotary_emb: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        if not self.session.needs_concepts():
            return self.original(attn, hidden_states, encoder_hidden_states, attention_mask, image_rotary_emb)
        if attention_mask is not None:
            raise UnsupportedSetupError(
                "CogVideoX was called with an attention mask; ConceptAttention supports the unmasked joint attention "
                "that CogVideoX pipelines use. Drop the mask or run without ConceptAttention."
            )
        sink: dict[str, torch.Tensor] = {}
        outputs = self.original(
            AttentionView(attn, sink, COGVIDEOX_TAPS), hidden_states, encoder_hidden_states, None, image_rotary_emb
        )
        check_captured(sink, (("to_k", "to_qkv"), ("to_out",)), self.original, "cogvideox")
        text_seq_length = encoder_hidden_states.size(1)
        fused = "to_qkv" in sink
        query, key, value = (x.transpose(1, 2) for x in captured_qkv(sink, attn.heads, hidden_states.shape[0]))
        # query, key, value: [B, T + V, H, D] -> [B, H, T + V, D]
        query = sink.get("norm_q", query)  # after QK-norm (and the in-place RoPE of the video rows)
        key = sink.get("norm_k", key)
        video_output = sink["to_out"][:, text_seq_length:]  # [B, V, H·D]
        self._concept_branch(attn, video_output, query, key, value, text_seq_length, fused)
        return outputs

    def _concept_branch(
        self,
        attn: nn.Module,
        video_output: torch.Tensor,
        query: torch.Tensor,
        key: torch.Tensor,
        value: torch.Tensor,
        text_seq_length: int,
        fused: bool = False,
    ) -> None:
        session, block, transformer = self.session, self._block(), self._transformer()
        call = session.call
        assert call is not None and block is not None and transformer is not None
        temb = captured_block_input(session, BLOCK_TEMB_KEY, "The temb of CogVideoX block")
        if call.concept_hidden_states is None:
            call.concept_hidden_states = self._concept_tokens(video_output, transformer.patch_embed.text_proj)
        concepts = call.concept_hidden_states  # [B, C, d]
        config = session.config

        # The text half of the expert adaptive LayerNorm (the video half, computed on the same tokens, is unused).
        _, normed, _, text_gate = block.norm1(concepts, concepts, temb)  # [B, C, d], gate [B, 1, d]
        if fused:  # one projection, as the fused processor projects [text, video]
            concept_qkv = attn.to_qkv(normed)  # [B, C, 3·H·D]
            concept_query, concept_key, concept_value = torch.split(concept_qkv, concept_qkv.shape[-1] // 3, dim=-1)
        else:
            concept_query, concept_key, concept_value = attn.to_q(normed), attn.to_k(normed), attn.to_v(normed)
        concept_query = concept_query.unflatten(-1, (attn.heads, -1))  # [B, C, H, D]
        concept_key = concept_key.unflatten(-1, (attn.heads, -1))  # [B, C, H, D]
        concept_value = concept_value.unflatten(-1, (attn.heads, -1))  # [B, C, H, D]
        if attn.norm_q is not None:
            concept_query = attn.norm_q(concept_query)
        if attn.norm_k is not None:
            concept_key = attn.norm_k(concept_key)
        # No RoPE on concepts (text positions); the video keys are those of the joint attention (after RoPE).
        video_key = key[:, :, text_seq_length:].transpose(1, 2)  # [B, V, H, D]
        video_value = value[:, :, text_seq_length:].transpose(1, 2)  # [B, V, H, D]
        concept_output = concept_attention(
            concept_query, concept_key, concept_value, video_key, video_value, config.concept_attention
        )  # [B, C, H, D]
        concept_output = concept_output.flatten(2, 3)  # [B, C, H·D]

        video_query = query[:, :, text_seq_length:].transpose(1, 2)  # [B, V, H, D], a view
        if not self._record_scores(
            concept_output=concept_output,
            image_output=video_output,
            image_query=video_query,  # [B, V, H, D]
            concept_key=concept_key,
            image_value=video_value,
            concept_value=concept_value,
        ):
            return
        # Advance the concept residual stream as CogVideoXBlock advances the text stream.
        concepts = concepts + text_gate * attn.to_out[1](attn.to_out[0](concept_output))
        _, normed, _, text_gate_ff = block.norm2(concepts, concepts, temb)  # [B, C, d], gate [B, 1, d]
        call.concept_hidden_states = concepts + text_gate_ff * block.ff(normed)


class CogVideoXAdapter(ConceptAdapter):
    """Adapter for CogVideoX 1.0 (2b sin-cos, 5b RoPE) and 1.5 (``patch_size_t=2``) text-to-video models.

    Example:
        >>> from conceptattention.adapters import get_adapter
        >>> from conceptattention.testing.cogvideox import tiny_cogvideox_transformer
        >>> get_adapter(tiny_cogvideox_transformer()).modality
        'video'
    """

    name = "cogvideox"
    attention_attribute = "attn1"
    processor_class = CogVideoXConceptAttnProcessor
    stock_processor_class = (CogVideoXAttnProcessor2_0, FusedCogVideoXAttnProcessor2_0)
    stock_processor_remedy = "a custom processor is installed: call `transformer.set_default_attn_processor()` first."
    transformer_classes = ("CogVideoXTransformer3DModel",)
    pipeline_classes = ("CogVideoXPipeline",)
    modality = "video"
    official_default_layers = "last 4 blocks"
    tested = "adapter battery + naive reference for CogVideoX 1.0 (sin-cos) and 1.5 (RoPE, patch_size_t=2); CFG; per-frame maps; real-video explain path; GIF/MP4 output; bf16/fp16 on an H100"

    # ----- structure -------------------------------------------------------------------------------------------

    def install_hooks(self, transformer: nn.Module, session: ConceptSession) -> list[Any]:
        """Block pre-hooks that hand each block's ``temb`` to its processor (the concept modulation input)."""
        return block_input_grabbers(self.joint_blocks(transformer), session, "temb", BLOCK_TEMB_KEY)

    # ----- per call -------------------------------------------------------------------------------------------

    def capture_call(self, transformer: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> dict[str, Any]:
        required = ("hidden_states", "encoder_hidden_states", "timestep")
        bound = bind_call("CogVideoXTransformer3DModel", _CALL_ARGUMENTS, args, kwargs, required)
        hidden_states = bound["hidden_states"]
        if hidden_states.ndim != 5:
            raise AdapterInputError(
                f"CogVideoX expects latents [B, F, C, H, W]; got hidden_states of shape {tuple(hidden_states.shape)}."
            )
        config = transformer.config
        return {
            **call_latents(hidden_states),
            "timestep": bound["timestep"],
            "latent_shape": tuple(hidden_states.shape),
            "patch_size": int(config.patch_size),
            "patch_size_t": int(config.patch_size_t or 1),
        }

    def token_grid(self, call_inputs: dict[str, Any], num_image_tokens: int) -> tuple[int, int, int]:
        _, latent_frames, _, latent_height, latent_width = call_inputs["latent_shape"]
        patch, patch_t = call_inputs["patch_size"], call_inputs["patch_size_t"]
        frames, height, width = latent_frames // patch_t, latent_height // patch, latent_width // patch
        if frames * height * width != num_image_tokens:
            raise AdapterInputError(
                f"Cannot arrange {num_image_tokens} video tokens on the {frames}x{height}x{width} grid of a "
                f"{latent_frames}x{latent_height}x{latent_width} latent video (patch {patch_t}x{patch}x{patch})."
            )
        return frames, height, width

    def size_multiple(self, pipeline: Any) -> int:
        return int(getattr(pipeline, "vae_scale_factor_spatial", 8)) * int(pipeline.transformer.config.patch_size)

    def cfg_batch_slice(self, batch_size: int, call_inputs: dict[str, Any], pipeline: Any | None) -> slice:
        """The conditional half of a batched ``[uncond, cond]`` call (see :func:`guidance_half_slice`).

        ``CogVideoXPipeline`` guides when its ``guidance_scale`` is above 1 and then feeds ``cat([latents] * 2)``.
        """
        scale = getattr(pipeline, "_guidance_scale", None) if pipeline is not None else None
        guidance_on = isinstance(scale, int | float) and scale > 1
        return guidance_half_slice(batch_size, call_inputs, guidance_on, pipeline)

    # ----- text ---------------------------------------------------------------------------------------------------

    def encode_concepts(
        self, pipeline: Any, concepts: Sequence[str], pooling: ConceptPooling, device: torch.device | None = None
    ) -> torch.Tensor:
        """Pooled T5 content-token states ``[C, text_embed_dim]`` (one padded, masked batch)."""
        tokenizer, text_encoder = pipeline_text_encoder(
            pipeline, "tokenizer", "text_encoder", "This CogVideoX pipeline has no T5 text encoder"
        )
        device = device or getattr(pipeline, "_execution_device", None) or text_encoder.device
        max_length = int(pipeline.transformer.config.max_text_seq_length)
        return encode_masked_concepts(tokenizer, text_encoder, concepts, pooling, device, max_length)  # [C, D_text]

    # ----- real videos -------------------------------------------------------------------------------------------

    def explain_resolution(self, pipeline: Any, image_size: tuple[int, int]) -> tuple[int, int]:
        config = pipeline.transformer.config
        vae_scale = int(getattr(pipeline, "vae_scale_factor_spatial", 8))
        multiple = self.size_multiple(pipeline)
        area = float(config.sample_height * vae_scale * config.sample_width * vae_scale)
        return area_resolution(image_size, area, multiple)

    def explain_batch(
        self, pipeline: Any, image: Image.Image | Sequence[Image.Image], request: ExplainRequest
    ) -> ExplainBatch:
        """Encode a video (or one image as a one-frame video), noise it DDIM-style, build one transformer call.

        The frames (``1 + 4k`` of them) are VAE-encoded to latents ``[1, F_lat, c, h, w]`` scaled by the VAE's
        scaling factor; CogVideoX 1.5 pads the latent frames to a multiple of ``patch_size_t`` at the front, as the
        pipeline does (with copies of the first latent frame). Each seed's noise is added with
        ``scheduler.add_noise`` at the training timestep ``round(noise_level · (num_train_timesteps - 1))``.
        ``guidance_scale`` and ``image_pooled`` have no effect (CogVideoX has neither a guidance embedding nor a
        pooled text vector).

        Raises:
            ValueError: for a frame count that is not ``1 + 4k``, a size that is not a multiple of
                :meth:`size_multiple`, or an image-to-video transformer.
        """
        from PIL import Image as PILImage


        frames = [image] if isinstance(image, PILImage.Image) else list(image)
        if not frames or not all(isinstance(frame, PILImage.Image) for frame in frames):
            raise AdapterInputError("Give a PIL image or a non-empty sequence of PIL images (the video frames).")
        transformer, vae, scheduler = pipeline.transformer, pipeline.vae, pipeline.scheduler
        config = transformer.config
        temporal = int(getattr(pipeline, "vae_scale_factor_temporal", 4))
        if (len(frames) - 1) % temporal:
            raise AdapterInputError(
                f"A CogVideoX video needs 1 + {temporal}·k frames (e.g. 1, 9, 49); got {len(frames)}. Trim the video."
            )
        if config.in_channels != vae.config.latent_channels:
            raise AdapterInputError(
                "This transformer takes image-conditioned latents (CogVideoX image-to-video); the real-video path "
                "supports text-to-video checkpoints only."
            )
        device = pipeline._execution_device
        pixels = torch.stack(
            [image_pixels(pipeline, frame, request.height, request.width)[0] for frame in frames], dim=1
        )  # [3, F, H, W]
        pixels = pixels.unsqueeze(0)  # [1, 3, F, H, W]
        with torch.no_grad():
            latents = vae.encode(pixels).latent_dist.mode()  # [1, c, F_lat, h, w]
        latents = latents.permute(0, 2, 1, 3, 4) * pipeline.vae_scaling_factor_image  # [1, F_lat, c, h, w]
        patch_t = int(config.patch_size_t or 1)
        padding = (-latents.shape[1]) % patch_t
        if padding:
            latents = torch.cat([latents[:, :1].expand(-1, padding, -1, -1, -1), latents], dim=1)  # [1, F', c, h, w]
        num = len(request.seeds)
        noise = seeded_noise(latents.shape[1:], request.seeds, device)  # [N, F', c, h, w]
        train_steps = int(scheduler.config.num_train_timesteps)
        timestep_index = int(round(request.noise_level * (train_steps - 1)))
        timesteps = torch.full((num,), timestep_index, device=device, dtype=torch.long)
        noisy = scheduler.add_noise(latents.float().expand(num, -1, -1, -1, -1), noise, timesteps)  # [N, F', c, h, w]
        with torch.no_grad():
            prompt_embeds, _ = pipeline.encode_prompt(
                prompt=request.caption,
                do_classifier_free_guidance=False,
                num_videos_per_prompt=num,
                max_sequence_length=int(config.max_text_seq_length),
                device=device,
            )
        rotary = None
        if config.use_rotary_positional_embeddings:
            rotary = pipeline._prepare_rotary_positional_embeddings(
                request.height, request.width, latents.shape[1], device
            )
        dtype = transformer.dtype
        kwargs = {
            "hidden_states": noisy.to(dtype),
            "encoder_hidden_states": prompt_embeds.to(dtype),
            "timestep": timesteps,
            "image_rotary_emb": rotary,
            "return_dict": False,
        }
        return ExplainBatch(transformer_kwargs=kwargs, latent_shape=tuple(latents.shape))
