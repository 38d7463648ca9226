"""Adapters are shared singletons: run state lives on the session, options on the config (issue 13).

Two ``ConceptAttention`` blocks that use the same registered adapter at once (nested, calls interleaved) must not see
each other's state, and no adapter instance may change during a run.
"""

from __future__ import annotations

import copy

import pytest
import torch

from conceptattention import ConceptAttention, get_adapter
from conceptattention.adapters import _BUILTIN_ADAPTERS, _builtin
from conceptattention.adapters.sd3 import SD3Adapter
from conceptattention.testing import tiny_chroma_inputs, tiny_chroma_transformer, tiny_sd3_pipeline


SD3_KW = dict(height=32, width=48, num_inference_steps=2, guidance_scale=1.0, max_sequence_length=16, output_type="pt")


@pytest.mark.parametrize("transformer_class", sorted(_BUILTIN_ADAPTERS))
def test_builtin_adapters_hold_no_instance_state(transformer_class):
    """Every built-in adapter is registered as an instance without attributes of its own (nothing per run)."""
    adapter = _builtin(transformer_class)
    assert adapter is not None
    assert vars(adapter) == {}


def test_chroma_nested_sessions_keep_their_own_true_cfg_state():
    """True-CFG detection (same latent tensor, other prompt) is per ``with`` block, not per adapter.

    Two Chroma transformers get the very same latent tensor: with one state shared through the adapter, the second
    block's first call would be taken for the unconditional twin of the first block's call and dropped.
    """
    first, second = tiny_chroma_transformer(seed=0), tiny_chroma_transformer(seed=1)
    adapter = get_adapter(first)
    assert get_adapter(second) is adapter  # one shared singleton
    cond = tiny_chroma_inputs(seed=0)
    uncond = dict(tiny_chroma_inputs(seed=1), hidden_states=cond["hidden_states"])  # same latents, other prompt
    embeds = torch.randn(2, 32, generator=torch.Generator().manual_seed(0))
    before = copy.deepcopy(vars(adapter))
    with torch.no_grad():
        with ConceptAttention(first, concept_embeds=embeds) as alone_first:
            first(**cond)
        with ConceptAttention(second, concept_embeds=embeds) as alone_second:
            second(**uncond)
        with ConceptAttention(first, concept_embeds=embeds) as a, ConceptAttention(second, concept_embeds=embeds) as b:
            first(**cond)  # a: step 0
            second(**uncond)  # b: its own first call, recorded (not a twin of a's call)
            first(**uncond)  # a: the unconditional twin of its own previous call, not recorded
            second(**cond)  # b: the twin of its own previous call, not recorded
    assert (a.session.num_recorded_calls, b.session.num_recorded_calls) == (1, 1)
    assert torch.equal(a.maps.tensor, alone_first.maps.tensor)
    assert torch.equal(b.maps.tensor, alone_second.maps.tensor)
    assert vars(adapter) == before


def test_chroma_new_block_starts_without_previous_call():
    """A block's first call is never the twin of the last call of an earlier block on the same transformer."""
    transformer = tiny_chroma_transformer()
    cond = tiny_chroma_inputs(seed=0)
    uncond = dict(tiny_chroma_inputs(seed=1), hidden_states=cond["hidden_states"])
    embeds = torch.randn(2, 32)
    with torch.no_grad():
        with ConceptAttention(transformer, concept_embeds=embeds):
            transformer(**cond)
        with ConceptAttention(transformer, concept_embeds=embeds) as ca:
            transformer(**uncond)
    assert ca.session.num_recorded_calls == 1


def test_sd3_nested_blocks_with_different_concept_text_encoders():
    """The concept text encoder is an option of each block: two SD3 pipelines share one adapter, one uses T5."""
    first, second = tiny_sd3_pipeline(num_layers=2, seed=0), tiny_sd3_pipeline(num_layers=2, seed=1)
    adapter = get_adapter(first)
    assert get_adapter(second) is adapter
    concepts = ["house", "sea"]
    before = copy.deepcopy(vars(adapter))

    def generate(pipe):
        return pipe("a house by the sea", generator=torch.Generator().manual_seed(0), **SD3_KW).images

    with ConceptAttention(first, concepts, concept_text_encoder="t5") as alone_first:
        generate(first)
    with ConceptAttention(second, concepts) as alone_second:
        generate(second)
    with ConceptAttention(first, concepts, concept_text_encoder="t5") as a, ConceptAttention(second, concepts) as b:
        generate(first)
        generate(second)
    t5 = adapter.encode_concepts(first, concepts, "mean", text_encoder="t5")
    clip = adapter.encode_concepts(second, concepts, "mean", text_encoder="clip")
    assert torch.equal(a.session.concept_embeds, t5) and torch.equal(b.session.concept_embeds, clip)
    assert not torch.equal(t5, adapter.encode_concepts(first, concepts, "mean"))  # the option changes something
    assert torch.equal(a.maps.tensor, alone_first.maps.tensor) and torch.equal(b.maps.tensor, alone_second.maps.tensor)
    assert a.maps.settings["concept_text_encoder"] == "t5" and b.maps.settings["concept_text_encoder"] is None
    assert vars(adapter) == before == {}


def test_concept_text_encoder_refused_where_not_offered():
    transformer = tiny_chroma_transformer()
    with pytest.raises(ValueError, match="not offered by the chroma adapter"):
        ConceptAttention(transformer, concept_embeds=torch.randn(2, 32), concept_text_encoder="t5")
    assert SD3Adapter.concept_text_encoders == ("clip", "t5")
