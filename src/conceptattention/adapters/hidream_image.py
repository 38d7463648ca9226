"""HiDream-I1 adapter (``HiDreamImageTransformer2DModel``, ``HiDreamImagePipeline``) — docs/models.md.

HiDream-I1's double-stream blocks (``HiDreamImageTransformerBlock``) run a joint attention over ``[image, text]`` whose
text stream has weights of its own (``to_{q,k,v}_t``, ``{q,k}_rms_norm_t``, ``to_out_t``, ``norm1_t`` / ``norm3_t``
with the text half of ``adaLN_modulation``, ``ff_t``); the single-stream blocks after them are never touched. What the
model does with text, read in diffusers 0.42.1: T5 states and every tapped Llama-3.1 hidden layer ``llama_layers[k]``
go through their own ``caption_projection``; the text stream is ``initial = [T5, Llama layer llama_layers[-1]]``, a
residual stream that the blocks advance, and **before each double block k** the model appends the projection of
Llama layer ``llama_layers[k]`` (fresh, discarded after the block): ``text_k = [initial, llama_k]``. The concept
stream is rebuilt the same way:

* **Concept embeddings** are ``[C, D_t5 + n·D_llama]``: each concept's T5 state, then its state in each of the ``n``
  tapped Llama layers ``llama_layers[0..n-1]``, each pooled over the concept's own tokens (the pipeline's own
  encoders; :meth:`HiDreamImageAdapter.encode_concepts`).
* Each concept is **three tokens**, as a prompt token is one of three kinds: its T5 token and its last-Llama-layer
  token form the concepts' residual stream (``[B, 2C, d]``); before double block ``k`` its layer-``k`` token is
  appended (``[B, 3C, d]``), the block's text-stream modules advance all three, and the layer-``k`` token is dropped.
  The concepts attend to the image keys and (mode permitting) to the 3C concept tokens, never to the prompt.
* **Maps**: a concept's score is the mean of its three tokens' scores (all score spaces are linear in the concept's
  vector, so this is the score of its tokens' mean output / key / value).
* **Modulation**: the text half of the block's ``adaLN_modulation(temb)``; ``temb`` is the timestep embedding plus
  ``p_embedder(pooled CLIP)``: ``concept_conditioning="prompt"`` uses the block's ``temb``; ``"null_pooled"`` (the
  default, as FLUX.1's) the timestep embedding plus ``p_embedder`` of a zero pooled vector.
* **Positions**: text ids are all zero (RoPE is the identity for text and concepts); the image keys (and queries, for
  the cross-attention space) are rotated with the image rows of the call's RoPE table.

* **Non-square images**: the model pads the patch sequence to ``max_resolution`` and multiplies the padding rows'
  keys by zero (they still take part in the softmax, with logit 0, for image and text queries alike); the concepts see
  the image keys exactly as the text does (padding included), and the maps cover the real ``h × w`` patches only.

Capture: diffusers' ``HiDreamAttnProcessor`` runs untouched on a view of ``attn1`` whose image-side modules
(``q_rms_norm``, ``k_rms_norm``, ``to_v``, ``to_out``) leave their outputs (``to_out``: its input) in a sink.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import torch
from diffusers.models.transformers.transformer_hidream_image import HiDreamAttnProcessor, apply_rope
from torch import nn

from ..config import ConceptPooling
from ..core import concept_attention
from ..encoding import encode_masked_concepts, pool_token_states, tokenize_concepts
from .base import (
    AdapterInputError,
    ConceptAdapter,
    UnsupportedSetupError,
    bind_call,
    block_input_grabbers,
    captured_block_input,
)
from .guidance import call_latents, guidance_half_slice, pipeline_guidance_on
from .processor import ConceptProcessorMixin, next_block_features, stash_block_features


if TYPE_CHECKING:
    from ..session import ConceptSession

#: Key of ``session.call.inputs`` under which the block pre-hook stores the running double block's ``temb``.
HIDREAM_TEMB_KEY = "hidream_block_temb"
#: Image-side modules of ``HiDreamAttention`` whose outputs the concept branch takes (``to_out``: its input).
HIDREAM_TAPS = ("q_rms_norm", "k_rms_norm", "to_v")


def hidream_concept_widths(transformer: nn.Module) -> tuple[int, int, int]:
    """``(D_t5, D_llama, n)`` of a HiDream-I1 transformer: concept embeddings are ``[C, D_t5 + n·D_llama]``.

    Example:
        >>> from conceptattention.testing import tiny_hidream_image_transformer
        >>> hidream_concept_widths(tiny_hidream_image_transformer())
        (16, 8, 4)
    """
    config = transformer.config
    t5, llama = config.caption_channels
    return int(t5), int(llama), len(config.llama_layers)


class HiDreamConceptAttnProcessor(ConceptProcessorMixin):
    """HiDream-I1 double-block processor: diffusers' ``HiDreamAttnProcessor`` runs untouched on a view of ``attn1``;
    the concept branch beside it rebuilds and advances the concept stream as the block does the text.

    Example:
        >>> from conceptattention import ConceptAttention
        >>> from conceptattention.testing import tiny_hidream_image_inputs, tiny_hidream_image_transformer
        >>> model = tiny_hidream_image_transformer()
        >>> with ConceptAttention(model, concept_embeds=torch.randn(2, 16 + 4 * 8)) as ca:
        ...     _ = model(**tiny_hidream_image_inputs())
        >>> ca.maps.tensor.shape
        torch.Size([2, 1, 4, 4])
    """

    #: the diffusers code it runs through the view (capture points) and the block/model code whose text update and
    #: per-block text rebuild it mirrors, fingerprinted on diffusers 0.42.1 and re-checked on 0.38.0-0.41.0
    #: (normalised AST, sha256; tests/adapters/test_zoo_drift.py)
    STOCK_SOURCES = (
        ("diffusers.models.transformers.transformer_hidream_image.HiDreamAttnProcessor.__call__", "6c3822154c81f6ecbc2fbc3d5dfe903a4c30436da4d36db19047f2be960dfda0"),
        ("diffusers.models.transformers.transformer_hidream_image.HiDreamImageTransformerBlock.forward", "a6997e292228f0bddaadc1c82dacdab4f3ce081ca61ad3d86d2f6844f2a4c8ce"),
        (
            "diffusers.models.transformers.transformer_hidream_image.HiDreamImageTransformer2DModel.forward",
            (  # diffusers 0.42.1 (= 0.41.0); 0.38.0 and 0.39.0/0.40.0 differ only in deprecated-argument handling
                "056ce1bfe2155b89db463cae14c35e727a5d0f70e592d36570df0e6ec5fede33",
                "cfca5057c22b7ffa3929a56206fa39a41b4fe12f84ae3c91989a8ebb5bf8d30b",
                "af9b6dfb07a66bf3312a301b6856c99c2fe5eb7822d585ba206678d09f7cc1b1",
            ),
        ),
    )
    COPIES_STOCK = False

    def __call__(
        self,
        attn: nn.Module,
        hidden_states: torch.Tensor,
        hidden_states_masks: torch.Tensor | None = None,
        encoder_hidden_states: torch.Tensor | None = None,
        image_rotary_emb: torch.Tensor | None = None,
        *args: Any,
        **kwargs: Any,
    ) -> Any:
        if encoder_hidden_states is None or not self.session.needs_concepts():
            return self.original(attn, hidden_states, hidden_states_masks, encoder_hidden_states, image_rotary_emb, *args, **kwargs)
        outputs, sink = self._run_on_projection_view(
            attn, HIDREAM_TAPS, ("to_out",), "hidream_image",
            hidden_states, hidden_states_masks, encoder_hidden_states, image_rotary_emb, *args, **kwargs,
        )
        self._concept_branch(attn, sink, hidden_states, hidden_states_masks, image_rotary_emb)
        return outputs

    def _conditioning(self) -> torch.Tensor:
        """The concepts' modulation input ``[B, d]``: the block's ``temb``, or (``"null_pooled"``) the timestep
        embedding plus ``p_embedder`` of a zero pooled vector."""
        session, transformer = self.session, self._transformer()
        assert session.call is not None and transformer is not None
        temb = captured_block_input(session, HIDREAM_TEMB_KEY, "The modulation input (temb) of the double block")
        if session.config.concept_conditioning == "prompt":
            return temb
        inputs = session.call.inputs
        pooled = torch.zeros_like(inputs["pooled_embeds"]).to(temb.dtype)
        return transformer.t_embedder(inputs["timesteps"], temb.dtype) + transformer.p_embedder(pooled)  # [B, d]

    def _initial_concepts(self, like: torch.Tensor) -> torch.Tensor:
        """The concepts' residual stream ``[B, 2C, d]`` (T5 tokens, then last-Llama-layer tokens); stashes every
        double block's projected Llama-layer tokens."""
        session, transformer = self.session, self._transformer()
        assert transformer is not None
        t5, llama, layers = hidream_concept_widths(transformer)
        embeds = session.concept_embeds
        if embeds.shape[-1] != t5 + layers * llama:
            raise AdapterInputError(
                f"HiDream-I1 concept embeddings must be [C, {t5} + {layers}·{llama}] = [C, {t5 + layers * llama}] "
                f"(T5 state, then one state per tapped Llama layer); got width {embeds.shape[-1]}."
            )
        embeds = embeds.to(device=like.device, dtype=like.dtype)
        features = embeds[:, t5:].unflatten(-1, (layers, llama))  # [C, n·D_llama] -> [C, n, D_llama]
        projections = transformer.caption_projection
        initial = torch.cat(
            [projections[-1](embeds[:, :t5]), projections[layers - 1](features[:, -1])], dim=0
        )  # [2C, d]: T5 tokens, last-Llama-layer tokens (the model's order)
        num_double = len(transformer.double_stream_blocks)
        stash_block_features(session, projections, features[:, :num_double], like.shape[0])
        return initial.unsqueeze(0).expand(like.shape[0], -1, -1)  # [2C, d] -> [B, 2C, d]

    def _concept_branch(
        self,
        attn: nn.Module,
        sink: dict[str, torch.Tensor],
        hidden_states: torch.Tensor,
        masks: torch.Tensor | None,
        rotary: torch.Tensor,
    ) -> None:
        session = self.session
        call, wrapper = session.call, self._block()
        assert call is not None and wrapper is not None
        block = wrapper.block
        dtype = hidden_states.dtype
        if call.concept_hidden_states is None:
            call.concept_hidden_states = self._initial_concepts(hidden_states)
        residual = call.concept_hidden_states  # [B, 2C, d]
        concepts = torch.cat([residual, next_block_features(session)], dim=1)  # [B, 3C, d]
        modulation = block.adaLN_modulation(self._conditioning())[:, None].chunk(12, dim=-1)  # 12 x [B, 1, d]
        shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = modulation[6:]
        normed = block.norm1_t(concepts).to(dtype) * (1 + scale_msa) + shift_msa  # [B, 3C, d]

        heads = attn.heads
        concept_query = attn.q_rms_norm_t(attn.to_q_t(normed)).to(dtype).unflatten(-1, (heads, -1))  # [B, 3C, H, D]
        concept_key = attn.k_rms_norm_t(attn.to_k_t(normed)).to(dtype).unflatten(-1, (heads, -1))  # [B, 3C, H, D]
        concept_value = attn.to_v_t(normed).unflatten(-1, (heads, -1))  # [B, 3C, H, D]
        image_query = sink["q_rms_norm"].to(dtype).unflatten(-1, (heads, -1))  # [B, I, H, D]
        image_key = sink["k_rms_norm"].to(dtype).unflatten(-1, (heads, -1))  # [B, I_pad, H, D]
        if masks is not None:  # padding rows of a non-square image: zero keys, as the processor makes them
            image_key = image_key * masks.view(masks.shape[0], -1, 1, 1)  # [B, I_pad] -> [B, I_pad, 1, 1]
        image_value = sink["to_v"].unflatten(-1, (heads, -1))  # [B, I_pad, H, D]
        image_query, image_key = _rotate(image_query, image_key, rotary[:, : image_key.shape[1]])
        real = session.call.inputs["image_tokens"]  # the h·w patches before the padding
        image_output = sink["to_out"][:, :real]  # [B, I, H·D], before to_out

        # concept tokens carry text id 0: their rotation is the identity
        concept_output = concept_attention(
            concept_query, concept_key, concept_value, image_key, image_value,
            session.config.concept_attention, self._attend,
        ).flatten(2, 3).to(image_output.dtype)  # [B, 3C, H·D]

        def per_concept(tensor: torch.Tensor) -> torch.Tensor:  # [B, 3C, ...] -> [B, C, ...]: mean of its 3 tokens
            return tensor.unflatten(1, (3, -1)).mean(1)  # [B, 3C, ...] -> [B, 3, C, ...] -> [B, C, ...]

        self._record_scores(
            concept_output=per_concept(concept_output),
            image_output=image_output,
            image_query=image_query[:, :real],
            concept_key=per_concept(concept_key),
            image_value=image_value[:, :real],
            concept_value=per_concept(concept_value),
        )
        concepts = gate_msa * attn.to_out_t(concept_output) + concepts
        normed = block.norm3_t(concepts).to(dtype) * (1 + scale_mlp) + shift_mlp
        concepts = gate_mlp * block.ff_t(normed) + concepts
        call.concept_hidden_states = concepts[:, : residual.shape[1]]  # the layer-k tokens are dropped, as the text's


def _rotate(query: torch.Tensor, key: torch.Tensor, rotary: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """HiDream's RoPE on image queries/keys ``[B, I, H, D]`` with the image rows of the table, on the whole head or
    (when the table is narrower) its first half, as ``HiDreamAttnProcessor`` applies it."""
    if query.shape[-1] == rotary.shape[-3] * 2:
        return apply_rope(query, key, rotary)
    query_1, query_2 = query.chunk(2, dim=-1)
    key_1, key_2 = key.chunk(2, dim=-1)
    query_1, key_1 = apply_rope(query_1, key_1, rotary)
    return torch.cat([query_1, query_2], dim=-1), torch.cat([key_1, key_2], dim=-1)


class HiDreamImageAdapter(ConceptAdapter):
    """Adapter for HiDream-I1 (``HiDreamImageTransformer2DModel``, ``HiDreamImagePipeline``): the double-stream
    blocks; single-stream blocks are not used.

    Example:
        >>> from conceptattention.adapters import get_adapter
        >>> from conceptattention.testing import tiny_hidream_image_transformer
        >>> get_adapter(tiny_hidream_image_transformer()).name
        'hidream_image'
    """

    name = "hidream_image"
    blocks_attribute = "double_stream_blocks"
    attention_attribute = "block.attn1"  # inside the HiDreamBlock wrapper (for messages)
    processor_class = HiDreamConceptAttnProcessor
    stock_processor_class = HiDreamAttnProcessor
    stock_processor_remedy = "a custom processor is installed: restore `HiDreamAttnProcessor()` on each attn1."
    transformer_classes = ("HiDreamImageTransformer2DModel",)
    pipeline_classes = ("HiDreamImagePipeline",)
    modality = "image"
    official_default_layers = "last 4 double-stream blocks (HiDream-I1: 12-15; no official choice)"
    fused_qkv = "not offered by diffusers (HiDreamAttention cannot be fused)"
    tested = (
        "adapter battery + naive reference (three tokens per concept, per-block Llama layer); tiny offline "
        "pipeline with batched CFG (four text encoders); concept encoding checked against the pipeline's own "
        "encoders; square and padded non-square images; no explain path yet"
    )

    def attention_module(self, block: nn.Module) -> nn.Module:
        """``HiDreamBlock`` wraps the double-stream block: its ``block.attn1``."""
        return block.block.attn1

    def check_model(self, transformer: nn.Module) -> None:
        super().check_model(transformer)
        if len(transformer.config.llama_layers) < len(transformer.double_stream_blocks):
            raise UnsupportedSetupError("HiDream-I1: fewer tapped Llama layers than double-stream blocks.")

    def capture_call(self, transformer: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> dict[str, Any]:
        names = (
            "hidden_states", "timesteps", "encoder_hidden_states_t5", "encoder_hidden_states_llama3",
            "pooled_embeds", "img_ids", "img_sizes", "hidden_states_masks",
        )
        bound = bind_call(type(transformer).__name__, names, args, kwargs, required=("hidden_states", "timesteps", "pooled_embeds"))
        latents = bound["hidden_states"]
        if latents.ndim == 4:  # [B, c, H, W]: the model patchifies (and pads when H != W)
            patch = transformer.config.patch_size
            grid = (latents.shape[-2] // patch, latents.shape[-1] // patch)
        else:  # already patchified and padded: [B, max_seq, p²c] with img_sizes [B, 2]
            img_sizes = bound.get("img_sizes")
            sizes = {tuple(int(size) for size in row) for row in ([] if img_sizes is None else img_sizes)}
            if len(sizes) != 1:
                raise UnsupportedSetupError(
                    "ConceptAttention needs one image size per HiDream-I1 call (img_sizes); got "
                    f"{sorted(sizes) or 'none'}."
                )
            grid = sizes.pop()
        return {
            "timesteps": bound["timesteps"],
            "pooled_embeds": bound["pooled_embeds"],
            "grid": grid,
            "image_tokens": grid[0] * grid[1],
            **call_latents(latents),
        }

    def install_hooks(self, transformer: nn.Module, session: ConceptSession) -> list[Any]:
        """Block pre-hooks that hand each double block's ``temb`` to its processor."""
        return block_input_grabbers(self.joint_blocks(transformer), session, "temb", HIDREAM_TEMB_KEY)

    def token_grid(self, call_inputs: dict[str, Any], num_image_tokens: int) -> tuple[int, int, int]:
        height, width = call_inputs["grid"]
        if height * width != num_image_tokens:
            raise AdapterInputError(f"Cannot arrange {num_image_tokens} image tokens on the {height}x{width} patch grid.")
        return 1, height, width

    def size_multiple(self, pipeline: Any) -> int:
        return int(getattr(pipeline, "vae_scale_factor", 8)) * 2

    def cfg_batch_slice(self, batch_size: int, call_inputs: dict[str, Any], pipeline: Any | None) -> slice:
        """The conditional half of ``HiDreamImagePipeline``'s batched ``[uncond, cond]`` guidance call."""
        return guidance_half_slice(
            batch_size, call_inputs, pipeline_guidance_on(pipeline, "do_classifier_free_guidance"), pipeline
        )

    def encode_concepts(
        self, pipeline: Any, concepts: Sequence[str], pooling: ConceptPooling, device: torch.device | None = None
    ) -> torch.Tensor:
        """Each concept's T5 state and its state in every tapped Llama layer, from the pipeline's own T5 and Llama
        encoders (masked batches), pooled over the concept's own tokens: ``[C, D_t5 + n·D_llama]``."""
        needed = ("tokenizer_3", "text_encoder_3", "tokenizer_4", "text_encoder_4", "transformer")
        if any(getattr(pipeline, name, None) is None for name in needed):
            raise AdapterInputError(
                "This HiDream-I1 pipeline lacks its T5 or Llama encoder (tokenizer_3/text_encoder_3, "
                "tokenizer_4/text_encoder_4) to encode concepts; pass `concept_embeds=` (a [C, D_t5 + n·D_llama] "
                "tensor) instead."
            )
        device = device or getattr(pipeline, "_execution_device", None) or pipeline.text_encoder_4.device
        llama_layers = list(getattr(pipeline.transformer, "_orig_mod", pipeline.transformer).config.llama_layers)
        t5_limit = pipeline.tokenizer_3.model_max_length
        rows = [encode_masked_concepts(pipeline.tokenizer_3, pipeline.text_encoder_3, concepts, pooling, device, t5_limit)]
        tokenizer = pipeline.tokenizer_4
        special = (tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id)
        ids, mask, content = tokenize_concepts(tokenizer, concepts, tokenizer.model_max_length, special)
        with torch.no_grad():
            outputs = pipeline.text_encoder_4(ids.to(device), attention_mask=mask.to(device), output_hidden_states=True)
        states = outputs.hidden_states[1:]  # L x [C, T, D_llama], as the pipeline takes them
        rows += [pool_token_states(states[index], content.to(device), pooling) for index in llama_layers]
        return torch.cat([row.to(rows[0].dtype) for row in rows], dim=-1)  # [C, D_t5 + n·D_llama]


__all__ = ["HiDreamConceptAttnProcessor", "HiDreamImageAdapter", "hidream_concept_widths"]
