"""Mochi adapter: the shared battery on a tiny Mochi (asymmetric joint attention, context_pre_only last block,
padded prompt), both concept conditionings, per-frame maps, the processor slot for MochiAttention, refusals."""

from __future__ import annotations

import pytest
import torch
from diffusers.models.attention_processor import MochiAttnProcessor2_0

from conceptattention import ConceptAttention, UnsupportedSetupError, get_adapter
from conceptattention.adapters.mochi import MochiAdapter
from conceptattention.testing import tiny_mochi_inputs, tiny_mochi_pipeline, tiny_mochi_transformer
from conceptattention.testing.battery import (
    assert_cfg_conditional_half,
    assert_close_scaled,
    assert_concepts_permute,
    assert_padding_mask_kept,
    assert_t5_concept_means,
    layer_logits,
    make_generate,
    module_fixtures,
    seeded_embeds,
)
from conceptattention.testing.references.mochi import naive_mochi_scores
from conceptattention.testing.zoo_battery import StockGraphBreaksCompile, ZooBattery


GEN_KW = dict(
    height=32,
    width=48,
    num_frames=7,
    num_inference_steps=2,
    max_sequence_length=32,
    guidance_scale=1.0,
    output_type="latent",  # the tiny video VAE is the slow part; latents are what bit-identity is about
)
CFG_KW = dict(guidance_scale=3.0, negative_prompt="blurry")


class TestMochiBattery(StockGraphBreaksCompile, ZooBattery):
    """The shared adapter battery on a tiny Mochi (3 blocks, the last context_pre_only) and a tiny MochiPipeline."""

    concept_dim = 16
    expected_grid = (2, 2, 3)
    pipeline_kwargs = GEN_KW
    pipeline_cfg_kwargs = CFG_KW
    expected_pipeline_grid = (2, 2, 3)
    tiny_transformer = tiny_mochi_transformer
    tiny_inputs = tiny_mochi_inputs
    tiny_pipeline = tiny_mochi_pipeline
    naive_reference = naive_mochi_scores


transformer, pipe = module_fixtures(TestMochiBattery)
generate = make_generate(GEN_KW, output="frames")


def test_registry_and_stock_processor_kept(transformer):
    adapter = get_adapter(transformer)
    assert adapter.name == "mochi" and adapter.modality == "video"
    with ConceptAttention(transformer, concept_embeds=torch.randn(2, 16)):
        transformer(**tiny_mochi_inputs())
        assert type(transformer.transformer_blocks[0].attn1.processor.original) is MochiAttnProcessor2_0
    assert type(transformer.transformer_blocks[0].attn1.processor) is MochiAttnProcessor2_0


def test_both_conditionings_match_the_reference_and_differ(transformer):
    inputs = tiny_mochi_inputs()
    embeds = seeded_embeds(3, 16, seed=4)
    logits = {}
    for conditioning in ("null_pooled", "prompt"):
        logits[conditioning] = layer_logits(transformer, inputs, embeds, [2], concept_conditioning=conditioning)
        expected = naive_mochi_scores(transformer, inputs, embeds, [2], conditioning=conditioning)[0, 0]
        assert_close_scaled(logits[conditioning], expected.float())
    assert not torch.allclose(logits["null_pooled"], logits["prompt"])
    assert_concepts_permute(transformer, inputs, embeds, [2], logits["null_pooled"], [2, 0, 1])


def test_padding_mask_kept(transformer):
    masked = tiny_mochi_inputs(padded_text=4)
    unmasked = dict(masked, encoder_attention_mask=torch.ones(1, 8))
    assert_padding_mask_kept(transformer, masked, unmasked, dim=16)


def test_maps_are_per_frame(transformer):
    with ConceptAttention(transformer, concept_embeds=torch.randn(2, 16)) as ca:
        transformer(**tiny_mochi_inputs(frames=3))
    assert ca.maps.tensor.shape == (2, 3, 2, 3)
    assert not torch.allclose(ca.maps.tensor[:, 0], ca.maps.tensor[:, 1])


def test_foreign_processor_refused():
    model = tiny_mochi_transformer(num_layers=2)

    class CustomProcessor(MochiAttnProcessor2_0):
        pass

    model.transformer_blocks[1].attn1.processor = CustomProcessor()
    with pytest.raises(UnsupportedSetupError, match="CustomProcessor"):
        ConceptAttention(model, concept_embeds=torch.randn(2, 16)).__enter__()
    assert type(model.transformer_blocks[0].attn1.processor) is MochiAttnProcessor2_0  # nothing left installed


def test_cfg_maps_come_from_the_conditional_half(pipe):
    assert_cfg_conditional_half(pipe, lambda pipe: generate(pipe, **CFG_KW), rtol=0, atol=0)


def test_concept_encoding_uses_masked_t5_and_pools(pipe):
    concepts = ["red car", "sky"]
    encoded = MochiAdapter().encode_concepts(pipe, concepts, "mean")
    assert_t5_concept_means(encoded, pipe.tokenizer, pipe.text_encoder, concepts)


def test_explain_is_refused_clearly(pipe):
    from PIL import Image

    from conceptattention import explain

    with pytest.raises(NotImplementedError, match="text-to-video"):
        explain(pipe, Image.new("RGB", (32, 32)), ["house", "sky"], height=32, width=48)
