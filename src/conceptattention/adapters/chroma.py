"""Chroma adapter (``ChromaTransformer2DModel``, ``ChromaPipeline``) — method.md §6.6, diffusers-hooking.md §2.

Chroma is FLUX.1 without the CLIP pooled vector: the same double-stream blocks and ``FluxAttnProcessor``, text ids all
zero (RoPE is the identity for text and concepts), T5 text only. What differs, and what this adapter handles:

* **Modulation.** There is no ``time_text_embed`` vector shared by all blocks: a distilled "approximator" turns the
  timestep into one modulation row per block and stream, and every double block receives its own ``temb`` of shape
  ``[B, 12, d]`` (``temb[:, :6]`` image, ``temb[:, 6:]`` text). The concept stream of block ``i`` is modulated by block
  ``i``'s text slice (``concept_conditioning`` ``"per_block"`` of method.md §3.6), captured with a block pre-hook. The
  approximator sees only the timestep (guidance is fixed at 0), so ``"null_pooled"`` and ``"prompt"`` coincide.
* **Padding mask.** The pipeline passes an ``attention_mask`` that hides the prompt's padding from every query. The
  joint (image/text) attention keeps it unchanged; concepts never attend to text, so their keys need no mask.
* **True classifier-free guidance.** ``ChromaPipeline`` runs a conditional and an unconditional transformer call per
  step without a diffusers ``cache_context``: the second one is recognised as the unconditional twin
  (:mod:`~conceptattention.adapters.guidance`) and neither recorded nor counted as a step.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from ..config import ConceptPooling
from .attention_inputs import DISPATCH_FINGERPRINTS, DISPATCH_SOURCE
from .base import bind_call, block_input_grabbers, captured_block_input, encode_concepts_masked
from .flux import FluxAdapter, FluxConceptAttnProcessor, packed_noisy_latents
from .flux_single import BlockTembSingleConceptAttnProcessor, FluxSingleConceptAttnProcessor
from .guidance import SequentialCFGTwins, call_tensors
from .real_images import ExplainBatch, ExplainRequest


if TYPE_CHECKING:
    from PIL import Image

    from ..session import ConceptSession

#: Key of ``session.call.inputs`` under which the block pre-hook stores the running block's ``temb``.
BLOCK_TEMB_KEY = "chroma_block_temb"


class ChromaConceptAttnProcessor(FluxConceptAttnProcessor):
    """Chroma double-block processor: the FLUX.1 concept processor with Chroma's per-block concept modulation.

    The joint attention is diffusers' own ``FluxAttnProcessor``, run untouched (inherited); only the concept stream's
    modulation input differs: block ``i``'s text slice ``temb[:, 6:]`` (``[B, 6, d]``) instead of a shared vector.

    Args:
        session: The shared run state.
        layer: Index of this block among the double-stream blocks.
        block: The ``ChromaTransformerBlock`` (held weakly).
        transformer: The ``ChromaTransformer2DModel`` (held weakly; its ``context_embedder`` embeds the concepts).
        original: The processor being replaced (its attention backend and parallel config are kept).

    Example:
        >>> from conceptattention import ConceptAttention
        >>> from conceptattention.testing.chroma import tiny_chroma_inputs, tiny_chroma_transformer
        >>> model = tiny_chroma_transformer()
        >>> with ConceptAttention(model, concept_embeds=torch.randn(2, 32)) as ca:
        ...     _ = model(**tiny_chroma_inputs())
        >>> ca.maps.tensor.shape
        torch.Size([2, 1, 4, 6])
    """

    def _block_text_conditioning(self) -> torch.Tensor:
        """This block's text modulation rows ``temb[:, 6:]``: ``[B, 6, d]``."""
        temb = captured_block_input(self.session, BLOCK_TEMB_KEY, "The modulation input of Chroma block")
        return temb[:, 6:]  # [B, 6, d]

    def _initial_concepts(self, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Concept tokens after ``context_embedder`` ``[B, C, d]`` and block 0's text modulation ``[B, 6, d]``."""
        transformer = self._transformer()
        assert transformer is not None
        concepts = self._concept_tokens(like, transformer.context_embedder)  # [B, C, d]
        return concepts, self._block_text_conditioning()

    def _concept_conditioning(self) -> torch.Tensor:
        """This block's own text modulation slice ``temb[:, 6:]`` (Chroma modulates every block separately)."""
        return self._block_text_conditioning()


class ChromaSingleConceptAttnProcessor(BlockTembSingleConceptAttnProcessor):
    """Chroma single-block processor (the single-stream extension, beyond the paper): FLUX.1's, with the concepts
    modulated by the block's own ``temb`` slice ``[B, 3, d]`` (``ChromaAdaLayerNormZeroSinglePruned``)."""

    STOCK_SOURCES = (
        *FluxSingleConceptAttnProcessor.STOCK_SOURCES[:4],  # FluxAttnProcessor and its projections
        (DISPATCH_SOURCE, DISPATCH_FINGERPRINTS),  # where the joint attention inputs are kept
        ("diffusers.models.transformers.transformer_chroma.ChromaSingleTransformerBlock.forward", "6dac5adae225acbbe7872f78ec540f18187723b1afa6adefc483efdb371ea075"),
        ("diffusers.models.transformers.transformer_chroma.ChromaAdaLayerNormZeroSinglePruned.forward", "65167e08410974a9457940b6e9a38f44a136a5edc3ae8cd1ed11547a434a5acc"),
    )


class ChromaAdapter(SequentialCFGTwins, FluxAdapter):
    """Adapter for Chroma (``ChromaTransformer2DModel``): FLUX.1 blocks with per-block modulation and T5 only.

    Example:
        >>> from conceptattention.adapters import get_adapter
        >>> from conceptattention.testing.chroma import tiny_chroma_transformer
        >>> get_adapter(tiny_chroma_transformer()).name
        'chroma'
    """

    name = "chroma"
    processor_class = ChromaConceptAttnProcessor
    single_processor_class = ChromaSingleConceptAttnProcessor
    transformer_classes = ("ChromaTransformer2DModel",)
    pipeline_classes = ("ChromaPipeline",)
    modality = "image"
    ip_adapter = "wrapped like FLUX.1; diffusers 0.42.1 cannot load one into Chroma"
    official_default_layers = "last 4 double blocks (Chroma1: 15-18; no official choice, FLUX.1's)"
    tested = "adapter battery + naive reference; guidance calls without cache context; explain path; bf16/fp16 on an H100"

    def capture_call(self, transformer: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> dict[str, Any]:
        names = ("hidden_states", "encoder_hidden_states", "timestep", "img_ids", "txt_ids")
        bound = bind_call("ChromaTransformer2DModel", names, args, kwargs, required=("timestep", "img_ids"))
        twins = call_tensors(bound.get("hidden_states"), bound.get("encoder_hidden_states"))
        return {"timestep": bound["timestep"], "img_ids": bound["img_ids"], **twins}

    def install_hooks(self, transformer: nn.Module, session: ConceptSession) -> list[Any]:
        """Block pre-hooks that hand each double block's ``temb`` to its processor (single blocks' too)."""
        grabbers = block_input_grabbers(self.joint_blocks(transformer), session, "temb", BLOCK_TEMB_KEY)
        return grabbers + self.single_block_grabbers(transformer, session)

    def encode_concepts(
        self, pipeline: Any, concepts: Sequence[str], pooling: ConceptPooling, device: torch.device | None = None
    ) -> torch.Tensor:
        """T5 states of all concepts in one masked batch (as Chroma encodes prompts), pooled: ``[C, 4096]``."""
        return encode_concepts_masked(  # [C, D_text]
            pipeline, concepts, pooling, device, "This Chroma pipeline has no T5 text encoder", 512
        )

    # ----- real images -------------------------------------------------------------------------------------------

    def explain_batch(self, pipeline: Any, image: Image.Image, request: ExplainRequest) -> ExplainBatch:
        """One batched Chroma call on the noised image (``guidance_scale`` and ``image_pooled`` do not apply)."""
        from diffusers import ChromaPipeline

        noisy, latents_shape = packed_noisy_latents(pipeline, image, request)  # [N, I, 4c]
        device = pipeline._execution_device
        num = len(request.seeds)
        max_sequence_length = min(512, getattr(pipeline.tokenizer, "model_max_length", 512) or 512)
        with torch.no_grad():
            prompt_embeds, text_ids, prompt_mask, *_ = pipeline.encode_prompt(
                prompt=request.caption,
                device=device,
                num_images_per_prompt=num,
                do_classifier_free_guidance=False,
                max_sequence_length=max_sequence_length,
            )
        dtype = pipeline.transformer.dtype
        attention_mask = pipeline._prepare_attention_mask(
            batch_size=num, sequence_length=noisy.shape[1], dtype=dtype, attention_mask=prompt_mask
        )  # [N, T + I]
        latent_height, latent_width = latents_shape[2], latents_shape[3]
        kwargs = {
            "hidden_states": noisy.to(dtype),
            "encoder_hidden_states": prompt_embeds.to(dtype),
            "timestep": torch.full((num,), request.noise_level, device=device, dtype=dtype),
            "img_ids": ChromaPipeline._prepare_latent_image_ids(
                num, latent_height // 2, latent_width // 2, device, dtype
            ),
            "txt_ids": text_ids,
            "attention_mask": attention_mask,
            "return_dict": False,
        }
        return ExplainBatch(transformer_kwargs=kwargs, latent_shape=latents_shape)


__all__ = ["ChromaAdapter", "ChromaConceptAttnProcessor", "ChromaSingleConceptAttnProcessor"]
