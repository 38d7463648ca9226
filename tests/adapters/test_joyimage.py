"""JoyImage Edit adapter: the zoo battery on a tiny JoyImage Edit transformer (3 double-stream blocks, randomised
modulation tables) with the naive float64 reference, in the text-to-image layout and the editing layout (a reference
image in the visual sequence: maps of the target only, concepts never see the reference), with both RoPE types, and a
tiny offline JoyImageEditPipeline on its text-to-image path (the editing path needs a Qwen3-VL processor, not built
here), whose CFG runs as two plain calls per step (only the conditional one is recorded). JoyImage Edit Plus: the battery at transformer level on packed inputs (target, a reference of another size,
padding patches, masked text)."""

from __future__ import annotations

import torch
from diffusers.models.transformers.transformer_joyimage import JoyImageAttnProcessor
from diffusers.models.transformers.transformer_joyimage_edit_plus import JoyImageEditPlusAttnProcessor

from conceptattention import ConceptAttention, get_adapter
from conceptattention.testing import (
    JOYIMAGE_TEXT_DIM,
    tiny_joyimage_edit_plus_inputs,
    tiny_joyimage_edit_plus_transformer,
    tiny_joyimage_inputs,
    tiny_joyimage_pipeline,
    tiny_joyimage_transformer,
)
from conceptattention.testing.battery import (
    assert_concepts_permute,
    assert_padding_mask_kept,
    assert_reference_not_variant,
    assert_subclassed_processor_refused,
    layer_logits,
    make_generate,
    module_fixtures,
    seeded_embeds,
)
from conceptattention.testing.references.joyimage import naive_joyimage_scores
from conceptattention.testing.zoo_battery import ZooBattery


GEN_KW = dict(num_inference_steps=2, output_type="latent", guidance_scale=1.0)
CFG_KW = dict(guidance_scale=3.0, negative_prompt="blurry")


class TestJoyImageBattery(ZooBattery):
    """The shared battery on a tiny JoyImage Edit (8×12 latent: 4×6 target tokens, no reference) and a tiny
    ``JoyImageEditPipeline`` (its 1024² bucket: 64×64 tokens)."""

    concept_dim = JOYIMAGE_TEXT_DIM
    expected_grid = (1, 4, 6)
    tiny_transformer = tiny_joyimage_transformer
    tiny_inputs = tiny_joyimage_inputs
    naive_reference = naive_joyimage_scores
    tiny_pipeline = tiny_joyimage_pipeline
    pipeline_kwargs = GEN_KW
    pipeline_cfg_kwargs = CFG_KW
    expected_pipeline_grid = (1, 64, 64)

    def test_registry_and_stock_processor_kept(self, transformer):
        assert get_adapter(transformer).name == "joyimage"
        with ConceptAttention(transformer, concept_embeds=self.embeds()):
            self.run(transformer, self.make_inputs())
            assert type(transformer.double_blocks[0].attn.processor.original) is JoyImageAttnProcessor

    def test_edit_layout_maps_of_the_target_only(self, transformer):
        """With a reference image in the sequence the maps cover the target's 4×6 tokens, the output stays
        bit-identical, and concepts attend to the target only: a reference whose concepts also see the reference
        image is far off."""
        inputs = tiny_joyimage_inputs(references=1)
        embeds = seeded_embeds(3, JOYIMAGE_TEXT_DIM, seed=5)
        reference_output = self.run(transformer, inputs)
        with ConceptAttention(transformer, concept_embeds=embeds) as ca:
            assert torch.equal(self.run(transformer, inputs), reference_output)
        assert ca.maps.tensor.shape == (3, 1, 4, 6)
        ours = assert_reference_not_variant(
            transformer, inputs, embeds, [2], naive_joyimage_scores, wrong=dict(concepts_see_references=True)
        )
        assert_concepts_permute(transformer, inputs, embeds, [2], ours, [1, 2, 0])

    def test_mrope_concepts_at_the_first_text_position(self):
        """``rope_type="mrope"`` rotates text after the visual grid; concepts take the first text position."""
        model = tiny_joyimage_transformer(rope_type="mrope")
        inputs = tiny_joyimage_inputs(references=1)
        embeds = seeded_embeds(3, JOYIMAGE_TEXT_DIM, seed=6)
        for space in ("output", "cross_attention"):
            ours = layer_logits(model, inputs, embeds, [1], space=space)
            expected = naive_joyimage_scores(model, inputs, embeds, [1], space=space)[0, 0].float()
            torch.testing.assert_close(ours, expected, rtol=1e-4, atol=1e-4 * expected.abs().max().item())

    def test_subclassed_processor_refused(self):
        model = self.make_transformer()
        assert_subclassed_processor_refused(model, model.double_blocks[1].attn, JoyImageAttnProcessor, JOYIMAGE_TEXT_DIM)


class TestJoyImageEditPlusBattery(ZooBattery):
    """The shared battery on a tiny JoyImage Edit Plus: per sample a 4×6 target, a 2×4 reference and 3 padding
    patches in one packed sequence, 2 of 7 text tokens masked (maps of the target)."""

    concept_dim = JOYIMAGE_TEXT_DIM
    expected_grid = (1, 4, 6)
    tiny_transformer = tiny_joyimage_edit_plus_transformer
    tiny_inputs = tiny_joyimage_edit_plus_inputs
    naive_reference = naive_joyimage_scores

    def test_registry_and_stock_processor_kept(self, transformer):
        assert get_adapter(transformer).name == "joyimage_edit_plus"
        with ConceptAttention(transformer, concept_embeds=self.embeds()):
            self.run(transformer, self.make_inputs())
            assert type(transformer.double_blocks[0].attn.processor.original) is JoyImageEditPlusAttnProcessor

    def test_masks_kept_and_concepts_see_the_target_only(self, transformer):
        """The text and padding masks still reach diffusers' processor (bit-identical with maps on), and concepts
        attend to the target only: a reference whose concepts also see the reference image is far off."""
        inputs = tiny_joyimage_edit_plus_inputs()
        unmasked = {**inputs, "encoder_hidden_states_mask": None}
        assert_padding_mask_kept(transformer, inputs, unmasked, JOYIMAGE_TEXT_DIM)
        embeds = seeded_embeds(3, JOYIMAGE_TEXT_DIM, seed=8)
        assert_reference_not_variant(
            transformer, inputs, embeds, [2], naive_joyimage_scores, wrong=dict(concepts_see_references=True)
        )

    def test_subclassed_processor_refused(self):
        model = self.make_transformer()
        attn = model.double_blocks[1].attn
        assert_subclassed_processor_refused(model, attn, JoyImageEditPlusAttnProcessor, JOYIMAGE_TEXT_DIM)


transformer, pipe = module_fixtures(TestJoyImageBattery)
generate = make_generate(GEN_KW)


def test_cfg_records_only_conditional_calls(pipe):
    with ConceptAttention(pipe, ["house", "sea"]) as ca:
        generate(pipe, **CFG_KW)
    assert ca.session.num_recorded_calls == GEN_KW["num_inference_steps"]


def test_concept_encoding_matches_the_pipelines_prompt_states(pipe):
    """A concept's embedding is the mean of the states the pipeline's text-only encoding gives the concept's own
    tokens (found after the template's prefix; the encoder is causal, so what follows does not change them)."""
    concepts = ["red car", "sky"]
    encoded = get_adapter(pipe).encode_concepts(pipe, concepts, "mean")
    template = pipe.prompt_template_encode["image"]
    prefix = len(pipe.tokenizer(template[: template.index("{}")]).input_ids)
    start = prefix - pipe.prompt_template_encode_start_idx["image"]
    for index, concept in enumerate(concepts):
        with torch.no_grad():
            states, _ = pipe._get_qwen_prompt_embeds([concept])  # [1, L, 16]
        count = len(pipe.tokenizer(concept).input_ids)  # byte-level: the concept's own tokens
        torch.testing.assert_close(encoded[index], states[0, start : start + count].mean(0))
