"""HunyuanImage 2.1 adapter (``HunyuanImageTransformer2DModel``, ``HunyuanImagePipeline``) — docs/models.md.

HunyuanImage 2.1 has HunyuanVideo's double-stream layout on images: ``[image, text]`` joint attention with separate
text-stream weights (``add_{q,k,v}_proj``, ``norm_added_{q,k}``, ``to_add_out``, ``norm1_context``, ``ff_context``), 2-D
RoPE on the image rows only, then single-stream blocks (never touched). Design (capture, no copied diffusers code):

* diffusers' ``HunyuanImageAttnProcessor`` runs untouched on an :class:`~conceptattention.adapters.flux.AttentionView`,
  which hands the concept branch the image attention output before ``to_out[0]``; the image queries, keys and values
  are the image rows (the first ``I`` of the ``[image, text]`` joint rows) of the tensors the processor handed to the
  attention dispatcher, after QK-norm and RoPE (:mod:`~conceptattention.adapters.attention_inputs`; while compiling,
  RoPE is re-applied to the tapped QK-normed rows). The image is bit-identical by construction.
* **Concept tokens** go through the token refiner (``context_embedder(x, timestep, mask)``) each as its own one-token
  prompt, so a concept does not depend on the others. The ByT5 glyph stream (``context_embedder_2``) is for quoted
  text to render and takes no part.
* **Modulation**: ``temb`` (timestep, optional guidance and MeanFlow embeddings, no pooled text) is the same for image,
  text and concepts; it is captured per block (``concept_conditioning`` options coincide).
* Concepts carry no position (text has none) and never attend to text, so the prompt's padding mask does not apply.
* **Real images** (explain path): the VAE latents scaled by ``scaling_factor`` (the pipeline divides by it before
  decoding), noised once per seed by rectified flow, ``timestep = 1000·t`` (the pipeline's scheduler timesteps), the
  caption encoded by the pipeline (Qwen2.5-VL and ByT5 glyph streams), one batched call that stops after the last
  selected block. Guidance-distilled models get ``guidance_scale·1000``; MeanFlow models ``timestep_r = timestep``
  (the instantaneous velocity).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from diffusers.models.transformers.transformer_hunyuanimage import HunyuanImageAttnProcessor
from torch import nn

from ..config import ConceptPooling
from ..encoding import pool_token_states
from .attention_inputs import DISPATCH_FINGERPRINTS, DISPATCH_SOURCE
from .base import (
    AdapterInputError,
    ExplainBatch,
    ExplainRequest,
    bind_call,
    flow_noised,
    image_pixels,
)
from .flux2 import templated_concept_batch
from .flux_like import FluxLikeAdapter, FluxLikeConceptAttnProcessor
from .qk_norm import RMS_NORM_FINGERPRINTS, RMS_NORM_SOURCE
from .real_images import area_resolution


class _HeadDimView:
    """A legacy ``Attention`` module with the ``head_dim`` attribute that the FLUX.1 concept branch reads."""

    def __init__(self, attn: nn.Module) -> None:
        self._attn = attn
        self.head_dim = attn.inner_dim // attn.heads

    def __getattr__(self, name: str) -> Any:
        return getattr(self._attn, name)


class HunyuanImageConceptAttnProcessor(FluxLikeConceptAttnProcessor):
    """HunyuanImage 2.1 double-block processor: ``HunyuanImageAttnProcessor`` untouched, concept branch beside it.

    Example:
        >>> from conceptattention import ConceptAttention
        >>> from conceptattention.testing.hunyuan_image import tiny_hunyuan_image_inputs, tiny_hunyuan_image_transformer
        >>> model = tiny_hunyuan_image_transformer()
        >>> with ConceptAttention(model, concept_embeds=torch.randn(2, 16)) as ca:
        ...     _ = model(**tiny_hunyuan_image_inputs())
        >>> ca.maps.tensor.shape
        torch.Size([2, 1, 4, 6])
    """

    #: the diffusers code it runs through the attention view (its capture points), fingerprinted on diffusers 0.42.1
    #: (normalised AST, sha256; tests/adapters/test_zoo_drift.py)
    STOCK_SOURCES = (
        (
            "diffusers.models.transformers.transformer_hunyuanimage.HunyuanImageAttnProcessor.__call__",
            "972a570fdde1d0ee97bb01c0d9b8971e44d62e0e40f8639d1f829c8e83fb02e9",
        ),
        (DISPATCH_SOURCE, DISPATCH_FINGERPRINTS),  # where the joint attention inputs are kept
        (RMS_NORM_SOURCE, RMS_NORM_FINGERPRINTS),  # the concept QK-norm mirrors it (qk_norm.py, inherited branch)
    )
    COPIES_STOCK = False
    # the FLUX.1 processor keeps the joint attention inputs (inherited); the joint rows here are [image, text], which
    # _image_tensors below slices accordingly

    def _concept_branch(
        self,
        attn: nn.Module,
        sink: dict[str, torch.Tensor],
        num_text: int,
        hidden_states: torch.Tensor,
        image_rotary_emb: tuple[torch.Tensor, torch.Tensor] | None,
    ) -> None:
        # the rotary tables cover the image rows only (no text rows to skip)
        super()._concept_branch(_HeadDimView(attn), sink, 0, hidden_states, image_rotary_emb)

    def _image_row_range(self, num_text: int, num_image: int) -> tuple[int | None, int | None]:
        """The image rows come first in this processor's joint tensors: ``[image, text]``."""
        return None, num_image

    def _initial_concepts(self, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Concept tokens after the token refiner ``[B, C, d]`` (one one-token prompt per concept) and the block's
        ``temb`` ``[B, d]``."""
        session, transformer = self.session, self._transformer()
        assert session.call is not None and transformer is not None
        batch = like.shape[0]
        embeds = session.concept_embeds.to(device=like.device, dtype=like.dtype)  # [C, D_text]
        num_concepts = embeds.shape[0]
        timestep = session.call.inputs["timestep"].reshape(-1).to(like.device)  # [B] or [1]
        timestep = timestep.expand(batch) if timestep.numel() == 1 else timestep  # [B]
        prompts = embeds.unsqueeze(0).expand(batch, -1, -1).reshape(batch * num_concepts, 1, -1)  # [B·C, 1, D]
        refined = transformer.context_embedder(prompts, timestep.repeat_interleave(num_concepts), None)  # [B·C, 1, d]
        return refined.reshape(batch, num_concepts, -1), self._block_conditioning()  # [B, C, d], [B, d]


class HunyuanImageAdapter(FluxLikeAdapter):
    """Adapter for HunyuanImage 2.1 text-to-image (``HunyuanImageTransformer2DModel``).

    Example:
        >>> from conceptattention.adapters import get_adapter
        >>> from conceptattention.testing.hunyuan_image import tiny_hunyuan_image_transformer
        >>> get_adapter(tiny_hunyuan_image_transformer()).name
        'hunyuan_image'
    """

    name = "hunyuan_image"
    processor_class = HunyuanImageConceptAttnProcessor
    stock_processor_class = HunyuanImageAttnProcessor
    transformer_classes = ("HunyuanImageTransformer2DModel",)
    pipeline_classes = ("HunyuanImagePipeline",)
    modality = "image"
    fused_qkv = "accepted (diffusers leaves these legacy Attention modules unfused)"
    official_default_layers = "last 4 double blocks (HunyuanImage 2.1: 16-19; no official choice)"
    tested = (
        "adapter battery + naive reference (guidance-distilled variant too); tiny offline pipeline (glyph prompts; "
        "guider CFG bit-identical, only its conditional call recorded); concept encoding checked against the "
        "pipeline's own prompt encoder; explain path (maps equal to a direct call on the same noised latents)"
    )

    def check_model(self, transformer: nn.Module) -> None:
        self.require_qk_norm(
            transformer,
            "This HunyuanImage transformer has no QK-norm (qk_norm=None), where ConceptAttention takes the image "
            "queries and keys; only the released configuration (qk_norm='rms_norm') is supported.",
        )
        super().check_model(transformer)

    def capture_call(self, transformer: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> dict[str, Any]:
        names = ("hidden_states", "timestep", "encoder_hidden_states", "encoder_attention_mask")
        bound = bind_call("HunyuanImageTransformer2DModel", names, args, kwargs, required=("hidden_states", "timestep"))
        latents = bound["hidden_states"]
        if latents.ndim != 4:
            raise AdapterInputError(f"HunyuanImage maps need 4-D image latents [B, c, H, W], got shape {tuple(latents.shape)}.")
        patch_height, patch_width = transformer.config.patch_size[-2:]
        grid = (1, latents.shape[2] // patch_height, latents.shape[3] // patch_width)
        return {"timestep": bound["timestep"], "grid": grid}

    def token_grid(self, call_inputs: dict[str, Any], num_image_tokens: int) -> tuple[int, int, int]:
        frames, height, width = call_inputs["grid"]
        if frames * height * width != num_image_tokens:
            raise AdapterInputError(f"Cannot arrange {num_image_tokens} image tokens on the {height}x{width} latent grid.")
        return frames, height, width

    def size_multiple(self, pipeline: Any) -> int:
        patch = int(getattr(getattr(pipeline, "transformer", None), "config", {}).get("patch_size", (1, 1))[-1])
        return int(getattr(pipeline, "vae_scale_factor", 32)) * patch

    # ----- real images -------------------------------------------------------------------------------------------

    def explain_resolution(self, pipeline: Any, image_size: tuple[int, int]) -> tuple[int, int]:
        """The pipeline's default area (``default_sample_size·vae_scale_factor`` a side: 2048² for HunyuanImage 2.1),
        aspect ratio kept, rounded to the size multiple."""
        multiple = self.size_multiple(pipeline)
        area = (int(getattr(pipeline, "default_sample_size", 64)) * int(getattr(pipeline, "vae_scale_factor", 32))) ** 2
        return area_resolution(image_size, area, multiple)

    def explain_batch(self, pipeline: Any, image: Any, request: ExplainRequest) -> ExplainBatch:
        """One batched HunyuanImage call on the image, noised once per seed (see the module docstring;
        ``image_pooled`` does not apply: no pooled text)."""
        from PIL import Image

        if not isinstance(image, Image.Image):
            raise TypeError(f"The HunyuanImage explain path takes one PIL image, got {type(image).__name__}.")
        device = pipeline._execution_device
        vae, transformer = pipeline.vae, pipeline.transformer
        dtype, num = transformer.dtype, len(request.seeds)
        pixels = image_pixels(pipeline, image, request.height, request.width)  # [1, 3, H, W]
        with torch.no_grad():
            latents = vae.encode(pixels).latent_dist.mode() * vae.config.scaling_factor  # [1, c, h, w]
            prompt_embeds, prompt_mask, glyph_embeds, glyph_mask = pipeline.encode_prompt(
                prompt=request.caption, device=device, num_images_per_prompt=num
            )
        timestep = torch.full((num,), request.noise_level * 1000.0, device=device, dtype=dtype)  # [N]
        guidance = None
        if transformer.config.guidance_embeds:
            guidance = torch.full((num,), request.guidance_scale * 1000.0, device=device, dtype=dtype)  # [N]
        kwargs = {
            "hidden_states": flow_noised(latents, request, device).to(dtype),  # [N, c, h, w]
            "timestep": timestep,
            "timestep_r": timestep if transformer.config.use_meanflow else None,
            "encoder_hidden_states": prompt_embeds.to(dtype),  # [N, T, D_text]
            "encoder_attention_mask": prompt_mask,  # [N, T]
            "encoder_hidden_states_2": glyph_embeds.to(dtype),  # [N, T2, D_glyph]
            "encoder_attention_mask_2": glyph_mask,  # [N, T2]
            "guidance": guidance,
            "return_dict": False,
        }
        return ExplainBatch(transformer_kwargs=kwargs, latent_shape=tuple(latents.shape))

    def encode_concepts(
        self, pipeline: Any, concepts: Sequence[str], pooling: ConceptPooling, device: torch.device | None = None
    ) -> torch.Tensor:
        """Concepts in the pipeline's Qwen2.5-VL prompt template, 3rd-from-last hidden layer (as prompts), pooled over
        each concept's own tokens: ``[C, 3584]``."""
        text_encoder = getattr(pipeline, "text_encoder", None)
        tokenizer = getattr(pipeline, "tokenizer", None)
        template = getattr(pipeline, "prompt_template_encode", None)
        if text_encoder is None or tokenizer is None or template is None:
            raise AdapterInputError(
                "This HunyuanImage pipeline has no Qwen2.5-VL text encoder, tokenizer or prompt template to encode "
                "concepts; pass `concept_embeds=` (a [C, text_embed_dim] tensor) instead."
            )
        start = int(getattr(pipeline, "prompt_template_encode_start_idx", 34))
        input_ids, attention_mask, content_mask = templated_concept_batch(
            [list(tokenizer(template.format(concept)).input_ids) for concept in concepts],
            list(tokenizer(template.format("")).input_ids),
            concepts,
            pad_id=int(tokenizer.pad_token_id or 0),
            max_length=int(getattr(pipeline, "tokenizer_max_length", 1000)) + start,
        )
        device = device or getattr(pipeline, "_execution_device", None) or text_encoder.device
        with torch.no_grad():
            output = text_encoder(
                input_ids=input_ids.to(device), attention_mask=attention_mask.to(device), output_hidden_states=True
            )
        hidden = output.hidden_states[-3]  # [C, L, D_text]: hidden_state_skip_layer=2, as the pipeline
        return pool_token_states(hidden, content_mask.to(hidden.device), pooling)  # [C, D_text]


__all__ = ["HunyuanImageAdapter", "HunyuanImageConceptAttnProcessor"]
