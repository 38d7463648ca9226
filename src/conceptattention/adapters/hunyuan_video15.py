"""HunyuanVideo 1.5 adapter (``HunyuanVideo15Transformer3DModel``, ``HunyuanVideo15Pipeline``) — docs/models.md.

HunyuanVideo 1.5 is all double-stream: 54 blocks with HunyuanImage 2.1's ``[video, text]`` layout (separate text weights
``add_{q,k,v}_proj``, ``norm_added_{q,k}``, ``to_add_out``, ``norm1_context``, ``ff_context``; 3-D RoPE on the video
only). The text stream holds the Qwen2.5-VL prompt tokens (after the token refiner), the ByT5 glyph tokens and, for
image-to-video, SigLIP image tokens, each tagged with a ``cond_type_embed`` row. Design (capture, no copied diffusers
code): diffusers' ``HunyuanVideo15AttnProcessor2_0`` runs untouched on an attention view, as for HunyuanImage 2.1
(:mod:`conceptattention.adapters.hunyuan_image`). Concepts are refined one by one through the token refiner and take
the MLLM-text type embedding (``cond_type_embed(0)``), as prompt tokens do; they are modulated by the block's ``temb``
(timestep and optional MeanFlow embedding, no pooled text). Maps are per latent frame.
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from typing import Any

import torch
from diffusers.models.transformers.transformer_hunyuan_video15 import HunyuanVideo15AttnProcessor2_0
from torch import nn

from ..config import ConceptPooling
from ..encoding import pool_token_states
from .attention_inputs import DISPATCH_FINGERPRINTS, DISPATCH_SOURCE
from .base import AdapterInputError, bind_call
from .flux2 import templated_concept_batch
from .hunyuan_image import HunyuanImageAdapter, HunyuanImageConceptAttnProcessor


class HunyuanVideo15ConceptAttnProcessor(HunyuanImageConceptAttnProcessor):
    """HunyuanVideo 1.5 block processor: ``HunyuanVideo15AttnProcessor2_0`` untouched, concept branch beside it.

    Example:
        >>> from conceptattention import ConceptAttention
        >>> from conceptattention.testing.hunyuan_video15 import tiny_hunyuan_video15_inputs, tiny_hunyuan_video15_transformer
        >>> model = tiny_hunyuan_video15_transformer()
        >>> with ConceptAttention(model, concept_embeds=torch.randn(2, 16)) as ca:
        ...     _ = model(**tiny_hunyuan_video15_inputs())
        >>> ca.maps.tensor.shape
        torch.Size([2, 2, 3, 4])
    """

    #: the diffusers code it runs through the attention view (its capture points), fingerprinted on diffusers 0.42.1
    #: (normalised AST, sha256; tests/adapters/test_zoo_drift.py)
    STOCK_SOURCES = (
        (
            "diffusers.models.transformers.transformer_hunyuan_video15.HunyuanVideo15AttnProcessor2_0.__call__",
            "491f27a195cc7ae43e4c1691965711f2609c6e58b8febef5bf087e988485c4fe",
        ),
        (DISPATCH_SOURCE, DISPATCH_FINGERPRINTS),  # where the joint attention inputs are kept
    )
    COPIES_STOCK = False

    def _initial_concepts(self, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Refined concept tokens plus the MLLM-text type embedding ``[B, C, d]``, and the block's ``temb``."""
        concepts, conditioning = super()._initial_concepts(like)
        transformer = self._transformer()
        assert transformer is not None
        text_type = torch.zeros(concepts.shape[:2], dtype=torch.long, device=concepts.device)  # [B, C]: type 0
        return concepts + transformer.cond_type_embed(text_type), conditioning


class HunyuanVideo15Adapter(HunyuanImageAdapter):
    """Adapter for HunyuanVideo 1.5 (``HunyuanVideo15Transformer3DModel``): maps per latent frame.

    Example:
        >>> from conceptattention.adapters import get_adapter
        >>> from conceptattention.testing.hunyuan_video15 import tiny_hunyuan_video15_transformer
        >>> get_adapter(tiny_hunyuan_video15_transformer()).modality
        'video'
    """

    name = "hunyuan_video15"
    processor_class = HunyuanVideo15ConceptAttnProcessor
    stock_processor_class = HunyuanVideo15AttnProcessor2_0
    transformer_classes = ("HunyuanVideo15Transformer3DModel",)
    pipeline_classes = ("HunyuanVideo15Pipeline",)
    modality = "video"
    official_default_layers = "last 4 blocks (HunyuanVideo 1.5: 50-53; no official choice)"
    tested = (
        "adapter battery + naive reference (text-to-video and image-to-video token layouts); tiny offline pipeline "
        "(guider CFG bit-identical, only its conditional call recorded); concept encoding checked against "
        "the pipeline's own prompt encoder; no explain path"
    )

    def capture_call(self, transformer: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> dict[str, Any]:
        names = ("hidden_states", "timestep", "encoder_hidden_states", "encoder_attention_mask")
        bound = bind_call(
            "HunyuanVideo15Transformer3DModel", names, args, kwargs, required=("hidden_states", "timestep")
        )
        config = transformer.config
        _, _, frames, height, width = bound["hidden_states"].shape
        grid = (frames // config.patch_size_t, height // config.patch_size, width // config.patch_size)
        return {"timestep": bound["timestep"], "grid": grid}

    def size_multiple(self, pipeline: Any) -> int:
        patch = int(getattr(getattr(pipeline, "transformer", None), "config", {}).get("patch_size", 1))
        return int(getattr(pipeline, "vae_scale_factor_spatial", 16)) * patch

    def encode_concepts(
        self, pipeline: Any, concepts: Sequence[str], pooling: ConceptPooling, device: torch.device | None = None
    ) -> torch.Tensor:
        """Concepts as the user turn of the pipeline's Qwen2.5-VL chat (its default system message), the hidden layer
        the pipeline uses (3rd from last), pooled over each concept's own tokens: ``[C, 3584]``."""
        from diffusers import HunyuanVideo15Pipeline

        text_encoder = getattr(pipeline, "text_encoder", None)
        tokenizer = getattr(pipeline, "tokenizer", None)
        if text_encoder is None or tokenizer is None:
            raise AdapterInputError(
                "This HunyuanVideo 1.5 pipeline has no Qwen2.5-VL text encoder or tokenizer to encode concepts; pass "
                "`concept_embeds=` (a [C, text_embed_dim] tensor) instead."
            )
        defaults = inspect.signature(HunyuanVideo15Pipeline._get_mllm_prompt_embeds).parameters
        system_message = defaults["system_message"].default
        skipped = int(defaults["num_hidden_layers_to_skip"].default)

        def chat_ids(text: str) -> list[int]:
            chat = [{"role": "system", "content": system_message}, {"role": "user", "content": text}]
            return list(tokenizer.apply_chat_template(chat, add_generation_prompt=True, tokenize=True, return_dict=True)["input_ids"])

        input_ids, attention_mask, content_mask = templated_concept_batch(
            [chat_ids(concept) for concept in concepts],
            chat_ids(""),
            concepts,
            pad_id=int(tokenizer.pad_token_id or 0),
            max_length=int(getattr(pipeline, "tokenizer_max_length", 1000))
            + int(getattr(pipeline, "prompt_template_encode_start_idx", 108)),
        )
        device = device or getattr(pipeline, "_execution_device", None) or text_encoder.device
        with torch.no_grad():
            output = text_encoder(
                input_ids=input_ids.to(device), attention_mask=attention_mask.to(device), output_hidden_states=True
            )
        hidden = output.hidden_states[-(skipped + 1)]  # [C, L, D_text], the pipeline's layer
        return pool_token_states(hidden, content_mask.to(hidden.device), pooling)  # [C, D_text]


__all__ = ["HunyuanVideo15Adapter", "HunyuanVideo15ConceptAttnProcessor"]
