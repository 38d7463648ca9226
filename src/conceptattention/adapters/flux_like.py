"""Shared pieces of the adapters for FLUX.1-architecture clones without a pooled text vector (Bria, LongCat-Image,
Ovis-Image) — docs/models.md.

These diffusers classes copy FLUX.1's double-stream block, attention module and processor under their own names
(``BriaAttnProcessor``, ``LongCatImageAttnProcessor``, ``OvisImageAttnProcessor`` are ``FluxAttnProcessor`` line for
line), so the FLUX.1 capture design applies unchanged: diffusers' own processor runs untouched on an
:class:`~conceptattention.adapters.flux.AttentionView` that hands the concept branch the image keys, values and the
pre-projection image attention output. What differs from FLUX.1:

* **Modulation.** ``temb`` is built from the timestep (and, for Bria, an optional guidance embedding) only: there is
  no pooled CLIP vector, so the concepts are modulated by exactly the ``temb`` every double block receives, captured
  with a block pre-hook (``concept_conditioning`` ``"null_pooled"`` and ``"prompt"`` coincide).
* **Concept positions.** LongCat-Image and Ovis-Image give text tokens the RoPE ids ``(0, i, i)`` (Bria: all zero).
  Every concept takes the first text token's id ``(0, 0, 0)``, whose rotation is the identity, as FLUX.1 concepts do;
  all concepts share it, so permuting the concepts permutes the maps.
* **Text input.** The model's own text input layer (``context_embedder``; Ovis-Image: ``context_embedder_norm`` then
  ``context_embedder``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from .base import ConceptAdapter, ExplainBatch, bind_call, block_input_grabbers, captured_block_input
from .flux import FluxAdapter, FluxConceptAttnProcessor


if TYPE_CHECKING:
    from PIL import Image

    from ..session import ConceptSession

#: Key of ``session.call.inputs`` under which the block pre-hook stores the running double block's ``temb``.
BLOCK_TEMB_KEY = "flux_like_block_temb"


class FluxLikeConceptAttnProcessor(FluxConceptAttnProcessor):
    """Concept processor of a FLUX.1 clone without pooled text: the FLUX.1 capture processor (diffusers' processor
    untouched, concept branch beside it) with the block's own ``temb`` as the concept modulation.

    Subclasses set :attr:`text_input` to the names of the transformer's text input modules, applied in order.

    Example:
        >>> from conceptattention import ConceptAttention
        >>> from conceptattention.testing_zoo import tiny_longcat_image_inputs, tiny_longcat_image_transformer
        >>> model = tiny_longcat_image_transformer()
        >>> with ConceptAttention(model, concept_embeds=torch.randn(2, 32)) as ca:
        ...     _ = model(**tiny_longcat_image_inputs())
        >>> ca.maps.maps.shape
        torch.Size([2, 1, 4, 6])
    """

    text_input: tuple[str, ...] = ("context_embedder",)

    def _block_conditioning(self) -> torch.Tensor:
        """The ``temb`` ``[B, d]`` the running double block received (captured by its pre-hook)."""
        return captured_block_input(self.session, BLOCK_TEMB_KEY, "The modulation input (temb) of the double block")

    def _embed_text(self, embeds: torch.Tensor) -> torch.Tensor:
        transformer = self._transformer()
        assert transformer is not None
        for name in self.text_input:
            embeds = getattr(transformer, name)(embeds)
        return embeds

    def _initial_concepts(self, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Concept tokens after the text input layers ``[B, C, d]`` and the block's ``temb`` ``[B, d]``."""
        return self._concept_tokens(like, self._embed_text), self._block_conditioning()

    def _concept_conditioning(self) -> torch.Tensor:
        return self._block_conditioning()


class FluxLikeAdapter(FluxAdapter):
    """Base adapter of FLUX.1 clones without pooled text: subclasses name the classes, processors and text encoder.

    The transformer call must give ``timestep`` and ``img_ids``; the token grid is read from ``img_ids`` (columns 1
    and 2), as for FLUX.1. There is no real-image (explain) path yet.
    """

    processor_class = FluxLikeConceptAttnProcessor
    stock_processor_remedy = "a custom processor is installed: call `transformer.set_default_attn_processor()`."
    official_default_layers = "last 4 double blocks (no official choice)"
    tested = (
        "adapter battery + naive reference; tiny offline pipeline with CFG; fused QKV; concept encoding checked "
        "against the pipeline's own prompt encoding; no explain path yet"
    )

    def capture_call(self, transformer: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> dict[str, Any]:
        names = ("hidden_states", "encoder_hidden_states", "timestep", "img_ids", "txt_ids")
        bound = bind_call(type(transformer).__name__, names, args, kwargs, required=("timestep", "img_ids"))
        return {"timestep": bound["timestep"], "img_ids": bound["img_ids"]}

    def install_hooks(self, transformer: nn.Module, session: ConceptSession) -> list[Any]:
        """Block pre-hooks that hand each double block's ``temb`` to its processor."""
        return block_input_grabbers(self.joint_blocks(transformer), session, "temb", BLOCK_TEMB_KEY)

    def explain_resolution(self, pipeline: Any, image_size: tuple[int, int]) -> tuple[int, int]:
        return ConceptAdapter.explain_resolution(self, pipeline, image_size)

    def explain_batch(self, pipeline: Any, image: Image.Image | Sequence[Image.Image], request: Any) -> ExplainBatch:
        return ConceptAdapter.explain_batch(self, pipeline, image, request)


__all__ = ["BLOCK_TEMB_KEY", "FluxLikeAdapter", "FluxLikeConceptAttnProcessor"]
