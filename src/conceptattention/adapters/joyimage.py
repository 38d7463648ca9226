"""JoyImage Edit and Edit Plus adapters (``JoyImageEdit[Plus]Transformer3DModel``, ``JoyImageEdit[Plus]Pipeline``) —
docs/models.md.

JoyImage Edit's ``JoyImageTransformerBlock`` is a two-stream block: a joint attention over ``[image, text]`` with the
text stream's own fused projection ``txt_attn_qkv``, QK RMS-norms ``txt_attn_{q,k}_norm`` and output projection
``txt_attn_proj``, its own Wan-style modulation ``txt_mod`` (a learned table plus the timestep projection), LayerNorms
``txt_norm{1,2}`` and MLP ``txt_mlp``. Concept tokens take exactly that path:

* **Concept input**: ``condition_embedder.text_embedder`` (the model's text projection) of the concept embeddings
  ``[C, text_dim]`` (Qwen3-VL states of the concept, as the pipeline's prompt features).
* **Modulation**: ``txt_mod`` of the block's ``temb`` (timestep only: no pooled text, so the two
  ``concept_conditioning`` options coincide), captured by a block pre-hook.
* **Positions**: with ``rope_type="rope"`` (the default) text has no RoPE, nor do concepts; with ``"mrope"`` text
  positions follow the visual grid, and every concept takes the first text position.
* **Editing**: the visual sequence holds the generated (target) image first, then the reference image(s) (the model
  moves the target, the last item of a multi-item input, to the front). Concepts attend to the **target** tokens
  (and each other) only, and the maps cover the target tokens only.

Capture: diffusers' ``JoyImageAttnProcessor`` runs untouched on a view of the attention module whose image-side
``img_attn_q_norm``, ``img_attn_k_norm`` (before RoPE), ``img_attn_qkv`` (values) leave their outputs and
``img_attn_proj`` its input (the image attention output before the projection) in a sink. Eagerly the target's
queries, keys and values are the target rows (the first of the ``[image, text]`` joint rows) of the tensors the
processor hands to the attention dispatcher, after QK-norm and RoPE (:mod:`~conceptattention.adapters.attention_inputs`);
while compiling, RoPE is re-applied to the tapped rows.
**JoyImage Edit Plus** (``JoyImageEditPlusTransformer3DModel``) has the same block under new names but packs each
sample's target, references and padding patches into one sequence (``shape_list``, a key mask over padding patches
and masked text, per-sample RoPE tables): the target comes first in every sample, so the same concept branch applies,
with the batched image RoPE and no text RoPE (:class:`JoyImageEditPlusAdapter`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import torch
from diffusers.models.transformers.transformer_joyimage import JoyImageAttnProcessor, _apply_rotary_emb
from diffusers.models.transformers.transformer_joyimage_edit_plus import (
    JoyImageEditPlusAttnProcessor,
    _apply_rotary_emb_batched,
)
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
from .guidance import (
    SequentialCFGTwins,
    call_latents,
    call_tensors,
    guidance_half_slice,
    pipeline_guidance_on,
)
from .processor import ConceptProcessorMixin


if TYPE_CHECKING:
    from ..session import ConceptSession

#: Key of ``session.call.inputs`` under which the block pre-hook stores the running block's ``temb``.
JOYIMAGE_TEMB_KEY = "joyimage_block_temb"
#: Image-side modules of ``JoyImageAttention`` whose outputs the concept branch takes (``img_attn_proj``: its input).
JOYIMAGE_TAPS = ("img_attn_q_norm", "img_attn_k_norm", "img_attn_qkv")
#: How ``JoyImageEditPlusPipeline`` wraps a prompt before its ``"multiple_images"`` template.
USER_TURN = "<|im_start|>user\n{}<|im_end|>\n"


class JoyImageConceptAttnProcessor(ConceptProcessorMixin):
    """JoyImage Edit block processor: ``JoyImageAttnProcessor`` untouched, concept branch beside it.

    Example:
        >>> from conceptattention import ConceptAttention
        >>> from conceptattention.testing import tiny_joyimage_inputs, tiny_joyimage_transformer
        >>> model = tiny_joyimage_transformer()
        >>> with ConceptAttention(model, concept_embeds=torch.randn(2, 16)) as ca:
        ...     _ = model(**tiny_joyimage_inputs())
        >>> ca.maps.tensor.shape
        torch.Size([2, 1, 4, 6])
    """

    #: the diffusers code it runs through the view (capture points), the block code whose text update it mirrors and
    #: the model code that puts the target image first, fingerprinted on diffusers 0.42.1 and re-checked on
    #: 0.39.0-0.41.0 (normalised AST, sha256; tests/adapters/test_zoo_drift.py)
    STOCK_SOURCES = (
        ("diffusers.models.transformers.transformer_joyimage.JoyImageAttnProcessor.__call__", "e814714b55c25ebfb60919b1c450ad4f03385326744fac053df00a9d2ba8d5fa"),
        ("diffusers.models.transformers.transformer_joyimage._apply_rotary_emb", "2d29bf6ce6e04aa1cd33f4730087acbc975f9ae189b22ea4f03817dbda7ab59d"),
        ("diffusers.models.transformers.transformer_joyimage.JoyImageTransformerBlock.forward", "a23d9284297b05399dbe7bad32cf567d5ff7beaf156812a28ed6755fd9b678ed"),
        (
            "diffusers.models.transformers.transformer_joyimage.JoyImageEditTransformer3DModel.forward",
            (  # diffusers 0.42.1 (= 0.41.0); 0.39.0/0.40.0 differ in the return annotation only
                "803c7e9eca96f4fba16988b0939fc391c8156d1da5b60189bd9bd8148a2080ca",
                "8ab2288d02b05e4f4edf020dca365a47f6818279b62f854427f298d26dcc3116",
            ),
        ),
        (DISPATCH_SOURCE, DISPATCH_FINGERPRINTS),  # where the joint attention inputs are kept
    )
    COPIES_STOCK = False

    def __call__(
        self,
        attn: nn.Module,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor | None = None,
        image_rotary_emb: Any = None,
        **kwargs: Any,
    ) -> Any:
        if encoder_hidden_states is None or not self.session.needs_concepts():
            return self.original(attn, hidden_states, encoder_hidden_states, image_rotary_emb, **kwargs)
        kept: dict[str, torch.Tensor] = {}
        with keep_attention_inputs(self.original, kept):  # the joint query/key/value after RoPE, when available
            outputs, sink = self._run_on_projection_view(
                attn, JOYIMAGE_TAPS, ("img_attn_proj",), "joyimage",
                hidden_states, encoder_hidden_states, image_rotary_emb, **kwargs,
            )
        sink.update(kept)
        self._concept_branch(attn, sink, hidden_states, image_rotary_emb)
        return outputs

    def _concept_branch(self, attn: nn.Module, sink: dict[str, torch.Tensor], hidden_states: torch.Tensor, rotary: Any) -> None:
        session, block, transformer = self.session, self._block(), self._transformer()
        call = session.call
        assert call is not None and block is not None and transformer is not None
        if call.concept_hidden_states is None:
            call.concept_hidden_states = self._concept_tokens(hidden_states, transformer.condition_embedder.text_embedder)
        concepts = call.concept_hidden_states  # [B, C, d]
        temb = captured_block_input(session, JOYIMAGE_TEMB_KEY, "The modulation input (temb) of the block")
        shift1, scale1, gate1, shift2, scale2, gate2 = block.txt_mod(temb)  # 6 x [B, d]
        normed = block.txt_norm1(concepts) * (1 + scale1.unsqueeze(1)) + shift1.unsqueeze(1)  # [B, C, d]
        query, key, value = attn.txt_attn_qkv(normed).chunk(3, dim=-1)  # 3 x [B, C, H·D]
        concept_query = attn.txt_attn_q_norm(query.unflatten(-1, (attn.heads, -1)))  # [B, C, H, D]
        concept_key = attn.txt_attn_k_norm(key.unflatten(-1, (attn.heads, -1)))  # [B, C, H, D]
        concept_value = value.unflatten(-1, (attn.heads, -1))  # [B, C, H, D]
        txt_freqs = self._text_rope(rotary)
        if txt_freqs is not None:  # "mrope": every concept at the first text position
            count = concept_query.shape[1]
            first = (txt_freqs[0][:1].repeat(count, 1), txt_freqs[1][:1].repeat(count, 1))  # [C, D] each
            concept_query, concept_key = _apply_rotary_emb(concept_query, concept_key, first)  # [B, C, H, D] each

        target = session.call.inputs["target_tokens"]  # the generated image's rows lead the visual sequence
        kept = image_rows(sink, None, target)  # eagerly: views of the joint [image, text] rows
        if kept is not None:
            image_query, image_key, image_value = kept  # [B, I, H, D] each, after QK-norm and RoPE
        else:  # compiling: RoPE re-applied to the tapped QK-normed rows (the compiler fuses it)
            image_query = sink["img_attn_q_norm"][:, :target]  # [B, I, H, D]
            image_key = sink["img_attn_k_norm"][:, :target]  # [B, I, H, D]
            image_query, image_key = self._image_rope(image_query, image_key, rotary, target)
            image_value = sink["img_attn_qkv"].chunk(3, dim=-1)[2][:, :target].unflatten(-1, (attn.heads, -1))  # [B, I, H, D]
        image_output = sink["img_attn_proj"][:, :target]  # [B, I, H·D], before img_attn_proj
        concept_output = self._attend_and_record(
            concept_query, concept_key, concept_value, image_key, image_value, image_output, image_query
        )
        if concept_output is None:
            return
        concepts = concepts + attn.txt_attn_proj(concept_output) * gate1.unsqueeze(1)
        normed = block.txt_norm2(concepts) * (1 + scale2.unsqueeze(1)) + shift2.unsqueeze(1)
        call.concept_hidden_states = concepts + block.txt_mlp(normed) * gate2.unsqueeze(1)


    @staticmethod
    def _text_rope(rotary: Any) -> tuple[torch.Tensor, torch.Tensor] | None:
        """The text rows' RoPE table ``(cos, sin)`` ``[T, D]`` ("mrope"), or None (no text RoPE)."""
        return None if rotary is None else rotary[1]

    @staticmethod
    def _image_rope(query: torch.Tensor, key: torch.Tensor, rotary: Any, target: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The target rows' queries and keys ``[B, I, H, D]`` rotated as the processor rotates them."""
        if rotary is None or rotary[0] is None:
            return query, key
        vis_cos, vis_sin = rotary[0]  # [S_img, D] each
        return _apply_rotary_emb(query, key, (vis_cos[:target], vis_sin[:target]))


class JoyImageEditPlusConceptAttnProcessor(JoyImageConceptAttnProcessor):
    """JoyImage Edit Plus block processor: ``JoyImageEditPlusAttnProcessor`` untouched (with the image/text padding
    mask), concept branch beside it; per-sample batched image RoPE, no text RoPE.

    Example:
        >>> from conceptattention import ConceptAttention
        >>> from conceptattention.testing import tiny_joyimage_edit_plus_inputs, tiny_joyimage_edit_plus_transformer
        >>> model = tiny_joyimage_edit_plus_transformer()
        >>> with ConceptAttention(model, concept_embeds=torch.randn(2, 16)) as ca:
        ...     _ = model(**tiny_joyimage_edit_plus_inputs())
        >>> ca.maps.tensor.shape
        torch.Size([2, 1, 4, 6])
    """

    #: the diffusers code it runs through the view (capture points), the block code whose text update it mirrors and
    #: the model code that packs the target first, fingerprinted on diffusers 0.42.1 and re-checked on 0.40.0 and
    #: 0.41.0 (normalised AST, sha256; tests/adapters/test_zoo_drift.py)
    STOCK_SOURCES = (
        ("diffusers.models.transformers.transformer_joyimage_edit_plus.JoyImageEditPlusAttnProcessor.__call__", "60c6573637aa090fa747325c9c179a6c3c31401f9ab4291b8d986377e8913c29"),
        ("diffusers.models.transformers.transformer_joyimage_edit_plus._apply_rotary_emb_batched", "4c5a5fa93f6d8842ad401a96088cfaa689d78952049eaea99869b55c25f1474c"),
        ("diffusers.models.transformers.transformer_joyimage_edit_plus.JoyImageEditPlusTransformerBlock.forward", "128703294af09c37f05a4706371f9d1496076615d76cb3394d601724ea847dd3"),
        ("diffusers.models.transformers.transformer_joyimage_edit_plus.JoyImageEditPlusTransformer3DModel.forward", "e21f5403270b760e8e4441e33e1951ff7c7b76cfc4debb278e915bad46b2e98b"),
        (DISPATCH_SOURCE, DISPATCH_FINGERPRINTS),  # where the joint attention inputs are kept
    )

    def __call__(
        self,
        attn: nn.Module,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor | None = None,
        image_rotary_emb: Any = None,
        attention_mask: torch.Tensor | None = None,
    ) -> Any:
        # ``attention_mask`` is named: JoyImageEditPlusAttention passes it only to processors that declare it
        return super().__call__(attn, hidden_states, encoder_hidden_states, image_rotary_emb, attention_mask=attention_mask)

    @staticmethod
    def _text_rope(rotary: Any) -> None:
        return None

    @staticmethod
    def _image_rope(query: torch.Tensor, key: torch.Tensor, rotary: Any, target: int) -> tuple[torch.Tensor, torch.Tensor]:
        if rotary is None:
            return query, key
        cos, sin = rotary  # [B, S_img, D] each (per-sample tables)
        return _apply_rotary_emb_batched(query, key, (cos[:, :target], sin[:, :target]))


class JoyImageAdapter(SequentialCFGTwins, ConceptAdapter):
    """Adapter for JoyImage Edit (``JoyImageEditTransformer3DModel``, ``JoyImageEditPipeline``); maps of the
    generated (target) image only.

    Example:
        >>> from conceptattention.adapters import get_adapter
        >>> from conceptattention.testing import tiny_joyimage_transformer
        >>> get_adapter(tiny_joyimage_transformer()).name
        'joyimage'
    """

    name = "joyimage"
    blocks_attribute = "double_blocks"
    processor_class = JoyImageConceptAttnProcessor
    stock_processor_class = JoyImageAttnProcessor
    stock_processor_remedy = "a custom processor is installed: call `transformer.set_default_attn_processor()`."
    transformer_classes = ("JoyImageEditTransformer3DModel",)
    pipeline_classes = ("JoyImageEditPipeline",)
    modality = "image"
    official_default_layers = "last 4 blocks (JoyImage Edit: 16-19; no official choice)"
    fused_qkv = "always fused (img_attn_qkv / txt_attn_qkv)"
    tested = (
        "adapter battery + naive reference (text-to-image and edit layouts, rope and mrope); tiny offline pipeline "
        "(text-to-image and editing paths, tiny Qwen3-VL processor) bit-identical with and without CFG, maps of the "
        "target only (its two-call CFG: only the conditional call recorded); concept encoding checked against the "
        "pipeline's prompt encoding; no explain path"
    )

    def capture_call(self, transformer: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> dict[str, Any]:
        bound = bind_call(
            type(transformer).__name__, ("hidden_states", "timestep", "encoder_hidden_states"), args, kwargs,
            required=("hidden_states",),
        )
        latents = bound["hidden_states"]  # [B, c, t, h, w] or [B, n, c, t, h, w] (references, then the target)
        frames, height, width = latents.shape[-3:]
        patch = transformer.config.patch_size
        grid = (frames // patch[0], height // patch[1], width // patch[2])
        twins = call_tensors(latents, bound.get("encoder_hidden_states"))  # true CFG: two calls per step
        return {"grid": grid, "target_tokens": grid[0] * grid[1] * grid[2], **twins}

    def install_hooks(self, transformer: nn.Module, session: ConceptSession) -> list[Any]:
        """Block pre-hooks that hand each block's ``temb`` to its processor."""
        return block_input_grabbers(self.joint_blocks(transformer), session, "temb", JOYIMAGE_TEMB_KEY)

    def token_grid(self, call_inputs: dict[str, Any], num_image_tokens: int) -> tuple[int, int, int]:
        grid = call_inputs["grid"]
        if grid[0] * grid[1] * grid[2] != num_image_tokens:
            raise AdapterInputError(f"Cannot arrange {num_image_tokens} target tokens on the {grid} patch grid.")
        return grid

    def size_multiple(self, pipeline: Any) -> int:
        """VAE downsampling (``vae_scale_factor_spatial``) × the 2×2 patch."""
        return int(getattr(pipeline, "vae_scale_factor_spatial", 8)) * 2

    def encode_concepts(
        self, pipeline: Any, concepts: Sequence[str], pooling: ConceptPooling, device: torch.device | None = None
    ) -> torch.Tensor:
        """Each concept through the pipeline's own text-only prompt encoding (``_get_qwen_prompt_embeds``: its
        template, Qwen3-VL's last decoder layer before the final norm), pooled over the concept's own tokens:
        ``[C, text_dim]``."""
        tokenizer = getattr(pipeline, "tokenizer", None)
        if tokenizer is None or not hasattr(pipeline, self.prompt_encoder):
            raise AdapterInputError(
                "This JoyImage pipeline has no text encoder or tokenizer to encode concepts; pass `concept_embeds=` "
                "(a [C, text_dim] tensor) instead."
            )
        prefix = self._concept_prefix(pipeline)
        prefix_tokens = len(tokenizer(prefix).input_ids)
        start = prefix_tokens - pipeline.prompt_template_encode_start_idx[self.prompt_template]  # the concept's first row
        rows = []
        for concept in concepts:
            own = len(tokenizer(prefix + concept).input_ids) - prefix_tokens
            if own <= 0 or start < 0:
                raise AdapterInputError(f"Concept {concept!r} has no tokens of its own after the pipeline's template prefix.")
            with torch.no_grad():
                states = self._encode_text(pipeline, concept, device)  # [1, L, text_dim]
            content = torch.zeros(1, states.shape[1], dtype=torch.bool, device=states.device)  # [1, L]
            content[0, start : start + own] = True
            rows.append(pool_token_states(states, content, pooling)[0])
        return torch.stack(rows)  # [C, text_dim]

    #: The pipeline's text-only prompt encoder and the key of its template (JoyImage Edit: ``"image"``).
    prompt_encoder = "_get_qwen_prompt_embeds"
    prompt_template = "image"

    def _concept_prefix(self, pipeline: Any) -> str:
        """The text the pipeline puts before a prompt (its template up to the prompt)."""
        template = pipeline.prompt_template_encode[self.prompt_template]
        return template[: template.index("{}")]

    def _encode_text(self, pipeline: Any, text: str, device: torch.device | None) -> torch.Tensor:
        """The pipeline's text-only encoding of one prompt: ``[1, L, text_dim]``."""
        return pipeline._get_qwen_prompt_embeds([text], self.prompt_template, device)[0]


class JoyImageEditPlusAdapter(JoyImageAdapter):
    """Adapter for JoyImage Edit Plus (``JoyImageEditPlusTransformer3DModel``, ``JoyImageEditPlusPipeline``): every
    sample packs its target first, then its references, padded to one length (``shape_list``); maps of the target,
    of the conditional half of the pipeline's batched ``[negative, prompt]`` guidance.

    Example:
        >>> from conceptattention.adapters import get_adapter
        >>> from conceptattention.testing import tiny_joyimage_edit_plus_transformer
        >>> get_adapter(tiny_joyimage_edit_plus_transformer()).name
        'joyimage_edit_plus'
    """

    name = "joyimage_edit_plus"
    processor_class = JoyImageEditPlusConceptAttnProcessor
    stock_processor_class = JoyImageEditPlusAttnProcessor
    transformer_classes = ("JoyImageEditPlusTransformer3DModel",)
    pipeline_classes = ("JoyImageEditPlusPipeline",)
    official_default_layers = "last 4 blocks (JoyImage Edit Plus: 16-19; no official choice)"
    tested = (
        "adapter battery + naive reference at transformer level (packed target + reference of another size, "
        "padding); tiny offline pipeline (editing and text-only paths, tiny Qwen3-VL processor) bit-identical with "
        "and without CFG, maps of the target only (batched CFG: the conditional half); concept encoding checked "
        "against the pipeline's prompt encoding; no explain path"
    )

    def capture_call(self, transformer: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> dict[str, Any]:
        names = ("hidden_states", "timestep", "encoder_hidden_states", "encoder_hidden_states_mask", "shape_list")
        bound = bind_call(type(transformer).__name__, names, args, kwargs, required=("hidden_states", "shape_list"))
        targets = {tuple(int(size) for size in shapes[0]) for shapes in bound["shape_list"]}  # (t, h, w) per sample
        if len(targets) != 1:
            raise UnsupportedSetupError(
                f"ConceptAttention needs one target size per JoyImage Edit Plus call; got {sorted(targets)}."
            )
        grid = targets.pop()
        latents = call_latents(bound["hidden_states"])  # batched CFG feeds cat([latents] * 2)
        return {"grid": grid, "target_tokens": grid[0] * grid[1] * grid[2], **latents}

    def cfg_batch_slice(self, batch_size: int, call_inputs: dict[str, Any], pipeline: Any | None) -> slice:
        """The conditional half of ``JoyImageEditPlusPipeline``'s batched ``[uncond, cond]`` guidance call."""
        return guidance_half_slice(
            batch_size, call_inputs, pipeline_guidance_on(pipeline, "do_classifier_free_guidance"), pipeline
        )

    # concepts go through the pipeline's only prompt encoder, text-only, in its user turn
    prompt_encoder = "encode_prompt_multiple_images"
    prompt_template = "multiple_images"

    def _concept_prefix(self, pipeline: Any) -> str:
        return super()._concept_prefix(pipeline) + USER_TURN[: USER_TURN.index("{}")]

    def _encode_text(self, pipeline: Any, text: str, device: torch.device | None) -> torch.Tensor:
        """``encode_prompt_multiple_images`` of the text alone in a user turn: ``[1, L, text_dim]``."""
        if getattr(pipeline, "processor", None) is None:
            raise AdapterInputError(
                "This JoyImage Edit Plus pipeline has no Qwen3-VL processor to encode concepts with; pass "
                "`concept_embeds=` (a [C, text_dim] tensor) instead."
            )
        return pipeline.encode_prompt_multiple_images([USER_TURN.format(text)], device, images=None)[0]


__all__ = [
    "JoyImageAdapter",
    "JoyImageConceptAttnProcessor",
    "JoyImageEditPlusAdapter",
    "JoyImageEditPlusConceptAttnProcessor",
]
