"""AuraFlow adapter: the shared battery (post-norm joint blocks, batched CFG), refusals, encoding, explain."""

from __future__ import annotations

import pytest
import torch
from diffusers.models.attention_processor import AuraFlowAttnProcessor2_0

from conceptattention import ConceptAttention, UnsupportedSetupError, explain, get_adapter
from conceptattention.adapters.auraflow import AuraFlowAdapter
from conceptattention.testing_extra import tiny_auraflow_inputs, tiny_auraflow_pipeline, tiny_auraflow_transformer

from .auraflow_reference import naive_auraflow_scores
from .battery import AdapterBattery


GEN_KW = dict(height=16, width=24, num_inference_steps=2, max_sequence_length=32, output_type="pt", guidance_scale=1.0)
CFG_KW = dict(guidance_scale=3.0, negative_prompt="blurry")


@pytest.fixture(scope="module", autouse=True)
def single_thread():
    """Tiny models run much faster on one thread (the test machine's cores are shared)."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


class TestAuraFlowBattery(AdapterBattery):
    """The shared adapter battery on a tiny AuraFlow (3 joint + 1 single block) and a tiny AuraFlowPipeline."""

    concept_dim = 32
    expected_grid = (1, 4, 6)
    pipeline_kwargs = GEN_KW
    pipeline_cfg_kwargs = CFG_KW
    expected_pipeline_grid = (1, 8, 12)

    def make_transformer(self):
        return tiny_auraflow_transformer(num_layers=3)

    def make_inputs(self, batch_size: int = 1, seed: int = 0):
        return tiny_auraflow_inputs(batch_size=batch_size, seed=seed)

    def make_pipeline(self):
        return tiny_auraflow_pipeline(num_layers=3)

    def naive_scores(self, transformer, inputs, embeds, layers, space, mode):
        return naive_auraflow_scores(transformer, inputs, embeds, layers, space=space, mode=mode)


@pytest.fixture(scope="module")
def transformer():
    return tiny_auraflow_transformer(num_layers=3)


@pytest.fixture(scope="module")
def pipe():
    return tiny_auraflow_pipeline(num_layers=3)


def generate(pipe, seed=0, **kwargs):
    merged = {**GEN_KW, **kwargs}
    return pipe("a red house by the sea", generator=torch.Generator().manual_seed(seed), **merged).images


def test_registry_paths_and_default_layers(transformer):
    adapter = get_adapter(transformer)
    assert adapter.name == "auraflow"
    assert adapter.default_layers(4) == (0, 1, 2, 3)
    with ConceptAttention(transformer, concept_embeds=torch.randn(2, 32), layers=["joint_transformer_blocks.2"]) as ca:
        transformer(**tiny_auraflow_inputs())
    assert ca.maps.config["resolved_layers"] == ["joint_transformer_blocks.2"]


def test_cfg_reports_the_conditional_half(pipe):
    with ConceptAttention(pipe, ["house", "sea"], batch_half="all") as both:
        generate(pipe, **CFG_KW)
    with ConceptAttention(pipe, ["house", "sea"]) as cond:
        generate(pipe, **CFG_KW)
    assert len(both.batch_maps) == 2 and len(cond.batch_maps) == 1
    torch.testing.assert_close(cond.maps.maps, both.batch_maps[1].maps)
    assert not torch.allclose(both.batch_maps[0].maps, both.batch_maps[1].maps)


def test_foreign_processor_refused():
    model = tiny_auraflow_transformer(num_layers=2)

    class CustomProcessor(AuraFlowAttnProcessor2_0):
        pass

    model.joint_transformer_blocks[1].attn.set_processor(CustomProcessor())
    with pytest.raises(UnsupportedSetupError, match="CustomProcessor"):
        ConceptAttention(model, concept_embeds=torch.randn(2, 32)).__enter__()


def test_concept_encoding_uses_masked_umt5(pipe):
    concepts = ["red car", "sky"]
    tokens = pipe.tokenizer(concepts, padding="longest", return_tensors="pt")
    with torch.no_grad():
        hidden = pipe.text_encoder(input_ids=tokens.input_ids, attention_mask=tokens.attention_mask)[0]  # [C, L, D]
    content = tokens.attention_mask.bool() & (tokens.input_ids != pipe.tokenizer.eos_token_id)
    encoded = AuraFlowAdapter().encode_concepts(pipe, concepts, "first")
    for index in range(2):
        torch.testing.assert_close(encoded[index], hidden[index, content[index].nonzero()[0, 0]])


def test_explain_shape_resolution_and_samples(pipe):
    from PIL import Image

    image = Image.fromarray((torch.rand(40, 56, 3, generator=torch.Generator().manual_seed(0)) * 255).byte().numpy())
    two = explain(pipe, image, ["house", "sky"], height=16, width=24, num_samples=2, caption="a house")
    assert two.maps.shape == (2, 1, 8, 12)
    torch.testing.assert_close(two.maps.sum(0), torch.ones(1, 8, 12))
    one = explain(pipe, image, ["house", "sky"], height=16, width=24, num_samples=1, caption="a house")
    assert not torch.allclose(one.maps, two.maps)
    height, width = AuraFlowAdapter().explain_resolution(pipe, image.size)
    assert height % 2 == 0 and width % 2 == 0 and height < width
    with pytest.raises(ValueError, match="multiples of 2"):
        explain(pipe, image, ["house", "sky"], height=15, width=24)
    calls = []
    handle = pipe.transformer.single_transformer_blocks[0].register_forward_pre_hook(lambda *args: calls.append(1))
    try:
        explain(pipe, image, ["house", "sky"], height=16, width=24, layers=[0])
    finally:
        handle.remove()
    assert calls == []  # early exit after the last selected joint block
