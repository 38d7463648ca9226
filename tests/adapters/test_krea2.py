"""Krea 2 adapter, the single-stream extension (beyond the paper): the shared battery on a tiny Krea 2 (grouped-query
attention with a sigmoid output gate, shared weights and modulation, text fusion, padded text) against a naive float64
reference with one masked attention over ``[text, image, concepts]``, and a tiny offline ``Krea2Pipeline`` (Qwen3-VL
text encoder), whose CFG runs as two plain calls per step (only the conditional one is recorded)."""

from __future__ import annotations

import pytest
import torch
from diffusers.models.transformers.transformer_krea2 import Krea2AttnProcessor

from conceptattention import ConceptAttention, get_adapter
from conceptattention.adapters.krea2 import Krea2Adapter
from conceptattention.testing import tiny_krea2_inputs, tiny_krea2_pipeline, tiny_krea2_transformer
from conceptattention.testing.battery import (
    assert_bit_identical_in_every_space,
    assert_concepts_permute,
    assert_reference_not_variant,
    assert_subclassed_processor_refused,
    check_explain,
    explain_transformer_calls,
    layer_logits,
    make_generate,
    module_fixtures,
    seeded_embeds,
)
from conceptattention.testing.references.krea2 import naive_krea2_scores
from conceptattention.testing.zoo_battery import StockGraphBreaksCompile, ZooBattery


GEN_KW = dict(height=32, width=48, num_inference_steps=2, output_type="pt", guidance_scale=0.0)
CFG_KW = dict(guidance_scale=3.0, negative_prompt="blurry")


class TestKrea2Battery(StockGraphBreaksCompile, ZooBattery):
    """The shared adapter battery on a tiny Krea 2 (3 blocks) and a tiny ``Krea2Pipeline``; whole-model
    ``torch.compile`` (the grid is read from the image ids only when the maps are built, not inside the graph)."""

    concept_dim = 32
    expected_grid = (1, 4, 6)
    pipeline_kwargs = GEN_KW
    pipeline_cfg_kwargs = CFG_KW
    expected_pipeline_grid = (1, 4, 6)
    tiny_transformer = tiny_krea2_transformer
    tiny_inputs = tiny_krea2_inputs
    tiny_pipeline = tiny_krea2_pipeline
    naive_reference = naive_krea2_scores


transformer, pipe = module_fixtures(TestKrea2Battery)
generate = make_generate(GEN_KW)


def test_true_cfg_records_only_conditional_calls(pipe):
    with ConceptAttention(pipe, ["house", "sea"]) as ca:
        generate(pipe, **CFG_KW)
    assert ca.session.num_recorded_calls == GEN_KW["num_inference_steps"]


def test_cfg_twin_is_the_second_call_on_the_same_latents(transformer):
    """Two calls on one latent tensor with two prompt tensors: the second is the unconditional twin (not recorded);
    new latents start a new step; the same prompt tensor twice is two steps."""
    inputs = tiny_krea2_inputs()
    negative = {**inputs, "encoder_hidden_states": inputs["encoder_hidden_states"].clone()}
    with ConceptAttention(transformer, concept_embeds=torch.randn(2, 32)) as ca:
        transformer(**inputs)
        transformer(**negative)  # the twin
        assert ca.session.num_recorded_calls == 1
        step = {**inputs, "hidden_states": inputs["hidden_states"].clone()}
        transformer(**step)  # new latents: a new step
        transformer(**step)  # the same latents with the same prompt tensor: not a twin, another step
        assert ca.session.num_recorded_calls == 3


def test_concept_encoding_as_the_pipeline_encodes_a_prompt(pipe):
    """Each concept is the mean of its own tokens' tapped states in the pipeline's encoding of the concept as a
    prompt (after the template's dropped prefix), flattened over the tapped layers; not truncated to one token."""
    concepts = ["red car", "sky"]
    encoded = Krea2Adapter().encode_concepts(pipe, concepts, "mean")
    start = len(pipe.tokenizer(pipe.prompt_template_encode_prefix).input_ids) - pipe.prompt_template_encode_start_idx
    for index, concept in enumerate(concepts):
        with torch.no_grad():
            states, mask = pipe.get_text_hidden_states([concept])  # [1, L, K, D], [1, L]
        count = len(concept)  # the byte-level tokenizer: one token per character
        assert mask[0, start : start + count].all() and not mask[0, start + count]
        torch.testing.assert_close(encoded[index], states[0, start : start + count].mean(0).flatten())
    assert encoded.shape == (2, 32)
    assert not torch.allclose(Krea2Adapter().encode_concepts(pipe, concepts, "first")[0], encoded[0])


def test_registry_and_stock_processor_kept(transformer):
    assert get_adapter(transformer).name == "krea2"
    with ConceptAttention(transformer, concept_embeds=torch.randn(2, 32)):
        transformer(**tiny_krea2_inputs())
        assert type(transformer.transformer_blocks[0].attn.processor.original) is Krea2AttnProcessor
        # the text fusion keeps diffusers' processor (the concepts pass through its stock blocks)
        assert type(transformer.text_fusion.refiner_blocks[0].attn.processor) is Krea2AttnProcessor


@pytest.mark.parametrize("wrong", ["see_text", "ungated"])
def test_blind_to_the_prompt_and_gated_outputs(transformer, wrong):
    """Concepts never see the text, and the output-space scores use the gated attention outputs (what enters
    ``to_out``); either wrong variant of the reference gives different maps."""
    inputs = tiny_krea2_inputs()
    embeds = seeded_embeds(3, 32, seed=5)
    assert_reference_not_variant(transformer, inputs, embeds, [2], naive_krea2_scores, wrong=dict(variant=wrong))


def test_concepts_permute(transformer):
    inputs = tiny_krea2_inputs()
    embeds = seeded_embeds(3, 32, seed=5)
    assert_concepts_permute(transformer, inputs, embeds, [1], layer_logits(transformer, inputs, embeds, [1]), [1, 2, 0])


def test_subclassed_processor_refused():
    model = tiny_krea2_transformer(num_layers=2)
    assert_subclassed_processor_refused(model, model.transformer_blocks[1].attn, Krea2AttnProcessor, 32)


def test_explain_shape_sums_and_early_exit(pipe):
    check_explain(
        pipe, height=32, width=48, grid=(1, 4, 6), bad_height=36, one_caption="",
        skipped_block=pipe.transformer.transformer_blocks[2], layers=[1],
    )


def test_explain_noises_as_the_pipeline_schedules(pipe):
    """The explain call's timestep is the noise level ``t`` (the pipeline passes ``sigma = timestep / 1000``) and its
    image tokens are the pipeline's packing of the latent grid."""
    calls = explain_transformer_calls(pipe, height=32, width=48, num_samples=2, noise_level=0.25)
    assert len(calls) == 1 and torch.allclose(calls[0]["timestep"], torch.full((2,), 0.25))
    assert calls[0]["hidden_states"].shape == (2, 24, 16)


def test_padded_batch_bit_identical(transformer):
    """A batch whose second sample has padded text tokens (``encoder_attention_mask``) stays bit-identical."""
    assert_bit_identical_in_every_space(transformer, tiny_krea2_inputs(batch_size=2), 32)
