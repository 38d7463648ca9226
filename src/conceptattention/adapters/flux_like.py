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
from PIL import Image
from torch import nn

from .base import bind_call, block_input_grabbers, captured_block_input
from .flux import FluxAdapter, FluxConceptAttnProcessor, packed_noisy_latents
from .real_images import ExplainBatch


if TYPE_CHECKING:
    from ..session import ConceptSession

#: Key of ``session.call.inputs`` under which the block pre-hook stores the running double block's ``temb``.
BLOCK_TEMB_KEY = "flux_like_block_temb"


class FluxLikeConceptAttnProcessor(FluxConceptAttnProcessor):
    """Concept processor of a FLUX.1 clone without pooled text: the FLUX.1 capture processor (diffusers' processor
    untouched, concept branch beside it) with the block's own ``temb`` as the concept modulation.

    Subclasses set :attr:`text_input` to the names of the transformer's text input modules, applied in order.

    Example:
        >>> from conceptattention import ConceptAttention
        >>> from conceptattention.testing.longcat_image import tiny_longcat_image_inputs, tiny_longcat_image_transformer
        >>> model = tiny_longcat_image_transformer()
        >>> with ConceptAttention(model, concept_embeds=torch.randn(2, 32)) as ca:
        ...     _ = model(**tiny_longcat_image_inputs())
        >>> ca.maps.tensor.shape
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
    and 2), as for FLUX.1. The real-image path packs and noises the VAE latents as FLUX.1's does; subclasses give the
    caption encoding (:meth:`encode_caption`) and, where it differs, the image ids and the timestep scale.
    """

    processor_class = FluxLikeConceptAttnProcessor
    #: feature columns of the README table (read by the capture branch's supported_models())
    ip_adapter = "not offered by diffusers"
    fused_qkv = "yes (per attention module)"
    stock_processor_remedy = "a custom processor is installed: call `transformer.set_default_attn_processor()`."
    official_default_layers = "last 4 double blocks (no official choice)"
    single_processor_class = None  # each family names its own single-block processor
    tested = (
        "adapter battery + naive reference; tiny offline pipeline with CFG; fused QKV; concept encoding checked "
        "against the pipeline's own prompt encoding; explain path"
    )

    def capture_call(self, transformer: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> dict[str, Any]:
        names = ("hidden_states", "encoder_hidden_states", "timestep", "img_ids", "txt_ids")
        bound = bind_call(type(transformer).__name__, names, args, kwargs, required=("timestep", "img_ids"))
        return {"timestep": bound["timestep"], "img_ids": bound["img_ids"]}

    def install_hooks(self, transformer: nn.Module, session: ConceptSession) -> list[Any]:
        """Block pre-hooks that hand each double (and selected-or-earlier single) block's ``temb`` to its processor."""
        grabbers = block_input_grabbers(self.joint_blocks(transformer), session, "temb", BLOCK_TEMB_KEY)
        return grabbers + self.single_block_grabbers(transformer, session)

    #: The transformer's ``timestep`` per unit of rectified-flow time (Bria takes the scheduler's 0-1000 scale).
    timestep_scale: float = 1.0

    # ----- real images -------------------------------------------------------------------------------------------

    def encode_caption(self, pipeline: Any, caption: str, num: int, device: torch.device) -> tuple[torch.Tensor, Any]:
        """The caption's prompt embeddings ``[N, T, D_text]`` and text ids ``[T, 3]``, as the pipeline computes them."""
        raise NotImplementedError(f"The {self.name!r} adapter has no real-image (explain) path yet.")

    def image_ids(self, pipeline: Any, num: int, height: int, width: int, device: torch.device, dtype: torch.dtype) -> Any:
        """RoPE ids ``[h·w, 3]`` of a packed ``height × width`` token grid, as the pipeline builds them."""
        ids = type(pipeline)._prepare_latent_image_ids(num, height, width, device, dtype)
        return ids[0] if ids.ndim == 3 else ids

    def explain_batch(self, pipeline: Any, image: Image.Image | Sequence[Image.Image], request: Any) -> ExplainBatch:
        """One batched call on the image: VAE-encoded, packed 2×2 and noised once per seed (rectified flow), with the
        caption encoded by the pipeline (``guidance_scale`` and ``image_pooled`` do not apply: no pooled text)."""
        if not isinstance(image, Image.Image):
            raise TypeError(f"The {self.name} explain path takes one PIL image, got {type(image).__name__}.")
        device = pipeline._execution_device
        dtype = pipeline.transformer.dtype
        num = len(request.seeds)
        noisy, latent_shape = packed_noisy_latents(pipeline, image, request)  # [N, I, 4c]
        with torch.no_grad():
            prompt_embeds, text_ids = self.encode_caption(pipeline, request.caption, num, device)
        latent_height, latent_width = latent_shape[2], latent_shape[3]
        kwargs = {
            "hidden_states": noisy.to(dtype),
            "encoder_hidden_states": prompt_embeds.to(dtype),
            "timestep": torch.full((num,), request.noise_level * self.timestep_scale, device=device, dtype=dtype),
            "img_ids": self.image_ids(pipeline, num, latent_height // 2, latent_width // 2, device, dtype),
            "txt_ids": text_ids,
            "return_dict": False,
        }
        return ExplainBatch(transformer_kwargs=kwargs, latent_shape=latent_shape)


__all__ = ["BLOCK_TEMB_KEY", "FluxLikeAdapter", "FluxLikeConceptAttnProcessor"]
