"""AuraFlow adapter: the shared battery (post-norm joint blocks, batched CFG), refusals, encoding, explain."""

from __future__ import annotations

import torch
from diffusers.models.attention_processor import AuraFlowAttnProcessor2_0

from conceptattention import ConceptAttention, get_adapter
from conceptattention.adapters.auraflow import AuraFlowAdapter
from conceptattention.testing import tiny_auraflow_inputs, tiny_auraflow_pipeline, tiny_auraflow_transformer
from conceptattention.testing.battery import (
    AdapterBattery,
    assert_cfg_conditional_half,
    assert_subclassed_processor_refused,
    check_explain,
    make_generate,
    module_fixtures,
    random_image,
    t5_content_states,
)
from conceptattention.testing.references.auraflow import naive_auraflow_scores


GEN_KW = dict(height=16, width=24, num_inference_steps=2, max_sequence_length=32, output_type="pt", guidance_scale=1.0)
CFG_KW = dict(guidance_scale=3.0, negative_prompt="blurry")


class TestAuraFlowBattery(AdapterBattery):
    """The shared adapter battery on a tiny AuraFlow (3 joint + 1 single block) and a tiny AuraFlowPipeline."""

    concept_dim = 32
    expected_grid = (1, 4, 6)
    pipeline_kwargs = GEN_KW
    pipeline_cfg_kwargs = CFG_KW
    expected_pipeline_grid = (1, 8, 12)
    tiny_transformer = tiny_auraflow_transformer
    tiny_inputs = tiny_auraflow_inputs
    tiny_pipeline = tiny_auraflow_pipeline
    naive_reference = naive_auraflow_scores


transformer, pipe = module_fixtures(TestAuraFlowBattery)
generate = make_generate(GEN_KW)


def test_registry_paths_and_default_layers(transformer):
    adapter = get_adapter(transformer)
    assert adapter.name == "auraflow"
    assert adapter.default_layers(4) == (0, 1, 2, 3)
    with ConceptAttention(transformer, concept_embeds=torch.randn(2, 32), layers=["joint_transformer_blocks.2"]) as ca:
        transformer(**tiny_auraflow_inputs())
    assert ca.maps.settings["resolved_layers"] == ["joint_transformer_blocks.2"]


def test_cfg_reports_the_conditional_half(pipe):
    assert_cfg_conditional_half(pipe, lambda pipe: generate(pipe, **CFG_KW))


def test_foreign_processor_refused():
    model = tiny_auraflow_transformer(num_layers=2)
    assert_subclassed_processor_refused(model, model.joint_transformer_blocks[1].attn, AuraFlowAttnProcessor2_0, 32)


def test_concept_encoding_uses_masked_umt5(pipe):
    concepts = ["red car", "sky"]
    hidden, content = t5_content_states(pipe.tokenizer, pipe.text_encoder, concepts)  # [C, L, D], [C, L]
    encoded = AuraFlowAdapter().encode_concepts(pipe, concepts, "first")
    for index in range(2):
        torch.testing.assert_close(encoded[index], hidden[index, content[index].nonzero()[0, 0]])


def test_explain_shape_resolution_and_samples(pipe):
    check_explain(
        pipe, height=16, width=24, grid=(1, 8, 12), bad_height=15, bad_match="multiples of 2",
        skipped_block=pipe.transformer.single_transformer_blocks[0], layers=[0],  # the last selected joint block
    )
    height, width = AuraFlowAdapter().explain_resolution(pipe, random_image().size)
    assert height % 2 == 0 and width % 2 == 0 and height < width
