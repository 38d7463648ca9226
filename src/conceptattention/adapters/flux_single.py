"""FLUX.1 single blocks in the single-stream extension (beyond the paper) — docs/models.md.

FLUX.1 (and Chroma, Bria, LongCat-Image, Ovis-Image, which share its block layout) runs its double-stream blocks,
then ``single_transformer_blocks`` on the sequence ``[text, image]``: one ``AdaLayerNormZeroSingle`` modulation for
every token (shift, scale, gate), one attention (``to_q/k/v``, RMS QK-norm, RoPE; no output projection) in parallel
with one MLP branch (``act_mlp(proj_mlp(·))``), and ``h += gate·proj_out([attention; mlp])``. There is no text
stream to borrow, so the paper's method stops at the double blocks. The extension lets the concept stream leaving
the last double block continue through the single blocks with the text tokens' treatment:

* modulation: the block's own ``norm`` on the concept conditioning of the double blocks (FLUX.1: ``norm.linear`` of
  the ``concept_conditioning`` vector, null-pooled by default; the others: the ``temb`` the block receives, captured
  by a block pre-hook);
* the shared ``to_q/k/v`` (or ``to_qkv``) and ``norm_q/k``, RoPE at the first text id (zero: the identity);
* one-way attention to ``[concepts; image]`` (the image rows of the block's keys after RoPE and of its values), per
  the ``concept_attention`` mode; image and text never see the concepts, so the output is bit-identical;
* their own residual stream: ``c += gate·proj_out([o_c; act_mlp(proj_mlp(ĉ))])`` (Ovis-Image: its gated MLP branch);
* maps from ``o_c · o_x`` with ``o_x`` the image rows of the attention output (before the concatenation with the MLP
  branch, the single block's analogue of "before the output projection"), or the cross-attention and value spaces.

Layer indices continue after the double blocks (FLUX.1: 0-18 double, 19-56 single; module paths
``single_transformer_blocks.k``), so ``layers=`` selects either kind; the default selection stays on the double
blocks. Capture: diffusers' processor of the single block runs untouched on an
:class:`~conceptattention.adapters.processor.AttentionView` whose taps keep the QK-normed queries/keys (before RoPE)
and the values; the processor's return value is the attention output.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
from diffusers.models.embeddings import apply_rotary_emb
from torch import nn

from .attention_inputs import DISPATCH_FINGERPRINTS, DISPATCH_SOURCE, image_rows, keep_attention_inputs
from .base import UnsupportedSetupError, block_input_grabbers, captured_block_input
from .processor import AttentionView, ConceptProcessorMixin, check_captured


if TYPE_CHECKING:
    from ..session import ConceptSession

#: FLUX.1's rotary tables ``(cos, sin)``, each ``[T + I, D]``, or None.
Rotary = tuple[torch.Tensor, torch.Tensor] | None
#: Modules of the single block's attention whose outputs the concept branch takes.
SINGLE_TAPS = ("norm_q", "norm_k", "to_v", "to_qkv")
#: Key of ``session.call.inputs`` under which a single block's pre-hook stores the ``temb`` it receives.
SINGLE_TEMB_KEY = "flux_single_block_temb"
#: Fingerprint (diffusers 0.42.1) of the modulation the FLUX.1, Bria, LongCat-Image and Ovis-Image single blocks use.
ADA_NORM_SINGLE_SOURCE = (
    "diffusers.models.normalization.AdaLayerNormZeroSingle.forward",
    "1bc14e7e17bdf9669f69b8fca63b65515fff944fb8eaf187a629c71b46eaf01c",
)


class FluxSingleConceptAttnProcessor(ConceptProcessorMixin):
    """Single-block processor: diffusers' ``FluxAttnProcessor`` untouched on an attention view, and the concept
    stream advanced beside it with the block's shared weights (see the module docstring).

    The view keeps ``norm_k`` (and ``norm_q``) ``[B, T + I, H, D]`` before RoPE and ``to_v`` (or ``to_qkv``)
    ``[B, T + I, H·D]``; the processor returns the attention output ``[B, T + I, H·D]``. The image rows are the last
    ``I`` (the call's ``img_ids`` rows).

    Args:
        session: The shared run state.
        layer: Index of this block among the double + single blocks (FLUX.1: 19-56).
        block: The single block (held weakly; its ``norm``, ``proj_mlp``, ``act_mlp`` and ``proj_out`` are used).
        transformer: The transformer (held weakly).
        original: The processor being replaced; it computes the attention of the sequence.

    Example:
        >>> from conceptattention import ConceptAttention
        >>> from conceptattention.testing import tiny_flux_inputs, tiny_flux_transformer
        >>> model = tiny_flux_transformer(num_layers=2, num_single_layers=2)
        >>> with ConceptAttention(model, concept_embeds=torch.randn(2, 32), layers=[1, 3]) as ca:
        ...     _ = model(**tiny_flux_inputs())
        >>> ca.maps.settings["resolved_layers"]
        ['transformer_blocks.1', 'single_transformer_blocks.1']
    """

    #: the diffusers code it runs through the view (its capture points) and the block and modulation whose update the
    #: concept branch mirrors, fingerprinted on diffusers 0.42.1 (tests/adapters/test_stock_drift.py)
    STOCK_SOURCES: tuple[tuple[str, str | tuple[str, ...]], ...] = (
        (
            "diffusers.models.transformers.transformer_flux.FluxAttnProcessor.__call__",
            (
                "7eb778467bc972f7971fd389505606c318b7a00d3d239c50d24019878a141cc4",
                "c215939789cdd8aa8e353b256b2e43bfb140becd3238f1fbb4dcd1bc54987c2b",
            ),
        ),
        ("diffusers.models.transformers.transformer_flux._get_qkv_projections", "988dc64295fd8e55a2106625126f691c4bbbd05c6f1bc4ae18661a97d30c8730"),
        ("diffusers.models.transformers.transformer_flux._get_projections", "445b79ab35e5c95ee707ec24da8cf1c3c7cfd090f225ae086a3f6b04d96480c5"),
        ("diffusers.models.transformers.transformer_flux._get_fused_projections", "7b6e97d1e24fd16b40b4f8b40e14a9ebee0aff11620d8d0b67a8ea5f1e45fbc0"),
        ("diffusers.models.transformers.transformer_flux.FluxSingleTransformerBlock.forward", "4f82694633d1e0aba8dab83a948aeede2a6cfe89d15414aff488ee03e03a10fa"),
        (DISPATCH_SOURCE, DISPATCH_FINGERPRINTS),  # where the joint attention inputs are kept
        ADA_NORM_SINGLE_SOURCE,
    )
    COPIES_STOCK = False

    def __call__(  # the stock processor's call: the single block passes no encoder_hidden_states
        self, attn: nn.Module, hidden_states: torch.Tensor, encoder_hidden_states: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None, image_rotary_emb: Rotary = None,
    ) -> Any:
        if encoder_hidden_states is not None or not self.session.needs_concepts():
            return self.original(attn, hidden_states, encoder_hidden_states, attention_mask, image_rotary_emb)
        sink: dict[str, torch.Tensor] = {}
        with keep_attention_inputs(self.original, sink):  # the joint query/key/value after RoPE, when available
            output = self.original(
                AttentionView(attn, sink, SINGLE_TAPS), hidden_states, None, attention_mask, image_rotary_emb
            )  # [B, T + I, H·D]
        check_captured(sink, (("norm_k",), ("to_v", "to_qkv")), self.original, "flux_single")
        self._concept_branch(attn, sink, output, image_rotary_emb)
        return output

    def _single_conditioning(self) -> torch.Tensor:
        """The modulation input of the concepts in this block: FLUX.1's concept conditioning vector ``[B, d]``."""
        assert self.session.call is not None
        return self.session.call.concept_conditioning

    def _mlp_branch(self, block: nn.Module, normed: torch.Tensor) -> torch.Tensor:
        """The block's MLP branch on the modulated concepts ``[B, C, d]`` -> ``[B, C, d_mlp]``."""
        return block.act_mlp(block.proj_mlp(normed))

    def _concept_branch(
        self, attn: nn.Module, sink: dict[str, torch.Tensor], output: torch.Tensor, image_rotary_emb: Rotary
    ) -> None:
        """Advance the concept stream through this single block and record its scores (``output``: the attention
        output ``[B, T + I, H·D]``)."""
        session, block = self.session, self._block()
        call = session.call
        assert call is not None and block is not None
        concepts = call.concept_hidden_states  # [B, C, d], left by the last double block
        if concepts is None:
            raise RuntimeError("The concept stream starts in the double blocks; none ran before this single block.")
        normed, gate = block.norm(concepts, emb=self._single_conditioning())  # [B, C, d], [B, d]
        if getattr(attn, "fused_projections", False):
            concept_query, concept_key, concept_value = attn.to_qkv(normed).chunk(3, dim=-1)
        else:
            concept_query, concept_key, concept_value = attn.to_q(normed), attn.to_k(normed), attn.to_v(normed)
        # [B, C, H·D] -> [B, C, H, D]; concepts sit at the first text id (zero: RoPE is the identity)
        concept_query = attn.norm_q(concept_query.unflatten(-1, (-1, attn.head_dim)))
        concept_key = attn.norm_k(concept_key.unflatten(-1, (-1, attn.head_dim)))
        concept_value = concept_value.unflatten(-1, (-1, attn.head_dim))  # [B, C, H, D]

        num_image = int(call.inputs["img_ids"].shape[-2])  # the image rows are the last I of [text, image]
        kept = image_rows(sink, -num_image)  # eagerly: views of the joint rows the attention used (after RoPE)
        if kept is not None:
            image_query, image_key, image_value = kept  # [B, I, H, D] each
            image_query = image_query if session.config.space == "cross_attention" else None
        else:  # compiling: RoPE re-applied to the tapped QK-normed rows (the compiler fuses it)
            image_query, image_key, image_value = self._rotated_image_rows(attn, sink, num_image, image_rotary_emb)
        image_output = output[:, -num_image:]  # [B, I, H·D], before the concatenation with the MLP branch
        concept_output = self._attend_and_record(  # [B, C, H·D], or None: nothing later has to run
            concept_query, concept_key, concept_value, image_key, image_value, image_output, image_query
        )
        if concept_output is None:
            return
        # the single block's update of every token: c + gate·proj_out([attention; mlp])
        branches = torch.cat([concept_output, self._mlp_branch(block, normed)], dim=2)  # [B, C, H·D + d_mlp]
        concepts = concepts + gate.unsqueeze(1) * block.proj_out(branches)
        if concepts.dtype == torch.float16:
            concepts = concepts.clip(-65504, 65504)
        call.concept_hidden_states = concepts

    def _rotated_image_rows(
        self, attn: nn.Module, sink: dict[str, torch.Tensor], num_image: int, image_rotary_emb: Rotary
    ) -> tuple[torch.Tensor | None, torch.Tensor, torch.Tensor]:
        """The image queries (cross-attention space, else None), keys and values ``[B, I, H, D]`` from the taps,
        with RoPE re-applied as the joint attention applied it."""
        image_key = sink["norm_k"][:, -num_image:]  # [B, I, H, D]
        image_value = sink["to_qkv"].chunk(3, dim=-1)[2] if "to_qkv" in sink else sink["to_v"]  # [B, T + I, H·D]
        image_value = image_value[:, -num_image:].unflatten(-1, (-1, attn.head_dim))  # [B, I, H, D]
        image_query = sink["norm_q"][:, -num_image:] if self.session.config.space == "cross_attention" else None
        if image_rotary_emb is not None:
            image_rope = (image_rotary_emb[0][-num_image:], image_rotary_emb[1][-num_image:])  # [I, D] each
            image_key = apply_rotary_emb(image_key, image_rope, sequence_dim=1)
            if image_query is not None:
                image_query = apply_rotary_emb(image_query, image_rope, sequence_dim=1)
        return image_query, image_key, image_value


class BlockTembSingleConceptAttnProcessor(FluxSingleConceptAttnProcessor):
    """Single-block processor of the FLUX.1 family members without a pooled text vector (Chroma, Bria,
    LongCat-Image, Ovis-Image): the concepts take the ``temb`` the block receives (Chroma: its ``[B, 3, d]`` slice),
    captured by a block pre-hook (:meth:`SingleBlockLayers.single_block_grabbers`)."""

    def _single_conditioning(self) -> torch.Tensor:
        return captured_block_input(self.session, SINGLE_TEMB_KEY, "The modulation input (temb) of the single block")


class SingleBlockLayers:
    """Adapter mixin (put before the adapter base class): layer indices past the double blocks select the single
    blocks (``single_transformer_blocks``) when :attr:`single_processor_class` is set.

    Attributes:
        single_processor_class: The single-block concept processor (None: single blocks are not offered).
        single_stock_processor_class: The diffusers processor(s) of the single blocks it takes over.
    """

    single_processor_class: type | None = None
    single_stock_processor_class: type | tuple[type, ...] = ()

    def layer_blocks(self, transformer: nn.Module) -> list[tuple[str, nn.Module]]:
        """The double blocks, then the single blocks (FLUX.1: indices 19-56) when the family offers them."""
        blocks = super().layer_blocks(transformer)  # type: ignore[misc]
        if self.single_processor_class is None:
            return blocks
        singles = getattr(transformer, "single_transformer_blocks", ())
        return blocks + [(f"single_transformer_blocks.{index}", block) for index, block in enumerate(singles)]

    def is_single_layer(self, transformer: nn.Module, layer: int) -> bool:
        """Whether layer index ``layer`` is a single block (past the double blocks)."""
        return layer >= len(self.joint_blocks(transformer))  # type: ignore[attr-defined]

    def make_single_processor(
        self, session: ConceptSession, layer: int, block: nn.Module, original: Any, transformer: nn.Module
    ) -> Any:
        """The concept processor of single block ``layer``; refuses a processor that is not diffusers' own.

        Raises:
            UnsupportedSetupError: naming the block and the processor found.
        """
        stocks = self.single_stock_processor_class
        stocks = stocks if isinstance(stocks, tuple) else (stocks,)
        if type(original) not in stocks or self.single_processor_class is None:
            index = layer - len(self.joint_blocks(transformer))  # type: ignore[attr-defined]
            raise UnsupportedSetupError(
                f"single_transformer_blocks.{index}.attn uses {type(original).__name__}, not diffusers' "
                f"{' or '.join(cls.__name__ for cls in stocks)}. ConceptAttention would drop it; restore the default "
                "processor or select double blocks only."
            )
        return self.single_processor_class(session, layer, block, transformer, original)

    def single_block_grabbers(self, transformer: nn.Module, session: ConceptSession) -> list[Any]:
        """Pre-hooks storing each selected-or-earlier single block's ``temb`` (none when no single block runs)."""
        num_double = len(self.joint_blocks(transformer))  # type: ignore[attr-defined]
        last = session.last_layer - num_double
        if last < 0 or self.single_processor_class is None:
            return []
        singles = list(getattr(transformer, "single_transformer_blocks", ()))
        return block_input_grabbers(singles, session, "temb", SINGLE_TEMB_KEY, last_layer=last)


__all__ = [
    "BlockTembSingleConceptAttnProcessor",
    "FluxSingleConceptAttnProcessor",
    "SingleBlockLayers",
]
