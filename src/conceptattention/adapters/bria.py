"""Bria 3.x adapter (``BriaTransformer2DModel``, ``BriaPipeline``) — docs/models.md.

Bria's double-stream block, attention module and ``BriaAttnProcessor`` are FLUX.1's under another name, so the FLUX.1
capture design applies (diffusers' processor runs untouched; see :mod:`conceptattention.adapters.flux_like`). Text ids
are all zero (concept RoPE is the identity, as in FLUX.1); ``temb`` is the timestep embedding (plus a guidance
embedding in guidance-distilled variants) without pooled text, captured per block for the concepts. T5 text only.
``BriaPipeline`` batches classifier-free guidance as ``[uncond, cond]``: maps come from the conditional half.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from diffusers.models.transformers.transformer_bria import BriaAttnProcessor
from torch import nn

from ..config import ConceptPooling
from .attention_inputs import DISPATCH_FINGERPRINTS, DISPATCH_SOURCE
from .base import encode_concepts_masked
from .flux_like import FluxLikeAdapter, FluxLikeConceptAttnProcessor
from .flux_single import ADA_NORM_SINGLE_SOURCE, BlockTembSingleConceptAttnProcessor
from .guidance import call_latents, guidance_half_slice, pipeline_guidance_on
from .real_images import area_resolution


class BriaConceptAttnProcessor(FluxLikeConceptAttnProcessor):
    """Bria double-block processor: ``BriaAttnProcessor`` untouched, concept branch beside it (``context_embedder``).

    Example:
        >>> from conceptattention import ConceptAttention
        >>> from conceptattention.testing.bria import tiny_bria_inputs, tiny_bria_transformer
        >>> model = tiny_bria_transformer()
        >>> with ConceptAttention(model, concept_embeds=torch.randn(2, 32)) as ca:
        ...     _ = model(**tiny_bria_inputs())
        >>> ca.maps.tensor.shape
        torch.Size([2, 1, 4, 6])
    """

    #: the diffusers code it runs through the attention view (its capture points), fingerprinted on diffusers 0.42.1
    #: (normalised AST, sha256; tests/adapters/test_zoo_drift.py)
    STOCK_SOURCES = (
        ("diffusers.models.transformers.transformer_bria.BriaAttnProcessor.__call__", "37d7bfd8eb0a6726525c93344b9658432e81f653ced5bd3e83227f59642c12a7"),
        ("diffusers.models.transformers.transformer_bria._get_qkv_projections", "98dcc791bcd048d0d21a3763106ae944d3936a7a359bf67b40809c2950b0a2ea"),
        ("diffusers.models.transformers.transformer_bria._get_projections", "c6cd1d81c986bffc1bb37f3b5468adec9f8fc602ec3e0fe767e92466527a8443"),
        ("diffusers.models.transformers.transformer_bria._get_fused_projections", "1eeef8e735334a6d6a2886780e3930bf2d3c3b0f82c1055e8a64d6e98cd687b8"),
        (DISPATCH_SOURCE, DISPATCH_FINGERPRINTS),  # where the joint attention inputs are kept
    )
    COPIES_STOCK = False


class BriaSingleConceptAttnProcessor(BlockTembSingleConceptAttnProcessor):
    """Bria single-block processor (the single-stream extension, beyond the paper): ``BriaAttnProcessor``
    untouched, the concepts through the block's shared weights with the block's ``temb``."""

    STOCK_SOURCES = (
        *BriaConceptAttnProcessor.STOCK_SOURCES,
        ("diffusers.models.transformers.transformer_bria.BriaSingleTransformerBlock.forward", "b605a3ec22b0f955013e047632e5eacb7df3601191b1fa3447ef43002ca29b3f"),
        ADA_NORM_SINGLE_SOURCE,
    )


class BriaAdapter(FluxLikeAdapter):
    """Adapter for Bria 3.x text-to-image (``BriaTransformer2DModel``, ``BriaPipeline``).

    Example:
        >>> from conceptattention.adapters import get_adapter
        >>> from conceptattention.testing.bria import tiny_bria_transformer
        >>> get_adapter(tiny_bria_transformer()).name
        'bria'
    """

    name = "bria"
    processor_class = BriaConceptAttnProcessor
    stock_processor_class = BriaAttnProcessor
    single_processor_class = BriaSingleConceptAttnProcessor
    single_stock_processor_class = BriaAttnProcessor
    transformer_classes = ("BriaTransformer2DModel",)
    pipeline_classes = ("BriaPipeline",)
    modality = "image"

    def capture_call(self, transformer: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> dict[str, Any]:
        inputs = super().capture_call(transformer, args, kwargs)
        latents = args[0] if args else kwargs.get("hidden_states")
        inputs.update(call_latents(latents))
        return inputs

    def cfg_batch_slice(self, batch_size: int, call_inputs: dict[str, Any], pipeline: Any | None) -> slice:
        """The conditional half of ``BriaPipeline``'s batched ``[uncond, cond]`` guidance call."""
        return guidance_half_slice(
            batch_size, call_inputs, pipeline_guidance_on(pipeline, "do_classifier_free_guidance"), pipeline
        )

    timestep_scale = 1000.0  # BriaPipeline passes the scheduler's timesteps (0-1000); the model does not rescale

    def size_multiple(self, pipeline: Any) -> int:
        """``BriaPipeline.vae_scale_factor`` already includes the 2×2 packing."""
        return int(getattr(pipeline, "vae_scale_factor", 16))

    def explain_resolution(self, pipeline: Any, image_size: tuple[int, int]) -> tuple[int, int]:
        """About ``default_sample_size · vae_scale_factor`` pixels a side (1024² for Bria 3.x), aspect ratio kept."""
        multiple = self.size_multiple(pipeline)
        side = int(getattr(pipeline, "default_sample_size", 64)) * multiple
        return area_resolution(image_size, side * side, multiple)

    def encode_caption(self, pipeline: Any, caption: str, num: int, device: torch.device) -> tuple[torch.Tensor, Any]:
        prompt_embeds, _, text_ids = pipeline.encode_prompt(
            prompt=caption, device=device, num_images_per_prompt=num, do_classifier_free_guidance=False
        )
        return prompt_embeds, text_ids[0] if text_ids.ndim == 3 else text_ids

    def encode_concepts(
        self, pipeline: Any, concepts: Sequence[str], pooling: ConceptPooling, device: torch.device | None = None
    ) -> torch.Tensor:
        """T5 states of all concepts in one masked batch, pooled over each concept's own tokens: ``[C, 4096]``."""
        # max length 128: BriaPipeline's default
        return encode_concepts_masked(  # [C, D_text]
            pipeline, concepts, pooling, device, "This Bria pipeline has no T5 text encoder", 128
        )


__all__ = ["BriaAdapter", "BriaConceptAttnProcessor", "BriaSingleConceptAttnProcessor"]
