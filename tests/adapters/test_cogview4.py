"""CogView4 adapter: the shared battery on a tiny CogView4 (shared attention/MLP weights, text-stream modulation,
image-only RoPE) and a tiny offline CogView4Pipeline (true CFG as two calls), concept encoding as the pipeline's."""

from __future__ import annotations

import pytest
import torch
from diffusers.models.transformers.transformer_cogview4 import CogView4AttnProcessor

from conceptattention import ConceptAttention, UnsupportedSetupError, get_adapter
from conceptattention.adapters.cogview4 import CogView4Adapter
from conceptattention.testing import tiny_cogview4_inputs, tiny_cogview4_pipeline, tiny_cogview4_transformer
from conceptattention.testing.battery import (
    assert_concepts_permute,
    assert_reference_not_variant,
    assert_subclassed_processor_refused,
    check_explain,
    make_generate,
    module_fixtures,
    seeded_embeds,
)
from conceptattention.testing.references.cogview4 import naive_cogview4_scores
from conceptattention.testing.zoo_battery import ZooBattery


GEN_KW = dict(height=32, width=48, num_inference_steps=2, output_type="pt", guidance_scale=1.0)
CFG_KW = dict(guidance_scale=3.0, negative_prompt="blurry")


class TestCogView4Battery(ZooBattery):
    """The shared adapter battery on a tiny CogView4 (3 blocks) and a tiny ``CogView4Pipeline``."""

    concept_dim = 16
    expected_grid = (1, 4, 6)
    pipeline_kwargs = GEN_KW
    pipeline_cfg_kwargs = CFG_KW
    expected_pipeline_grid = (1, 16, 24)
    tiny_transformer = tiny_cogview4_transformer
    tiny_inputs = tiny_cogview4_inputs
    tiny_pipeline = tiny_cogview4_pipeline
    naive_reference = naive_cogview4_scores


transformer, pipe = module_fixtures(TestCogView4Battery)
generate = make_generate(GEN_KW)


def test_registry_and_stock_processor_kept(transformer):
    assert get_adapter(transformer).name == "cogview4"
    with ConceptAttention(transformer, concept_embeds=torch.randn(2, 16)):
        transformer(**tiny_cogview4_inputs())
        assert type(transformer.transformer_blocks[0].attn1.processor.original) is CogView4AttnProcessor


def test_concepts_take_the_text_modulation_and_permute(transformer):
    """Concepts are modulated by the text half of the adaptive LayerNorm (the image half would differ)."""
    inputs = tiny_cogview4_inputs()
    embeds = seeded_embeds(3, 16, seed=5)
    ours = assert_reference_not_variant(
        transformer, inputs, embeds, [2], naive_cogview4_scores, wrong=dict(concept_stream="image")
    )
    assert_concepts_permute(transformer, inputs, embeds, [2], ours, [1, 2, 0])


def test_true_cfg_records_only_conditional_calls(pipe):
    with ConceptAttention(pipe, ["house", "sea"]) as ca:
        generate(pipe, **CFG_KW)
    assert ca.session.num_recorded_calls == GEN_KW["num_inference_steps"]
    with ConceptAttention(pipe, ["house", "sea"], timesteps=[0]) as with_cfg:
        generate(pipe, **CFG_KW)
    with ConceptAttention(pipe, ["house", "sea"], timesteps=[0]) as without_cfg:
        generate(pipe)
    torch.testing.assert_close(with_cfg.maps.tensor, without_cfg.maps.tensor)


def test_concept_encoding_as_the_pipeline_encodes_a_prompt(pipe):
    """Each concept is the mean of its own tokens' states in the pipeline's encoding of the concept as a prompt
    (left-padded to a multiple of 16); multi-token concepts are not truncated."""
    concepts = ["red car", "sky"]
    encoded = CogView4Adapter().encode_concepts(pipe, concepts, "mean")
    for index, concept in enumerate(concepts):
        count = len(pipe.tokenizer(concept, add_special_tokens=False).input_ids)
        assert pipe.tokenizer(concept).input_ids[:2] == pipe.tokenizer.convert_tokens_to_ids(["[gMASK]", "<sop>"])
        with torch.no_grad():
            states = pipe._get_glm_embeds(concept)[0]  # [16, D]: padding, [gMASK]<sop>, then the concept
        assert states.shape[0] % 16 == 0
        torch.testing.assert_close(encoded[index], states[-count:].mean(0))
    assert not torch.allclose(CogView4Adapter().encode_concepts(pipe, concepts, "first")[0], encoded[0])


def test_subclassed_processor_refused():
    model = tiny_cogview4_transformer(num_layers=2)
    assert_subclassed_processor_refused(model, model.transformer_blocks[1].attn1, CogView4AttnProcessor, 16)


def test_rotary_list_refused(transformer):
    inputs = tiny_cogview4_inputs()
    rotary = transformer.rope(inputs["hidden_states"])
    with pytest.raises(UnsupportedSetupError, match="list of rotary embeddings"):
        with ConceptAttention(transformer, concept_embeds=torch.randn(2, 16)):
            transformer(**inputs, image_rotary_emb=[rotary])


def test_explain_shape_sums_and_early_exit(pipe):
    check_explain(
        pipe, height=32, width=48, grid=(1, 16, 24), bad_height=33, one_caption="",
        skipped_block=pipe.transformer.transformer_blocks[2], layers=[1],
    )


def test_explain_resolution_keeps_the_aspect_ratio(pipe):
    height, width = CogView4Adapter().explain_resolution(pipe, (200, 300))  # PIL size: (width, height)
    assert height % 2 == 0 and width % 2 == 0 and height > width
