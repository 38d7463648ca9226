"""Krea 2 adapter, the single-stream extension (beyond the paper): the shared battery on a tiny Krea 2 (grouped-query
attention with a sigmoid output gate, shared weights and modulation, text fusion, padded text) against a naive float64
reference with one masked attention over ``[text, image, concepts]``. No tiny pipeline: ``Krea2Pipeline`` needs a
Qwen3-VL text encoder and runs CFG as two calls without a cond/uncond context (documented gap, docs/models.md)."""

from __future__ import annotations

import pytest
import torch
from diffusers.models.transformers.transformer_krea2 import Krea2AttnProcessor

from conceptattention import ConceptAttention, get_adapter
from conceptattention.testing_zoo import tiny_krea2_inputs, tiny_krea2_transformer

from .battery import (
    assert_concepts_permute,
    assert_right_not_wrong,
    assert_subclassed_processor_refused,
    layer_logits,
    seeded_embeds,
)
from .krea2_reference import naive_krea2_scores
from .zoo_battery import ZooBattery


class TestKrea2Battery(ZooBattery):
    """The shared adapter battery on a tiny Krea 2 (3 blocks); the bare transformer only."""

    concept_dim = 32
    expected_grid = (1, 4, 6)
    tiny_transformer = tiny_krea2_transformer
    tiny_inputs = tiny_krea2_inputs
    naive_reference = naive_krea2_scores


@pytest.fixture(scope="module")
def transformer():
    return tiny_krea2_transformer()


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
    ours = layer_logits(transformer, inputs, embeds, [2])  # [C, I]
    right = naive_krea2_scores(transformer, inputs, embeds, [2])[0, 0].float()
    other = naive_krea2_scores(transformer, inputs, embeds, [2], variant=wrong)[0, 0].float()
    assert_right_not_wrong(ours, right, other)


def test_concepts_permute(transformer):
    inputs = tiny_krea2_inputs()
    embeds = seeded_embeds(3, 32, seed=5)
    assert_concepts_permute(transformer, inputs, embeds, [1], layer_logits(transformer, inputs, embeds, [1]), [1, 2, 0])


def test_subclassed_processor_refused():
    model = tiny_krea2_transformer(num_layers=2)
    assert_subclassed_processor_refused(model, model.transformer_blocks[1].attn, Krea2AttnProcessor, 32)
