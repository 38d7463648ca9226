"""Qwen-Image adapter: the shared battery, MSRoPE concept positions, zero_cond_t, padding mask, refusals, encoding."""

from __future__ import annotations

import pytest
import torch

from conceptattention import ConceptAttention, UnsupportedSetupError, explain, get_adapter
from conceptattention.adapters.qwenimage import QwenImageAdapter
from conceptattention.testing_extra import (
    tiny_qwenimage_inputs,
    tiny_qwenimage_pipeline,
    tiny_qwenimage_transformer,
)

from .battery import AdapterBattery
from .qwenimage_reference import naive_qwenimage_scores


GEN_KW = dict(height=32, width=48, num_inference_steps=2, max_sequence_length=64, output_type="pt")


@pytest.fixture(scope="module", autouse=True)
def single_thread():
    """Tiny models run much faster on one thread (the test machine's cores are shared)."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


class TestQwenImageBattery(AdapterBattery):
    """The shared adapter battery on a tiny Qwen-Image (3 blocks, padded prompt) and a tiny QwenImagePipeline."""

    concept_dim = 16
    expected_grid = (1, 4, 6)
    pipeline_kwargs = GEN_KW
    pipeline_cfg_kwargs = dict(true_cfg_scale=2.0, negative_prompt="blurry")
    expected_pipeline_grid = (1, 4, 6)

    def make_transformer(self):
        return tiny_qwenimage_transformer(num_layers=3)

    def make_inputs(self, batch_size: int = 1, seed: int = 0):
        return tiny_qwenimage_inputs(batch_size=batch_size, seed=seed)

    def make_pipeline(self):
        return tiny_qwenimage_pipeline(num_layers=3)

    def naive_scores(self, transformer, inputs, embeds, layers, space, mode):
        return naive_qwenimage_scores(transformer, inputs, embeds, layers, space=space, mode=mode)


@pytest.fixture(scope="module")
def transformer():
    return tiny_qwenimage_transformer(num_layers=3)


@pytest.fixture(scope="module")
def pipe():
    return tiny_qwenimage_pipeline(num_layers=3)


def test_registry(transformer):
    assert get_adapter(transformer).name == "qwenimage"


def test_concepts_sit_after_the_prompt_and_share_one_position(transformer):
    inputs = tiny_qwenimage_inputs(text_tokens=7, padded_text=0)
    embeds = torch.randn(3, 16, generator=torch.Generator().manual_seed(3))
    with ConceptAttention(transformer, concept_embeds=embeds, layers=[1], softmax=False) as ca:
        transformer(**inputs)
    ours = ca.maps.logits.flatten(1)  # [C, I]
    right = naive_qwenimage_scores(transformer, inputs, embeds, [1])[0, 0].float()
    colliding = naive_qwenimage_scores(transformer, inputs, embeds, [1], concept_position=0)[0, 0].float()
    torch.testing.assert_close(ours, right, rtol=1e-4, atol=1e-4 * right.abs().max().item())
    assert (ours - colliding).abs().max() > 100 * (ours - right).abs().max()
    order = [1, 2, 0]
    with ConceptAttention(transformer, concept_embeds=embeds[order], layers=[1], softmax=False) as permuted:
        transformer(**inputs)
    torch.testing.assert_close(permuted.maps.logits.flatten(1), ours[order], rtol=1e-5, atol=1e-5)


def test_zero_cond_t_uses_first_half_of_temb():
    model = tiny_qwenimage_transformer(num_layers=2, zero_cond_t=True, seed=2)
    inputs = tiny_qwenimage_inputs(batch_size=2)
    embeds = torch.randn(2, 16)
    reference = model(**inputs)[0]
    with ConceptAttention(model, concept_embeds=embeds, layers=[0, 1], softmax=False) as ca:
        output = model(**inputs)[0]
    assert torch.equal(reference, output)
    expected = naive_qwenimage_scores(model, inputs, embeds, [0, 1]).mean(0).float()  # [B, C, I]
    ours = torch.stack([maps.logits.flatten(1) for maps in ca.batch_maps])
    torch.testing.assert_close(ours, expected, rtol=1e-4, atol=1e-4 * expected.abs().max().item())


def test_padding_mask_is_kept_for_the_image(transformer):
    masked = tiny_qwenimage_inputs(padded_text=3)
    with torch.no_grad():
        assert not torch.equal(
            transformer(**masked)[0], transformer(**dict(masked, encoder_hidden_states_mask=None))[0]
        )
        reference = transformer(**masked)[0]
    with ConceptAttention(transformer, concept_embeds=torch.randn(2, 16)):
        assert torch.equal(transformer(**masked)[0], reference)


def test_condition_images_and_layered_rope_refused(transformer):
    inputs = tiny_qwenimage_inputs(condition_shape=(1, 2, 2))
    with pytest.raises(ValueError, match="condition images"):
        with ConceptAttention(transformer, concept_embeds=torch.randn(2, 16)):
            transformer(**inputs)
    from diffusers import QwenImageTransformer2DModel

    torch.manual_seed(0)
    layered = QwenImageTransformer2DModel(
        patch_size=2,
        in_channels=16,
        out_channels=4,
        num_layers=1,
        attention_head_dim=16,
        num_attention_heads=3,
        joint_attention_dim=16,
        axes_dims_rope=(8, 4, 4),
        use_layer3d_rope=True,
    )
    with pytest.raises(UnsupportedSetupError, match="Layered"):
        ConceptAttention(layered, concept_embeds=torch.randn(2, 16)).__enter__()


def test_concept_encoding_in_prompt_template(pipe):
    concepts = ["red car", "sky"]
    encoded = QwenImageAdapter().encode_concepts(pipe, concepts, "mean")
    tokenizer, template = pipe.tokenizer, pipe.prompt_template_encode
    for index, concept in enumerate(concepts):
        text = template.format(concept)
        ids = tokenizer(text, return_tensors="pt").input_ids  # [1, L]
        with torch.no_grad():
            hidden = pipe.text_encoder(input_ids=ids, output_hidden_states=True).hidden_states[-1][0]  # [L, D]
        start = len(tokenizer(text[: text.index("user\n") + 5]).input_ids)
        content = slice(start, start + len(tokenizer(concept).input_ids))
        assert tokenizer.decode(ids[0, content]) == concept
        torch.testing.assert_close(encoded[index], hidden[content].mean(0), rtol=1e-5, atol=1e-6)


def test_explain_shape_and_samples(pipe):
    from PIL import Image

    image = Image.fromarray((torch.rand(40, 56, 3, generator=torch.Generator().manual_seed(0)) * 255).byte().numpy())
    two = explain(pipe, image, ["house", "sky"], height=32, width=48, num_samples=2, caption="a house")
    assert two.maps.shape == (2, 1, 4, 6)
    torch.testing.assert_close(two.maps.sum(0), torch.ones(1, 4, 6))
    one = explain(pipe, image, ["house", "sky"], height=32, width=48, num_samples=1, caption="a house")
    assert not torch.allclose(one.maps, two.maps)
    with pytest.raises(ValueError, match="multiples of 8"):
        explain(pipe, image, ["house", "sky"], height=36, width=48)
    calls = []
    handle = pipe.transformer.transformer_blocks[2].register_forward_pre_hook(lambda *args: calls.append(1))
    try:
        explain(pipe, image, ["house", "sky"], height=32, width=48, layers=[1])
    finally:
        handle.remove()
    assert calls == []  # early exit after the last selected block
