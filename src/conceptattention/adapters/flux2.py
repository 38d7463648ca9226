"""FLUX.2 adapter (``Flux2Transformer2DModel``; ``Flux2Pipeline``, ``Flux2KleinPipeline``) — docs/models.md.

What Flux.2 needs beyond FLUX.1:

* **Modulation.** Shift/scale/gate of the text stream are computed once per call at model level
  (``double_stream_modulation_txt(temb)``) and handed to every double block as ``temb_mod_txt``. The concept stream
  uses that very tensor (captured by a block pre-hook). There is no pooled text vector, so ``"null_pooled"`` and
  ``"prompt"`` coincide. The text norms are plain LayerNorms; the MLP is SwiGLU without biases.
* **RoPE.** Ids are 4-axis ``(t, h, w, l)``; the pipeline gives the prompt ``l = 0..L-1`` and the image ``l = 0``.
  Every concept gets the id of the position right after the last prompt token, ``(t₀, 0, 0, max(l) + 1)`` with ``t₀``
  the prompt's time coordinate: it collides with no prompt position, and all concepts share it, so concept-concept
  attention carries no positional bias and the maps do not depend on the order of the concepts. (The official code
  puts every concept at the id of position 510 of its 512-token padded prompt, i.e. on a padding position.)
* **Refusals.** The reference-image KV cache (``Flux2KVAttnProcessor``, ``kv_cache_mode``, ``Flux2KleinKVPipeline``)
  and reference images (image editing: extra image tokens with another ``t``) are refused with a clear error.
* **Concept text.** Concepts are wrapped in the pipeline's own chat template and encoded by its text encoder (Qwen3
  for Klein, Mistral-Small-3 for FLUX.2-dev), concatenating the same hidden layers as the pipeline; the concept's own
  tokens are found by comparing with the template around an empty concept, then pooled.
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import torch
from diffusers.models.embeddings import apply_rotary_emb
from diffusers.models.transformers.transformer_flux2 import (
    Flux2AttnProcessor,
    Flux2Modulation,
)
from torch import nn

from ..config import ConceptPooling
from ..core import concept_attention
from ..encoding import ConceptError, pool_token_states
from .attention_inputs import DISPATCH_FINGERPRINTS, DISPATCH_SOURCE, image_rows, keep_attention_inputs
from .base import AdapterInputError, UnsupportedSetupError, bind_call, block_input_grabbers, captured_block_input
from .flux import FLUX_TAPS, FluxAdapter
from .processor import AttentionView, ConceptProcessorMixin, check_captured
from .real_images import ExplainBatch, ExplainRequest, flow_noised, guidance_tensor, image_pixels


if TYPE_CHECKING:
    from PIL import Image

    from ..session import ConceptSession

#: Key of ``session.call.inputs`` under which the block pre-hook stores the running block's ``temb_mod_txt``.
BLOCK_MODULATION_KEY = "flux2_temb_mod_txt"
#: Key of ``session.call.inputs`` caching the concepts' RoPE tables ``(cos, sin)``.
CONCEPT_ROPE_KEY = "flux2_concept_rope"


class Flux2ConceptAttnProcessor(ConceptProcessorMixin):
    """Flux.2 double-block processor: runs diffusers' own ``Flux2AttnProcessor`` untouched, and the concept branch
    beside it.

    The stock processor is called on an :class:`~conceptattention.adapters.processor.AttentionView` of the attention
    module, which hands the concept branch the image attention output before ``to_out[0]``; the image queries, keys
    (after QK-norm and RoPE) and values are the image rows of what the processor hands to diffusers' attention
    dispatcher (:mod:`~conceptattention.adapters.attention_inputs`; while compiling, RoPE is re-applied to the taps). No diffusers code is copied: the
    output is bit-identical by construction. Calls that need no concept work go straight to the stock processor.

    Args:
        session: The shared run state.
        layer: Index of this block among the double-stream blocks.
        block: The ``Flux2TransformerBlock`` (held weakly; its text norms and MLP are used).
        transformer: The ``Flux2Transformer2DModel`` (held weakly; ``context_embedder`` and ``pos_embed`` are used).
        original: The processor being replaced (its attention backend and parallel config are kept).

    Example:
        >>> from conceptattention import ConceptAttention
        >>> from conceptattention.testing.flux2 import tiny_flux2_inputs, tiny_flux2_transformer
        >>> model = tiny_flux2_transformer()
        >>> with ConceptAttention(model, concept_embeds=torch.randn(2, 24)) as ca:
        ...     _ = model(**tiny_flux2_inputs())
        >>> ca.maps.tensor.shape
        torch.Size([2, 1, 4, 6])
    """

    #: the stock processor it runs through an AttentionView: its capture points (diffusers 0.42.1); see
    #: tests/adapters/test_stock_drift.py
    STOCK_SOURCES = (
        (
            "diffusers.models.transformers.transformer_flux2.Flux2AttnProcessor.__call__",
            (  # diffusers 0.42.1, 0.38.0, 0.39.0, 0.40.0, 0.41.0, re-checked: only reshapes/annotations differ
            "9b2d7481a371f72913cb32dd56bcfb18409d01660142532b98ed72f10261fccb",
            "1bcfc095fa32fc1c765ddec8126afd8ec8e59e11b407b85f52aa187ce84756c8",
            ),
        ),
        ("diffusers.models.transformers.transformer_flux2._get_qkv_projections", "81ae9e9cfb7889acdc7ebcba3bc22071ed075caa0a59fd5a55d694542b5f597d"),
        ("diffusers.models.transformers.transformer_flux2._get_projections", "f0c880815d9045e44f3f9c8a160e92a080137a6da0394af7a9591963fb0e7108"),
        ("diffusers.models.transformers.transformer_flux2._get_fused_projections", "1fa01c8e207c8282f7a6f6c7d139fd56656e7ad380f212a44bac117de91a4270"),
        (DISPATCH_SOURCE, DISPATCH_FINGERPRINTS),  # where the joint attention inputs are kept
    )

    def __call__(
        self,
        attn: nn.Module,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor = None,
        attention_mask: torch.Tensor | None = None,
        image_rotary_emb: torch.Tensor | None = None,
    ) -> Any:
        if (
            encoder_hidden_states is None
            or attn.added_kv_proj_dim is None
            or not self.session.needs_concepts()
        ):
            return self.original(attn, hidden_states, encoder_hidden_states, attention_mask, image_rotary_emb)

        sink: dict[str, torch.Tensor] = {}
        with keep_attention_inputs(self.original, sink):  # the joint query/key/value after RoPE, when available
            outputs = self.original(
                AttentionView(attn, sink, FLUX_TAPS), hidden_states, encoder_hidden_states, attention_mask, image_rotary_emb
            )
        check_captured(sink, (("norm_q",), ("norm_k",), ("to_v", "to_qkv"), ("to_out",)), self.original, "flux2")
        num_text = encoder_hidden_states.shape[1]
        kept = image_rows(sink, num_text)  # eagerly: views of the joint [text, image] rows, after QK-norm and RoPE
        if kept is not None:
            query, key, value = kept  # [B, I, H, D] each
            self._concept_branch(attn, sink["to_out"], query, key, value, 0)
            return outputs
        # compiling: the image rows as the joint attention used them, RoPE re-applied (the compiler fuses it)
        query, key = sink["norm_q"], sink["norm_k"]  # [B, I, H, D]
        value = sink["to_qkv"].chunk(3, dim=-1)[2] if "to_qkv" in sink else sink["to_v"]  # [B, I, H·D]
        value = value.unflatten(-1, (-1, attn.head_dim))  # [B, I, H, D]
        needs_query = self.session.config.space == "cross_attention"  # image queries are read only there
        if image_rotary_emb is not None:
            image_rope = (image_rotary_emb[0][num_text:], image_rotary_emb[1][num_text:])  # [I, D] each
            key = apply_rotary_emb(key, image_rope, sequence_dim=1)
            if needs_query:
                query = apply_rotary_emb(query, image_rope, sequence_dim=1)
        self._concept_branch(attn, sink["to_out"], query, key, value, 0)
        return outputs

    def _block_modulation(self) -> tuple[tuple[torch.Tensor, ...], tuple[torch.Tensor, ...]]:
        """The text stream's ``(shift, scale, gate)`` for attention and MLP, each ``[B, 1, d]``."""
        modulation = captured_block_input(
            self.session, BLOCK_MODULATION_KEY, "The text modulation of Flux.2 block"
        )
        return Flux2Modulation.split(modulation, 2)

    def _concept_rope(self, like: torch.Tensor, num_concepts: int) -> tuple[torch.Tensor, torch.Tensor]:
        """RoPE tables ``(cos, sin)`` ``[C, D]`` of the concept id ``(t₀, 0, 0, max(l) + 1)``, cached per call."""
        call, transformer = self.session.call, self._transformer()
        assert call is not None and transformer is not None
        cached = call.inputs.get(CONCEPT_ROPE_KEY)
        if cached is not None:
            return cached
        text_ids = call.inputs["txt_ids"]
        if text_ids.ndim == 3:
            text_ids = text_ids[0]
        concept_id = text_ids[-1].clone()  # [4]: (t, h, w, l) of the last prompt token
        concept_id[1:3] = 0
        concept_id[3] = text_ids[:, 3].max() + 1
        concept_ids = concept_id.unsqueeze(0).expand(num_concepts, -1).to(like.device)  # [C, 4]
        rope = transformer.pos_embed(concept_ids)  # ([C, D], [C, D])
        call.inputs[CONCEPT_ROPE_KEY] = rope
        return rope

    def _concept_branch(
        self,
        attn: nn.Module,
        image_output: torch.Tensor,
        query: torch.Tensor,
        key: torch.Tensor,
        value: torch.Tensor,
        num_text: int,
    ) -> None:
        session, block, transformer = self.session, self._block(), self._transformer()
        call = session.call
        assert call is not None and block is not None and transformer is not None
        if call.concept_hidden_states is None:
            call.concept_hidden_states = self._concept_tokens(image_output, transformer.context_embedder)  # [B, C, d]
        concepts = call.concept_hidden_states  # [B, C, d]
        config = session.config
        (shift_msa, scale_msa, gate_msa), (shift_mlp, scale_mlp, gate_mlp) = self._block_modulation()  # [B, 1, d]

        normed = (1 + scale_msa) * block.norm1_context(concepts) + shift_msa
        if getattr(attn, "fused_projections", False) and hasattr(attn, "to_added_qkv"):
            concept_query, concept_key, concept_value = attn.to_added_qkv(normed).chunk(3, dim=-1)
        else:
            concept_query, concept_key, concept_value = (
                attn.add_q_proj(normed),
                attn.add_k_proj(normed),
                attn.add_v_proj(normed),
            )
        concept_query = attn.norm_added_q(concept_query.unflatten(-1, (-1, attn.head_dim)))  # [B, C, H, D]
        concept_key = attn.norm_added_k(concept_key.unflatten(-1, (-1, attn.head_dim)))  # [B, C, H, D]
        concept_value = concept_value.unflatten(-1, (-1, attn.head_dim))  # [B, C, H, D]
        rope = self._concept_rope(image_output, concept_query.shape[1])
        concept_query = apply_rotary_emb(concept_query, rope, sequence_dim=1)
        concept_key = apply_rotary_emb(concept_key, rope, sequence_dim=1)

        image_key, image_value = key[:, num_text:], value[:, num_text:]  # [B, I, H, D] (after QK-norm and RoPE)
        concept_output = concept_attention(
            concept_query, concept_key, concept_value, image_key, image_value, config.concept_attention, self._attend
        )
        concept_output = concept_output.flatten(2, 3).to(query.dtype)  # [B, C, H·D]

        if not self._record_scores(
            concept_output=concept_output,
            image_output=image_output,
            image_query=query[:, num_text:],
            concept_key=concept_key,
            image_value=image_value,
            concept_value=concept_value,
        ):
            return
        # Advance the concept residual stream exactly as Flux2TransformerBlock advances the text stream.
        concepts = concepts + gate_msa * attn.to_add_out(concept_output)
        normed = block.norm2_context(concepts) * (1 + scale_mlp) + shift_mlp
        concepts = concepts + gate_mlp * block.ff_context(normed)
        if concepts.dtype == torch.float16:
            concepts = concepts.clip(-65504, 65504)
        call.concept_hidden_states = concepts


class Flux2Adapter(FluxAdapter):
    """Adapter for FLUX.2 [dev] and FLUX.2 [klein] (``Flux2Transformer2DModel``).

    Reuses the FLUX.1 adapter's block layout (``transformer_blocks.i.attn``) and default real-image resolution.

    Example:
        >>> from conceptattention.adapters import get_adapter
        >>> from conceptattention.testing.flux2 import tiny_flux2_transformer
        >>> get_adapter(tiny_flux2_transformer()).name
        'flux2'
    """

    name = "flux2"
    processor_class = Flux2ConceptAttnProcessor
    stock_processor_class = Flux2AttnProcessor  # check_model below also names the KV-cache processor
    transformer_classes = ("Flux2Transformer2DModel",)
    pipeline_classes = ("Flux2Pipeline", "Flux2KleinPipeline")
    modality = "image"
    ip_adapter = "not offered by diffusers"
    official_default_layers = "last 3 double blocks (FLUX.2-dev: 5-7, as the official code)"
    tested = "adapter battery + naive reference with Flux2KleinPipeline (Qwen3 template); Flux2Pipeline bit-identity with a stand-in Mistral-template tokenizer; explain path; bf16/fp16 on an H100"

    def default_layers(self, num_blocks: int) -> tuple[int, ...]:
        """The last three double blocks (FLUX.2-dev: 5, 6, 7 of 8), as the official code."""
        return tuple(range(max(0, num_blocks - 3), num_blocks))

    def check_model(self, transformer: nn.Module) -> None:
        for index, block in enumerate(self.joint_blocks(transformer)):
            processor = block.attn.processor
            if type(processor) is Flux2AttnProcessor or isinstance(processor, Flux2ConceptAttnProcessor):
                continue
            if type(processor).__name__ == "Flux2KVAttnProcessor":
                raise UnsupportedSetupError(
                    f"transformer_blocks.{index}.attn uses Flux2KVAttnProcessor (the reference-image KV cache of "
                    "Flux2KleinKVPipeline). ConceptAttention does not support the KV cache: use Flux2KleinPipeline or "
                    "call `transformer.set_attn_processor(Flux2AttnProcessor())` on the double blocks first."
                )
            raise UnsupportedSetupError(
                f"transformer_blocks.{index}.attn uses {type(processor).__name__}, not diffusers' Flux2AttnProcessor. "
                "ConceptAttention would drop it; restore the default processors first."
            )

    def capture_call(self, transformer: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> dict[str, Any]:
        if kwargs.get("kv_cache_mode") is not None or kwargs.get("kv_cache") is not None:
            raise UnsupportedSetupError(
                "Flux2Transformer2DModel was called with a reference-image KV cache (kv_cache_mode="
                f"{kwargs.get('kv_cache_mode')!r}); ConceptAttention does not support it. Call without kv_cache_mode."
            )
        names = ("hidden_states", "encoder_hidden_states", "timestep", "img_ids", "txt_ids", "guidance")
        bound = bind_call("Flux2Transformer2DModel", names, args, kwargs, required=("timestep", "img_ids", "txt_ids"))
        img_ids = bound["img_ids"][0] if bound["img_ids"].ndim == 3 else bound["img_ids"]
        # data-dependent, so skipped inside a compiled forward (torch.compile(transformer)); token_grid still
        # refuses reference-image tokens there, when the maps are read
        if not torch.compiler.is_compiling() and torch.unique(img_ids[:, 0]).numel() != 1:
            raise AdapterInputError(
                "This Flux.2 call has reference-image tokens (image editing with `image=`); they have no place "
                "on the output grid and are not supported by ConceptAttention. Generate without reference images."
            )
        return {"timestep": bound["timestep"], "img_ids": bound["img_ids"], "txt_ids": bound["txt_ids"]}

    def token_grid(self, call_inputs: dict[str, Any], num_image_tokens: int) -> tuple[int, int, int]:
        img_ids = call_inputs["img_ids"]
        img_ids = (img_ids[0] if img_ids.ndim == 3 else img_ids).detach().cpu()
        height = int(torch.unique(img_ids[:, 1]).numel())
        width = int(torch.unique(img_ids[:, 2]).numel())
        if height * width != num_image_tokens:
            raise AdapterInputError(
                f"Cannot arrange {num_image_tokens} image tokens on the {height}x{width} grid given by img_ids."
            )
        return 1, height, width

    def install_hooks(self, transformer: nn.Module, session: ConceptSession) -> list[Any]:
        """Block pre-hooks that hand the model-level ``temb_mod_txt`` to each double block's processor."""
        return block_input_grabbers(self.joint_blocks(transformer), session, "temb_mod_txt", BLOCK_MODULATION_KEY)

    # ----- text ---------------------------------------------------------------------------------------------------

    def encode_concepts(
        self, pipeline: Any, concepts: Sequence[str], pooling: ConceptPooling, device: torch.device | None = None
    ) -> torch.Tensor:
        """Concepts in the pipeline's chat template, its hidden layers concatenated, pooled: ``[C, D_text]``.

        Raises:
            ValueError: for a pipeline without a known Flux.2 text encoder or with mismatched widths.
            ConceptError: for a concept longer than the pipeline's 512 text tokens.
        """
        text_encoder = getattr(pipeline, "text_encoder", None)
        tokenizer = getattr(pipeline, "tokenizer", None)
        if text_encoder is None or tokenizer is None:
            raise AdapterInputError(
                "This Flux.2 pipeline has no text encoder/tokenizer to encode concepts; pass `concept_embeds=` "
                "(a [C, joint_attention_dim] tensor) instead."
            )
        if hasattr(pipeline, "_get_qwen3_prompt_embeds"):  # Flux2KleinPipeline (Qwen3)

            def template_ids(text: str) -> list[int]:
                chat = tokenizer.apply_chat_template(
                    [{"role": "user", "content": text}],
                    tokenize=False,
                    add_generation_prompt=True,
                    enable_thinking=False,
                )
                return list(tokenizer(chat)["input_ids"])

        elif hasattr(pipeline, "_get_mistral_3_small_prompt_embeds"):  # Flux2Pipeline (Mistral-Small-3)
            from diffusers.pipelines.flux2.pipeline_flux2 import format_input

            def template_ids(text: str) -> list[int]:
                messages = format_input(prompts=[text], system_message=pipeline.system_message)
                encoded = tokenizer.apply_chat_template(
                    messages, add_generation_prompt=False, tokenize=True, return_dict=True
                )
                ids = encoded["input_ids"]
                return list(ids[0] if isinstance(ids[0], list | torch.Tensor) else ids)

        else:
            raise AdapterInputError(
                f"Unknown Flux.2 pipeline {type(pipeline).__name__}: ConceptAttention knows Flux2Pipeline and "
                "Flux2KleinPipeline. Pass `concept_embeds=` (a [C, joint_attention_dim] tensor) instead."
            )
        layers = tuple(inspect.signature(pipeline.encode_prompt).parameters["text_encoder_out_layers"].default)
        pad_id = getattr(tokenizer, "pad_token_id", None)
        if pad_id is None:
            pad_id = getattr(getattr(tokenizer, "tokenizer", None), "pad_token_id", None) or 0
        input_ids, attention_mask, content_mask = templated_concept_batch(
            [template_ids(concept) for concept in concepts],
            template_ids(""),
            concepts,
            pad_id=int(pad_id),
            max_length=int(getattr(pipeline, "tokenizer_max_length", 512)),
        )
        device = device or getattr(pipeline, "_execution_device", None) or text_encoder.device
        with torch.no_grad():
            output = text_encoder(
                input_ids=input_ids.to(device),
                attention_mask=attention_mask.to(device),
                output_hidden_states=True,
                use_cache=False,
            )
        hidden = torch.cat([output.hidden_states[index] for index in layers], dim=-1)  # [C, L, len(layers)·h]
        expected = getattr(pipeline.transformer.config, "joint_attention_dim", hidden.shape[-1])
        if hidden.shape[-1] != expected:
            raise AdapterInputError(
                f"The text encoder's layers {layers} give {hidden.shape[-1]}-d states but the transformer expects "
                f"{expected}-d text; the pipeline's text_encoder_out_layers default does not fit this model."
            )
        return pool_token_states(hidden, content_mask.to(hidden.device), pooling)  # [C, D_text]

    # ----- real images -------------------------------------------------------------------------------------------

    def explain_batch(self, pipeline: Any, image: Image.Image, request: ExplainRequest) -> ExplainBatch:
        """One batched Flux.2 call on the noised image (``image_pooled`` does not apply: Flux.2 has no pooled text)."""
        device = pipeline._execution_device
        transformer = pipeline.transformer
        pixels = image_pixels(pipeline, image, request.height, request.width)  # [1, 3, H, W]
        with torch.no_grad():
            latents = pipeline._encode_vae_image(pixels, generator=None)  # [1, 4c, h, w], patchified and normalised
        packed = type(pipeline)._pack_latents(latents)  # [1, I, 4c]
        num = len(request.seeds)
        noisy = flow_noised(packed, request, device)  # [N, I, 4c]
        with torch.no_grad():
            prompt_embeds, text_ids = pipeline.encode_prompt(
                prompt=request.caption, device=device, num_images_per_prompt=num, max_sequence_length=512
            )
        dtype = transformer.dtype
        kwargs = {
            "hidden_states": noisy.to(dtype),
            "encoder_hidden_states": prompt_embeds.to(dtype),
            "timestep": torch.full((num,), request.noise_level, device=device, dtype=dtype),
            "img_ids": type(pipeline)._prepare_latent_ids(latents).to(device).expand(num, -1, -1),  # [N, I, 4]
            "txt_ids": text_ids,
            "guidance": guidance_tensor(transformer, request, num, device),
            "return_dict": False,
        }
        return ExplainBatch(transformer_kwargs=kwargs, latent_shape=tuple(latents.shape))


# ----- helpers shared with the Qwen-Image adapter -------------------------------------------------------------------


def template_content_span(ids: Sequence[int], empty_ids: Sequence[int]) -> tuple[int, int]:
    """Where a concept's own tokens sit inside a prompt template: ``[start, end)``.

    ``empty_ids`` is the template around an empty concept; the tokens shared at the start and at the end are the
    template's, the rest the concept's (a token merged across the boundary is counted as content). The split is
    ambiguous only if a concept began with the token that follows the placeholder; the templates of the supported
    pipelines put a special token or a newline there, which a (whitespace-normalised) concept never produces.

    Example:
        >>> template_content_span([5, 6, 1, 2, 7], [5, 6, 7])
        (2, 4)
    """
    prefix = 0
    while prefix < min(len(ids), len(empty_ids)) and ids[prefix] == empty_ids[prefix]:
        prefix += 1
    suffix = 0
    while (
        suffix < len(empty_ids) - prefix
        and suffix < len(ids) - prefix
        and ids[len(ids) - 1 - suffix] == empty_ids[len(empty_ids) - 1 - suffix]
    ):
        suffix += 1
    return prefix, len(ids) - suffix


def templated_concept_batch(
    concept_ids: Sequence[Sequence[int]],
    empty_ids: Sequence[int],
    concepts: Sequence[str],
    pad_id: int,
    max_length: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """A right-padded batch of templated concepts with the mask of each concept's own tokens.

    Args:
        concept_ids: Token ids of each concept inside the template.
        empty_ids: Token ids of the template around an empty concept.
        concepts: The concept strings (for error messages).
        pad_id: Padding token id.
        max_length: Longest sequence the pipeline accepts.

    Returns:
        ``input_ids [C, L]``, ``attention_mask [C, L]`` and ``content_mask [C, L]`` (bool).

    Raises:
        ConceptError: if a concept is too long or leaves no token of its own.

    Example:
        >>> ids, mask, content = templated_concept_batch([[5, 1, 7], [5, 1, 2, 7]], [5, 7], ["a", "ab"], pad_id=0)
        >>> content.tolist()
        [[False, True, False, False], [False, True, True, False]]
    """
    length = max(len(ids) for ids in concept_ids)
    input_ids = torch.full((len(concept_ids), length), pad_id, dtype=torch.long)  # [C, L]
    attention_mask = torch.zeros(len(concept_ids), length, dtype=torch.long)  # [C, L]
    content_mask = torch.zeros(len(concept_ids), length, dtype=torch.bool)  # [C, L]
    for row, (ids, concept) in enumerate(zip(concept_ids, concepts)):
        if max_length is not None and len(ids) > max_length:
            raise ConceptError(
                f"Concept {concept!r} is {len(ids)} tokens long inside the prompt template; this text encoder allows "
                f"at most {max_length}. Use a shorter phrase."
            )
        start, end = template_content_span(ids, empty_ids)
        if end <= start:
            raise ConceptError(f"Concept {concept!r} leaves no token of its own inside the prompt template.")
        input_ids[row, : len(ids)] = torch.as_tensor(list(ids), dtype=torch.long)
        attention_mask[row, : len(ids)] = 1
        content_mask[row, start:end] = True
    return input_ids, attention_mask, content_mask


__all__ = [
    "Flux2Adapter",
    "Flux2ConceptAttnProcessor",
    "block_input_grabbers",
    "template_content_span",
    "templated_concept_batch",
]
