"""Ovis-Image adapter: the FLUX.1-clone battery on a tiny Ovis-Image model (text ids (0, i, i), RMSNorm before the
text input layer) and a tiny offline OvisImagePipeline (true CFG as two calls), concept encoding equal to the
pipeline's own prompt states."""

from __future__ import annotations

import torch
from diffusers.models.transformers.transformer_ovis_image import OvisImageAttnProcessor

from conceptattention import ConceptAttention
from conceptattention.adapters.ovis_image import OvisImageAdapter
from conceptattention.testing import tiny_ovis_image_inputs, tiny_ovis_image_pipeline, tiny_ovis_image_transformer
from conceptattention.testing.battery import (
    assert_reference_not_variant,
    make_generate,
    module_fixtures,
    seeded_embeds,
)
from conceptattention.testing.flux_like_battery import FluxLikeBattery
from conceptattention.testing.references.flux_like import naive_flux_like_scores


GEN_KW = dict(height=32, width=48, num_inference_steps=2, output_type="pt", guidance_scale=1.0)
CFG_KW = dict(guidance_scale=3.0, negative_prompt="blurry")


class TestOvisImageBattery(FluxLikeBattery):
    """The shared battery on a tiny Ovis-Image (3 double blocks) and a tiny ``OvisImagePipeline``."""

    family = "ovis_image"
    stock_processor = OvisImageAttnProcessor
    concept_dim = 32
    pipeline_kwargs = GEN_KW
    pipeline_cfg_kwargs = CFG_KW
    expected_pipeline_grid = (1, 16, 24)
    tiny_transformer = tiny_ovis_image_transformer
    tiny_inputs = tiny_ovis_image_inputs
    tiny_pipeline = tiny_ovis_image_pipeline

    def test_concepts_enter_through_the_text_rmsnorm(self, transformer):
        """Concepts go through ``context_embedder_norm`` then ``context_embedder``, as prompts do."""
        inputs = tiny_ovis_image_inputs()
        embeds = seeded_embeds(3, 32, seed=7) * 5  # far from unit RMS, so the norm matters
        assert_reference_not_variant(
            transformer, inputs, embeds, [1], naive_flux_like_scores, wrong=dict(skip_text_norm=True)
        )


transformer, pipe = module_fixtures(TestOvisImageBattery)
generate = make_generate(GEN_KW)


def test_true_cfg_records_only_conditional_calls(pipe):
    with ConceptAttention(pipe, ["house", "sea"]) as ca:
        generate(pipe, **CFG_KW)
    assert ca.session.num_recorded_calls == GEN_KW["num_inference_steps"]


def test_concept_encoding_matches_the_pipelines_prompt_states(pipe):
    """A concept's embedding is the mean of the states the pipeline gives the same text as a prompt, found after the
    chat frame's prefix (the encoder is causal: the padding and the frame's end do not change them)."""
    concepts = ["red car", "sky"]
    encoded = OvisImageAdapter().encode_concepts(pipe, concepts, "mean")
    frame = pipe.tokenizer(pipe._get_messages([""])[0], add_special_tokens=False).input_ids
    for index, concept in enumerate(concepts):
        ids = pipe.tokenizer(pipe._get_messages([concept])[0], add_special_tokens=False).input_ids
        start = next(i for i, (a, b) in enumerate(zip(ids, frame)) if a != b)  # first token of the concept
        count = len(ids) - len(frame)
        with torch.no_grad():
            states = pipe._get_ovis_prompt_embeds([concept])[0]  # [max_length, D], from user_prompt_begin_id on
        offset = start - pipe.user_prompt_begin_id
        torch.testing.assert_close(encoded[index], states[offset : offset + count].mean(0), rtol=1e-5, atol=1e-6)
