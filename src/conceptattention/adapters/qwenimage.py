"""Qwen-Image adapter (``QwenImageTransformer2DModel``, ``QwenImagePipeline``) — docs/models.md.

What Qwen-Image needs:

* **Modulation.** Each block computes ``txt_mod(temb)`` from the model-level ``temb`` (timestep only: no pooled text,
  so ``"null_pooled"`` and ``"prompt"`` coincide). With ``zero_cond_t`` the batch of ``temb`` is doubled
  (``[t, 0]``) and the text stream, hence the concepts, uses the first half; ``modulate_index`` only concerns the
  image. ``temb`` is captured with a block pre-hook, and the block's own ``txt_mod``, ``txt_norm1/2``, ``_modulate``
  and ``txt_mlp`` drive the concept stream.
* **RoPE (MSRoPE).** Each stream is rotated before the concatenation; text positions continue after the image grid
  (text token ``j`` uses the frequency row ``max_vid_index + j``, the same index on the three axes). Every concept
  gets the row right after the padded prompt, ``max_vid_index + T``: no collision with any prompt position, and all
  concepts share it (no positional bias between concepts, maps independent of concept order).
* **Padding mask.** The processor builds the joint mask from ``encoder_hidden_states_mask``; the joint attention is
  the stock path, and concepts never attend to text, so their keys need no mask.
* **Refusals.** Calls with several image shapes per sample (edit / layered pipelines: condition-image tokens) and the
  layered 3-D RoPE variant are refused with a clear error.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import torch
from diffusers.models.transformers.transformer_qwenimage import (
    QwenDoubleStreamAttnProcessor2_0,
    apply_rotary_emb_qwen,
)
from torch import nn

from ..config import ConceptPooling
from ..encoding import pool_token_states
from .attention_inputs import DISPATCH_FINGERPRINTS, DISPATCH_SOURCE, image_rows, keep_attention_inputs
from .base import AdapterInputError, UnsupportedSetupError, bind_call, block_input_grabbers, captured_block_input
from .flux import FluxAdapter
from .flux2 import templated_concept_batch
from .processor import AttentionView, ConceptProcessorMixin, check_captured
from .qk_norm import RMS_NORM_FINGERPRINTS, RMS_NORM_SOURCE, paired_rms_norm
from .real_images import ExplainBatch, ExplainRequest, flow_noised, guidance_tensor, image_pixels


if TYPE_CHECKING:
    from PIL import Image

    from ..session import ConceptSession

#: Key of ``session.call.inputs`` under which the block pre-hook stores the running block's ``temb``.
BLOCK_TEMB_KEY = "qwenimage_temb"
#: Key of ``session.call.inputs`` caching the concepts' complex RoPE frequencies ``[C, D/2]``.
CONCEPT_ROPE_KEY = "qwenimage_concept_rope"


#: Modules of Qwen-Image's ``Attention`` whose outputs the concept branch takes (``to_out[0]``'s input is taken too).
QWEN_TAPS = ("to_q", "to_k", "to_v", "norm_q", "norm_k")


class QwenImageConceptAttnProcessor(ConceptProcessorMixin):
    """Qwen-Image double-stream processor: runs diffusers' own ``QwenDoubleStreamAttnProcessor2_0`` untouched, and the
    concept branch beside it.

    The stock processor is called on an :class:`~conceptattention.adapters.processor.AttentionView` of the attention
    module, which hands the concept branch the image attention output before ``to_out[0]``; the image queries, keys
    and values are the image rows of the joint tensors the attention dispatcher received (after QK-norm and RoPE;
    :mod:`~conceptattention.adapters.attention_inputs`; while compiling, RoPE is re-applied to the tapped rows). No diffusers code is copied: the output is
    bit-identical by construction.

    Args:
        session: The shared run state.
        layer: Index of this block.
        block: The ``QwenImageTransformerBlock`` (held weakly; its text modulation, norms and MLP are used).
        transformer: The ``QwenImageTransformer2DModel`` (held weakly; ``txt_norm``, ``txt_in``, ``pos_embed``).
        original: The processor being replaced (its attention backend and parallel config are kept).

    Example:
        >>> from conceptattention import ConceptAttention
        >>> from conceptattention.testing.qwenimage import tiny_qwenimage_inputs, tiny_qwenimage_transformer
        >>> model = tiny_qwenimage_transformer()
        >>> with ConceptAttention(model, concept_embeds=torch.randn(2, 16)) as ca:
        ...     _ = model(**tiny_qwenimage_inputs())
        >>> ca.maps.tensor.shape
        torch.Size([2, 1, 4, 6])
    """

    #: the stock processor it runs through an AttentionView: its capture points (diffusers 0.42.1); see
    #: tests/adapters/test_stock_drift.py
    STOCK_SOURCES = (
        (
            "diffusers.models.transformers.transformer_qwenimage.QwenDoubleStreamAttnProcessor2_0.__call__",
            (  # diffusers 0.42.1, 0.38.0, 0.39.0, 0.40.0, 0.41.0, re-checked: only reshapes/annotations differ
            "4cbb851f9a3ef9d1c45472559ce62f90a4a45b30e0b57112aa30b5d79a24e03e",
            "3c0a11e31b613c2520f20f7e89bf2e6efd8448e8b99108e759cbaa1b9c8b2bb4",
            "ee0cabc2e5790f8cadea5689188e696d17bb7e48cd43c2c0f197907f8234f5e1",
            "11d62123ee759ed7e5bf442fe2c7535a827a916eb1c49a60ca7fedf56d15ae99",
            ),
        ),
        (DISPATCH_SOURCE, DISPATCH_FINGERPRINTS),  # where the joint attention inputs are kept
        (RMS_NORM_SOURCE, RMS_NORM_FINGERPRINTS),  # the concept QK-norm mirrors it (qk_norm.py)
    )

    def __call__(
        self,
        attn: nn.Module,
        hidden_states: torch.FloatTensor,
        encoder_hidden_states: torch.FloatTensor = None,
        encoder_hidden_states_mask: torch.FloatTensor = None,
        attention_mask: torch.FloatTensor | None = None,
        image_rotary_emb: torch.Tensor | None = None,
    ) -> torch.FloatTensor:
        if encoder_hidden_states is None or attention_mask is not None or not self.session.needs_concepts():
            return self.original(
                attn,
                hidden_states,
                encoder_hidden_states,
                encoder_hidden_states_mask,
                attention_mask,
                image_rotary_emb,
            )  # the stock processor also raises the stock errors

        sink: dict[str, torch.Tensor] = {}
        with keep_attention_inputs(self.original, sink):  # the joint query/key/value after RoPE, when available
            outputs = self.original(
                AttentionView(attn, sink, QWEN_TAPS),
                hidden_states,
                encoder_hidden_states,
                encoder_hidden_states_mask,
                attention_mask,
                image_rotary_emb,
            )
        check_captured(sink, (("to_q",), ("to_k",), ("to_v",), ("to_out",)), self.original, "qwenimage")
        head_dim = attn.inner_dim // attn.heads
        kept = image_rows(sink, encoder_hidden_states.shape[1])  # eagerly: views of the joint [text, image] rows
        if kept is not None:
            img_query, img_key, img_value = kept  # [B, I, H, D] each, after QK-norm and RoPE
        else:  # compiling: RoPE re-applied to the tapped QK-normed rows (the compiler fuses it)
            img_query = sink.get("norm_q", sink["to_q"].unflatten(-1, (-1, head_dim)))  # [B, I, H, D]
            img_key = sink.get("norm_k", sink["to_k"].unflatten(-1, (-1, head_dim)))  # [B, I, H, D]
            img_value = sink["to_v"].unflatten(-1, (-1, head_dim))  # [B, I, H, D]
            if image_rotary_emb is not None:
                img_freqs = image_rotary_emb[0]
                img_key = apply_rotary_emb_qwen(img_key, img_freqs, use_real=False)
                if self.session.config.space == "cross_attention":  # image queries are read only there
                    img_query = apply_rotary_emb_qwen(img_query, img_freqs, use_real=False)
        self._concept_branch(
            attn, sink["to_out"], img_query, img_key, img_value, head_dim, encoder_hidden_states.shape[1]
        )
        return outputs

    def _concept_rope(self, device: torch.device, num_text: int, num_concepts: int) -> torch.Tensor:
        """Complex RoPE frequencies ``[C, D/2]`` of the text position right after the padded prompt (cached)."""
        call, transformer = self.session.call, self._transformer()
        assert call is not None and transformer is not None
        cached = call.inputs.get(CONCEPT_ROPE_KEY)
        if cached is not None:
            return cached
        _, text_freqs = transformer.pos_embed(call.inputs["img_shapes"], max_txt_seq_len=num_text + 1, device=device)
        rope = text_freqs[-1:].expand(num_concepts, -1)  # [C, D/2]: row max_vid_index + T
        call.inputs[CONCEPT_ROPE_KEY] = rope
        return rope

    def _text_modulation(self, block: nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
        """``txt_mod(temb)`` of this block, split for the attention and the MLP: ``[B, 3d]`` each."""
        temb = captured_block_input(self.session, BLOCK_TEMB_KEY, "The temb of Qwen-Image block")
        if block.zero_cond_t:  # the text stream (and so the concepts) uses the first half, as the block does
            temb = torch.chunk(temb, 2, dim=0)[0]
        return block.txt_mod(temb).chunk(2, dim=-1)

    def _concept_branch(
        self,
        attn: nn.Module,
        image_output: torch.Tensor,
        image_query: torch.Tensor,
        image_key: torch.Tensor,
        image_value: torch.Tensor,
        head_dim: int,
        num_text: int,
    ) -> None:
        session, block, transformer = self.session, self._block(), self._transformer()
        call = session.call
        assert call is not None and block is not None and transformer is not None
        if call.concept_hidden_states is None:
            def text_input(embeds: torch.Tensor) -> torch.Tensor:  # the prompt's text input layer
                return transformer.txt_in(transformer.txt_norm(embeds))

            call.concept_hidden_states = self._concept_tokens(image_output, text_input)  # [B, C, d]
        concepts = call.concept_hidden_states  # [B, C, d]
        modulation_attn, modulation_mlp = self._text_modulation(block)  # [B, 3d] each

        modulated, gate_attn = block._modulate(block.txt_norm1(concepts), modulation_attn)  # gate [B, 1, d]
        concept_query = attn.add_q_proj(modulated).unflatten(-1, (-1, head_dim))  # [B, C, H, D]
        concept_key = attn.add_k_proj(modulated).unflatten(-1, (-1, head_dim))  # [B, C, H, D]
        concept_value = attn.add_v_proj(modulated).unflatten(-1, (-1, head_dim))  # [B, C, H, D]
        # QK-norm of both in one pass where both are RMSNorm (qk_norm.py), [B, C, H, D] each
        concept_query, concept_key = paired_rms_norm(attn.norm_added_q, attn.norm_added_k, concept_query, concept_key)
        rope = self._concept_rope(image_output.device, num_text, concept_query.shape[1])
        concept_query = apply_rotary_emb_qwen(concept_query, rope, use_real=False)
        concept_key = apply_rotary_emb_qwen(concept_key, rope, use_real=False)

        concept_output = self._attend_and_record(  # [B, C, H·D], or None: nothing later has to run
            concept_query, concept_key, concept_value, image_key, image_value, image_output, image_query
        )
        if concept_output is None:
            return
        # Advance the concept residual stream exactly as QwenImageTransformerBlock advances the text stream.
        concepts = concepts + gate_attn * attn.to_add_out(concept_output)
        modulated, gate_mlp = block._modulate(block.txt_norm2(concepts), modulation_mlp)
        concepts = concepts + gate_mlp * block.txt_mlp(modulated)
        if concepts.dtype == torch.float16:
            concepts = concepts.clip(-65504, 65504)
        call.concept_hidden_states = concepts


class QwenImageAdapter(FluxAdapter):
    """Adapter for Qwen-Image (``QwenImageTransformer2DModel``, text-to-image).

    Example:
        >>> from conceptattention.adapters import get_adapter
        >>> from conceptattention.testing.qwenimage import tiny_qwenimage_transformer
        >>> get_adapter(tiny_qwenimage_transformer()).name
        'qwenimage'
    """

    name = "qwenimage"
    processor_class = QwenImageConceptAttnProcessor
    stock_processor_class = QwenDoubleStreamAttnProcessor2_0
    stock_processor_remedy = ""
    transformer_classes = ("QwenImageTransformer2DModel",)
    pipeline_classes = ("QwenImagePipeline",)
    modality = "image"
    ip_adapter = "not offered by diffusers"
    official_default_layers = "last 4 joint blocks (Qwen-Image: 56-59; no official choice)"
    tested = "adapter battery + naive reference; true CFG; zero_cond_t; explain path; bf16/fp16 on an H100"

    def check_model(self, transformer: nn.Module) -> None:
        if getattr(transformer.config, "use_layer3d_rope", False):
            raise UnsupportedSetupError(
                "This Qwen-Image transformer uses the layered 3-D RoPE (Qwen-Image-Layered), whose image tokens are "
                "layers and a condition image; ConceptAttention supports text-to-image Qwen-Image only."
            )
        super().check_model(transformer)

    def capture_call(self, transformer: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> dict[str, Any]:
        names = ("hidden_states", "encoder_hidden_states", "encoder_hidden_states_mask", "timestep", "img_shapes")
        bound = bind_call("QwenImageTransformer2DModel", names, args, kwargs, required=("img_shapes",))
        img_shapes = bound["img_shapes"]
        first = img_shapes[0] if isinstance(img_shapes, list) else img_shapes
        shapes = first if isinstance(first, list) else [first]
        if len(shapes) != 1:
            raise AdapterInputError(
                f"This Qwen-Image call has {len(shapes)} images per sample (an edit or layered pipeline, condition "
                "images); their tokens have no place on the output grid. Only text-to-image calls are supported."
            )
        return {"img_shapes": img_shapes, "grid": tuple(int(size) for size in shapes[0])}

    def token_grid(self, call_inputs: dict[str, Any], num_image_tokens: int) -> tuple[int, int, int]:
        frames, height, width = call_inputs["grid"]
        if frames * height * width != num_image_tokens:
            raise AdapterInputError(
                f"Cannot arrange {num_image_tokens} image tokens on the {frames}x{height}x{width} grid of img_shapes."
            )
        return frames, height, width

    def install_hooks(self, transformer: nn.Module, session: ConceptSession) -> list[Any]:
        """Block pre-hooks that hand each block's ``temb`` to its processor."""
        return block_input_grabbers(self.joint_blocks(transformer), session, "temb", BLOCK_TEMB_KEY)

    def encode_concepts(
        self, pipeline: Any, concepts: Sequence[str], pooling: ConceptPooling, device: torch.device | None = None
    ) -> torch.Tensor:
        """Concepts in the pipeline's prompt template, last hidden layer of Qwen2.5-VL, pooled: ``[C, 3584]``."""
        text_encoder = getattr(pipeline, "text_encoder", None)
        tokenizer = getattr(pipeline, "tokenizer", None)
        template = getattr(pipeline, "prompt_template_encode", None)
        if text_encoder is None or tokenizer is None or template is None:
            raise AdapterInputError(
                "This Qwen-Image pipeline has no text encoder, tokenizer or prompt template to encode concepts; pass "
                "`concept_embeds=` (a [C, joint_attention_dim] tensor) instead."
            )
        max_length = int(getattr(pipeline, "tokenizer_max_length", 1024)) + int(
            getattr(pipeline, "prompt_template_encode_start_idx", 0)
        )
        input_ids, attention_mask, content_mask = templated_concept_batch(
            [list(tokenizer(template.format(concept)).input_ids) for concept in concepts],
            list(tokenizer(template.format("")).input_ids),
            concepts,
            pad_id=int(tokenizer.pad_token_id or 0),
            max_length=max_length,
        )
        device = device or getattr(pipeline, "_execution_device", None) or text_encoder.device
        with torch.no_grad():
            output = text_encoder(
                input_ids=input_ids.to(device), attention_mask=attention_mask.to(device), output_hidden_states=True
            )
        hidden = output.hidden_states[-1]  # [C, L, D_text], the layer the pipeline uses for prompts
        return pool_token_states(hidden, content_mask.to(hidden.device), pooling)  # [C, D_text]

    # ----- real images -------------------------------------------------------------------------------------------

    def explain_batch(self, pipeline: Any, image: Image.Image, request: ExplainRequest) -> ExplainBatch:
        """One batched Qwen-Image call on the noised image (``image_pooled`` does not apply: no pooled text)."""
        device = pipeline._execution_device
        vae, transformer = pipeline.vae, pipeline.transformer
        pixels = image_pixels(pipeline, image, request.height, request.width)[:, :, None]  # [1, 3, 1, H, W]
        with torch.no_grad():
            latents = vae.encode(pixels).latent_dist.mode()  # [1, z, 1, h, w]
        channels = int(vae.config.z_dim)
        mean = torch.tensor(vae.config.latents_mean).view(1, channels, 1, 1, 1).to(latents)  # [1, z, 1, 1, 1]
        std = torch.tensor(vae.config.latents_std).view(1, channels, 1, 1, 1).to(latents)  # [1, z, 1, 1, 1]
        latents = (latents - mean) / std
        latent_height, latent_width = latents.shape[-2:]
        packed = type(pipeline)._pack_latents(latents, 1, channels, latent_height, latent_width)  # [1, I, 4z]
        num = len(request.seeds)
        noisy = flow_noised(packed, request, device)  # [N, I, 4z]
        with torch.no_grad():
            prompt_embeds, prompt_mask = pipeline.encode_prompt(
                prompt=request.caption, device=device, num_images_per_prompt=num
            )
        dtype = transformer.dtype
        kwargs = {
            "hidden_states": noisy.to(dtype),
            "encoder_hidden_states": prompt_embeds.to(dtype),
            "encoder_hidden_states_mask": prompt_mask,
            "timestep": torch.full((num,), request.noise_level, device=device, dtype=dtype),
            "img_shapes": [[(1, latent_height // 2, latent_width // 2)]] * num,
            "guidance": guidance_tensor(transformer, request, num, device),
            "return_dict": False,
        }
        return ExplainBatch(transformer_kwargs=kwargs, latent_shape=tuple(latents.shape))


__all__ = ["QwenImageAdapter", "QwenImageConceptAttnProcessor"]
