"""Bria-Fibo adapter: the FLUX.1-clone battery on a tiny Bria-Fibo model (per-block text-encoder layers replacing half
of the text channels) and a tiny offline BriaFiboPipeline (batched CFG), the per-block concept rebuild checked against
a wrong variant, concept encoding against the pipeline's own prompt layers."""

from __future__ import annotations

import pytest
import torch
from diffusers.models.transformers.transformer_bria_fibo import BriaFiboAttnProcessor

from conceptattention import ConceptAttention, explain
from conceptattention.adapters.bria_fibo import BriaFiboAdapter
from conceptattention.testing import (
    BRIA_FIBO_JOINT_DIM,
    BRIA_FIBO_TEXT_DIM,
    tiny_bria_fibo_inputs,
    tiny_bria_fibo_pipeline,
    tiny_bria_fibo_transformer,
)
from conceptattention.testing.battery import (
    assert_cfg_conditional_half,
    assert_right_not_wrong,
    layer_logits,
    make_generate,
    module_fixtures,
    random_image,
    seeded_embeds,
)
from conceptattention.testing.flux_like_battery import FluxLikeBattery
from conceptattention.testing.references.flux_like import naive_flux_like_scores


GEN_KW = dict(height=64, width=96, num_inference_steps=2, output_type="pt", guidance_scale=1.0)
CFG_KW = dict(guidance_scale=3.0, negative_prompt="blurry")
#: the tiny model's concept width: encoder_hidden_states features, then one text-encoder layer per double block (3)
CONCEPT_DIM = BRIA_FIBO_JOINT_DIM + 3 * BRIA_FIBO_TEXT_DIM


class TestBriaFiboBattery(FluxLikeBattery):
    """The shared battery on a tiny Bria-Fibo (3 double blocks, 1 single block) and a tiny ``BriaFiboPipeline``."""

    family = "bria_fibo"
    stock_processor = BriaFiboAttnProcessor
    concept_dim = CONCEPT_DIM
    pipeline_kwargs = GEN_KW
    pipeline_cfg_kwargs = CFG_KW
    expected_pipeline_grid = (1, 4, 6)
    tiny_transformer = tiny_bria_fibo_transformer
    tiny_inputs = tiny_bria_fibo_inputs
    tiny_pipeline = tiny_bria_fibo_pipeline

    def test_concepts_rebuilt_from_their_own_layer_per_block(self, transformer):
        """Before block k the concepts' second half of channels comes from their layer-k features: a reference fed
        the layers in the wrong order (block k gets layer 2 - k) is far off."""
        inputs = tiny_bria_fibo_inputs()
        embeds = seeded_embeds(3, CONCEPT_DIM, seed=9)
        ours = layer_logits(transformer, inputs, embeds, [2])
        right = naive_flux_like_scores(transformer, inputs, embeds, [2])[0, 0].float()
        layers = embeds[:, BRIA_FIBO_JOINT_DIM:].unflatten(-1, (3, BRIA_FIBO_TEXT_DIM))  # [C, N, D_enc]
        shuffled = torch.cat([embeds[:, :BRIA_FIBO_JOINT_DIM], layers.flip(1).flatten(1)], dim=1)
        wrong = naive_flux_like_scores(transformer, inputs, shuffled, [2])[0, 0].float()
        assert_right_not_wrong(ours, right, wrong)

    def test_wrong_concept_width_refused(self, transformer):
        with pytest.raises(ValueError, match=r"Bria-Fibo concept embeddings must be \[C, 16 \+ 3·8\]"):
            with ConceptAttention(transformer, concept_embeds=torch.randn(2, BRIA_FIBO_JOINT_DIM)):
                transformer(**tiny_bria_fibo_inputs())

    def test_explain_shape_sums_and_early_exit(self, pipeline):
        """No real-image path yet: refused with a clear message."""
        with pytest.raises(NotImplementedError, match="'bria_fibo' adapter has no real-image"):
            explain(pipeline, random_image(), ["house", "sky"], height=64, width=96, caption="a house")


transformer, pipe = module_fixtures(TestBriaFiboBattery)
generate = make_generate(GEN_KW)


def test_cfg_maps_come_from_the_conditional_half(pipe):
    assert_cfg_conditional_half(pipe, lambda pipe: generate(pipe, **CFG_KW), rtol=0, atol=0)


def test_concept_encoding_matches_the_pipelines_prompt_layers(pipe):
    """A concept's embedding is the mean over its tokens of the pipeline's own ``encoder_hidden_states`` and of the
    hidden layers the pipeline hands the double blocks (the last 4 of 5 states for 4 blocks: states 1, 2, 3)."""
    concepts = ["red car", "sky"]
    encoded = BriaFiboAdapter().encode_concepts(pipe, concepts, "mean")
    assert encoded.shape == (2, CONCEPT_DIM)
    for index, concept in enumerate(concepts):
        with torch.no_grad():
            embeds, states, _ = pipe.get_prompt_embeds([concept])  # [1, L, 16], 5 x [1, L, 8]
        assert len(states) == 5 and len(pipe.tokenizer(concept).input_ids) == embeds.shape[1]  # no special tokens
        expected = torch.cat([embeds[0], states[1][0], states[2][0], states[3][0]], dim=-1).mean(0)
        torch.testing.assert_close(encoded[index], expected)
