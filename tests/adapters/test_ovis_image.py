"""Ovis-Image adapter: the FLUX.1-clone battery on a tiny Ovis-Image model (text ids (0, i, i), RMSNorm before the
text input layer)."""

from __future__ import annotations

from diffusers.models.transformers.transformer_ovis_image import OvisImageAttnProcessor

from conceptattention.testing_zoo import tiny_ovis_image_inputs, tiny_ovis_image_transformer

from .battery import assert_right_not_wrong, layer_logits, seeded_embeds
from .flux_like_battery import FluxLikeBattery
from .flux_like_reference import naive_flux_like_scores


class TestOvisImageBattery(FluxLikeBattery):
    """The shared battery on a tiny Ovis-Image (3 double blocks)."""

    family = "ovis_image"
    stock_processor = OvisImageAttnProcessor
    concept_dim = 32
    tiny_transformer = tiny_ovis_image_transformer
    tiny_inputs = tiny_ovis_image_inputs

    def test_concepts_enter_through_the_text_rmsnorm(self, transformer):
        """Concepts go through ``context_embedder_norm`` then ``context_embedder``, as prompts do."""
        inputs = tiny_ovis_image_inputs()
        embeds = seeded_embeds(3, 32, seed=7) * 5  # far from unit RMS, so the norm matters
        ours = layer_logits(transformer, inputs, embeds, [1])
        right = naive_flux_like_scores(transformer, inputs, embeds, [1])[0, 0].float()
        wrong = naive_flux_like_scores(transformer, inputs, embeds, [1], skip_text_norm=True)[0, 0].float()
        assert_right_not_wrong(ours, right, wrong)
