"""AuraFlow adapter (``AuraFlowTransformer2DModel``, ``AuraFlowPipeline``) — docs/models.md.

What AuraFlow needs:

* **Few joint blocks.** Only the first ``num_mmdit_layers`` blocks (4 in AuraFlow v0.x) are joint MM-DiT blocks; the
  32 single-stream blocks that follow are not used. Expect a weaker signal than FLUX.1's 19 blocks.
* **Post-norm residual.** The text stream is updated as ``c ← norm2(c + g₁·proj(o)); c ← c₀ + g₂·mlp(c·(1+s)+b)``
  (the attention residual survives only through the norm); the concept stream follows exactly that, with the fp32
  LayerNorms (``norm2_context``) and fp32 LayerNorm QK-norm of the text modules.
* **Modulation.** ``temb`` depends on the timestep only (no pooled text): the block's own ``temb`` (captured with a
  block pre-hook) modulates the concepts; ``"null_pooled"`` and ``"prompt"`` coincide.
* **Registers and positions.** Eight learned register tokens are prepended to the prompt; they are text-stream
  tokens, which concepts never attend to. There is no RoPE (learned absolute positions on the image patches only).
* **CFG.** ``AuraFlowPipeline`` batches guidance as ``[uncond, cond]``; maps are reported for the conditional half.
* The processor calls ``F.scaled_dot_product_attention`` directly (no attention backends), with ``scale=attn.scale``;
  the concept attention does the same.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from diffusers.models.attention_processor import AuraFlowAttnProcessor2_0, FusedAuraFlowAttnProcessor2_0
from torch import nn

from ..config import ConceptPooling
from .base import (
    AdapterInputError,
    ConceptAdapter,
    bind_call,
    block_input_grabbers,
    captured_block_input,
    encode_concepts_masked,
)
from .processor import AttentionView, ConceptProcessorMixin, captured_qkv, check_captured
from .real_images import ExplainBatch, ExplainRequest, area_resolution, flow_noised, image_pixels


if TYPE_CHECKING:
    from PIL import Image

    from ..session import ConceptSession

#: Key of ``session.call.inputs`` under which the block pre-hook stores the running block's ``temb``.
BLOCK_TEMB_KEY = "auraflow_temb"


#: Modules of AuraFlow's ``Attention`` whose outputs the concept branch takes (``to_out[0]``'s input is taken too).
AURAFLOW_TAPS = ("to_q", "to_k", "to_v", "norm_q", "norm_k", "to_qkv")


class AuraFlowConceptAttnProcessor(ConceptProcessorMixin):
    """AuraFlow joint-block processor: runs diffusers' own processor untouched, and the concept branch beside it.

    The processor it replaces (``AuraFlowAttnProcessor2_0``, or ``FusedAuraFlowAttnProcessor2_0`` after
    ``fuse_qkv_projections()``) is called on an :class:`~conceptattention.adapters.processor.AttentionView` of the
    attention module, which hands the concept branch the image queries/keys/values (after QK-norm) and the image
    attention output before ``to_out[0]``. No diffusers code is copied: outputs are bit-identical by construction.

    Args:
        session: The shared run state.
        layer: Index of this block among the joint (MM-DiT) blocks.
        block: The ``AuraFlowJointTransformerBlock`` (held weakly; its text norms and MLP are used).
        transformer: The ``AuraFlowTransformer2DModel`` (held weakly; its ``context_embedder`` embeds the concepts).
        original: The processor being replaced; it computes the joint attention.

    Example:
        >>> from conceptattention import ConceptAttention
        >>> from conceptattention.testing.auraflow import tiny_auraflow_inputs, tiny_auraflow_transformer
        >>> model = tiny_auraflow_transformer()
        >>> with ConceptAttention(model, concept_embeds=torch.randn(2, 32)) as ca:
        ...     _ = model(**tiny_auraflow_inputs())
        >>> ca.maps.tensor.shape
        torch.Size([2, 1, 4, 6])
    """

    #: the stock processor(s) it runs through an AttentionView: their capture points (diffusers 0.42.1); see tests/adapters/test_stock_drift.py
    STOCK_SOURCES = (
        ("diffusers.models.attention_processor.AuraFlowAttnProcessor2_0.__call__", "d417a0352a9d75e1c75e1a10844f2577a348900f3808ed133c47bf06d4b3dc35"),
        ("diffusers.models.attention_processor.FusedAuraFlowAttnProcessor2_0.__call__", "6b3ee0d2fd8170f1b8262065f5ae298a52166ebb2e124837fa56ee7750eb94a8"),
    )

    def __call__(
        self,
        attn: nn.Module,
        hidden_states: torch.FloatTensor,
        encoder_hidden_states: torch.FloatTensor = None,
        *args: Any,
        **kwargs: Any,
    ) -> torch.FloatTensor:
        if encoder_hidden_states is None or not self.session.needs_concepts():
            return self.original(attn, hidden_states, encoder_hidden_states, *args, **kwargs)
        sink: dict[str, torch.Tensor] = {}
        outputs = self.original(AttentionView(attn, sink, AURAFLOW_TAPS), hidden_states, encoder_hidden_states, *args, **kwargs)
        check_captured(sink, (("to_k", "to_qkv"), ("to_out",)), self.original, "auraflow")
        query, key, value = captured_qkv(sink, attn.heads, hidden_states.shape[0])  # [B, I, H, D] each
        head_dim = key.shape[-1]
        query = sink.get("norm_q", query)  # after QK-norm where the processor applied it
        key = sink.get("norm_k", key)
        self._concept_branch(attn, sink["to_out"], query, key, value, head_dim)
        return outputs

    def _concept_branch(
        self,
        attn: nn.Module,
        image_output: torch.Tensor,
        image_query: torch.Tensor,
        image_key: torch.Tensor,
        image_value: torch.Tensor,
        head_dim: int,
    ) -> None:
        session, block, transformer = self.session, self._block(), self._transformer()
        temb = captured_block_input(session, BLOCK_TEMB_KEY, "The temb of AuraFlow block")
        call = session.call
        assert call is not None and block is not None and transformer is not None
        if call.concept_hidden_states is None:
            call.concept_hidden_states = self._concept_tokens(image_output, transformer.context_embedder)  # [B, C, d]
        concepts = call.concept_hidden_states  # [B, C, d]

        normed, gate_msa, shift_mlp, scale_mlp, gate_mlp = block.norm1_context(concepts, emb=temb)
        batch = normed.shape[0]
        if getattr(attn, "fused_projections", False) and getattr(attn, "to_added_qkv", None) is not None:
            concept_qkv = attn.to_added_qkv(normed)  # [B, C, 3·H·D], as the fused processor projects the prompt
            concept_query, concept_key, concept_value = torch.split(concept_qkv, concept_qkv.shape[-1] // 3, dim=-1)
        else:
            concept_query, concept_key, concept_value = attn.add_q_proj(normed), attn.add_k_proj(normed), attn.add_v_proj(normed)
        concept_query = concept_query.view(batch, -1, attn.heads, head_dim)  # [B, C, H, D]
        concept_key = concept_key.view(batch, -1, attn.heads, head_dim)  # [B, C, H, D]
        concept_value = concept_value.view(batch, -1, attn.heads, head_dim)  # [B, C, H, D]
        if attn.norm_added_q is not None:
            concept_query = attn.norm_added_q(concept_query)
        if attn.norm_added_k is not None:
            concept_key = attn.norm_added_k(concept_key)

        def attend(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
            output = F.scaled_dot_product_attention(
                query.transpose(1, 2),
                key.transpose(1, 2),
                value.transpose(1, 2),
                scale=attn.scale,  # [B, H, S, D] each
            )  # [B, H, C, D]
            return output.transpose(1, 2)  # [B, C, H, D]

        concept_output = self._attend_and_record(  # [B, C, H·D], or None: nothing later has to run
            concept_query, concept_key, concept_value, image_key, image_value, image_output, image_query, attend=attend
        )
        if concept_output is None:
            return
        # Advance the concept stream exactly as AuraFlowJointTransformerBlock advances the text stream (post-norm).
        updated = block.norm2_context(concepts + gate_msa.unsqueeze(1) * attn.to_add_out(concept_output))
        updated = updated * (1 + scale_mlp[:, None]) + shift_mlp[:, None]
        updated = gate_mlp.unsqueeze(1) * block.ff_context(updated)
        call.concept_hidden_states = concepts + updated


class AuraFlowAdapter(ConceptAdapter):
    """Adapter for AuraFlow (``AuraFlowTransformer2DModel``): the joint MM-DiT blocks before the single-stream stack.

    Example:
        >>> from conceptattention.adapters import get_adapter
        >>> from conceptattention.testing.auraflow import tiny_auraflow_transformer
        >>> get_adapter(tiny_auraflow_transformer()).block_path(0)
        'joint_transformer_blocks.0'
    """

    name = "auraflow"
    blocks_attribute = "joint_transformer_blocks"
    processor_class = AuraFlowConceptAttnProcessor
    stock_processor_class = (AuraFlowAttnProcessor2_0, FusedAuraFlowAttnProcessor2_0)
    stock_processor_remedy = "a custom processor is installed: call `transformer.set_default_attn_processor()`."
    transformer_classes = ("AuraFlowTransformer2DModel",)
    pipeline_classes = ("AuraFlowPipeline",)
    modality = "image"
    official_default_layers = "all joint blocks (AuraFlow v0.x: 0-3; no official choice)"
    tested = "adapter battery + naive reference; batched CFG; explain path; bf16/fp16 on an H100"

    def default_layers(self, num_blocks: int) -> tuple[int, ...]:
        """Every joint block (AuraFlow has only four)."""
        return tuple(range(num_blocks))

    def capture_call(self, transformer: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> dict[str, Any]:
        names = ("hidden_states", "encoder_hidden_states", "timestep")
        bound = bind_call("AuraFlowTransformer2DModel", names, args, kwargs, required=("hidden_states", "timestep"))
        patch = int(transformer.config.patch_size)
        height, width = bound["hidden_states"].shape[-2:]
        return {"timestep": bound["timestep"], "grid": (1, height // patch, width // patch)}

    def token_grid(self, call_inputs: dict[str, Any], num_image_tokens: int) -> tuple[int, int, int]:
        frames, height, width = call_inputs["grid"]
        if frames * height * width != num_image_tokens:
            raise AdapterInputError(f"Cannot arrange {num_image_tokens} image tokens on the {height}x{width} patch grid.")
        return frames, height, width

    def size_multiple(self, pipeline: Any) -> int:
        return int(getattr(pipeline, "vae_scale_factor", 8)) * int(pipeline.transformer.config.patch_size)

    def cfg_batch_slice(self, batch_size: int, call_inputs: dict[str, Any], pipeline: Any | None) -> slice:
        """``[uncond, cond]`` batches while ``AuraFlowPipeline`` guides (``guidance_scale > 1``): the second half."""
        if pipeline is not None and float(getattr(pipeline, "_guidance_scale", 1.0) or 1.0) > 1.0:
            return slice(batch_size // 2, None)
        return slice(None)

    def install_hooks(self, transformer: nn.Module, session: ConceptSession) -> list[Any]:
        """Block pre-hooks that hand each joint block's ``temb`` to its processor."""
        return block_input_grabbers(self.joint_blocks(transformer), session, "temb", BLOCK_TEMB_KEY)

    def encode_concepts(
        self, pipeline: Any, concepts: Sequence[str], pooling: ConceptPooling, device: torch.device | None = None
    ) -> torch.Tensor:
        """UMT5 states of all concepts in one masked batch (as AuraFlow encodes prompts), pooled: ``[C, 2048]``."""
        return encode_concepts_masked(  # [C, D_text]
            pipeline, concepts, pooling, device, "This AuraFlow pipeline has no UMT5 text encoder", 256
        )

    # ----- real images -------------------------------------------------------------------------------------------

    def explain_resolution(self, pipeline: Any, image_size: tuple[int, int]) -> tuple[int, int]:
        multiple = self.size_multiple(pipeline)
        side = int(pipeline.transformer.config.sample_size) * int(getattr(pipeline, "vae_scale_factor", 8))
        return area_resolution(image_size, side * side, multiple)

    def explain_batch(self, pipeline: Any, image: Image.Image, request: ExplainRequest) -> ExplainBatch:
        """One batched AuraFlow call on the noised image (no guidance batch; ``image_pooled`` does not apply)."""
        device = pipeline._execution_device
        vae, transformer = pipeline.vae, pipeline.transformer
        pixels = image_pixels(pipeline, image, request.height, request.width)  # [1, 3, H, W]
        with torch.no_grad():
            latents = vae.encode(pixels).latent_dist.mode() * vae.config.scaling_factor  # [1, c, h, w]
        num = len(request.seeds)
        noisy = flow_noised(latents, request, device)  # [N, c, h, w]
        with torch.no_grad():
            prompt_embeds, *_ = pipeline.encode_prompt(
                prompt=request.caption, do_classifier_free_guidance=False, num_images_per_prompt=num, device=device
            )
        dtype = transformer.dtype
        kwargs = {
            "hidden_states": noisy.to(dtype),
            "encoder_hidden_states": prompt_embeds.to(dtype),
            "timestep": torch.full((num,), request.noise_level, device=device, dtype=dtype),
            "return_dict": False,
        }
        return ExplainBatch(transformer_kwargs=kwargs, latent_shape=tuple(latents.shape))


__all__ = ["AuraFlowAdapter", "AuraFlowConceptAttnProcessor"]
