"""The adapter battery for the FLUX.1 clones without pooled text (Bria, LongCat-Image, Ovis-Image), plus the checks
they share: processors restored (also on models without ``AttentionMixin``), concept position and permutation,
conditioning options, fused projections, a foreign processor refused, the explain path."""

from __future__ import annotations

import torch

from conceptattention import ConceptAttention, get_adapter

from .battery import (
    assert_concepts_permute,
    assert_right_not_wrong,
    assert_subclassed_processor_refused,
    check_explain,
    layer_logits,
    seeded_embeds,
)
from .references.flux_like import naive_flux_like_scores
from .zoo_battery import ZooBattery


class FluxLikeBattery(ZooBattery):
    """Subclasses set the factories, ``family`` and ``stock_processor``."""

    family: str = ""
    stock_processor: type | None = None
    naive_reference = naive_flux_like_scores
    expected_grid = (1, 4, 6)

    def test_registry_and_stock_processor_kept(self, transformer):
        assert get_adapter(transformer).name == self.family
        with ConceptAttention(transformer, concept_embeds=self.embeds()):
            self.run(transformer, self.make_inputs())
            # the concept processor wraps diffusers' own processor, which still does the joint attention
            processor = transformer.transformer_blocks[0].attn.processor
            assert type(processor.original) is self.stock_processor

    def test_concepts_at_first_text_position_and_permutable(self, transformer):
        """Concepts take text id (0, 0, 0) (no rotation): the reference with concepts at the last text token's
        id differs (when text ids are not all zero), and permuting concepts permutes the scores."""
        inputs = self.make_inputs()
        embeds = seeded_embeds(3, self.concept_dim, seed=5)
        ours = layer_logits(transformer, inputs, embeds, [2])  # [C, I]
        right = naive_flux_like_scores(transformer, inputs, embeds, [2])[0, 0].float()
        if inputs["txt_ids"][-1].abs().sum() > 0:
            wrong = naive_flux_like_scores(transformer, inputs, embeds, [2], concept_position=-1)[0, 0].float()
            assert_right_not_wrong(ours, right, wrong)
        assert_concepts_permute(transformer, inputs, embeds, [2], ours, [2, 0, 1])

    def test_conditioning_options_coincide(self, transformer):
        """No pooled text: "null_pooled" and "prompt" both modulate concepts with the block's own temb."""
        inputs = self.make_inputs()
        maps = []
        for conditioning in ("null_pooled", "prompt"):
            with ConceptAttention(transformer, concept_embeds=self.embeds(), concept_conditioning=conditioning) as ca:
                self.run(transformer, inputs)
            maps.append(ca.maps.tensor)
        assert torch.equal(maps[0], maps[1])

    def test_subclassed_processor_refused(self):
        model = self.make_transformer()
        assert self.stock_processor is not None
        assert_subclassed_processor_refused(model, model.transformer_blocks[1].attn, self.stock_processor, self.concept_dim)

    def test_explain_shape_sums_and_early_exit(self, pipeline):
        check_explain(
            pipeline, height=32, width=48, grid=(1, 16, 24), bad_height=33, one_caption="",
            skipped_block=pipeline.transformer.single_transformer_blocks[0], layers=[1],
        )
