"""Chroma adapter: the shared battery plus per-block modulation, the padding mask, true CFG and the explain path."""

from __future__ import annotations

import torch

from conceptattention import ConceptAttention, get_adapter
from conceptattention.testing import tiny_chroma_inputs, tiny_chroma_pipeline, tiny_chroma_transformer
from conceptattention.testing.battery import (
    AdapterBattery,
    assert_padding_mask_kept,
    assert_reference_not_variant,
    assert_t5_concept_means,
    check_explain,
    make_generate,
    module_fixtures,
    seeded_embeds,
)
from conceptattention.testing.references.chroma import naive_chroma_scores


GEN_KW = dict(height=32, width=48, num_inference_steps=2, max_sequence_length=32, output_type="pt", guidance_scale=1.0)
CFG_KW = dict(guidance_scale=3.0, negative_prompt="blurry")


class TestChromaBattery(AdapterBattery):
    """The shared adapter battery on a tiny Chroma (3 double blocks, padded prompt with Chroma's attention mask)."""

    concept_dim = 32
    expected_grid = (1, 4, 6)
    pipeline_kwargs = GEN_KW
    pipeline_cfg_kwargs = CFG_KW
    expected_pipeline_grid = (1, 16, 24)
    tiny_transformer = tiny_chroma_transformer
    tiny_inputs = tiny_chroma_inputs
    tiny_pipeline = tiny_chroma_pipeline
    naive_reference = naive_chroma_scores


transformer, pipe = module_fixtures(TestChromaBattery)
generate = make_generate(GEN_KW)


def test_registry_finds_chroma(transformer):
    assert get_adapter(transformer).name == "chroma"


def test_concepts_use_their_own_blocks_modulation(transformer):
    """Block i's concepts are modulated by block i's text rows; using block 0's rows everywhere would differ."""
    inputs = tiny_chroma_inputs(batch_size=1)
    embeds = seeded_embeds(3, 32, seed=5)
    assert_reference_not_variant(
        transformer, inputs, embeds, [2], naive_chroma_scores, wrong=dict(concept_modulation_block=0)
    )


def test_padding_mask_changes_image_not_concept_keys(transformer):
    """The prompt's padding mask matters for the image (so the test is sensitive) and outputs stay bit-identical."""
    masked = tiny_chroma_inputs(padded_text=4)
    assert_padding_mask_kept(transformer, masked, dict(masked, attention_mask=None), dim=32)


def test_true_cfg_records_only_conditional_calls(pipe):
    steps = GEN_KW["num_inference_steps"]
    with ConceptAttention(pipe, ["house", "sea"], keep_per_step=True) as ca:
        generate(pipe, **CFG_KW)
    assert ca.session.num_recorded_calls == steps
    assert sorted({step for step, _ in ca.per_step_scores}) == list(range(steps))
    # step 0 sees the same latents with and without CFG: its conditional maps are identical
    with ConceptAttention(pipe, ["house", "sea"], timesteps=[0]) as with_cfg:
        generate(pipe, **CFG_KW)
    with ConceptAttention(pipe, ["house", "sea"], timesteps=[0]) as without_cfg:
        generate(pipe)
    torch.testing.assert_close(with_cfg.maps.tensor, without_cfg.maps.tensor)
    # an unselected step's unconditional call is not counted either
    with ConceptAttention(pipe, ["house", "sea"], timesteps=[1], keep_per_step=True) as ca:
        generate(pipe, **CFG_KW)
    assert ca.session.num_recorded_calls == steps and {step for step, _ in ca.per_step_scores} == {1}


def test_bare_transformer_same_inputs_twice_are_both_recorded(transformer):
    inputs = tiny_chroma_inputs()
    with ConceptAttention(transformer, concept_embeds=torch.randn(2, 32)) as ca:
        transformer(**inputs)
        transformer(**inputs)
    assert ca.session.num_recorded_calls == 2


def test_concept_encoding_uses_masked_t5_and_pools(pipe):
    from conceptattention.adapters.chroma import ChromaAdapter

    concepts = ["red car", "sky"]
    encoded = ChromaAdapter().encode_concepts(pipe, concepts, "mean")
    assert_t5_concept_means(encoded, pipe.tokenizer, pipe.text_encoder, concepts)


def test_explain_shape_and_sums(pipe):
    check_explain(
        pipe, height=32, width=48, grid=(1, 16, 24), bad_height=33, one_caption="",
        skipped_block=pipe.transformer.single_transformer_blocks[0], layers=[1],  # the last selected double block
    )


def test_conditioning_options_coincide(transformer):
    """Chroma has no pooled text: "null_pooled" and "prompt" both use the block's own modulation rows."""
    inputs = tiny_chroma_inputs()
    embeds = torch.randn(2, 32, generator=torch.Generator().manual_seed(6))
    maps = []
    for conditioning in ("null_pooled", "prompt"):
        with ConceptAttention(transformer, concept_embeds=embeds, concept_conditioning=conditioning) as ca:
            transformer(**inputs)
        maps.append(ca.maps.tensor)
    assert torch.equal(maps[0], maps[1])
