"""LongCat-Image adapter: the FLUX.1-clone battery on a tiny LongCat-Image model (text ids (0, i, i)) and a tiny
offline LongCatImagePipeline (true CFG as two calls), concept encoding equal to the pipeline's own prompt states."""

from __future__ import annotations

import torch
from diffusers.models.transformers.transformer_longcat_image import LongCatImageAttnProcessor

from conceptattention import ConceptAttention
from conceptattention.adapters.longcat_image import LongCatImageAdapter
from conceptattention.testing import (
    tiny_longcat_image_inputs,
    tiny_longcat_image_pipeline,
    tiny_longcat_image_transformer,
)
from conceptattention.testing.battery import make_generate, module_fixtures
from conceptattention.testing.flux_like_battery import FluxLikeBattery


GEN_KW = dict(height=32, width=48, num_inference_steps=2, output_type="pt", guidance_scale=1.0, enable_prompt_rewrite=False)
CFG_KW = dict(guidance_scale=3.0, negative_prompt="blurry")


class TestLongCatImageBattery(FluxLikeBattery):
    """The shared battery on a tiny LongCat-Image (3 double blocks) and a tiny ``LongCatImagePipeline``."""

    family = "longcat_image"
    stock_processor = LongCatImageAttnProcessor
    concept_dim = 32
    pipeline_kwargs = GEN_KW
    pipeline_cfg_kwargs = CFG_KW
    expected_pipeline_grid = (1, 16, 24)
    tiny_transformer = tiny_longcat_image_transformer
    tiny_inputs = tiny_longcat_image_inputs
    tiny_pipeline = tiny_longcat_image_pipeline


transformer, pipe = module_fixtures(TestLongCatImageBattery)
generate = make_generate(GEN_KW)


def test_true_cfg_records_only_conditional_calls(pipe):
    with ConceptAttention(pipe, ["house", "sea"], keep_per_step=True) as ca:
        generate(pipe, **CFG_KW)
    assert ca.session.num_recorded_calls == GEN_KW["num_inference_steps"]
    with ConceptAttention(pipe, ["house", "sea"], timesteps=[0]) as with_cfg:
        generate(pipe, **CFG_KW)
    with ConceptAttention(pipe, ["house", "sea"], timesteps=[0]) as without_cfg:
        generate(pipe)
    torch.testing.assert_close(with_cfg.maps.tensor, without_cfg.maps.tensor)  # step 0: same latents, same prompt


def test_concept_encoding_matches_the_pipelines_prompt_states(pipe):
    """A concept's embedding is the mean of the states the pipeline gives the same text as a prompt (the encoder is
    causal, so the prompt's padding and suffix do not change them); multi-token concepts are not truncated."""
    concepts = ["red car", "sky"]
    encoded = LongCatImageAdapter().encode_concepts(pipe, concepts, "mean")
    for index, concept in enumerate(concepts):
        count = len(pipe.tokenizer(concept, add_special_tokens=False).input_ids)
        with torch.no_grad():
            states = pipe._encode_prompt([concept])[0]  # [512, D]
        torch.testing.assert_close(encoded[index], states[:count].mean(0), rtol=1e-5, atol=1e-6)
    first = LongCatImageAdapter().encode_concepts(pipe, concepts, "first")
    assert not torch.allclose(first[0], encoded[0])
