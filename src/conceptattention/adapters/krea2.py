"""Krea 2 adapter (``Krea2Transformer2DModel``): the single-stream extension, beyond the paper — docs/models.md.

Krea 2 is single-stream: the text (a stack of ``num_text_layers`` tapped text-encoder hidden states per token) is fused
by ``text_fusion`` (per-token blocks across the layer axis, a linear projector, then refiner blocks across the tokens;
no timestep) and projected by ``txt_in``; then every ``Krea2TransformerBlock`` runs ``[text, image]`` through one
``attn`` (grouped-query, RMS QK-norm, RoPE, a sigmoid output gate ``to_gate``) and one SwiGLU ``ff``, with ONE
modulation for every token: ``time_mod_proj(gelu(time_embed(t)))`` plus the block's ``scale_shift_table``. Text tokens
sit at RoPE position ``(0, 0, 0)``. The extension, as for Z-Image:

* concepts (``[C, num_text_layers·text_hidden_dim]``: each concept's stack of tapped states, flattened) go through
  ``text_fusion`` (as one caption-like sequence: the concepts attend to each other in its refiner blocks) and
  ``txt_in``;
* in every block they take the text tokens' modulation (the block's one modulation), the shared weights and the text's
  RoPE position (the first text row's, the identity for the pipeline's all-zero text ids), and attend one-way to the
  image tokens and to each other; text and image never see them, so the output is bit-identical;
* they keep their own residual stream;
* maps in the attention-output space: the gated attention outputs ``o · sigmoid(to_gate(x))`` that enter ``to_out[0]``
  (concept · image); cross-attention and value spaces per query head (key/value heads repeated as the processor does).

Capture (no copied diffusers code): ``Krea2AttnProcessor`` runs untouched on a
:class:`~conceptattention.adapters.processor.AttentionView` whose taps keep the gated output before ``to_out[0]`` (and
the QK-normed keys and queries before RoPE and the values); the image queries, keys and values are the image rows of
the tensors the processor hands to the attention dispatcher (after QK-norm, RoPE and the key/value head repeat;
:mod:`~conceptattention.adapters.attention_inputs`; while compiling, RoPE and the head repeat are re-applied to the
taps). The block's ``temb`` comes from a block pre-hook. Known gap:
``Krea2Pipeline`` runs classifier-free guidance as two plain calls (no ``cache_context``), so with guidance on the
unconditional call is recorded as a step too. The real-image path noises the packed VAE latents (rectified flow) and
runs one batched call.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from diffusers.models.embeddings import apply_rotary_emb
from diffusers.models.transformers.transformer_krea2 import Krea2AttnProcessor
from torch import nn

from ..config import ConceptPooling
from ..encoding import pool_token_states
from .attention_inputs import DISPATCH_FINGERPRINTS, DISPATCH_SOURCE, image_rows, keep_attention_inputs
from .base import AdapterInputError, ConceptAdapter, bind_call, block_input_grabbers, captured_block_input
from .guidance import SequentialCFGTwins, call_tensors
from .processor import ConceptProcessorMixin
from .real_images import ExplainBatch, ExplainRequest, area_resolution, flow_noised, image_pixels


#: Key of ``session.call.inputs`` under which the block pre-hook stores the running block's ``temb``.
BLOCK_TEMB_KEY = "krea2_block_temb"


class Krea2ConceptAttnProcessor(ConceptProcessorMixin):
    """Krea 2 block processor: runs diffusers' ``Krea2AttnProcessor`` untouched on a
    :class:`~conceptattention.adapters.processor.AttentionView` of ``attn`` and advances the concept stream beside it.

    The view keeps the ``norm_k`` (and, for the cross-attention space, ``norm_q``) outputs ``[B, T + I, H_kv, D]``
    (before RoPE), the ``to_v`` output ``[B, T + I, H_kv·D]`` and the ``to_out[0]`` input (the gated attention output
    ``[B, T + I, H·D]``). Eagerly the image queries, keys and values are the image rows of the joint tensors the
    processor handed to the attention dispatcher (``[B, T + I, H, D]``: RoPE applied, key/value heads repeated), so
    only the compiled path re-applies RoPE and the head repeat to the taps.

    Args:
        session: The shared run state.
        layer: Index of this block.
        block: The ``Krea2TransformerBlock`` (held weakly; its norms, table and ``ff`` are used).
        transformer: The ``Krea2Transformer2DModel`` (held weakly; ``text_fusion`` and ``txt_in`` embed the concepts).
        original: The processor being replaced; it computes the attention of the sequence.

    Example:
        >>> from conceptattention import ConceptAttention
        >>> from conceptattention.testing.krea2 import tiny_krea2_inputs, tiny_krea2_transformer
        >>> model = tiny_krea2_transformer()
        >>> with ConceptAttention(model, concept_embeds=torch.randn(2, 32)) as ca:
        ...     _ = model(**tiny_krea2_inputs())
        >>> ca.maps.tensor.shape
        torch.Size([2, 1, 4, 6])
    """

    #: the diffusers code it runs through the view and the block whose update the concept branch mirrors,
    #: fingerprinted on diffusers 0.42.1 (normalised AST, sha256; tests/adapters/test_zoo_drift.py)
    STOCK_SOURCES = (
        (
            "diffusers.models.transformers.transformer_krea2.Krea2AttnProcessor.__call__",
            (  # diffusers 0.42.1, 0.39.0, 0.40.0, 0.41.0, re-checked: only annotations/reshapes/GQA kernel choice differ
                "10b5a83aca96942366524f3f7ef8b9aa382264d3834bccaf7b54cfbab77b6b4c",
                "ea946977f547855440ebea2ee547d2ba75257260abcde62e31e5b85b4e7c7ae6",
            ),
        ),
        (
            "diffusers.models.transformers.transformer_krea2.Krea2TransformerBlock.forward",
            "d5dc094cc574731c7959d9df0aecbe642e5b05be16bea4589c83379d8f9358b5",
        ),
        (DISPATCH_SOURCE, DISPATCH_FINGERPRINTS),  # where the joint attention inputs are kept
    )
    COPIES_STOCK = False

    def __call__(
        self,
        attn: nn.Module,
        hidden_states: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        image_rotary_emb: tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> torch.Tensor:
        if not self.session.needs_concepts():
            return self.original(attn, hidden_states, attention_mask, image_rotary_emb)
        taps = self._space_taps("norm_k", "to_v")
        kept: dict[str, torch.Tensor] = {}
        with keep_attention_inputs(self.original, kept):  # the joint query/key/value after RoPE, when available
            output, sink = self._run_on_view(attn, taps, "krea2", hidden_states, attention_mask, image_rotary_emb)
        sink.update(kept)
        self._concept_branch(attn, sink, hidden_states, image_rotary_emb)
        return output

    def _concept_tokens_fused(self, like: torch.Tensor, transformer: nn.Module) -> torch.Tensor:
        """The concepts through ``text_fusion`` (one sequence) and ``txt_in``: ``[B, C, d]``."""
        config = transformer.config
        embeds = self.session.concept_embeds.to(device=like.device, dtype=like.dtype)  # [C, L·D_text]
        stack = embeds.unflatten(-1, (config.num_text_layers, config.text_hidden_dim)).unsqueeze(
            0
        )  # [1, C, L, D_text]
        concepts = transformer.txt_in(transformer.text_fusion(stack))  # [1, C, d]
        return concepts.expand(like.shape[0], -1, -1)  # [B, C, d]

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
        temb = captured_block_input(session, BLOCK_TEMB_KEY, "The temb of the Krea 2 block")
        if call.concept_hidden_states is None:
            call.concept_hidden_states = self._concept_tokens_fused(like, transformer)
        concepts = call.concept_hidden_states  # [B, C, d]
        num_image = call.inputs["num_image_tokens"]
        num_text = like.shape[1] - num_image
        groups = attn.num_heads // attn.num_kv_heads

        def heads(x: torch.Tensor, count: int) -> torch.Tensor:
            return x.unflatten(-1, (count, attn.head_dim))  # [B, S, count·D] -> [B, S, count, D]

        def rope(x: torch.Tensor, rows: slice) -> torch.Tensor:
            if rotary is None:
                return x
            return apply_rotary_emb(x, (rotary[0][rows], rotary[1][rows]), sequence_dim=1)

        def all_heads(x: torch.Tensor) -> torch.Tensor:
            return x.repeat_interleave(groups, dim=2) if groups > 1 else x  # [B, S, H_kv, D] -> [B, S, H, D]

        # the block's one modulation, which Krea 2 applies to every token (text and image alike)
        modulation = temb.unflatten(-1, (6, -1)) + block.scale_shift_table  # [B, 1, 6, d]
        prescale, preshift, pregate, postscale, postshift, postgate = modulation.unbind(-2)  # [B, 1, d] each
        normed = (1.0 + prescale) * block.norm1(concepts) + preshift  # [B, C, d]
        text_row = slice(0, 1)  # the concepts rotate as the first text row (position (0, 0, 0): the identity)
        concept_query = rope(attn.norm_q(heads(attn.to_q(normed), attn.num_heads)), text_row)  # [B, C, H, D]
        concept_key = all_heads(rope(attn.norm_k(heads(attn.to_k(normed), attn.num_kv_heads)), text_row))
        concept_value = all_heads(heads(attn.to_v(normed), attn.num_kv_heads))  # [B, C, H, D]
        image_output = sink["to_out"][:, num_text:]  # [B, I, H·D], gated, before to_out[0]
        kept = image_rows(sink, num_text)  # eagerly: views of the joint [text, image] rows
        if kept is not None:
            image_query, image_key, image_value = kept  # [B, I, H, D] each: RoPE applied, key/value heads repeated
        else:  # compiling: RoPE and the head repeat re-applied to the tapped rows (the compiler fuses them)
            rows = slice(num_text, None)
            image_key = all_heads(rope(sink["norm_k"][:, rows], rows))  # [B, I, H, D]
            image_value = all_heads(heads(sink["to_v"][:, rows], attn.num_kv_heads))  # [B, I, H, D]
            image_query = rope(sink["norm_q"][:, rows], rows) if "norm_q" in sink else None
        gate = torch.sigmoid(attn.to_gate(normed))  # [B, C, H·D]
        concept_output = self._attend_and_record(  # [B, C, H·D], gated, or None: nothing later has to run
            concept_query, concept_key, concept_value, image_key, image_value, image_output, image_query, gate
        )
        if concept_output is None:
            return
        # advance the concept residual stream as Krea2TransformerBlock advances every token
        concepts = concepts + pregate * attn.to_out[0](concept_output)
        mlp = block.ff((1.0 + postscale) * block.norm2(concepts) + postshift)  # [B, C, d]
        call.concept_hidden_states = concepts + postgate * mlp


class Krea2Adapter(SequentialCFGTwins, ConceptAdapter):
    """Adapter for Krea 2 (``Krea2Transformer2DModel``, ``Krea2Pipeline``): the single-stream extension of
    ConceptAttention (beyond the paper; see the module docstring and docs/models.md).

    Example:
        >>> from conceptattention.adapters import get_adapter
        >>> from conceptattention.testing.krea2 import tiny_krea2_transformer
        >>> get_adapter(tiny_krea2_transformer()).name
        'krea2'
    """

    name = "krea2"
    attention_attribute = "attn"
    processor_class = Krea2ConceptAttnProcessor
    stock_processor_class = Krea2AttnProcessor
    stock_processor_remedy = "a custom processor is installed: call `transformer.set_default_attn_processor()`."
    transformer_classes = ("Krea2Transformer2DModel",)
    pipeline_classes = ("Krea2Pipeline",)
    modality = "image"
    fused_qkv = "accepted (the stock processor ignores fusion)"
    official_default_layers = "last 4 blocks (Krea 2: 24-27; no official choice)"
    tested = (
        "single-stream extension (beyond the paper): adapter battery + naive float64 reference (one masked attention "
        "over [text, image, concepts]); tiny offline pipeline, bit-identical with and without CFG (its two-call CFG: "
        "only the conditional call recorded); concept encoding checked against the pipeline's prompt encoding; "
        "explain path"
    )

    def install_hooks(self, transformer: nn.Module, session: Any) -> list[Any]:
        """Block pre-hooks that hand each block's ``temb`` to its processor."""
        return block_input_grabbers(self.joint_blocks(transformer), session, "temb", BLOCK_TEMB_KEY)

    def capture_call(self, transformer: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> dict[str, Any]:
        names = ("hidden_states", "encoder_hidden_states", "timestep", "position_ids")
        bound = bind_call("Krea2Transformer2DModel", names, args, kwargs, required=names)
        num_image = bound["hidden_states"].shape[1]
        # the image ids (0, h, w) on the latent grid, [I, 3]: read (a host sync) only when the maps are built
        image_ids = bound["position_ids"][-num_image:]
        twins = call_tensors(bound["hidden_states"], bound["encoder_hidden_states"])  # true CFG: two calls per step
        return {"timestep": bound["timestep"], "image_ids": image_ids, "num_image_tokens": num_image, **twins}

    def token_grid(self, call_inputs: dict[str, Any], num_image_tokens: int) -> tuple[int, int, int]:
        image_ids = call_inputs["image_ids"]  # [I, 3]
        frames, height, width = 1, int(image_ids[:, 1].max()) + 1, int(image_ids[:, 2].max()) + 1
        if frames * height * width != num_image_tokens:
            raise AdapterInputError(f"Cannot arrange {num_image_tokens} image tokens on the {height}x{width} latent grid.")
        return frames, height, width

    def size_multiple(self, pipeline: Any) -> int:
        return int(getattr(pipeline, "vae_scale_factor", 8)) * int(getattr(pipeline, "patch_size", 2))

    # ----- real images -------------------------------------------------------------------------------------------

    def explain_resolution(self, pipeline: Any, image_size: tuple[int, int]) -> tuple[int, int]:
        """About 1024² pixels, aspect ratio kept, rounded to the size multiple."""
        multiple = self.size_multiple(pipeline)
        return area_resolution(image_size, 1024 * 1024, multiple)

    def explain_batch(self, pipeline: Any, image: Any, request: ExplainRequest) -> ExplainBatch:
        """One batched Krea 2 call on the image: VAE latents normalised as the pipeline denormalises them, noised
        once per seed (rectified flow, ``timestep = t`` as the pipeline passes ``sigma``), packed into 2×2 patches, the
        caption encoded by the pipeline and the pipeline's position ids (``guidance_scale``, ``image_pooled`` do not
        apply)."""
        from PIL import Image

        if not isinstance(image, Image.Image):
            raise TypeError(f"The Krea 2 explain path takes one PIL image, got {type(image).__name__}.")
        device = pipeline._execution_device
        vae, dtype = pipeline.vae, pipeline.transformer.dtype
        num = len(request.seeds)
        pixels = image_pixels(pipeline, image, request.height, request.width)  # [1, 3, H, W]
        with torch.no_grad():
            latents = vae.encode(pixels.unsqueeze(2)).latent_dist.mode()[:, :, 0]  # [1, z, h, w]
            mean = torch.tensor(vae.config.latents_mean, device=latents.device, dtype=latents.dtype)  # [z]
            std = torch.tensor(vae.config.latents_std, device=latents.device, dtype=latents.dtype)  # [z]
            latents = (latents - mean[:, None, None]) / std[:, None, None]
            prompt_embeds, prompt_mask = pipeline.encode_prompt(
                request.caption, device=device, num_images_per_prompt=num
            )
        noised = flow_noised(latents, request, device).to(dtype)  # [N, z, h, w]
        _, channels, height, width = noised.shape
        packed = pipeline._pack_latents(noised, num, channels, height, width)  # [N, I, z·p·p]
        patch = pipeline.patch_size
        ids = pipeline.prepare_position_ids(prompt_embeds.shape[1], height // patch, width // patch, device)
        kwargs = {
            "hidden_states": packed,
            "encoder_hidden_states": prompt_embeds.to(dtype),  # [N, T, K, D_text]
            "timestep": torch.full((num,), request.noise_level, device=device, dtype=dtype),
            "position_ids": ids,  # [T + I, 3]
            "encoder_attention_mask": prompt_mask,
            "return_dict": False,
        }
        return ExplainBatch(transformer_kwargs=kwargs, latent_shape=tuple(latents.shape))

    def encode_concepts(
        self, pipeline: Any, concepts: Sequence[str], pooling: ConceptPooling, device: torch.device | None = None
    ) -> torch.Tensor:
        """Each concept through the pipeline's own ``get_text_hidden_states`` (its template, tapped layers), pooled
        over the concept's own tokens and flattened: ``[C, num_text_layers·text_hidden_dim]``."""
        tokenizer = getattr(pipeline, "tokenizer", None)
        if tokenizer is None or not hasattr(pipeline, "get_text_hidden_states"):
            raise AdapterInputError(
                "This Krea 2 pipeline has no text encoder or tokenizer to encode concepts; pass `concept_embeds=` "
                "(a [C, num_text_layers·text_hidden_dim] tensor) instead."
            )
        prefix = pipeline.prompt_template_encode_prefix
        prefix_tokens = len(tokenizer(prefix).input_ids)
        start = prefix_tokens - pipeline.prompt_template_encode_start_idx  # the concept's first row in the states
        rows = []
        for concept in concepts:
            own = len(tokenizer(prefix + concept).input_ids) - prefix_tokens
            if own <= 0 or start < 0:
                raise AdapterInputError(f"Concept {concept!r} has no tokens of its own after the pipeline's template prefix.")
            with torch.no_grad():
                states, _ = pipeline.get_text_hidden_states([concept], device=device)  # [1, L_text, K, D_text]
            content = torch.zeros(1, states.shape[1], dtype=torch.bool, device=states.device)  # [1, L_text]
            content[0, start : start + own] = True
            pooled = pool_token_states(states.flatten(2), content, pooling)  # [1, K·D_text]
            rows.append(pooled[0])
        return torch.stack(rows)  # [C, K·D_text]


__all__ = ["Krea2Adapter", "Krea2ConceptAttnProcessor"]
