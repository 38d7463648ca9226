"""HunyuanVideo adapter (``HunyuanVideoTransformer3DModel``, ``HunyuanVideoPipeline``) — docs/models.md.

What HunyuanVideo needs:

* **Token order and RoPE.** The joint attention concatenates ``[video, text]``; 3-D RoPE rotates the video only, so
  text and concepts carry no positions. Concept keys/values are ``[concepts; video]``, the video keys taken after
  QK-norm and RoPE from the stock computation (the video rows of the joint tensors the processor hands to the
  attention dispatcher; :mod:`~conceptattention.adapters.attention_inputs`).
* **Text input.** Prompts enter through a token refiner (``context_embedder(x, timestep, mask)``: a timestep- and
  mean-text-conditioned self-attention stack) before the double blocks. Concepts go through it too, each as its own
  one-token "prompt" (so a concept does not depend on the other concepts, as with separately encoded concepts).
* **Modulation.** ``norm1_context(c, emb=temb)`` with ``temb = time_text_embed(t, pooled CLIP, guidance)``. The
  concept conditioning follows the config: ``"null_pooled"`` (default, as the official FLUX.1 code) recomputes
  ``temb`` with a zero CLIP vector; ``"prompt"`` uses the prompt's own ``temb`` (recomputed with the same inputs).
* **Padding mask.** The model masks padded prompt tokens for every query; the joint attention keeps it (stock path),
  concepts never attend to text.
* **Maps** are per latent frame: ``(B, C, F, h, w)``. Image-to-video with ``token_replace`` conditioning (different
  blocks) is refused; the real-image (explain) path does not apply to this video model.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import torch
from diffusers.models.embeddings import apply_rotary_emb
from diffusers.models.transformers.transformer_hunyuan_video import HunyuanVideoAttnProcessor2_0
from torch import nn

from ..config import ConceptPooling
from ..encoding import pool_token_states
from .attention_inputs import DISPATCH_FINGERPRINTS, DISPATCH_SOURCE, image_rows, keep_attention_inputs
from .base import AdapterInputError, ConceptAdapter, UnsupportedSetupError, bind_call
from .flux2 import templated_concept_batch
from .processor import AttentionView, ConceptProcessorMixin, check_captured
from .qk_norm import RMS_NORM_FINGERPRINTS, RMS_NORM_SOURCE, paired_rms_norm
from .real_images import ExplainBatch


if TYPE_CHECKING:
    from PIL import Image



#: Modules of HunyuanVideo's ``Attention`` whose outputs the concept branch takes (``to_out[0]``'s input too).
HUNYUAN_TAPS = ("to_q", "to_k", "to_v", "norm_q", "norm_k")


class HunyuanVideoConceptAttnProcessor(ConceptProcessorMixin):
    """HunyuanVideo double-stream processor: runs diffusers' own ``HunyuanVideoAttnProcessor2_0`` untouched, and the
    concept branch beside it.

    The stock processor is called on an :class:`~conceptattention.adapters.processor.AttentionView` of the attention
    module, which hands the concept branch the video attention output before ``to_out[0]``; the video queries, keys
    and values are the video rows (the first ``V`` of the ``[video, text]`` joint rows) of the tensors the processor
    handed to the attention dispatcher, after QK-norm and RoPE (:mod:`~conceptattention.adapters.attention_inputs`;
    while compiling, RoPE is re-applied to the tapped QK-normed rows). No diffusers code is copied: the output is
    bit-identical by construction.

    Args:
        session: The shared run state.
        layer: Index of this block among the double-stream blocks.
        block: The ``HunyuanVideoTransformerBlock`` (held weakly; its text norms and MLP are used).
        transformer: The ``HunyuanVideoTransformer3DModel`` (held weakly; token refiner and condition embedder).
        original: The processor being replaced (its attention backend and parallel config are kept).

    Example:
        >>> from conceptattention import ConceptAttention
        >>> from conceptattention.testing.hunyuan_video import tiny_hunyuan_video_inputs, tiny_hunyuan_video_transformer
        >>> model = tiny_hunyuan_video_transformer()
        >>> with ConceptAttention(model, concept_embeds=torch.randn(2, 16)) as ca:
        ...     _ = model(**tiny_hunyuan_video_inputs())
        >>> ca.maps.tensor.shape
        torch.Size([2, 2, 3, 4])
    """

    #: the stock processor it runs through an AttentionView: its capture points (diffusers 0.42.1); see
    #: tests/adapters/test_stock_drift.py
    STOCK_SOURCES = (
        ("diffusers.models.transformers.transformer_hunyuan_video.HunyuanVideoAttnProcessor2_0.__call__", "972a570fdde1d0ee97bb01c0d9b8971e44d62e0e40f8639d1f829c8e83fb02e9"),
        (DISPATCH_SOURCE, DISPATCH_FINGERPRINTS),  # where the joint attention inputs are kept
        (RMS_NORM_SOURCE, RMS_NORM_FINGERPRINTS),  # the concept QK-norm mirrors it (qk_norm.py)
    )

    def __call__(
        self,
        attn: nn.Module,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        image_rotary_emb: torch.Tensor | None = None,
    ) -> torch.Tensor:
        if encoder_hidden_states is None or attn.add_q_proj is None or not self.session.needs_concepts():
            return self.original(attn, hidden_states, encoder_hidden_states, attention_mask, image_rotary_emb)

        sink: dict[str, torch.Tensor] = {}
        with keep_attention_inputs(self.original, sink):  # the joint query/key/value after RoPE, when available
            outputs = self.original(
                AttentionView(attn, sink, HUNYUAN_TAPS), hidden_states, encoder_hidden_states, attention_mask, image_rotary_emb
            )
        check_captured(sink, (("to_q",), ("to_k",), ("to_v",), ("to_out",)), self.original, "hunyuan_video")
        kept = image_rows(sink, None, hidden_states.shape[1])  # eagerly: views of the joint [video, text] rows
        if kept is not None:
            query, key, value = kept  # [B, V, H, D] each, after QK-norm and RoPE
        else:  # compiling: the video rows as the joint attention used them, QK-norm (where present), then RoPE
            query = sink.get("norm_q", sink["to_q"].unflatten(2, (attn.heads, -1)))  # [B, V, H, D]
            key = sink.get("norm_k", sink["to_k"].unflatten(2, (attn.heads, -1)))  # [B, V, H, D]
            value = sink["to_v"].unflatten(2, (attn.heads, -1))  # [B, V, H, D]
            if image_rotary_emb is not None:
                key = apply_rotary_emb(key, image_rotary_emb, sequence_dim=1)
                if self.session.config.space == "cross_attention":  # video queries are read only there
                    query = apply_rotary_emb(query, image_rotary_emb, sequence_dim=1)
        self._concept_branch(attn, sink["to_out"], query, key, value)
        return outputs

    def _initial_concepts(self, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Concept tokens after the token refiner ``[B, C, d]`` and the concept ``temb`` ``[B, d]``."""
        session, transformer = self.session, self._transformer()
        call = session.call
        assert call is not None and transformer is not None
        inputs = call.inputs
        batch = like.shape[0]
        embeds = session.concept_embeds.to(device=like.device, dtype=like.dtype)  # [C, D_text]
        num_concepts = embeds.shape[0]
        timestep = inputs["timestep"].reshape(-1).to(like.device)  # [B] or [1]
        timestep = timestep.expand(batch) if timestep.numel() == 1 else timestep  # [B]
        # each concept is refined as its own one-token prompt (no mask: the refiner's mean-pool is the concept)
        single_token_prompts = (
            embeds.unsqueeze(0).expand(batch, -1, -1).reshape(batch * num_concepts, 1, -1)
        )  # [B·C, 1, D]
        refined = transformer.context_embedder(single_token_prompts, timestep.repeat_interleave(num_concepts), None)
        concepts = refined.reshape(batch, num_concepts, -1)  # [B, C, d]
        pooled = inputs["pooled_projections"]
        if session.config.concept_conditioning == "null_pooled":
            pooled = torch.zeros_like(pooled)
        conditioning, _ = transformer.time_text_embed(inputs["timestep"], pooled, inputs.get("guidance"))  # [B, d]
        return concepts, conditioning

    def _concept_branch(
        self,
        attn: nn.Module,
        video_output: torch.Tensor,
        video_query: torch.Tensor,
        video_key: torch.Tensor,
        video_value: torch.Tensor,
    ) -> None:
        session, block = self.session, self._block()
        call = session.call
        assert call is not None and block is not None
        if call.concept_hidden_states is None:
            call.concept_hidden_states, call.concept_conditioning = self._initial_concepts(video_output)
        concepts = call.concept_hidden_states  # [B, C, d]

        normed, gate_msa, shift_mlp, scale_mlp, gate_mlp = block.norm1_context(concepts, emb=call.concept_conditioning)
        concept_query = attn.add_q_proj(normed).unflatten(2, (attn.heads, -1))  # [B, C, H, D]
        concept_key = attn.add_k_proj(normed).unflatten(2, (attn.heads, -1))  # [B, C, H, D]
        concept_value = attn.add_v_proj(normed).unflatten(2, (attn.heads, -1))  # [B, C, H, D]
        # QK-norm of both in one pass where both are RMSNorm (qk_norm.py), [B, C, H, D] each
        concept_query, concept_key = paired_rms_norm(attn.norm_added_q, attn.norm_added_k, concept_query, concept_key)
        # HunyuanVideo rotates only the video: text, and so concepts, carry no position
        concept_output = self._attend_and_record(  # [B, C, H·D] (scores [B, C, F·h·w]), or None: nothing later runs
            concept_query, concept_key, concept_value, video_key, video_value, video_output, video_query
        )
        if concept_output is None:
            return
        # Advance the concept residual stream exactly as HunyuanVideoTransformerBlock advances the text stream.
        concepts = concepts + attn.to_add_out(concept_output) * gate_msa.unsqueeze(1)
        normed = block.norm2_context(concepts)
        normed = normed * (1 + scale_mlp[:, None]) + shift_mlp[:, None]
        concepts = concepts + gate_mlp.unsqueeze(1) * block.ff_context(normed)
        call.concept_hidden_states = concepts


class HunyuanVideoAdapter(ConceptAdapter):
    """Adapter for HunyuanVideo text-to-video (``HunyuanVideoTransformer3DModel``): maps per latent frame.

    Example:
        >>> from conceptattention.adapters import get_adapter
        >>> from conceptattention.testing.hunyuan_video import tiny_hunyuan_video_transformer
        >>> get_adapter(tiny_hunyuan_video_transformer()).modality
        'video'
    """

    name = "hunyuan_video"
    processor_class = HunyuanVideoConceptAttnProcessor
    stock_processor_class = HunyuanVideoAttnProcessor2_0
    transformer_classes = ("HunyuanVideoTransformer3DModel",)
    pipeline_classes = ("HunyuanVideoPipeline",)
    modality = "video"
    official_default_layers = "last 4 double blocks (HunyuanVideo: 16-19; no official choice)"
    tested = "adapter battery + naive reference (both conditionings); true CFG; per-frame maps; no real-video explain path; bf16/fp16 on an H100"

    def check_model(self, transformer: nn.Module) -> None:
        if getattr(transformer.config, "image_condition_type", None) == "token_replace":
            raise UnsupportedSetupError(
                "This HunyuanVideo transformer uses token-replace image conditioning (image-to-video), whose blocks "
                "modulate the first frame separately; ConceptAttention supports text-to-video HunyuanVideo only."
            )
        super().check_model(transformer)

    def capture_call(self, transformer: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> dict[str, Any]:
        names = ("hidden_states", "timestep", "encoder_hidden_states", "encoder_attention_mask", "pooled_projections")
        required = ("hidden_states", "timestep", "pooled_projections")
        bound = bind_call("HunyuanVideoTransformer3DModel", names, args, kwargs, required, keyword_only=("guidance",))
        config = transformer.config
        _, _, frames, height, width = bound["hidden_states"].shape
        grid = (frames // config.patch_size_t, height // config.patch_size, width // config.patch_size)
        return {
            "timestep": bound["timestep"],
            "pooled_projections": bound["pooled_projections"],
            "guidance": bound.get("guidance"),
            "grid": grid,
        }

    def token_grid(self, call_inputs: dict[str, Any], num_image_tokens: int) -> tuple[int, int, int]:
        frames, height, width = call_inputs["grid"]
        if frames * height * width != num_image_tokens:
            raise AdapterInputError(
                f"Cannot arrange {num_image_tokens} video tokens on the {frames}x{height}x{width} latent grid."
            )
        return frames, height, width

    def size_multiple(self, pipeline: Any) -> int:
        patch = int(getattr(getattr(pipeline, "transformer", None), "config", {}).get("patch_size", 2))
        return int(getattr(pipeline, "vae_scale_factor_spatial", 8)) * patch

    def encode_concepts(
        self, pipeline: Any, concepts: Sequence[str], pooling: ConceptPooling, device: torch.device | None = None
    ) -> torch.Tensor:
        """Concepts in HunyuanVideo's Llama prompt template, the pipeline's hidden layer (3rd from last), pooled."""
        from diffusers.pipelines.hunyuan_video.pipeline_hunyuan_video import DEFAULT_PROMPT_TEMPLATE

        text_encoder = getattr(pipeline, "text_encoder", None)
        tokenizer = getattr(pipeline, "tokenizer", None)
        if text_encoder is None or tokenizer is None:
            raise AdapterInputError(
                "This HunyuanVideo pipeline has no Llama text encoder/tokenizer to encode concepts; pass "
                "`concept_embeds=` (a [C, text_embed_dim] tensor) instead."
            )
        template = DEFAULT_PROMPT_TEMPLATE["template"]
        empty_ids = list(tokenizer(template.format("")).input_ids)
        input_ids, attention_mask, content_mask = templated_concept_batch(
            [list(tokenizer(template.format(concept)).input_ids) for concept in concepts],
            empty_ids,
            concepts,
            pad_id=int(tokenizer.pad_token_id or 0),
            max_length=len(empty_ids) + 256,  # the pipeline keeps 256 tokens after the template's system part
        )
        device = device or getattr(pipeline, "_execution_device", None) or text_encoder.device
        with torch.no_grad():
            output = text_encoder(
                input_ids=input_ids.to(device), attention_mask=attention_mask.to(device), output_hidden_states=True
            )
        hidden = output.hidden_states[-3]  # [C, L, D_text]: num_hidden_layers_to_skip=2, as the pipeline
        return pool_token_states(hidden, content_mask.to(hidden.device), pooling)  # [C, D_text]

    def explain_resolution(self, pipeline: Any, image_size: tuple[int, int]) -> tuple[int, int]:
        raise NotImplementedError(
            "HunyuanVideo is a text-to-video model: the real-image explain path does not apply. Generate a video "
            "with the pipeline inside `with ConceptAttention(pipe, concepts):` to get per-frame maps."
        )

    def prepare_explain(self, pipeline: Any, image: Image.Image, **kwargs: Any) -> ExplainBatch:
        return self.explain_resolution(pipeline, (0, 0))  # type: ignore[return-value]  # always raises, before checks


__all__ = ["HunyuanVideoAdapter", "HunyuanVideoConceptAttnProcessor"]
