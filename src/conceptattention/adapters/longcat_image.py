"""LongCat-Image adapter (``LongCatImageTransformer2DModel``, ``LongCatImagePipeline``) — docs/models.md.

LongCat-Image's double-stream block, attention module and ``LongCatImageAttnProcessor`` are FLUX.1's under another
name, so the FLUX.1 capture design applies (diffusers' processor runs untouched; see
:mod:`conceptattention.adapters.flux_like`). ``temb`` embeds the timestep only (no pooled text, no guidance), captured
per block for the concepts. Text ids are ``(0, i, i)``: concepts take the first text token's id ``(0, 0, 0)``
(identity rotation). Prompts are Qwen2.5-VL last-layer states of the text between the pipeline's chat prefix and
suffix; concepts are encoded the same way, pooled over their own tokens. The pipeline runs classifier-free guidance
as two calls in ``cache_context("cond")`` / ``("uncond")``: only the conditional one is recorded.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from diffusers.models.transformers.transformer_longcat_image import LongCatImageAttnProcessor

from ..config import ConceptPooling
from ..encoding import pool_token_states
from .attention_inputs import DISPATCH_FINGERPRINTS, DISPATCH_SOURCE
from .base import AdapterInputError
from .flux2 import templated_concept_batch
from .flux_like import FluxLikeAdapter, FluxLikeConceptAttnProcessor
from .flux_single import ADA_NORM_SINGLE_SOURCE, BlockTembSingleConceptAttnProcessor


class LongCatImageConceptAttnProcessor(FluxLikeConceptAttnProcessor):
    """LongCat-Image double-block processor: ``LongCatImageAttnProcessor`` untouched, concept branch beside it.

    Example:
        >>> from conceptattention import ConceptAttention
        >>> from conceptattention.testing.longcat_image import tiny_longcat_image_inputs, tiny_longcat_image_transformer
        >>> model = tiny_longcat_image_transformer()
        >>> with ConceptAttention(model, concept_embeds=torch.randn(2, 32)) as ca:
        ...     _ = model(**tiny_longcat_image_inputs())
        >>> type(model.transformer_blocks[0].attn.processor).__name__
        'LongCatImageAttnProcessor'
    """

    #: the diffusers code it runs through the attention view (its capture points), fingerprinted on diffusers 0.42.1
    #: (normalised AST, sha256; tests/adapters/test_zoo_drift.py)
    STOCK_SOURCES = (
        ("diffusers.models.transformers.transformer_longcat_image.LongCatImageAttnProcessor.__call__", "8d501f1588ab0d25067c3942d1d6f905ae089697cb2991a532ab389e3189dc03"),
        ("diffusers.models.transformers.transformer_longcat_image._get_qkv_projections", "67179d8e37c1e01e003765e47440a26a227ce2d8621b72933549b5f4f3ba8527"),
        ("diffusers.models.transformers.transformer_longcat_image._get_projections", "d3b99271904ec8bdfba846b13e872078bcfce74f086eb16c8c16a9d90e3371ef"),
        ("diffusers.models.transformers.transformer_longcat_image._get_fused_projections", "bb8820d2fa049674afd4c25677d4d2a65fe020dfc9b73790750009b5f1b9c935"),
        (DISPATCH_SOURCE, DISPATCH_FINGERPRINTS),  # where the joint attention inputs are kept
    )
    COPIES_STOCK = False


class LongCatImageSingleConceptAttnProcessor(BlockTembSingleConceptAttnProcessor):
    """LongCat-Image single-block processor (the single-stream extension, beyond the paper): ``LongCatImageAttnProcessor``
    untouched, the concepts through the block's shared weights with the block's ``temb``."""

    STOCK_SOURCES = (
        *LongCatImageConceptAttnProcessor.STOCK_SOURCES,
        ("diffusers.models.transformers.transformer_longcat_image.LongCatImageSingleTransformerBlock.forward", "4f82694633d1e0aba8dab83a948aeede2a6cfe89d15414aff488ee03e03a10fa"),
        ADA_NORM_SINGLE_SOURCE,
    )


class LongCatImageAdapter(FluxLikeAdapter):
    """Adapter for LongCat-Image text-to-image (``LongCatImageTransformer2DModel``, ``LongCatImagePipeline``).

    Example:
        >>> from conceptattention.adapters import get_adapter
        >>> from conceptattention.testing.longcat_image import tiny_longcat_image_transformer
        >>> get_adapter(tiny_longcat_image_transformer()).name
        'longcat_image'
    """

    name = "longcat_image"
    processor_class = LongCatImageConceptAttnProcessor
    stock_processor_class = LongCatImageAttnProcessor
    single_processor_class = LongCatImageSingleConceptAttnProcessor
    single_stock_processor_class = LongCatImageAttnProcessor
    transformer_classes = ("LongCatImageTransformer2DModel",)
    pipeline_classes = ("LongCatImagePipeline",)
    modality = "image"
    fused_qkv = "yes"

    def encode_caption(self, pipeline: Any, caption: str, num: int, device: torch.device) -> tuple[torch.Tensor, Any]:
        return pipeline.encode_prompt(prompt=caption, num_images_per_prompt=num)

    def image_ids(self, pipeline: Any, num: int, height: int, width: int, device: torch.device, dtype: torch.dtype) -> Any:
        """Image ids ``(1, start + row, start + column)`` after the text positions, as ``LongCatImagePipeline``."""
        from diffusers.pipelines.longcat_image.pipeline_longcat_image import prepare_pos_ids

        start = int(getattr(pipeline, "tokenizer_max_length", 512))
        return prepare_pos_ids(modality_id=1, type="image", start=(start, start), height=height, width=width).to(device)

    def encode_concepts(
        self, pipeline: Any, concepts: Sequence[str], pooling: ConceptPooling, device: torch.device | None = None
    ) -> torch.Tensor:
        """Concepts between the pipeline's chat prefix and suffix, last Qwen2.5-VL layer, pooled: ``[C, 3584]``."""
        text_encoder = getattr(pipeline, "text_encoder", None)
        tokenizer = getattr(pipeline, "tokenizer", None)
        prefix = getattr(pipeline, "prompt_template_encode_prefix", None)
        suffix = getattr(pipeline, "prompt_template_encode_suffix", None)
        if text_encoder is None or tokenizer is None or prefix is None or suffix is None:
            raise AdapterInputError(
                "This LongCat-Image pipeline has no text encoder, tokenizer or prompt template to encode concepts; "
                "pass `concept_embeds=` (a [C, joint_attention_dim] tensor) instead."
            )
        prefix_ids = list(tokenizer(prefix, add_special_tokens=False).input_ids)
        suffix_ids = list(tokenizer(suffix, add_special_tokens=False).input_ids)
        # the pipeline tokenizes the prompt on its own, between the template's prefix and suffix tokens
        concept_ids = [
            prefix_ids + list(tokenizer(concept, add_special_tokens=False).input_ids) + suffix_ids for concept in concepts
        ]
        input_ids, attention_mask, content_mask = templated_concept_batch(
            concept_ids,
            prefix_ids + suffix_ids,
            concepts,
            pad_id=int(tokenizer.pad_token_id or 0),
            max_length=int(getattr(pipeline, "tokenizer_max_length", 512)) + len(prefix_ids) + len(suffix_ids),
        )
        device = device or getattr(pipeline, "_execution_device", None) or text_encoder.device
        with torch.no_grad():
            output = text_encoder(
                input_ids=input_ids.to(device), attention_mask=attention_mask.to(device), output_hidden_states=True
            )
        hidden = output.hidden_states[-1]  # [C, L, D_text], the layer the pipeline uses for prompts
        return pool_token_states(hidden, content_mask.to(hidden.device), pooling)  # [C, D_text]


__all__ = ["LongCatImageAdapter", "LongCatImageConceptAttnProcessor", "LongCatImageSingleConceptAttnProcessor"]
