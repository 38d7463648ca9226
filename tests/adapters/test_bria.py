"""Bria adapter: the FLUX.1-clone battery on a tiny Bria model and a tiny offline BriaPipeline (batched CFG), T5
concept encoding."""

from __future__ import annotations

from diffusers.models.transformers.transformer_bria import BriaAttnProcessor

from conceptattention.adapters.bria import BriaAdapter
from conceptattention.testing import tiny_bria_inputs, tiny_bria_pipeline, tiny_bria_transformer
from conceptattention.testing.battery import (
    assert_cfg_conditional_half,
    assert_t5_concept_means,
    make_generate,
    module_fixtures,
)
from conceptattention.testing.flux_like_battery import FluxLikeBattery


GEN_KW = dict(height=32, width=48, num_inference_steps=2, max_sequence_length=32, output_type="pt", guidance_scale=1.0)
CFG_KW = dict(guidance_scale=3.0, negative_prompt="blurry")


class TestBriaBattery(FluxLikeBattery):
    """The shared battery on a tiny Bria (3 double blocks, text ids all zero) and a tiny ``BriaPipeline``."""

    family = "bria"
    stock_processor = BriaAttnProcessor
    concept_dim = 32
    pipeline_kwargs = GEN_KW
    pipeline_cfg_kwargs = CFG_KW
    expected_pipeline_grid = (1, 16, 24)
    tiny_transformer = tiny_bria_transformer
    tiny_inputs = tiny_bria_inputs
    tiny_pipeline = tiny_bria_pipeline


transformer, pipe = module_fixtures(TestBriaBattery)
generate = make_generate(GEN_KW)


def test_cfg_maps_come_from_the_conditional_half(pipe):
    assert_cfg_conditional_half(pipe, lambda pipe: generate(pipe, **CFG_KW), rtol=0, atol=0)


def test_concept_encoding_uses_masked_t5_and_pools(pipe):
    concepts = ["red car", "sky"]
    encoded = BriaAdapter().encode_concepts(pipe, concepts, "mean")
    assert_t5_concept_means(encoded, pipe.tokenizer, pipe.text_encoder, concepts)
