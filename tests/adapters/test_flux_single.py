"""FLUX.1 single blocks in the single-stream extension (beyond the paper): the shared battery with a single block
selected (FLUX.1 and LongCat-Image), the naive float64 reference for every space and mode on the other families that
share the single block (Chroma, Bria, Ovis-Image), layer numbering, refusals and the explain path's early exit."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from diffusers.models.transformers.transformer_flux import FluxAttnProcessor
from diffusers.models.transformers.transformer_longcat_image import LongCatImageAttnProcessor

from conceptattention import ConceptAttention, ConfigError, UnsupportedSetupError, get_adapter
from conceptattention.adapters.flux_single import FluxSingleConceptAttnProcessor
from conceptattention.config import ModelDefaults, set_model_defaults
from conceptattention.testing import (
    tiny_bria_inputs,
    tiny_bria_transformer,
    tiny_chroma_inputs,
    tiny_chroma_transformer,
    tiny_flux_inputs,
    tiny_flux_pipeline,
    tiny_flux_transformer,
    tiny_longcat_image_inputs,
    tiny_longcat_image_pipeline,
    tiny_longcat_image_transformer,
    tiny_ovis_image_inputs,
    tiny_ovis_image_transformer,
)
from conceptattention.testing.battery import (
    AdapterBattery,
    assert_reference_not_variant,
    check_explain,
    seeded_embeds,
)
from conceptattention.testing.flux_like_battery import FluxLikeBattery
from conceptattention.testing.references.chroma import naive_chroma_scores
from conceptattention.testing.references.flux import naive_flux_scores
from conceptattention.testing.references.flux_like import naive_flux_like_scores


def with_single_default(model: Any, num_double: int) -> Any:
    """``model`` (a transformer or pipeline) whose default layers are the last double block and the last single
    block, so that every battery check runs through a single block."""
    transformer = getattr(model, "transformer", model)
    last = num_double + len(transformer.single_transformer_blocks) - 1
    set_model_defaults(transformer, ModelDefaults(layers=(num_double - 1, last)))
    return model


class SingleLayers:
    """Battery mix-in: layer counts include the single blocks (``[0, last]`` spans both kinds); the single block
    class adds one compiled graph of its own."""

    concept_graphs = 3

    def num_blocks(self, transformer: Any) -> int:
        return len(get_adapter(transformer).layer_blocks(transformer))


class TestFluxSingleBattery(SingleLayers, AdapterBattery):
    """The battery on a tiny FLUX.1 (2 double + 2 single blocks) with the last single block selected by default,
    and the naive reference over layers 0 (double) and 3 (single)."""

    concept_dim = 32
    expected_grid = (1, 4, 6)
    pipeline_kwargs = dict(height=32, width=48, num_inference_steps=2, max_sequence_length=32, output_type="pt")
    pipeline_cfg_kwargs = dict(true_cfg_scale=2.0, negative_prompt="blurry")
    expected_pipeline_grid = (1, 16, 24)
    tiny_inputs = tiny_flux_inputs
    naive_reference = naive_flux_scores

    def make_transformer(self) -> Any:
        return with_single_default(tiny_flux_transformer(num_layers=2, num_single_layers=2), 2)

    def make_pipeline(self) -> Any:
        return with_single_default(tiny_flux_pipeline(num_layers=2), 2)


class TestLongCatImageSingleBattery(SingleLayers, FluxLikeBattery):
    """The FLUX.1-clone battery on a tiny LongCat-Image (3 double + 2 single blocks; text ids ``(0, i, i)``) with
    its last single block selected by default."""

    family = "longcat_image"
    stock_processor = LongCatImageAttnProcessor
    pipeline_kwargs = dict(
        height=32, width=48, num_inference_steps=2, output_type="pt", guidance_scale=1.0, enable_prompt_rewrite=False
    )
    pipeline_cfg_kwargs = dict(guidance_scale=3.0, negative_prompt="blurry")
    expected_pipeline_grid = (1, 16, 24)
    tiny_inputs = tiny_longcat_image_inputs

    def make_transformer(self) -> Any:
        return with_single_default(tiny_longcat_image_transformer(num_layers=3, num_single_layers=2), 3)

    def make_pipeline(self) -> Any:
        return with_single_default(tiny_longcat_image_pipeline(num_layers=3), 3)


# ----- the other families sharing the single block ------------------------------------------------------------

OTHERS = {
    "chroma": (tiny_chroma_transformer, tiny_chroma_inputs, naive_chroma_scores),
    "bria": (tiny_bria_transformer, tiny_bria_inputs, naive_flux_like_scores),
    "ovis_image": (tiny_ovis_image_transformer, tiny_ovis_image_inputs, naive_flux_like_scores),
}


@pytest.mark.parametrize("family", list(OTHERS))
def test_other_families_bit_identical_and_match_the_reference(family):
    """Chroma (per-block ``temb`` slices, padding mask), Bria and Ovis-Image (gated MLP branch): outputs stay
    bit-identical and the scores of a double and a single block match the naive reference, every space and mode."""
    build, build_inputs, reference = OTHERS[family]
    model = build(num_layers=2, num_single_layers=2)
    assert get_adapter(model).name == family
    inputs = build_inputs(batch_size=2)
    embeds = seeded_embeds(3, 32)
    with torch.no_grad():
        plain = model(**inputs)[0]
    for space in ("output", "cross_attention", "value"):
        for mode in ("both", "cross", "self", "none"):
            with ConceptAttention(
                model, concept_embeds=embeds, layers=[0, 3], space=space, concept_attention=mode, softmax=False
            ) as ca:
                with torch.no_grad():
                    output = model(**inputs)[0]
            assert torch.equal(plain, output), (space, mode)
            ours = torch.stack([maps.logits.flatten(1) for maps in ca.batch_maps])  # [B, C, I]
            expected = reference(model, inputs, embeds, [0, 3], space=space, mode=mode).mean(0).float()
            torch.testing.assert_close(ours, expected, rtol=1e-4, atol=1e-4 * expected.abs().max().item())


# ----- FLUX.1 specifics ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def transformer():
    return tiny_flux_transformer(num_layers=2, num_single_layers=2)


def single_processors(model: Any) -> list[Any]:
    return [block.attn.processor for block in model.single_transformer_blocks]


def test_default_selection_stays_on_the_double_blocks(transformer):
    """Without ``layers=`` (and no model defaults) the last double blocks are selected, as before, and the single
    blocks' processors are not touched."""
    before = single_processors(transformer)
    with ConceptAttention(transformer, concept_embeds=seeded_embeds()) as ca:
        assert single_processors(transformer) == before
        transformer(**tiny_flux_inputs())
    assert ca.layers == (0, 1)


def test_layer_numbering_continues_after_the_double_blocks(transformer):
    """Indices 2, 3 are the single blocks (by index or module path); negative indices count from the last double
    block; an index past the single blocks is refused with the valid ranges."""
    embeds = seeded_embeds()
    for layers, paths in (
        ([3], ["single_transformer_blocks.1"]),
        (["single_transformer_blocks.0", 1], ["transformer_blocks.1", "single_transformer_blocks.0"]),
        ([-1], ["transformer_blocks.1"]),
    ):
        with ConceptAttention(transformer, concept_embeds=embeds, layers=layers) as ca:
            transformer(**tiny_flux_inputs())
        assert ca._settings()["resolved_layers"] == paths
        assert all(type(processor) is FluxAttnProcessor for processor in single_processors(transformer))  # restored
    with pytest.raises(ConfigError, match=r"0\.\.1, 2\.\.3 the blocks after them"):
        ConceptAttention(transformer, concept_embeds=embeds, layers=[4])
    with pytest.raises(ConfigError, match="single_transformer_blocks.0 .. single_transformer_blocks.1"):
        ConceptAttention(transformer, concept_embeds=embeds, layers=["single_transformer_blocks.2"])


def test_single_processors_installed_up_to_the_last_selected_block(transformer):
    with ConceptAttention(transformer, concept_embeds=seeded_embeds(), layers=[2]):
        first, second = single_processors(transformer)
        assert isinstance(first, FluxSingleConceptAttnProcessor) and type(first.original) is FluxAttnProcessor
        assert type(second) is FluxAttnProcessor


def test_concept_conditioning_reaches_the_single_blocks(transformer):
    """The single blocks modulate the concepts with the double blocks' concept conditioning: with
    ``concept_conditioning="prompt"`` the scores of a single block follow the prompt-conditioned reference, not the
    null-pooled one."""
    inputs = tiny_flux_inputs()
    embeds = seeded_embeds(3, 32, seed=5)
    assert_reference_not_variant(
        transformer, inputs, embeds, [3], naive_flux_scores,
        wrong=dict(conditioning="null_pooled"), right=dict(conditioning="prompt"), concept_conditioning="prompt",
    )


def test_foreign_single_block_processor_refused_only_when_selected():
    """A custom processor on a single block does not matter while only double blocks are selected; selecting that
    single block is refused by name, and everything installed so far is restored."""
    model = tiny_flux_transformer(num_layers=2, num_single_layers=1)

    class CustomProcessor(FluxAttnProcessor):
        pass

    model.single_transformer_blocks[0].attn.set_processor(CustomProcessor())
    before = dict(model.attn_processors)
    with ConceptAttention(model, concept_embeds=seeded_embeds(), layers=[1]):
        model(**tiny_flux_inputs())
    with pytest.raises(UnsupportedSetupError, match="single_transformer_blocks.0.attn uses CustomProcessor"):
        ConceptAttention(model, concept_embeds=seeded_embeds(), layers=[2]).__enter__()
    after = dict(model.attn_processors)
    assert all(after[name] is before[name] for name in before)
    assert not getattr(model, "_conceptattention_active", False)


def test_explain_stops_after_the_selected_single_block():
    """The explain path with a single block selected: maps as usual, and nothing after that block runs (the final
    norm never does)."""
    pipe = tiny_flux_pipeline(num_layers=2)
    check_explain(pipe, height=32, width=48, grid=(1, 16, 24), skipped_block=pipe.transformer.norm_out, layers=[2])
