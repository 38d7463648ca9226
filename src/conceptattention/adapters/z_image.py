"""Z-Image adapter (``ZImageTransformer2DModel``, ``ZImagePipeline``): the single-stream extension, beyond the paper
— docs/models.md.

Z-Image is single-stream: after separate refiners (``noise_refiner`` for the image patches, ``context_refiner`` for the
caption), every main block (``layers``) runs the sequence ``[image, caption]`` through ONE set of weights (``attention``,
``feed_forward``, four RMSNorms) and ONE modulation: ``adaLN_modulation(adaln_input)`` with ``adaln_input`` the timestep
embedding, identical for image and caption tokens (basic mode; the caption refiner has no modulation at all). There is
no text stream to borrow, so the paper's method does not apply as published. The extension follows the paper's recipe
with the caption tokens' treatment:

* concept embeddings (``[C, cap_feat_dim]``) go through ``cap_embedder`` and the ``context_refiner`` blocks like a
  caption (the concepts attend to each other there, never to the prompt), all at the first caption position
  ``(1, 0, 0)`` (so the concepts are permutation-equivariant and rotate like the caption's first token);
* in every main block the concepts take the caption tokens' modulation (which is the image's: Z-Image has one), the
  shared weights and QK-norm, RoPE at their position, and attend one-way to the real image tokens (not the image's
  padding to a multiple of 32) and to each other; image and caption never see them, so the output is bit-identical;
* they keep their own residual stream (``x + tanh(gate)·norm2(attn)``, then the feed-forward), as the block updates
  every token;
* maps in the attention-output space (concept output · image output before ``to_out[0]``), and in the
  cross-attention and value spaces.

Capture (no copied diffusers code): diffusers' ``ZSingleStreamAttnProcessor`` runs untouched on a
:class:`~conceptattention.adapters.processor.AttentionView` of the attention module whose taps keep the QK-normed keys (and,
for the cross-attention space, queries) before RoPE, the values and the attention output before ``to_out[0]``; eagerly
the concept branch takes the real image rows of the tensors the processor hands to the attention dispatcher (after
QK-norm and RoPE; :mod:`~conceptattention.adapters.attention_inputs`), while compiling it re-applies the image RoPE to
the tapped rows exactly as the processor does. The block's ``adaln_input``
is taken by a block pre-hook. The real-image path noises the VAE latents (rectified flow) and runs one batched call.
Omni mode (nested ``x`` lists, SigLIP features, per-token noisy/clean modulation) is
refused. Classifier-free guidance is one batched call ``[cond, uncond]``; the conditional half is reported.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from diffusers.models.transformers.transformer_z_image import ZSingleStreamAttnProcessor
from torch import nn

from ..config import ConceptPooling
from ..encoding import pool_token_states
from .attention_inputs import DISPATCH_FINGERPRINTS, DISPATCH_SOURCE, image_rows, keep_attention_inputs
from .base import (
    AdapterInputError,
    ConceptAdapter,
    UnsupportedSetupError,
    bind_call,
    block_input_grabbers,
    captured_block_input,
)
from .processor import ConceptProcessorMixin
from .qk_norm import RMS_NORM_FINGERPRINTS, RMS_NORM_SOURCE, paired_rms_norm
from .real_images import ExplainBatch, ExplainRequest, area_resolution, flow_noised, image_pixels


#: Key of ``session.call.inputs`` under which the block pre-hook stores the running block's ``adaln_input``.
BLOCK_ADALN_KEY = "z_image_adaln_input"
#: Key of ``session.call.inputs`` holding the concepts' rotary frequencies ``[C, D/2]`` (complex), built once per call.
CONCEPT_FREQS_KEY = "z_image_concept_freqs"
#: RoPE position id of every concept token: the caption's first position (captions start at ``(1, 0, 0)``).
CONCEPT_POSITION = (1, 0, 0)


def rotate(x: torch.Tensor, freqs_cis: torch.Tensor) -> torch.Tensor:
    """Z-Image's rotary embedding (interleaved pairs as complex numbers), as ``ZSingleStreamAttnProcessor`` applies it.

    Args:
        x: ``[B, S, H, D]``.
        freqs_cis: ``[B, S, D/2]`` complex (or ``[1, S, D/2]``, broadcast over the batch).

    Returns:
        ``[B, S, H, D]`` in ``x``'s dtype.

    Example:
        >>> x = torch.randn(1, 3, 2, 4)
        >>> torch.equal(rotate(x, torch.ones(1, 3, 2, dtype=torch.complex64)), x)
        True
    """
    pairs = torch.view_as_complex(x.float().reshape(*x.shape[:-1], -1, 2))  # [B, S, H, D/2]
    return torch.view_as_real(pairs * freqs_cis.unsqueeze(2)).flatten(3).type_as(x)  # [B, S, H, D]


class ZImageConceptAttnProcessor(ConceptProcessorMixin):
    """Z-Image main-block processor: runs diffusers' ``ZSingleStreamAttnProcessor`` untouched on a
    :class:`~conceptattention.adapters.processor.AttentionView` of ``attention`` and advances the concept stream beside it
    (the caption tokens' modulation and the shared weights).

    The view keeps the ``norm_k`` (and, for the cross-attention space, ``norm_q``) outputs ``[B, S, H, D]`` (before
    RoPE), the ``to_v`` output ``[B, S, H·D]`` and the ``to_out[0]`` input ``[B, S, H·D]``, with ``S`` the unified
    sequence ``[image (padded to 32), caption (padded to 32), batch padding]``.

    Args:
        session: The shared run state.
        layer: Index of this block among ``transformer.layers``.
        block: The ``ZImageTransformerBlock`` (held weakly; its norms, modulation and feed-forward are used).
        transformer: The ``ZImageTransformer2DModel`` (held weakly; ``cap_embedder``, ``context_refiner`` and
            ``rope_embedder`` build the concept tokens).
        original: The processor being replaced; it computes the attention of the sequence.

    Example:
        >>> from conceptattention import ConceptAttention
        >>> from conceptattention.testing.z_image import tiny_z_image_inputs, tiny_z_image_transformer
        >>> model = tiny_z_image_transformer()
        >>> with ConceptAttention(model, concept_embeds=torch.randn(2, 16)) as ca:
        ...     _ = model(**tiny_z_image_inputs())
        >>> ca.maps.tensor.shape
        torch.Size([2, 1, 4, 6])
    """

    #: the diffusers code it runs through the view (its capture points) and the block whose update the concept branch
    #: mirrors, fingerprinted on diffusers 0.42.1 (normalised AST, sha256; tests/adapters/test_zoo_drift.py)
    STOCK_SOURCES = (
        (
            "diffusers.models.transformers.transformer_z_image.ZSingleStreamAttnProcessor.__call__",
            "e12018aedd9aba84bcdd74f33b49cbb368f91e97db34e691dcfc40631613eb74",
        ),
        (
            "diffusers.models.transformers.transformer_z_image.ZImageTransformerBlock.forward",
            (  # diffusers 0.42.1, 0.38.0, 0.39.0, 0.40.0, 0.41.0, re-checked: only annotations/reshapes/GQA kernel choice differ
                "3ea2807a06e0fc192e74d2f92abe9f0bde124702675f10f39a4d10c46575c91f",
                "2e27b8a2440df8575bd160f7f5756751ccb381c6ed90a2650e89d43616cf1a48",
            ),
        ),
        (DISPATCH_SOURCE, DISPATCH_FINGERPRINTS),  # where the joint attention inputs are kept
        (RMS_NORM_SOURCE, RMS_NORM_FINGERPRINTS),  # the concept QK-norm mirrors it (qk_norm.py)
    )
    COPIES_STOCK = False

    def __call__(
        self,
        attn: nn.Module,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        freqs_cis: torch.Tensor | None = None,
    ) -> torch.Tensor:
        if not self.session.needs_concepts():
            return self.original(attn, hidden_states, encoder_hidden_states, attention_mask, freqs_cis)
        taps = self._space_taps("norm_k", "to_v")
        args = (hidden_states, encoder_hidden_states, attention_mask, freqs_cis)
        kept: dict[str, torch.Tensor] = {}
        with keep_attention_inputs(self.original, kept):  # the joint query/key/value after RoPE, when available
            output, sink = self._run_on_view(attn, taps, "z_image", *args)
        sink.update(kept)
        self._concept_branch(attn, sink, hidden_states, freqs_cis)
        return output

    def _concept_tokens_refined(self, like: torch.Tensor, transformer: nn.Module) -> torch.Tensor:
        """The concepts through ``cap_embedder`` and the ``context_refiner`` blocks (stock modules; the concepts form
        one caption-like sequence at :data:`CONCEPT_POSITION`): ``[B, C, d]``."""
        embeds = self.session.concept_embeds.to(device=like.device, dtype=like.dtype)  # [C, D_text]
        concepts = transformer.cap_embedder(embeds).unsqueeze(0)  # [1, C, d]
        freqs = self._concept_freqs(transformer, concepts.shape[1], like.device).unsqueeze(0)  # [1, C, D/2]
        for refiner in transformer.context_refiner:
            concepts = refiner(concepts, None, freqs)  # [1, C, d]
        return concepts.expand(like.shape[0], -1, -1)  # [B, C, d]

    def _concept_freqs(self, transformer: nn.Module, count: int, device: torch.device) -> torch.Tensor:
        """Rotary frequencies of the concepts, ``[C, D/2]`` complex (cached for the call)."""
        call = self.session.call
        assert call is not None
        freqs = call.inputs.get(CONCEPT_FREQS_KEY)
        if freqs is None:
            ids = torch.tensor([CONCEPT_POSITION], dtype=torch.int32, device=device).repeat(count, 1)  # [C, 3]
            freqs = call.inputs[CONCEPT_FREQS_KEY] = transformer.rope_embedder(ids)  # [C, D/2]
        return freqs

    def _concept_branch(
        self, attn: nn.Module, sink: dict[str, torch.Tensor], like: torch.Tensor, freqs_cis: torch.Tensor | None
    ) -> None:
        session, block, transformer = self.session, self._block(), self._transformer()
        call = session.call
        assert call is not None and block is not None and transformer is not None
        adaln_input = captured_block_input(session, BLOCK_ADALN_KEY, "The adaln_input of the Z-Image block")
        if call.concept_hidden_states is None:
            call.concept_hidden_states = self._concept_tokens_refined(like, transformer)
        concepts = call.concept_hidden_states  # [B, C, d]
        num_image = call.inputs["num_image_tokens"]
        concept_freqs = self._concept_freqs(transformer, concepts.shape[1], concepts.device).unsqueeze(
            0
        )  # [1, C, D/2]

        # the block's modulation, which Z-Image applies to every token (caption and image alike)
        scale_msa, gate_msa, scale_mlp, gate_mlp = block.adaLN_modulation(adaln_input).unsqueeze(1).chunk(4, dim=2)
        gate_msa, gate_mlp = gate_msa.tanh(), gate_mlp.tanh()  # [B, 1, d] each
        normed = block.attention_norm1(concepts) * (1.0 + scale_msa)  # [B, C, d]
        # [B, C, H·D] -> [B, C, H, D], QK-normed and rotated at the concepts' position
        concept_query, concept_key = paired_rms_norm(  # QK-norm of both in one pass (qk_norm.py), [B, C, H, D] each
            attn.norm_q,
            attn.norm_k,
            attn.to_q(normed).unflatten(-1, (attn.heads, -1)),  # [B, C, H·D] -> [B, C, H, D]
            attn.to_k(normed).unflatten(-1, (attn.heads, -1)),  # [B, C, H·D] -> [B, C, H, D]
        )
        concept_query, concept_key = rotate(concept_query, concept_freqs), rotate(concept_key, concept_freqs)
        concept_value = attn.to_v(normed).unflatten(-1, (attn.heads, -1))  # [B, C, H, D]
        # the real image rows (the unified sequence starts with them; its image padding is left out), rotated as the
        # processor rotated them
        image_output = sink["to_out"][:, :num_image]  # [B, I, H·D], before to_out[0]
        kept = image_rows(sink, None, num_image)  # eagerly: views of the joint [image, caption, padding] rows
        if kept is not None:
            image_query, image_key, image_value = kept  # [B, I, H, D] each, after QK-norm and RoPE
        else:  # compiling: RoPE re-applied to the tapped rows (the compiler fuses it)
            image_freqs = None if freqs_cis is None else freqs_cis[:, :num_image]  # [B, I, D/2]
            image_key = sink["norm_k"][:, :num_image]  # [B, I, H, D]
            image_key = image_key if image_freqs is None else rotate(image_key, image_freqs)
            image_value = sink["to_v"][:, :num_image].unflatten(-1, (attn.heads, -1))  # [B, I, H, D]
            image_query = None
            if "norm_q" in sink:
                image_query = sink["norm_q"][:, :num_image]  # [B, I, H, D]
                image_query = image_query if image_freqs is None else rotate(image_query, image_freqs)
        concept_output = self._attend_and_record(  # [B, C, H·D], or None: nothing later has to run
            concept_query, concept_key, concept_value, image_key, image_value, image_output, image_query
        )
        if concept_output is None:
            return
        # advance the concept residual stream as ZImageTransformerBlock advances every token
        projected = attn.to_out[0](concept_output)  # [B, C, d]
        if len(attn.to_out) > 1:
            projected = attn.to_out[1](projected)
        concepts = concepts + gate_msa * block.attention_norm2(projected)
        mlp = block.feed_forward(block.ffn_norm1(concepts) * (1.0 + scale_mlp))  # [B, C, d]
        call.concept_hidden_states = concepts + gate_mlp * block.ffn_norm2(mlp)


class ZImageAdapter(ConceptAdapter):
    """Adapter for Z-Image text-to-image (``ZImageTransformer2DModel``, ``ZImagePipeline``): the single-stream
    extension of ConceptAttention (beyond the paper; see the module docstring and docs/models.md).

    Example:
        >>> from conceptattention.adapters import get_adapter
        >>> from conceptattention.testing.z_image import tiny_z_image_transformer
        >>> get_adapter(tiny_z_image_transformer()).name
        'z_image'
    """

    name = "z_image"
    blocks_attribute = "layers"
    attention_attribute = "attention"
    processor_class = ZImageConceptAttnProcessor
    stock_processor_class = ZSingleStreamAttnProcessor
    stock_processor_remedy = "a custom processor is installed: set `ZSingleStreamAttnProcessor()` back on each block."
    transformer_classes = ("ZImageTransformer2DModel",)
    pipeline_classes = ("ZImagePipeline",)
    modality = "image"
    fused_qkv = "accepted per module (the stock processor ignores fusion)"
    official_default_layers = "last 4 main blocks (Z-Image-Turbo: 26-29; no official choice)"
    tested = (
        "single-stream extension (beyond the paper): adapter battery + naive float64 reference (one masked attention "
        "over [image, caption, concepts]); tiny offline pipeline with CFG; concept encoding checked against the "
        "pipeline's prompt encoding; explain path"
    )

    def check_model(self, transformer: nn.Module) -> None:
        for block in self.joint_blocks(transformer):
            attention = block.attention
            if attention.norm_q is None or attention.norm_k is None or not block.modulation:
                raise UnsupportedSetupError(
                    "This Z-Image transformer has no QK-norm or no modulation in its main blocks, where "
                    "ConceptAttention takes the image keys and the concept modulation; only the released "
                    "configuration (qk_norm=True) is supported."
                )
        super().check_model(transformer)

    def install_hooks(self, transformer: nn.Module, session: Any) -> list[Any]:
        """Block pre-hooks that hand each main block's ``adaln_input`` to its processor."""
        return block_input_grabbers(self.joint_blocks(transformer), session, "adaln_input", BLOCK_ADALN_KEY)

    def capture_call(self, transformer: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> dict[str, Any]:
        names = (
            "x",
            "t",
            "cap_feats",
            "return_dict",
            "controlnet_block_samples",
            "siglip_feats",
            "image_noise_mask",
            "patch_size",
            "f_patch_size",
        )
        bound = bind_call("ZImageTransformer2DModel", names, args, kwargs, required=("x", "t", "cap_feats"))
        images = bound["x"]
        if any(isinstance(image, list | tuple) for image in images) or bound.get("siglip_feats") is not None:
            raise UnsupportedSetupError(
                "Z-Image was called in omni mode (lists of images per sample, SigLIP features, per-token noisy/clean "
                "modulation); ConceptAttention supports the basic text-to-image mode (ZImagePipeline) only."
            )
        sizes = {tuple(image.shape[1:]) for image in images}
        if len(sizes) != 1:
            raise UnsupportedSetupError(
                f"Z-Image was called with images of different sizes {sorted(sizes)}; ConceptAttention needs one image "
                "size per call."
            )
        frames, height, width = sizes.pop()
        patch, frame_patch = int(bound.get("patch_size") or 2), int(bound.get("f_patch_size") or 1)
        grid = (frames // frame_patch, height // patch, width // patch)
        return {
            "timestep": bound["t"],
            "grid": grid,
            "num_image_tokens": grid[0] * grid[1] * grid[2],
            "batch_size": len(images),  # the latents come as a list: read by capture.py for the CFG half
        }

    def token_grid(self, call_inputs: dict[str, Any], num_image_tokens: int) -> tuple[int, int, int]:
        frames, height, width = call_inputs["grid"]
        if frames * height * width != num_image_tokens:
            raise AdapterInputError(f"Cannot arrange {num_image_tokens} image tokens on the {height}x{width} latent grid.")
        return frames, height, width

    def size_multiple(self, pipeline: Any) -> int:
        return int(getattr(pipeline, "vae_scale_factor", 8)) * 2

    def cfg_batch_slice(self, batch_size: int, call_inputs: dict[str, Any], pipeline: Any | None) -> slice:
        """``ZImagePipeline`` batches guidance as ``[cond, uncond]``: the first half while guidance applies to the
        call (off when ``guidance_scale`` is 0, and on the steps that ``cfg_truncation`` excludes: the model time
        ``t = (1000 - timestep) / 1000`` above the truncation)."""
        if pipeline is None or not getattr(pipeline, "do_classifier_free_guidance", False) or batch_size % 2:
            return slice(None)
        truncation = getattr(pipeline, "_cfg_truncation", None)
        timestep = call_inputs["timestep"]
        if (
            truncation is not None and float(truncation) <= 1 and float(timestep.reshape(-1)[0]) > float(truncation)
        ):  # [B] -> t
            return slice(None)
        return slice(0, batch_size // 2)

    # ----- real images -------------------------------------------------------------------------------------------

    def explain_resolution(self, pipeline: Any, image_size: tuple[int, int]) -> tuple[int, int]:
        """About 1024² pixels (Z-Image's default size), aspect ratio kept, rounded to the size multiple."""
        multiple = self.size_multiple(pipeline)
        return area_resolution(image_size, 1024 * 1024, multiple)

    def explain_batch(self, pipeline: Any, image: Any, request: ExplainRequest) -> ExplainBatch:
        """One batched Z-Image call on the image: VAE latents (shifted and scaled as the pipeline unscales them),
        noised once per seed (rectified flow ``x_t = (1 - t)·x_0 + t·ε``; the model takes ``1 - t``, as the pipeline
        passes ``(1000 - timestep) / 1000``), the caption encoded by the pipeline (``guidance_scale`` and
        ``image_pooled`` do not apply)."""
        from PIL import Image

        if not isinstance(image, Image.Image):
            raise TypeError(f"The Z-Image explain path takes one PIL image, got {type(image).__name__}.")
        device = pipeline._execution_device
        vae, dtype = pipeline.vae, pipeline.transformer.dtype
        num = len(request.seeds)
        pixels = image_pixels(pipeline, image, request.height, request.width)  # [1, 3, H, W]
        with torch.no_grad():
            latents = vae.encode(pixels).latent_dist.mode()  # [1, c, h, w]
            latents = (latents - (vae.config.shift_factor or 0.0)) * vae.config.scaling_factor
            prompt_embeds, _ = pipeline.encode_prompt(
                request.caption, device=device, do_classifier_free_guidance=False
            )
        noised = flow_noised(latents, request, device).to(dtype)  # [N, c, h, w]
        kwargs = {
            "x": list(noised.unsqueeze(2).unbind(0)),  # N × [c, 1, h, w], as the pipeline passes them
            "t": torch.full((num,), 1.0 - request.noise_level, device=device, dtype=dtype),
            "cap_feats": [prompt_embeds[0].to(dtype)] * num,  # [L, D_text] each
            "return_dict": False,
        }
        return ExplainBatch(transformer_kwargs=kwargs, latent_shape=tuple(latents.shape))

    def encode_concepts(
        self, pipeline: Any, concepts: Sequence[str], pooling: ConceptPooling, device: torch.device | None = None
    ) -> torch.Tensor:
        """Each concept encoded exactly as the pipeline encodes a one-concept prompt (``_encode_prompt``: the chat
        template, the text encoder's second-to-last hidden states), pooled over the concept's own tokens:
        ``[C, cap_feat_dim]``.

        One call per concept, so a concept never depends on the others.
        """
        text_encoder = getattr(pipeline, "text_encoder", None)
        tokenizer = getattr(pipeline, "tokenizer", None)
        if text_encoder is None or tokenizer is None or not hasattr(pipeline, "_encode_prompt"):
            raise AdapterInputError(
                "This Z-Image pipeline has no text encoder or tokenizer to encode concepts; pass `concept_embeds=` "
                "(a [C, cap_feat_dim] tensor) instead."
            )
        device = device or getattr(pipeline, "_execution_device", None) or text_encoder.device
        rows = []
        for concept in concepts:
            templated = tokenizer.apply_chat_template(
                [{"role": "user", "content": concept}],
                tokenize=False,
                add_generation_prompt=True,
                enable_thinking=True,
            )
            ids = list(tokenizer(templated).input_ids)
            own = list(tokenizer(concept, add_special_tokens=False).input_ids)
            offsets = [i for i in range(len(ids) - len(own) + 1) if own and ids[i : i + len(own)] == own]
            if not offsets:
                raise AdapterInputError(f"Concept {concept!r} has no tokens of its own in the pipeline's chat template.")
            with torch.no_grad():
                states = pipeline._encode_prompt([concept], device=device)[0]  # [L, D_text], the unpadded tokens
            content = torch.zeros(1, states.shape[0], dtype=torch.bool, device=states.device)  # [1, L]
            content[0, offsets[0] : offsets[0] + len(own)] = True
            rows.append(pool_token_states(states[None], content, pooling)[0])  # [D_text]
        return torch.stack(rows)  # [C, D_text]


__all__ = ["ZImageAdapter", "ZImageConceptAttnProcessor", "rotate"]
