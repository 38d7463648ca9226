"""Mochi 1 adapter (``MochiTransformer3DModel``, ``MochiPipeline``) — docs/models.md.

Mochi's "asymmetric" joint attention: video tokens (width 3072) and text tokens (width 1536) attend jointly, each with
its own weights (``to_{q,k,v}`` / ``add_{q,k,v}_proj``, ``norm_q/k`` / ``norm_added_q/k``, ``to_out`` /
``to_add_out``, ``norm1`` / ``norm1_context``, ``ff`` / ``ff_context``); 3-D RoPE on the video only; the text stream
is advanced with modulated RMS norms (``norm{2,3,4}_context``). The last block is ``context_pre_only``: its text stream
is only read (``MochiLayerNormContinuous``, no ``to_add_out``/``ff_context``), so the concept stream is scored there
but not advanced.

Design (capture, no copied diffusers code): diffusers' ``MochiAttnProcessor2_0`` runs untouched on a
:class:`~conceptattention.adapters.processor.AttentionView` of ``attn1`` whose taps keep the video queries/keys right after QK-norm (the processor rotates copies of them, not
in place), the video values and the video attention output before ``to_out[0]``; the concept branch rotates the kept
keys with the call's RoPE tables. Concepts enter through ``time_embed.caption_proj`` (Mochi's text input layer).
Modulation: ``temb = time embedding + attention-pooled caption``; with ``concept_conditioning="null_pooled"``
(default, as the official FLUX.1 code) concepts use the time embedding alone, with ``"prompt"`` the prompt's ``temb``
(captured from the blocks). ``MochiPipeline`` batches classifier-free guidance as ``[uncond, cond]``: maps come from
the conditional half. Maps are per latent frame.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from diffusers.models.attention_processor import MochiAttnProcessor2_0
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
from .guidance import call_latents, guidance_half_slice, pipeline_guidance_on
from .processor import ConceptProcessorMixin


#: Key of ``session.call.inputs`` under which the block pre-hook stores the running block's ``temb``.
BLOCK_TEMB_KEY = "mochi_block_temb"


def mochi_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Mochi's RoPE on interleaved pairs, computed in float32 and cast back: ``x [B, S, H, D]``, ``cos/sin
    [S, H, D/2]`` (the tables ``MochiRoPE`` returns).

    Example:
        >>> x = torch.randn(1, 3, 2, 4)
        >>> torch.equal(mochi_rotary(x, torch.ones(3, 2, 2), torch.zeros(3, 2, 2)), x)
        True
    """
    even, odd = x[..., 0::2].float(), x[..., 1::2].float()  # [B, S, H, D/2] each
    real = (even * cos - odd * sin).to(x.dtype)
    imag = (even * sin + odd * cos).to(x.dtype)
    return torch.stack([real, imag], dim=-1).flatten(-2)  # [B, S, H, D]


class ProcessorSlot:
    """The ``processor`` / ``set_processor`` interface of diffusers attention modules, for ``MochiAttention``, which
    is a plain ``nn.Module`` whose ``forward`` calls ``self.processor`` (it has no ``set_processor``).

    Example:
        >>> from conceptattention.testing.mochi import tiny_mochi_transformer
        >>> attn = tiny_mochi_transformer().transformer_blocks[0].attn1
        >>> slot, stock = ProcessorSlot(attn), attn.processor
        >>> slot.set_processor(None); attn.processor is None
        True
        >>> slot.set_processor(stock); slot.processor is stock
        True
    """

    def __init__(self, attn: nn.Module) -> None:
        self.module = attn

    @property
    def processor(self) -> Any:
        return self.module.processor

    def set_processor(self, processor: Any) -> None:
        self.module.processor = processor


class MochiConceptAttnProcessor(ConceptProcessorMixin):
    """Mochi block processor: runs diffusers' ``MochiAttnProcessor2_0`` untouched on an attention view and advances
    the concept stream beside it with the block's text-stream modules.

    Args:
        session: The shared run state.
        layer: Index of this block.
        block: The ``MochiTransformerBlock`` (held weakly; its text-stream norms and MLP are used).
        transformer: The ``MochiTransformer3DModel`` (held weakly; ``time_embed`` embeds the concepts).
        original: The processor being replaced; it computes the joint attention.

    Example:
        >>> from conceptattention import ConceptAttention
        >>> from conceptattention.testing.mochi import tiny_mochi_inputs, tiny_mochi_transformer
        >>> model = tiny_mochi_transformer()
        >>> with ConceptAttention(model, concept_embeds=torch.randn(2, 16)) as ca:
        ...     _ = model(**tiny_mochi_inputs())
        >>> ca.maps.tensor.shape
        torch.Size([2, 2, 2, 3])
    """

    #: the diffusers code it runs through the view (its capture points), fingerprinted on diffusers 0.42.1
    #: (normalised AST, sha256; tests/adapters/test_zoo_drift.py)
    STOCK_SOURCES = (
        (
            "diffusers.models.attention_processor.MochiAttnProcessor2_0.__call__",
            "22d9b66e5e8adc550d924e70ec024cef796d75c602a9b68f215a5a3f972c918f",
        ),
        (
            "diffusers.models.attention_processor.MochiAttention.forward",
            (  # diffusers 0.42.1, 0.38.0, 0.39.0, 0.40.0, 0.41.0, re-checked: only annotations/reshapes/GQA kernel choice differ
                "321e691914ad5d1565f79f8ad03410af4605fe90ad1acf5c4adb1ad7166c1be2",
                "cc31be9e018f5fb39c470f22e95419a6bd3b603330bc69663166346f9e3f2a16",
            ),
        ),
    )
    COPIES_STOCK = False

    def __call__(
        self,
        attn: nn.Module,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor,
        attention_mask: torch.Tensor,
        image_rotary_emb: tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        if not self.session.needs_concepts():
            return self.original(attn, hidden_states, encoder_hidden_states, attention_mask, image_rotary_emb)
        outputs, sink = self._run_on_view(
            attn,
            ("norm_q", "norm_k", "to_v"),
            "mochi",
            hidden_states,
            encoder_hidden_states,
            attention_mask,
            image_rotary_emb,
        )
        self._concept_branch(attn, sink, hidden_states, image_rotary_emb)
        return outputs

    def _concept_conditioning(self, like: torch.Tensor) -> torch.Tensor:
        """``temb`` of the concepts ``[B, d]``: the time embedding alone (``"null_pooled"``) or the prompt's."""
        session, transformer = self.session, self._transformer()
        assert session.call is not None and transformer is not None
        temb = captured_block_input(session, BLOCK_TEMB_KEY, "The temb of the Mochi block")
        if session.config.concept_conditioning != "null_pooled":
            return temb
        embed = transformer.time_embed  # MochiCombinedTimestepCaptionEmbedding without the pooled caption
        timestep = session.call.inputs["timestep"].reshape(-1).to(like.device)
        time_emb = embed.timestep_embedder(embed.time_proj(timestep).to(dtype=like.dtype))  # [B or 1, d]
        return time_emb.expand(temb.shape[0], -1)

    def _concept_branch(
        self,
        attn: nn.Module,
        sink: dict[str, torch.Tensor],
        like: torch.Tensor,
        rotary: tuple[torch.Tensor, torch.Tensor] | None,
    ) -> None:
        session, block, transformer = self.session, self._block(), self._transformer()
        call = session.call
        assert call is not None and block is not None and transformer is not None
        if call.concept_hidden_states is None:
            call.concept_hidden_states = self._concept_tokens(like, transformer.time_embed.caption_proj)
            call.concept_conditioning = self._concept_conditioning(like)
        concepts = call.concept_hidden_states  # [B, C, d_text]
        conditioning = call.concept_conditioning  # [B, d]
        if block.context_pre_only:
            normed, modulation = block.norm1_context(concepts, conditioning), None
        else:
            normed, *modulation = block.norm1_context(concepts, conditioning)  # gate_msa, scale_mlp, gate_mlp
        concept_query = attn.add_q_proj(normed).unflatten(-1, (attn.heads, -1))  # [B, C, H, D]
        concept_key = attn.add_k_proj(normed).unflatten(-1, (attn.heads, -1))  # [B, C, H, D]
        concept_value = attn.add_v_proj(normed).unflatten(-1, (attn.heads, -1))  # [B, C, H, D]
        if attn.norm_added_q is not None:
            concept_query = attn.norm_added_q(concept_query)
        if attn.norm_added_k is not None:
            concept_key = attn.norm_added_k(concept_key)
        # concepts carry no position (as the text); the video keys as the joint attention used them
        video_key, video_query = sink["norm_k"], sink["norm_q"]  # [B, I, H, D], after QK-norm
        if rotary is not None:
            video_key = mochi_rotary(video_key, *rotary)
            video_query = mochi_rotary(video_query, *rotary)
        video_value = sink["to_v"].unflatten(-1, (attn.heads, -1))  # [B, I, H, D]
        video_output = sink["to_out"]  # [B, I, H·D], before to_out[0]
        concept_output = self._attend_and_record(  # [B, C, H·D], or None: nothing later has to run
            concept_query, concept_key, concept_value, video_key, video_value, video_output, video_query
        )
        if concept_output is None or modulation is None:
            return
        # advance the concept stream as MochiTransformerBlock advances the text stream
        gate_msa, scale_mlp, gate_mlp = modulation
        concepts = concepts + block.norm2_context(attn.to_add_out(concept_output), torch.tanh(gate_msa).unsqueeze(1))
        normed = block.norm3_context(concepts, (1 + scale_mlp.unsqueeze(1).to(torch.float32)))
        call.concept_hidden_states = concepts + block.norm4_context(
            block.ff_context(normed), torch.tanh(gate_mlp).unsqueeze(1)
        )


class MochiAdapter(ConceptAdapter):
    """Adapter for Mochi 1 text-to-video (``MochiTransformer3DModel``, ``MochiPipeline``): maps per latent frame.

    Example:
        >>> from conceptattention.adapters import get_adapter
        >>> from conceptattention.testing.mochi import tiny_mochi_transformer
        >>> get_adapter(tiny_mochi_transformer()).modality
        'video'
    """

    name = "mochi"
    attention_attribute = "attn1"
    processor_class = MochiConceptAttnProcessor
    stock_processor_class = MochiAttnProcessor2_0
    stock_processor_remedy = "a custom processor is installed: call `transformer.set_default_attn_processor()`."
    transformer_classes = ("MochiTransformer3DModel",)
    pipeline_classes = ("MochiPipeline",)
    modality = "video"
    fused_qkv = "not offered by diffusers"
    official_default_layers = "last 4 blocks (Mochi 1: 44-47; no official choice)"
    tested = (
        "adapter battery + naive reference (both conditionings, context_pre_only last block); tiny offline "
        "MochiPipeline with batched CFG; per-frame maps; no real-video explain path"
    )

    def check_model(self, transformer: nn.Module) -> None:
        self.require_qk_norm(
            transformer,
            "This Mochi transformer has no QK-norm, where ConceptAttention takes the video queries and keys; only the "
            "released configuration (qk_norm='rms_norm') is supported.",
        )
        super().check_model(transformer)

    def attention_module(self, block: nn.Module) -> Any:
        """``block.attn1`` behind a :class:`ProcessorSlot` (``MochiAttention`` has no ``set_processor``)."""
        return ProcessorSlot(block.attn1)

    def install_hooks(self, transformer: nn.Module, session: Any) -> list[Any]:
        """Block pre-hooks that hand each block's ``temb`` to its processor."""
        return block_input_grabbers(self.joint_blocks(transformer), session, "temb", BLOCK_TEMB_KEY)

    def capture_call(self, transformer: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> dict[str, Any]:
        names = ("hidden_states", "encoder_hidden_states", "timestep", "encoder_attention_mask")
        bound = bind_call("MochiTransformer3DModel", names, args, kwargs, required=("hidden_states", "timestep"))
        latents = bound["hidden_states"]
        _, _, frames, height, width = latents.shape
        patch = transformer.config.patch_size
        return {
            "timestep": bound["timestep"],
            "grid": (frames, height // patch, width // patch),
            **call_latents(latents),
        }

    def token_grid(self, call_inputs: dict[str, Any], num_image_tokens: int) -> tuple[int, int, int]:
        frames, height, width = call_inputs["grid"]
        if frames * height * width != num_image_tokens:
            raise AdapterInputError(f"Cannot arrange {num_image_tokens} video tokens on the {frames}x{height}x{width} grid.")
        return frames, height, width

    def cfg_batch_slice(self, batch_size: int, call_inputs: dict[str, Any], pipeline: Any | None) -> slice:
        """The conditional half of ``MochiPipeline``'s batched ``[uncond, cond]`` guidance call."""
        return guidance_half_slice(
            batch_size, call_inputs, pipeline_guidance_on(pipeline, "do_classifier_free_guidance"), pipeline
        )

    def size_multiple(self, pipeline: Any) -> int:
        patch = int(getattr(getattr(pipeline, "transformer", None), "config", {}).get("patch_size", 2))
        return int(getattr(pipeline, "vae_spatial_scale_factor", 8)) * patch

    def encode_concepts(
        self, pipeline: Any, concepts: Sequence[str], pooling: ConceptPooling, device: torch.device | None = None
    ) -> torch.Tensor:
        """T5 states of all concepts in one masked batch (as Mochi encodes prompts), pooled: ``[C, 4096]``."""
        return encode_concepts_masked(  # [C, D_text]
            pipeline, concepts, pooling, device, "This Mochi pipeline has no T5 text encoder", 256
        )

    def explain_resolution(self, pipeline: Any, image_size: tuple[int, int]) -> tuple[int, int]:
        raise NotImplementedError(
            "Mochi is a text-to-video model: the real-image explain path does not apply. Generate a video with the "
            "pipeline inside `with ConceptAttention(pipe, concepts):` to get per-frame maps."
        )

    def prepare_explain(self, pipeline: Any, image: Any, **kwargs: Any) -> Any:
        return self.explain_resolution(pipeline, (0, 0))  # always raises, before any other check


__all__ = ["MochiAdapter", "MochiConceptAttnProcessor", "ProcessorSlot", "mochi_rotary"]
