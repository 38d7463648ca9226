"""Bria-Fibo adapter (``BriaFiboTransformer2DModel``, ``BriaFiboPipeline``) — docs/models.md.

Bria-Fibo's double-stream block, attention module and ``BriaFiboAttnProcessor`` are FLUX.1's (the processor is
``FluxAttnProcessor`` line for line), so the FLUX.1 capture design applies (diffusers' processor runs untouched; see
:mod:`conceptattention.adapters.flux_like`). What Bria-Fibo adds is **per-block text features**: before double block
``k`` the model keeps the first half of the text channels (the running residual stream) and replaces the second half
with ``caption_projection[k]`` of text-encoder hidden layer ``k`` (the pipeline's ``text_encoder_layers``):
``text = cat(text[..., :d/2], caption_projection[k](layers[k]))``. The concept stream is rebuilt the same way:

* **Concept embeddings** are ``[C, D_joint + N·D_enc]``: the concept's ``encoder_hidden_states`` features (SmolLM3's
  last two hidden layers, concatenated, ``D_joint = 2·D_enc``) followed by its features of the ``N`` text-encoder
  layers that the pipeline hands the ``N`` double blocks (the pipeline keeps the last ``num_layers +
  num_single_layers`` hidden states, or repeats the last one, and block ``k`` takes the ``k``-th), each pooled over
  the concept's own tokens.
* The concepts enter through ``context_embedder`` and, before each double block ``k``, their second half of channels
  is replaced with ``caption_projection[k]`` of their layer-``k`` features; then the block's text-stream modules
  (``norm1_context`` modulated by the block's ``temb``, ``add_*_proj``, ``norm_added_*``, ``to_add_out``,
  ``norm2_context``, ``ff_context``) advance them, as FLUX.1's concepts.
* Text ids are all zero (concept RoPE is the identity). ``temb`` is the timestep (plus an optional guidance)
  embedding, no pooled text; captured per block. Single-stream blocks are never touched.

``BriaFiboPipeline`` batches classifier-free guidance as ``[uncond, cond]`` (``guidance_scale > 1``): maps come from
the conditional half. The prompt's padding mask (``joint_attention_kwargs["attention_mask"]``) covers text keys only;
concepts never attend to text, so it does not apply to them.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from diffusers.models.transformers.transformer_bria_fibo import BriaFiboAttnProcessor
from torch import nn

from ..config import ConceptPooling
from ..encoding import pool_token_states
from .attention_inputs import DISPATCH_FINGERPRINTS, DISPATCH_SOURCE
from .base import AdapterInputError
from .bria import BriaAdapter
from .flux_like import FluxLikeConceptAttnProcessor
from .guidance import guidance_half_slice
from .processor import next_block_features, stash_block_features


def fibo_concept_widths(transformer: nn.Module) -> tuple[int, int, int]:
    """``(D_joint, D_enc, N)`` of a Bria-Fibo transformer: the width of ``encoder_hidden_states``, of one
    text-encoder layer and the number of double blocks (per-layer features the concepts need).

    Example:
        >>> from conceptattention.testing import tiny_bria_fibo_transformer
        >>> fibo_concept_widths(tiny_bria_fibo_transformer())
        (16, 8, 3)
    """
    config = transformer.config
    return int(config.joint_attention_dim), int(config.text_encoder_dim), len(transformer.transformer_blocks)


class BriaFiboConceptAttnProcessor(FluxLikeConceptAttnProcessor):
    """Bria-Fibo double-block processor: ``BriaFiboAttnProcessor`` untouched, concept branch beside it, with the
    concept stream's second half of channels rebuilt from the concepts' own layer-``k`` features before block ``k``.

    Example:
        >>> from conceptattention import ConceptAttention
        >>> from conceptattention.testing import tiny_bria_fibo_inputs, tiny_bria_fibo_transformer
        >>> model = tiny_bria_fibo_transformer()
        >>> with ConceptAttention(model, concept_embeds=torch.randn(2, 16 + 3 * 8)) as ca:
        ...     _ = model(**tiny_bria_fibo_inputs())
        >>> ca.maps.tensor.shape
        torch.Size([2, 1, 4, 6])
    """

    #: the diffusers code it runs through the attention view (its capture points) and the per-block text rebuild it
    #: mirrors, fingerprinted on diffusers 0.42.1 and re-checked on 0.38.0-0.41.0 (normalised AST, sha256;
    #: tests/adapters/test_zoo_drift.py)
    STOCK_SOURCES = (
        ("diffusers.models.transformers.transformer_bria_fibo.BriaFiboAttnProcessor.__call__", "218395216d1007fd739751848033aef039a9d48d6871af253d423dec9427d2b0"),
        ("diffusers.models.transformers.transformer_bria_fibo._get_qkv_projections", "eeec28d110a177a2f265b0d7103c7fad975eb8738698659af37eb5a13f4942a1"),
        ("diffusers.models.transformers.transformer_bria_fibo._get_projections", "dddb6423e45c5c9b8dd12e0c367e97517fa45a98ab5af5180756d929eb96c8cb"),
        ("diffusers.models.transformers.transformer_bria_fibo._get_fused_projections", "9a4384bfe728cd2b670243fe465a7e5a7bddd638fc34cf10b34d96109af4d59e"),
        (DISPATCH_SOURCE, DISPATCH_FINGERPRINTS),  # where the joint attention inputs are kept
        (
            "diffusers.models.transformers.transformer_bria_fibo.BriaFiboTransformer2DModel.forward",
            (  # diffusers 0.42.1 (= 0.39.0, 0.40.0, 0.41.0); 0.38.0 differs in `if guidance:` only
                "421f2dd39c2f49a27ce06e9a7aefe5600f69cdbdbda11e9bea031b394918f267",
                "ffa92442b5d03980cd68b46ba6dbe587730771f8732f31a66b0fc5a5ca9cff51",
            ),
        ),
    )
    COPIES_STOCK = False

    def _embed_text(self, embeds: torch.Tensor) -> torch.Tensor:
        """``context_embedder`` of the concepts' ``encoder_hidden_states`` features: ``[C, D_joint + N·D_enc]`` ->
        ``[C, d]``."""
        transformer = self._transformer()
        assert transformer is not None
        joint, per_layer, layers = fibo_concept_widths(transformer)
        if embeds.shape[-1] != joint + layers * per_layer:
            raise AdapterInputError(
                f"Bria-Fibo concept embeddings must be [C, {joint} + {layers}·{per_layer}] = [C, "
                f"{joint + layers * per_layer}] (encoder_hidden_states features, then one text-encoder layer per "
                f"double block); got width {embeds.shape[-1]}."
            )
        return transformer.context_embedder(embeds[:, :joint])  # [C, d]

    def _initial_concepts(self, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """FLUX.1's concept tokens and ``temb``; also every double block's projected concept layer (see
        :func:`stash_block_features`)."""
        concepts, conditioning = super()._initial_concepts(like)
        transformer = self._transformer()
        assert transformer is not None
        joint, per_layer, layers = fibo_concept_widths(transformer)
        features = self.session.concept_embeds[:, joint:].to(device=like.device, dtype=like.dtype)  # [C, N·D_enc]
        features = features.unflatten(-1, (layers, per_layer))  # [C, N·D_enc] -> [C, N, D_enc]
        stash_block_features(self.session, transformer.caption_projection, features, like.shape[0])
        return concepts, conditioning

    def _concept_branch(
        self,
        attn: nn.Module,
        sink: dict[str, torch.Tensor],
        num_text: int,
        hidden_states: torch.Tensor,
        image_rotary_emb: Any,
    ) -> None:
        """Rebuild the concept stream's second half from its features of this block's text-encoder layer (as the
        model rebuilds the text before the block), then FLUX.1's concept branch."""
        call = self.session.call
        assert call is not None
        if call.concept_hidden_states is None:
            call.concept_hidden_states, call.concept_conditioning = self._initial_concepts(hidden_states)
        concepts = call.concept_hidden_states  # [B, C, d]
        projected = next_block_features(self.session)  # [B, C, d/2]
        call.concept_hidden_states = torch.cat([concepts[..., : concepts.shape[-1] // 2], projected], dim=-1)
        super()._concept_branch(attn, sink, num_text, hidden_states, image_rotary_emb)


class BriaFiboAdapter(BriaAdapter):
    """Adapter for Bria-Fibo text-to-image (``BriaFiboTransformer2DModel``, ``BriaFiboPipeline``).

    Example:
        >>> from conceptattention.adapters import get_adapter
        >>> from conceptattention.testing import tiny_bria_fibo_transformer
        >>> get_adapter(tiny_bria_fibo_transformer()).name
        'bria_fibo'
    """

    name = "bria_fibo"
    processor_class = BriaFiboConceptAttnProcessor
    stock_processor_class = BriaFiboAttnProcessor
    transformer_classes = ("BriaFiboTransformer2DModel",)
    pipeline_classes = ("BriaFiboPipeline",)
    tested = (
        "adapter battery + naive reference (per-block text features); tiny offline pipeline with batched CFG; fused "
        "QKV; concept encoding checked against the pipeline's own prompt layers; no explain path yet"
    )

    def cfg_batch_slice(self, batch_size: int, call_inputs: dict[str, Any], pipeline: Any | None) -> slice:
        """The conditional half of ``BriaFiboPipeline``'s batched ``[uncond, cond]`` call (``guidance_scale > 1``)."""
        try:
            guidance_on = pipeline is not None and float(pipeline.guidance_scale) > 1
        except (AttributeError, TypeError):
            guidance_on = False
        return guidance_half_slice(batch_size, call_inputs, guidance_on, pipeline)

    def size_multiple(self, pipeline: Any) -> int:
        """``BriaFiboPipeline`` packs no patches by default: one token per ``vae_scale_factor`` (16) pixels."""
        return int(getattr(pipeline, "vae_scale_factor", 16))

    def explain_batch(self, pipeline: Any, image: Any, request: Any) -> Any:
        """Not implemented: Bria-Fibo's real-image path (Wan VAE latents, per-layer caption features) is not built."""
        raise NotImplementedError("The 'bria_fibo' adapter has no real-image (explain) path yet.")

    def encode_concepts(
        self, pipeline: Any, concepts: Sequence[str], pooling: ConceptPooling, device: torch.device | None = None
    ) -> torch.Tensor:
        """Each concept through the pipeline's own ``get_prompt_embeds`` (SmolLM3, every hidden layer), pooled over
        its own tokens: ``encoder_hidden_states`` features, then the layer features of the double blocks, taken as
        the pipeline assigns layers to blocks. ``[C, D_joint + N·D_enc]``."""
        tokenizer, transformer = getattr(pipeline, "tokenizer", None), getattr(pipeline, "transformer", None)
        if tokenizer is None or getattr(pipeline, "text_encoder", None) is None or transformer is None:
            raise AdapterInputError(
                "This Bria-Fibo pipeline has no text encoder, tokenizer or transformer to encode concepts; pass "
                "`concept_embeds=` (a [C, D_joint + num_layers·D_enc] tensor) instead."
            )
        transformer = getattr(transformer, "_orig_mod", transformer)
        total = len(transformer.transformer_blocks) + len(transformer.single_transformer_blocks)
        double = len(transformer.transformer_blocks)
        special = {tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id} - {None}
        rows = []
        for concept in concepts:
            with torch.no_grad():
                embeds, layers, mask = pipeline.get_prompt_embeds([concept], device=device)  # [1, L, D_joint], L+1 x [1, L, D_enc]
            layers = list(layers)
            # the pipeline's assignment of hidden layers to blocks: the last `total`, or the last one repeated
            layers = layers[len(layers) - total :] if len(layers) >= total else layers + [layers[-1]] * (total - len(layers))
            ids = tokenizer([concept], padding="longest", add_special_tokens=True, return_tensors="pt").input_ids
            content = mask.bool().cpu() & ~torch.isin(ids, torch.tensor(sorted(special), dtype=ids.dtype))  # [1, L]
            stacked = torch.cat([embeds.to(layers[0].dtype), *layers[:double]], dim=-1)  # [1, L, D_joint + N·D_enc]
            rows.append(pool_token_states(stacked, content.to(stacked.device), pooling)[0])
        return torch.stack(rows)  # [C, D_joint + N·D_enc]


__all__ = [
    "BriaFiboAdapter",
    "BriaFiboConceptAttnProcessor",
    "fibo_concept_widths",
]
