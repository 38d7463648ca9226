"""Z-Image adapter, the single-stream extension (beyond the paper): the shared battery on a tiny Z-Image (shared
weights and modulation, caption refiner, image padding to a multiple of 32, per-sample caption lengths) against a naive
float64 reference with one masked attention over ``[image, caption, concepts]``, and a tiny offline ``ZImagePipeline``
(CFG batched as ``[cond, uncond]``)."""

from __future__ import annotations

import pytest
import torch
from diffusers.models.transformers.transformer_z_image import ZSingleStreamAttnProcessor

from conceptattention import ConceptAttention, UnsupportedSetupError, get_adapter
from conceptattention.adapters.z_image import ZImageAdapter
from conceptattention.testing import tiny_z_image_inputs, tiny_z_image_pipeline, tiny_z_image_transformer
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
from conceptattention.testing.references.z_image import naive_z_image_scores
from conceptattention.testing.zoo_battery import StockGraphBreaksCompile, ZooBattery


GEN_KW = dict(height=16, width=24, num_inference_steps=2, output_type="pt", guidance_scale=0.0)
CFG_KW = dict(guidance_scale=3.0, negative_prompt="blurry")


class TestZImageBattery(StockGraphBreaksCompile, ZooBattery):
    """The shared adapter battery on a tiny Z-Image (3 main blocks) and a tiny ``ZImagePipeline``; whole-model
    ``torch.compile`` (the stock forward already breaks the graph: 5 graphs, at a context manager dynamo does not
    support; the concept branch adds no break of its own)."""

    concept_dim = 16
    expected_grid = (1, 4, 6)
    pipeline_kwargs = GEN_KW
    pipeline_cfg_kwargs = CFG_KW
    expected_pipeline_grid = (1, 8, 12)
    tiny_transformer = tiny_z_image_transformer
    tiny_inputs = tiny_z_image_inputs
    tiny_pipeline = tiny_z_image_pipeline
    naive_reference = naive_z_image_scores

    def output_of(self, result):
        return torch.stack(result[0])  # the transformer returns a list of [c, 1, h, w] latents


transformer, pipe = module_fixtures(TestZImageBattery)
generate = make_generate(GEN_KW)


def test_registry_and_stock_processor_kept(transformer):
    assert get_adapter(transformer).name == "z_image"
    with ConceptAttention(transformer, concept_embeds=torch.randn(2, 16)):
        transformer(**tiny_z_image_inputs())
        assert type(transformer.layers[0].attention.processor.original) is ZSingleStreamAttnProcessor
        # the refiners keep diffusers' processor (the concepts pass through the caption refiner's stock blocks)
        assert type(transformer.context_refiner[0].attention.processor) is ZSingleStreamAttnProcessor


@pytest.mark.parametrize("wrong", ["no_refiner", "see_text"])
def test_concepts_refined_as_captions_and_blind_to_the_prompt(transformer, wrong):
    """Concepts go through the caption refiner and never see the caption tokens; a reference without the refiner, or
    with concepts attending to the caption, gives different maps."""
    inputs = tiny_z_image_inputs()
    embeds = seeded_embeds(3, 16, seed=5)
    assert_reference_not_variant(transformer, inputs, embeds, [2], naive_z_image_scores, wrong=dict(variant=wrong))


def test_concepts_permute(transformer):
    inputs = tiny_z_image_inputs()
    embeds = seeded_embeds(3, 16, seed=5)
    ours = layer_logits(transformer, inputs, embeds, [1])
    assert_concepts_permute(transformer, inputs, embeds, [1], ours, [1, 2, 0])


def test_image_padding_not_a_key(transformer):
    """The image is padded to a multiple of 32 tokens inside the model; a grid without padding (8 × 4 = 32 tokens)
    gives maps too, and the reference (which excludes the padding rows from the concepts' keys) agrees."""
    inputs = tiny_z_image_inputs(height=16, width=8)
    embeds = seeded_embeds(2, 16, seed=3)
    ours = layer_logits(transformer, inputs, embeds, [0])
    torch.testing.assert_close(ours, naive_z_image_scores(transformer, inputs, embeds, [0])[0, 0].float(), rtol=1e-4, atol=1e-4)


def test_true_cfg_conditional_half(pipe):
    with ConceptAttention(pipe, ["house", "sea"], timesteps=[0]) as with_cfg:
        generate(pipe, **CFG_KW)
    with ConceptAttention(pipe, ["house", "sea"], timesteps=[0]) as without_cfg:
        generate(pipe)
    torch.testing.assert_close(with_cfg.maps.tensor, without_cfg.maps.tensor)


def test_cfg_truncated_steps_report_the_whole_batch(pipe):
    """With ``cfg_truncation`` a step runs without the guidance batch: that call's single sample is reported."""
    with ConceptAttention(pipe, ["house", "sea"]) as ca:
        generate(pipe, guidance_scale=3.0, cfg_truncation=0.5)
    assert len(ca.batch_maps) == 1 and torch.isfinite(ca.maps.tensor).all()


def test_concept_encoding_as_the_pipeline_encodes_a_prompt(pipe):
    """Each concept is the mean of its own tokens' states in the pipeline's encoding of the concept as a prompt (chat
    template, second-to-last layer); multi-token concepts are not truncated."""
    concepts = ["red car", "sky"]
    encoded = ZImageAdapter().encode_concepts(pipe, concepts, "mean")
    for index, concept in enumerate(concepts):
        templated = pipe.tokenizer.apply_chat_template(
            [{"role": "user", "content": concept}], tokenize=False, add_generation_prompt=True
        )
        start = len(pipe.tokenizer(templated.split(concept)[0]).input_ids)  # the byte-level tokenizer: 1 token/byte
        count = len(pipe.tokenizer(concept).input_ids)
        with torch.no_grad():
            states = pipe._encode_prompt([concept])[0]  # [L, D]
        torch.testing.assert_close(encoded[index], states[start : start + count].mean(0))
    assert not torch.allclose(ZImageAdapter().encode_concepts(pipe, concepts, "first")[0], encoded[0])


def test_subclassed_processor_refused():
    model = tiny_z_image_transformer(num_layers=2)
    assert_subclassed_processor_refused(model, model.layers[1].attention, ZSingleStreamAttnProcessor, 16)


def test_omni_mode_refused(transformer):
    inputs = tiny_z_image_inputs()
    inputs["x"] = [[inputs["x"][0]]]
    with pytest.raises(UnsupportedSetupError, match="omni mode"):
        with ConceptAttention(transformer, concept_embeds=torch.randn(2, 16)):
            transformer(**inputs)


def test_no_qk_norm_refused():
    from diffusers import ZImageTransformer2DModel

    model = ZImageTransformer2DModel(
        in_channels=4, dim=32, n_layers=1, n_refiner_layers=1, n_heads=2, n_kv_heads=2, cap_feat_dim=16,
        axes_dims=[4, 6, 6], axes_lens=[64, 16, 16], qk_norm=False,
    )
    with pytest.raises(UnsupportedSetupError, match="no QK-norm"):
        ConceptAttention(model, concept_embeds=torch.randn(2, 16)).__enter__()


def test_explain_shape_sums_and_early_exit(pipe):
    check_explain(
        pipe, height=16, width=24, grid=(1, 8, 12), bad_height=17, one_caption="",
        skipped_block=pipe.transformer.layers[2], layers=[1],
    )


def test_explain_noises_as_the_pipeline_schedules(pipe):
    """The model time of the explain call is ``1 - t`` (Z-Image's pipeline passes ``(1000 - timestep) / 1000``)."""
    calls = explain_transformer_calls(pipe, height=16, width=24, num_samples=2, noise_level=0.25)
    assert len(calls) == 1 and torch.allclose(calls[0]["t"], torch.full((2,), 0.75))


def test_explain_resolution_keeps_the_aspect_ratio(pipe):
    height, width = ZImageAdapter().explain_resolution(pipe, (200, 300))  # PIL size: (width, height)
    assert height % 2 == 0 and width % 2 == 0 and height > width


def test_padded_batch_bit_identical(transformer):
    """A batch whose captions pad to different lengths (32 and 64 tokens: the model masks the shorter sample's batch
    padding) stays bit-identical, in every space."""
    inputs = tiny_z_image_inputs(batch_size=2)
    # the transformer returns a list of [c, 1, h, w] latents
    assert_bit_identical_in_every_space(transformer, inputs, 16, output=lambda result: torch.stack(result[0]))
