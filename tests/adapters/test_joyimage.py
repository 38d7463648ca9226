"""JoyImage Edit adapter: the zoo battery on a tiny JoyImage Edit transformer (3 double-stream blocks, randomised
modulation tables) with the naive float64 reference, in the text-to-image layout and the editing layout (a reference
image in the visual sequence: maps of the target only, concepts never see the reference), with both RoPE types, and a
tiny offline JoyImageEditPipeline on its text-to-image and editing paths (a tiny in-memory Qwen3-VL processor), whose
CFG runs as two plain calls per step (only the conditional one is recorded). JoyImage Edit Plus: the battery at
transformer level on packed inputs (target, a reference of another size, padding patches, masked text) and a tiny
offline JoyImageEditPlusPipeline (batched CFG: maps of the conditional half)."""

from __future__ import annotations

import functools

import pytest
import torch
from diffusers.models.transformers.transformer_joyimage import JoyImageAttnProcessor
from diffusers.models.transformers.transformer_joyimage_edit_plus import JoyImageEditPlusAttnProcessor

from conceptattention import ConceptAttention, get_adapter
from conceptattention.adapters.base import AdapterInputError
from conceptattention.testing import (
    JOYIMAGE_TEXT_DIM,
    tiny_joyimage_edit_plus_inputs,
    tiny_joyimage_edit_plus_pipeline,
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
    random_image,
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
    patches in one packed sequence, 2 of 7 text tokens masked (maps of the target); and a tiny
    ``JoyImageEditPlusPipeline`` without reference images (a 64×96 target: 4×6 tokens; batched CFG)."""

    concept_dim = JOYIMAGE_TEXT_DIM
    expected_grid = (1, 4, 6)
    tiny_transformer = tiny_joyimage_edit_plus_transformer
    tiny_inputs = tiny_joyimage_edit_plus_inputs
    naive_reference = naive_joyimage_scores
    tiny_pipeline = tiny_joyimage_edit_plus_pipeline
    pipeline_kwargs = {**GEN_KW, "height": 64, "width": 96}
    pipeline_cfg_kwargs = CFG_KW
    expected_pipeline_grid = (1, 4, 6)

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


# --- the editing paths of both pipelines (prompt + reference image), on tiny offline pipelines with a tiny Qwen3-VL
# processor (tiny_joyimage_pipeline(with_processor=True), tiny_joyimage_edit_plus_pipeline) ---

EDIT_CONCEPTS = ["house", "sea"]
EDIT_PROMPT, EDIT_NEGATIVE = "a red house by the sea", "blurry"
EDIT_KW = dict(num_inference_steps=2, output_type="latent")


def edit(pipe, guidance_scale, prompt=EDIT_PROMPT):
    """One editing call of ``JoyImageEditPipeline`` on a 64×64 reference image (snapped to the 1024² bucket: 64×64
    target and reference tokens). The pipeline samples the reference's VAE posterior with the global RNG, so that RNG
    is seeded here, inside ``fork_rng`` (the test's own RNG state is left as it was)."""
    with torch.random.fork_rng():
        torch.manual_seed(0)
        return pipe(
            image=random_image(64, 64), prompt=prompt, negative_prompt=EDIT_NEGATIVE, guidance_scale=guidance_scale,
            generator=torch.Generator().manual_seed(0), **EDIT_KW,
        ).images


def edit_plus(pipe, guidance_scale, prompt=EDIT_PROMPT):
    """One editing call of ``JoyImageEditPlusPipeline``: a 64×96 target (4×6 tokens) and one 64×64 reference image
    (snapped to the 1024² bucket: 64×64 reference tokens)."""
    return pipe(
        images=[[random_image(64, 64)]], prompt=prompt, negative_prompt=EDIT_NEGATIVE, height=64, width=96,
        guidance_scale=guidance_scale, generator=torch.Generator().manual_seed(0), **EDIT_KW,
    ).images


def with_and_without_maps(pipe, call, guidance_scale, prompt):
    """``call(pipe, guidance_scale, prompt)`` without, then with ConceptAttention (maps of the first step), checking
    that the block processors are diffusers' own objects again after the ``with`` block. Returns the two outputs, the
    ConceptAttention object and the ``hidden_states`` shape of every transformer call."""
    blocks = pipe.transformer.double_blocks
    stock = [block.attn.processor for block in blocks]
    expected = call(pipe, guidance_scale, prompt)
    shapes = []
    hook = pipe.transformer.register_forward_pre_hook(
        lambda module, args, kwargs: shapes.append(tuple(kwargs["hidden_states"].shape)), with_kwargs=True
    )
    try:
        with ConceptAttention(pipe, EDIT_CONCEPTS, timesteps=(0,)) as ca:
            output = call(pipe, guidance_scale, prompt)
    finally:
        hook.remove()
    assert all(block.attn.processor is processor for block, processor in zip(blocks, stock, strict=True))
    return expected, output, ca, shapes


@pytest.fixture(scope="module")
def edit_runs():
    """Memoised :func:`with_and_without_maps` on a tiny ``JoyImageEditPipeline`` with its processor."""
    pipe = tiny_joyimage_pipeline(with_processor=True)
    return functools.cache(lambda guidance_scale, prompt=EDIT_PROMPT: with_and_without_maps(pipe, edit, guidance_scale, prompt))


@pytest.fixture(scope="module")
def edit_plus_runs():
    """Memoised :func:`with_and_without_maps` on a tiny ``JoyImageEditPlusPipeline``."""
    pipe = tiny_joyimage_edit_plus_pipeline()
    return functools.cache(
        lambda guidance_scale, prompt=EDIT_PROMPT: with_and_without_maps(pipe, edit_plus, guidance_scale, prompt)
    )


def assert_target_maps(ca, grid):
    """Maps of the target's token grid only, a softmax over the concepts (sum 1 at every token)."""
    maps = ca.maps.tensor
    assert maps.shape == (len(EDIT_CONCEPTS), *grid)
    torch.testing.assert_close(maps.sum(0), torch.ones(grid))


def assert_conditional_maps(cfg_ca, conditional_ca, unconditional_ca):
    """First-step scores of a guided run equal those of an unguided run of the prompt (the conditional call: same
    latents, same prompt states at the first step) and not those of an unguided run of the negative prompt (what
    the unconditional call computes)."""
    ours, conditional, unconditional = cfg_ca.maps.logits, conditional_ca.maps.logits, unconditional_ca.maps.logits
    scale = conditional.abs().max().item()
    torch.testing.assert_close(ours, conditional, rtol=1e-5, atol=1e-5 * scale)
    assert (ours - unconditional).abs().max().item() > 1e-3 * scale


@pytest.mark.parametrize("guidance_scale", [1.0, 3.0])
def test_edit_path_bit_identical_with_maps_of_the_target(edit_runs, guidance_scale):
    """JoyImageEditPipeline with a reference image: every transformer call gets the reference and the target
    (``[1, 2, 4, 1, 128, 128]``), the output is bit-identical with ConceptAttention, with and without CFG, and the
    maps cover the target's 64×64 tokens (of the 2×64×64 in the sequence)."""
    expected, output, ca, shapes = edit_runs(guidance_scale)
    assert torch.equal(output, expected)
    calls = 2 * EDIT_KW["num_inference_steps"] if guidance_scale > 1 else EDIT_KW["num_inference_steps"]
    assert shapes == [(1, 2, 4, 1, 128, 128)] * calls
    assert_target_maps(ca, (1, 64, 64))


def test_edit_path_cfg_records_only_the_conditional_call(edit_runs):
    """The editing path's two-call CFG (prompt call, then negative-prompt call on the same latents): only the first is
    recorded, and it is the conditional one."""
    _, _, ca, shapes = edit_runs(3.0)
    assert len(shapes) == 4 and ca.session.num_recorded_calls == EDIT_KW["num_inference_steps"]
    assert_conditional_maps(ca, edit_runs(1.0)[2], edit_runs(1.0, EDIT_NEGATIVE)[2])


@pytest.mark.parametrize("guidance_scale", [1.0, 3.0])
def test_edit_plus_pipeline_bit_identical_with_maps_of_the_target(edit_plus_runs, guidance_scale):
    """JoyImageEditPlusPipeline: each call packs the 4×6-token target and the 64×64-token reference (4120 patches;
    batched CFG doubles the batch), the output is bit-identical with ConceptAttention, with and without CFG, and the
    maps cover the target's 4×6 tokens."""
    expected, output, ca, shapes = edit_plus_runs(guidance_scale)
    assert torch.equal(output, expected)
    batch = 2 if guidance_scale > 1 else 1
    assert shapes == [(batch, 24 + 64 * 64, 4, 1, 2, 2)] * EDIT_KW["num_inference_steps"]
    assert ca.session.num_recorded_calls == EDIT_KW["num_inference_steps"]
    assert_target_maps(ca, (1, 4, 6))


def test_edit_plus_batched_cfg_maps_of_the_conditional_half(edit_plus_runs):
    """JoyImageEditPlusPipeline batches CFG as ``[negative, prompt]``: the maps are those of the second
    (conditional) half."""
    _, _, ca, _ = edit_plus_runs(3.0)
    assert_conditional_maps(ca, edit_plus_runs(1.0)[2], edit_plus_runs(1.0, EDIT_NEGATIVE)[2])


def test_edit_plus_concept_encoding_matches_the_pipelines_prompt_states():
    """Edit Plus has one prompt encoder (``encode_prompt_multiple_images``); a concept's embedding is the mean of the
    states it gives the concept's own tokens in a text-only user turn (after the template's prefix)."""
    pipe = tiny_joyimage_edit_plus_pipeline()
    concepts = ["red car", "sky"]
    encoded = get_adapter(pipe).encode_concepts(pipe, concepts, "mean")
    template = pipe.prompt_template_encode["multiple_images"]
    prefix = template[: template.index("{}")] + "<|im_start|>user\n"
    start = len(pipe.tokenizer(prefix).input_ids) - pipe.prompt_template_encode_start_idx["multiple_images"]
    for index, concept in enumerate(concepts):
        with torch.no_grad():
            states, _ = pipe.encode_prompt_multiple_images([f"<|im_start|>user\n{concept}<|im_end|>\n"])  # [1, L, 16]
        count = len(pipe.tokenizer(concept).input_ids)  # byte-level: the concept's own tokens
        torch.testing.assert_close(encoded[index], states[0, start : start + count].mean(0))


def test_edit_plus_concepts_without_a_processor_refused_clearly():
    """An Edit Plus pipeline without its Qwen3-VL processor cannot encode concept names: a clear error, nothing
    installed."""
    pipe = tiny_joyimage_edit_plus_pipeline()
    pipe.processor = None
    stock = [block.attn.processor for block in pipe.transformer.double_blocks]
    with pytest.raises(AdapterInputError, match="no Qwen3-VL processor"), ConceptAttention(pipe, EDIT_CONCEPTS):
        pass
    blocks = pipe.transformer.double_blocks
    assert all(block.attn.processor is processor for block, processor in zip(blocks, stock, strict=True))
