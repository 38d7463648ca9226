"""Ovis-Image adapter (``OvisImageTransformer2DModel``, ``OvisImagePipeline``) — docs/models.md.

Ovis-Image's double-stream block, attention module and ``OvisImageAttnProcessor`` are FLUX.1's under another name, so
the FLUX.1 capture design applies (diffusers' processor runs untouched; see :mod:`conceptattention.adapters.flux_like`).
Differences from FLUX.1: the text input is ``context_embedder(context_embedder_norm(x))`` (an RMSNorm first), ``temb``
embeds the timestep only (captured per block for the concepts), text ids are ``(0, i, i)`` and concepts take the first
text token's id ``(0, 0, 0)`` (identity rotation). Prompts are Qwen3 last-layer states of the user turn of the
pipeline's chat template (system prompt prepended, first ``user_prompt_begin_id`` tokens dropped); concepts are
encoded in the same template, pooled over their own tokens. Classifier-free guidance runs as two calls in
``cache_context("cond")`` / ``("uncond")``: only the conditional one is recorded.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from diffusers.models.transformers.transformer_ovis_image import OvisImageAttnProcessor
from torch import nn

from ..config import ConceptPooling
from ..encoding import pool_token_states
from .attention_inputs import DISPATCH_FINGERPRINTS, DISPATCH_SOURCE
from .base import AdapterInputError
from .flux2 import templated_concept_batch
from .flux_like import FluxLikeAdapter, FluxLikeConceptAttnProcessor
from .flux_single import ADA_NORM_SINGLE_SOURCE, BlockTembSingleConceptAttnProcessor


class OvisImageConceptAttnProcessor(FluxLikeConceptAttnProcessor):
    """Ovis-Image double-block processor: ``OvisImageAttnProcessor`` untouched, concept branch beside it; concepts
    enter through ``context_embedder_norm`` then ``context_embedder``, as prompts do.

    Example:
        >>> from conceptattention import ConceptAttention
        >>> from conceptattention.testing.ovis_image import tiny_ovis_image_inputs, tiny_ovis_image_transformer
        >>> model = tiny_ovis_image_transformer()
        >>> with ConceptAttention(model, concept_embeds=torch.randn(2, 32)) as ca:
        ...     _ = model(**tiny_ovis_image_inputs())
        >>> ca.maps.tensor.shape
        torch.Size([2, 1, 4, 6])
    """

    #: the diffusers code it runs through the attention view (its capture points), fingerprinted on diffusers 0.42.1
    #: (normalised AST, sha256; tests/adapters/test_zoo_drift.py)
    STOCK_SOURCES = (
        ("diffusers.models.transformers.transformer_ovis_image.OvisImageAttnProcessor.__call__", "21de09c93a2a95f3e63f55627f545e859aa309b28344502616106788a5eafe58"),
        ("diffusers.models.transformers.transformer_ovis_image._get_qkv_projections", "f7cea86683246d27e1032d5d1d3bc9ffb9ca5850d9aa4a3fb4303196e851bf94"),
        ("diffusers.models.transformers.transformer_ovis_image._get_projections", "ead5dd4420830fdd7f7258c2e4064884e4fb69fc6b99367c762d777f585f6aa2"),
        ("diffusers.models.transformers.transformer_ovis_image._get_fused_projections", "9baed3cdacecf2156615ffb5381d805cc12ee9c9b50ae250c5dfd4bf4ebdc357"),
        (DISPATCH_SOURCE, DISPATCH_FINGERPRINTS),  # where the joint attention inputs are kept
    )
    COPIES_STOCK = False

    text_input = ("context_embedder_norm", "context_embedder")


class OvisImageSingleConceptAttnProcessor(BlockTembSingleConceptAttnProcessor):
    """Ovis-Image single-block processor (the single-stream extension, beyond the paper): ``OvisImageAttnProcessor``
    untouched, the concepts through the block's shared weights with the block's ``temb``."""

    STOCK_SOURCES = (
        *OvisImageConceptAttnProcessor.STOCK_SOURCES,
        ("diffusers.models.transformers.transformer_ovis_image.OvisImageSingleTransformerBlock.forward", "9fd8be2a240bc6cd816a531cef82ffbedfdc5f544c3953e6e5751db790a5b99b"),
        ADA_NORM_SINGLE_SOURCE,
    )

    def _mlp_branch(self, block: nn.Module, normed: torch.Tensor) -> torch.Tensor:
        """Ovis-Image's gated MLP branch: ``act_mlp(gate)·h`` with ``[h, gate] = proj_mlp(ĉ)``: ``[B, C, d_mlp]``."""
        hidden, gate = block.proj_mlp(normed).split(block.mlp_hidden_dim, dim=-1)  # [B, C, d_mlp] each
        return block.act_mlp(gate) * hidden


class OvisImageAdapter(FluxLikeAdapter):
    """Adapter for Ovis-Image text-to-image (``OvisImageTransformer2DModel``, ``OvisImagePipeline``).

    Example:
        >>> from conceptattention.adapters import get_adapter
        >>> from conceptattention.testing.ovis_image import tiny_ovis_image_transformer
        >>> get_adapter(tiny_ovis_image_transformer()).name
        'ovis_image'
    """

    name = "ovis_image"
    processor_class = OvisImageConceptAttnProcessor
    stock_processor_class = OvisImageAttnProcessor
    single_processor_class = OvisImageSingleConceptAttnProcessor
    single_stock_processor_class = OvisImageAttnProcessor
    transformer_classes = ("OvisImageTransformer2DModel",)
    pipeline_classes = ("OvisImagePipeline",)
    modality = "image"

    def encode_caption(self, pipeline: Any, caption: str, num: int, device: torch.device) -> tuple[torch.Tensor, Any]:
        prompt_embeds, _, text_ids, _ = pipeline.encode_prompt(
            prompt=caption, do_classifier_free_guidance=False, device=device, num_images_per_prompt=num
        )
        return prompt_embeds, text_ids

    def encode_concepts(
        self, pipeline: Any, concepts: Sequence[str], pooling: ConceptPooling, device: torch.device | None = None
    ) -> torch.Tensor:
        """Concepts in the pipeline's chat template, last Qwen3 layer, pooled over their own tokens: ``[C, 2048]``."""
        text_encoder = getattr(pipeline, "text_encoder", None)
        tokenizer = getattr(pipeline, "tokenizer", None)
        if text_encoder is None or tokenizer is None or not hasattr(pipeline, "_get_messages"):
            raise AdapterInputError(
                "This Ovis-Image pipeline has no text encoder or tokenizer to encode concepts; pass `concept_embeds=` "
                "(a [C, joint_attention_dim] tensor) instead."
            )
        messages = pipeline._get_messages([*concepts, ""])  # the pipeline's own chat template; "" gives the frame
        ids = [list(tokenizer(message, add_special_tokens=False).input_ids) for message in messages]
        input_ids, attention_mask, content_mask = templated_concept_batch(
            ids[:-1],
            ids[-1],
            concepts,
            pad_id=int(tokenizer.pad_token_id or 0),
            max_length=256 + int(getattr(pipeline, "user_prompt_begin_id", 0)),  # the pipeline's default length
        )
        device = device or getattr(pipeline, "_execution_device", None) or text_encoder.device
        with torch.no_grad():
            output = text_encoder(input_ids=input_ids.to(device), attention_mask=attention_mask.to(device))
        hidden = output.last_hidden_state  # [C, L, D_text], the states the pipeline uses for prompts
        return pool_token_states(hidden, content_mask.to(hidden.device), pooling)  # [C, D_text]


__all__ = ["OvisImageAdapter", "OvisImageConceptAttnProcessor", "OvisImageSingleConceptAttnProcessor"]
