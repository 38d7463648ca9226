"""Chroma adapter: the shared battery plus per-block modulation, the padding mask, true CFG and the explain path."""

from __future__ import annotations

import pytest
import torch

from conceptattention import ConceptAttention, explain, get_adapter
from conceptattention.testing_extra import tiny_chroma_inputs, tiny_chroma_pipeline, tiny_chroma_transformer

from .battery import AdapterBattery
from .chroma_reference import naive_chroma_scores


GEN_KW = dict(height=32, width=48, num_inference_steps=2, max_sequence_length=32, output_type="pt", guidance_scale=1.0)
CFG_KW = dict(guidance_scale=3.0, negative_prompt="blurry")


@pytest.fixture(scope="module", autouse=True)
def single_thread():
    """Tiny models run much faster on one thread (the test machine's cores are shared)."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


class TestChromaBattery(AdapterBattery):
    """The shared adapter battery on a tiny Chroma (3 double blocks, padded prompt with Chroma's attention mask)."""

    concept_dim = 32
    expected_grid = (1, 4, 6)
    pipeline_kwargs = GEN_KW
    pipeline_cfg_kwargs = CFG_KW
    expected_pipeline_grid = (1, 16, 24)

    def make_transformer(self):
        return tiny_chroma_transformer(num_layers=3)

    def make_inputs(self, batch_size: int = 1, seed: int = 0):
        return tiny_chroma_inputs(batch_size=batch_size, seed=seed)

    def make_pipeline(self):
        return tiny_chroma_pipeline(num_layers=3)

    def naive_scores(self, transformer, inputs, embeds, layers, space, mode):
        return naive_chroma_scores(transformer, inputs, embeds, layers, space=space, mode=mode)


@pytest.fixture(scope="module")
def transformer():
    return tiny_chroma_transformer(num_layers=3)


@pytest.fixture(scope="module")
def pipe():
    return tiny_chroma_pipeline(num_layers=3)


def generate(pipe, seed=0, **kwargs):
    merged = {**GEN_KW, **kwargs}
    return pipe("a red house by the sea", generator=torch.Generator().manual_seed(seed), **merged).images


def test_registry_finds_chroma(transformer):
    assert get_adapter(transformer).name == "chroma"


def test_concepts_use_their_own_blocks_modulation(transformer):
    """Block i's concepts are modulated by block i's text rows; using block 0's rows everywhere would differ."""
    inputs = tiny_chroma_inputs(batch_size=1)
    embeds = torch.randn(3, 32, generator=torch.Generator().manual_seed(5))
    with ConceptAttention(transformer, concept_embeds=embeds, layers=[2], softmax=False) as ca:
        transformer(**inputs)
    ours = ca.maps.logits.flatten(1)  # [C, I]
    right = naive_chroma_scores(transformer, inputs, embeds, [2])[0, 0].float()
    wrong = naive_chroma_scores(transformer, inputs, embeds, [2], concept_modulation_block=0)[0, 0].float()
    torch.testing.assert_close(ours, right, rtol=1e-4, atol=1e-4 * right.abs().max().item())
    assert (ours - wrong).abs().max() > 100 * (ours - right).abs().max()


def test_padding_mask_changes_image_not_concept_keys(transformer):
    """The prompt's padding mask matters for the image (so the test is sensitive) and outputs stay bit-identical."""
    masked = tiny_chroma_inputs(padded_text=4)
    unmasked = dict(masked, attention_mask=None)
    with torch.no_grad():
        assert not torch.equal(transformer(**masked)[0], transformer(**unmasked)[0])
    reference = transformer(**masked)[0]
    with ConceptAttention(transformer, concept_embeds=torch.randn(2, 32)):
        assert torch.equal(transformer(**masked)[0], reference)


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
    torch.testing.assert_close(with_cfg.maps.maps, without_cfg.maps.maps)
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
    tokens = pipe.tokenizer(concepts, padding="longest", return_tensors="pt")
    with torch.no_grad():
        hidden = pipe.text_encoder(tokens.input_ids, attention_mask=tokens.attention_mask)[0]  # [C, L, D]
    content = tokens.attention_mask.bool() & (tokens.input_ids != pipe.tokenizer.eos_token_id)
    encoded = ChromaAdapter().encode_concepts(pipe, concepts, "mean")
    for index in range(2):
        torch.testing.assert_close(encoded[index], hidden[index, content[index]].mean(0))


def test_explain_shape_and_sums(pipe):
    from PIL import Image

    image = Image.fromarray((torch.rand(40, 56, 3, generator=torch.Generator().manual_seed(0)) * 255).byte().numpy())
    maps = explain(pipe, image, ["house", "sky"], height=32, width=48, num_samples=2, caption="a house")
    assert maps.maps.shape == (2, 1, 16, 24)
    torch.testing.assert_close(maps.maps.sum(0), torch.ones(1, 16, 24))
    one = explain(pipe, image, ["house", "sky"], height=32, width=48, num_samples=1)
    assert not torch.allclose(one.maps, maps.maps)
    with pytest.raises(ValueError, match="multiples"):
        explain(pipe, image, ["house", "sky"], height=33, width=48)
    calls = []
    handle = pipe.transformer.single_transformer_blocks[0].register_forward_pre_hook(lambda *args: calls.append(1))
    try:
        explain(pipe, image, ["house", "sky"], height=32, width=48, layers=[1])
    finally:
        handle.remove()
    assert calls == []  # early exit after the last selected double block


def test_conditioning_options_coincide(transformer):
    """Chroma has no pooled text: "null_pooled" and "prompt" both use the block's own modulation rows."""
    inputs = tiny_chroma_inputs()
    embeds = torch.randn(2, 32, generator=torch.Generator().manual_seed(6))
    maps = []
    for conditioning in ("null_pooled", "prompt"):
        with ConceptAttention(transformer, concept_embeds=embeds, concept_conditioning=conditioning) as ca:
            transformer(**inputs)
        maps.append(ca.maps.maps)
    assert torch.equal(maps[0], maps[1])
