"""CogView4 adapter (``CogView4Transformer2DModel``, ``CogView4Pipeline``) — docs/models.md.

CogView4 has CogVideoX's joint-attention layout on images: text and image tokens are concatenated ``[text, image]``
and share every attention and MLP weight (``attn1.to_{q,k,v}``, LayerNorm QK-norm, ``to_out``, ``ff``); only the
adaptive LayerNorm gives the text stream its own modulation (``CogView4AdaLayerNormZero`` returns image and text
halves; ``norm2_context``). The paper's CogVideoX recipe applies: concept tokens take the text half of the modulation
and the shared weights, attend to the image keys (2-D RoPE on the image rows; text, and so concepts, carry none) and
keep their own residual stream.

Design (capture, no copied diffusers code): diffusers' ``CogView4AttnProcessor`` runs untouched on a
:class:`~conceptattention.adapters.processor.AttentionView` of the attention module whose taps keep the image keys and queries right after QK-norm (copied before the processor rotates
them in place), the values and the joint attention output before ``to_out[0]``. The concept branch re-applies the
image RoPE to the kept keys, exactly as the processor does. Concepts enter through ``patch_embed.text_proj`` and are
modulated by the ``temb`` each block receives (timestep and size conditioning, no pooled text; captured by a block
pre-hook). Classifier-free guidance runs as two calls in ``cache_context("cond")`` / ``("uncond")``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from diffusers.models.embeddings import apply_rotary_emb
from diffusers.models.transformers.transformer_cogview4 import CogView4AttnProcessor
from torch import nn

from ..config import ConceptPooling
from ..encoding import pool_token_states
from .base import (
    AdapterInputError,
    ConceptAdapter,
    UnsupportedSetupError,
    bind_call,
    block_input_grabbers,
    captured_block_input,
)
from .processor import ConceptProcessorMixin
from .real_images import ExplainBatch, ExplainRequest, area_resolution, flow_noised, image_pixels


#: Key of ``session.call.inputs`` under which the block pre-hook stores the running block's ``temb``.
BLOCK_TEMB_KEY = "cogview4_block_temb"


class CogView4ConceptAttnProcessor(ConceptProcessorMixin):
    """CogView4 block processor: runs diffusers' ``CogView4AttnProcessor`` untouched on a
    :class:`~conceptattention.adapters.processor.AttentionView` of ``attn1`` and advances the concept stream beside it (text
    half of the block's modulation, shared weights).

    The view keeps copies of the ``norm_k`` (and, for the cross-attention space, ``norm_q``) outputs
    ``[B, H, T + I, D]`` before the processor rotates their image rows in place, the ``to_v`` output
    ``[B, T + I, H·D]`` and the ``to_out[0]`` input (the joint attention output ``[B, T + I, H·D]``).

    Args:
        session: The shared run state.
        layer: Index of this block.
        block: The ``CogView4TransformerBlock`` (held weakly; its ``norm1``, ``norm2_context`` and ``ff`` are used).
        transformer: The ``CogView4Transformer2DModel`` (held weakly; ``patch_embed.text_proj`` embeds the concepts).
        original: The processor being replaced; it computes the joint attention.

    Example:
        >>> from conceptattention import ConceptAttention
        >>> from conceptattention.testing.cogview4 import tiny_cogview4_inputs, tiny_cogview4_transformer
        >>> model = tiny_cogview4_transformer()
        >>> with ConceptAttention(model, concept_embeds=torch.randn(2, 16)) as ca:
        ...     _ = model(**tiny_cogview4_inputs())
        >>> ca.maps.tensor.shape
        torch.Size([2, 1, 4, 6])
    """

    #: the diffusers code it runs through the view (its capture points), fingerprinted on diffusers 0.42.1
    #: (normalised AST, sha256; tests/adapters/test_zoo_drift.py)
    STOCK_SOURCES = (
        (
            "diffusers.models.transformers.transformer_cogview4.CogView4AttnProcessor.__call__",
            "7dfce8c172a888dfb7a2e87c390404a8b0ed066cd9d4468d08f4095391ba4eec",
        ),
    )
    COPIES_STOCK = False

    def __call__(
        self,
        attn: nn.Module,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        image_rotary_emb: tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        if not self.session.needs_concepts():
            return self.original(attn, hidden_states, encoder_hidden_states, attention_mask, image_rotary_emb)
        if image_rotary_emb is not None and not isinstance(image_rotary_emb, tuple):
            raise UnsupportedSetupError(
                "CogView4 was called with a list of rotary embeddings (variable-resolution training batches); "
                "ConceptAttention supports one image size per call."
            )
        outputs, sink = self._run_on_view(
            attn,
            self._space_taps("norm_k", "to_v"),
            "cogview4",
            hidden_states,
            encoder_hidden_states,
            attention_mask,
            image_rotary_emb,
            copies=("norm_q", "norm_k"),  # the processor rotates them in place
        )
        self._concept_branch(attn, sink, encoder_hidden_states.shape[1], hidden_states, image_rotary_emb)
        return outputs

    def _image_rows(
        self, normed: torch.Tensor, num_text: int, rotary: tuple[torch.Tensor, torch.Tensor] | None
    ) -> torch.Tensor:
        """Image rows of a QK-normed ``[B, H, T + I, D]`` tensor with the image RoPE, as the processor applies it:
        ``[B, I, H, D]``."""
        image = normed[:, :, num_text:]  # [B, H, I, D]
        if rotary is not None:
            image = apply_rotary_emb(image, rotary, use_real_unbind_dim=-2)
        return image.transpose(1, 2)  # [B, I, H, D]

    def _concept_branch(
        self,
        attn: nn.Module,
        sink: dict[str, torch.Tensor],
        num_text: int,
        like: torch.Tensor,
        rotary: tuple[torch.Tensor, torch.Tensor] | None,
    ) -> None:
        session, block, transformer = self.session, self._block(), self._transformer()
        call = session.call
        assert call is not None and block is not None and transformer is not None
        temb = captured_block_input(session, BLOCK_TEMB_KEY, "The temb of the CogView4 block")
        if call.concept_hidden_states is None:
            call.concept_hidden_states = self._concept_tokens(like, transformer.patch_embed.text_proj)
        concepts = call.concept_hidden_states  # [B, C, d]

        # the text half of the block's adaptive LayerNorm (its image half, computed on the same tokens, is unused)
        *_, normed, gate_msa, shift_mlp, scale_mlp, gate_mlp = block.norm1(concepts, concepts, temb)
        concept_query = attn.norm_q(attn.to_q(normed).unflatten(-1, (attn.heads, -1)))  # [B, C, H, D]
        concept_key = attn.norm_k(attn.to_k(normed).unflatten(-1, (attn.heads, -1)))  # [B, C, H, D]
        concept_value = attn.to_v(normed).unflatten(-1, (attn.heads, -1))  # [B, C, H, D]
        # concepts carry no position (as the text); the image keys as the joint attention used them
        image_key = self._image_rows(sink["norm_k"], num_text, rotary)  # [B, I, H, D]
        image_value = sink["to_v"][:, num_text:].unflatten(-1, (attn.heads, -1))  # [B, I, H, D]
        image_output = sink["to_out"][:, num_text:]  # [B, I, H·D], before to_out[0]
        image_query = self._image_rows(sink["norm_q"], num_text, rotary) if "norm_q" in sink else None
        concept_output = self._attend_and_record(  # [B, C, H·D], or None: nothing later has to run
            concept_query, concept_key, concept_value, image_key, image_value, image_output, image_query
        )
        if concept_output is None:
            return
        # advance the concept residual stream as CogView4TransformerBlock advances the text stream
        concepts = concepts + attn.to_out[1](attn.to_out[0](concept_output)) * gate_msa.unsqueeze(1)
        normed = block.norm2_context(concepts) * (1 + scale_mlp.unsqueeze(1)) + shift_mlp.unsqueeze(1)
        call.concept_hidden_states = concepts + block.ff(normed) * gate_mlp.unsqueeze(1)


class CogView4Adapter(ConceptAdapter):
    """Adapter for CogView4 text-to-image (``CogView4Transformer2DModel``, ``CogView4Pipeline``).

    Example:
        >>> from conceptattention.adapters import get_adapter
        >>> from conceptattention.testing.cogview4 import tiny_cogview4_transformer
        >>> get_adapter(tiny_cogview4_transformer()).name
        'cogview4'
    """

    name = "cogview4"
    attention_attribute = "attn1"
    processor_class = CogView4ConceptAttnProcessor
    stock_processor_class = CogView4AttnProcessor
    stock_processor_remedy = (
        "a custom or training processor is installed: call `transformer.set_default_attn_processor()`."
    )
    transformer_classes = ("CogView4Transformer2DModel",)
    pipeline_classes = ("CogView4Pipeline",)
    modality = "image"
    fused_qkv = "accepted per module (the stock processor ignores fusion)"
    official_default_layers = "last 4 blocks (CogView4-6B: 24-27; no official choice)"
    tested = (
        "adapter battery + naive reference; tiny offline pipeline with CFG; concept encoding checked against the "
        "pipeline's own prompt encoding; explain path"
    )

    def check_model(self, transformer: nn.Module) -> None:
        self.require_qk_norm(
            transformer,
            "This CogView4 transformer has no QK-norm, where ConceptAttention takes the image keys; only the released "
            "configuration (LayerNorm QK-norm) is supported.",
        )
        super().check_model(transformer)

    def install_hooks(self, transformer: nn.Module, session: Any) -> list[Any]:
        """Block pre-hooks that hand each block's ``temb`` to its processor."""
        return block_input_grabbers(self.joint_blocks(transformer), session, "temb", BLOCK_TEMB_KEY)

    def capture_call(self, transformer: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> dict[str, Any]:
        names = ("hidden_states", "encoder_hidden_states", "timestep")
        bound = bind_call("CogView4Transformer2DModel", names, args, kwargs, required=("hidden_states", "timestep"))
        _, _, height, width = bound["hidden_states"].shape
        patch = transformer.config.patch_size
        return {"timestep": bound["timestep"], "grid": (1, height // patch, width // patch)}

    def token_grid(self, call_inputs: dict[str, Any], num_image_tokens: int) -> tuple[int, int, int]:
        frames, height, width = call_inputs["grid"]
        if frames * height * width != num_image_tokens:
            raise AdapterInputError(f"Cannot arrange {num_image_tokens} image tokens on the {height}x{width} latent grid.")
        return frames, height, width

    def size_multiple(self, pipeline: Any) -> int:
        patch = int(getattr(getattr(pipeline, "transformer", None), "config", {}).get("patch_size", 2))
        return int(getattr(pipeline, "vae_scale_factor", 8)) * patch

    # ----- real images -------------------------------------------------------------------------------------------

    def explain_resolution(self, pipeline: Any, image_size: tuple[int, int]) -> tuple[int, int]:
        """About 1024² pixels (``transformer.config.sample_size · vae_scale_factor``), aspect ratio kept."""
        multiple = self.size_multiple(pipeline)
        config = getattr(getattr(pipeline, "transformer", None), "config", {})
        side = int(config.get("sample_size", 128)) * int(getattr(pipeline, "vae_scale_factor", 8))
        return area_resolution(image_size, side * side, multiple)

    def explain_batch(self, pipeline: Any, image: Any, request: ExplainRequest) -> ExplainBatch:
        """One batched CogView4 call on the image: VAE latents (scaled as the pipeline unscales them), noised once per
        seed (rectified flow, ``timestep = 1000·t`` as the pipeline passes its scheduler's timesteps), the caption
        encoded by the pipeline, and the image size as size conditioning (``guidance_scale``, ``image_pooled`` do not
        apply)."""
        from PIL import Image

        if not isinstance(image, Image.Image):
            raise TypeError(f"The CogView4 explain path takes one PIL image, got {type(image).__name__}.")
        device = pipeline._execution_device
        vae, dtype = pipeline.vae, pipeline.transformer.dtype
        num = len(request.seeds)
        pixels = image_pixels(pipeline, image, request.height, request.width)  # [1, 3, H, W]
        with torch.no_grad():
            latents = vae.encode(pixels).latent_dist.mode() * vae.config.scaling_factor  # [1, c, h, w]
            prompt_embeds, _ = pipeline.encode_prompt(
                request.caption, do_classifier_free_guidance=False, num_images_per_prompt=num, device=device
            )
        size = torch.tensor([[request.height, request.width]], dtype=prompt_embeds.dtype, device=device).repeat(num, 1)
        kwargs = {
            "hidden_states": flow_noised(latents, request, device).to(dtype),  # [N, c, h, w]
            "encoder_hidden_states": prompt_embeds.to(dtype),
            "timestep": torch.full((num,), request.noise_level * 1000.0, device=device, dtype=dtype),
            "original_size": size,
            "target_size": size,
            "crop_coords": torch.zeros_like(size),
            "return_dict": False,
        }
        return ExplainBatch(transformer_kwargs=kwargs, latent_shape=tuple(latents.shape))

    def encode_concepts(
        self, pipeline: Any, concepts: Sequence[str], pooling: ConceptPooling, device: torch.device | None = None
    ) -> torch.Tensor:
        """Each concept encoded exactly as the pipeline encodes a one-concept prompt (``_get_glm_embeds``: GLM, second
        to last layer, left-padded to a multiple of 16), pooled over the concept's own tokens: ``[C, 4096]``.

        One call per concept, so a concept never depends on the others (a batch would pad them together).
        """
        text_encoder = getattr(pipeline, "text_encoder", None)
        tokenizer = getattr(pipeline, "tokenizer", None)
        if text_encoder is None or tokenizer is None or not hasattr(pipeline, "_get_glm_embeds"):
            raise AdapterInputError(
                "This CogView4 pipeline has no GLM text encoder or tokenizer to encode concepts; pass `concept_embeds=` "
                "(a [C, text_embed_dim] tensor) instead."
            )
        device = device or getattr(pipeline, "_execution_device", None) or text_encoder.device
        rows = []
        for concept in concepts:
            ids = list(tokenizer(concept, add_special_tokens=True).input_ids)
            own = list(tokenizer(concept, add_special_tokens=False).input_ids)
            offsets = [i for i in range(len(ids) - len(own) + 1) if own and ids[i : i + len(own)] == own]
            if not offsets:
                raise AdapterInputError(f"Concept {concept!r} has no tokens of its own.")
            with torch.no_grad():
                states = pipeline._get_glm_embeds(concept, device=device)[0]  # [pad + len(ids), D_text]
            start = states.shape[0] - len(ids) + offsets[0]  # after the pipeline's left padding
            content = torch.zeros(1, states.shape[0], dtype=torch.bool, device=states.device)  # [1, L]
            content[0, start : start + len(own)] = True
            rows.append(pool_token_states(states[None], content, pooling)[0])  # [D_text]
        return torch.stack(rows)  # [C, D_text]


__all__ = ["CogView4Adapter", "CogView4ConceptAttnProcessor"]
