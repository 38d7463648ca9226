"""Qwen-Image adapter: the shared battery, MSRoPE concept positions, zero_cond_t, padding mask, refusals, encoding."""

from __future__ import annotations

import pytest
import torch

from conceptattention import ConceptAttention, UnsupportedSetupError, get_adapter
from conceptattention.adapters.qwenimage import QwenImageAdapter
from conceptattention.testing import (
    tiny_qwenimage_inputs,
    tiny_qwenimage_pipeline,
    tiny_qwenimage_transformer,
)
from conceptattention.testing.battery import (
    AdapterBattery,
    assert_close_scaled,
    assert_concepts_permute,
    assert_mean_of_concept_span,
    assert_padding_mask_kept,
    assert_reference_not_variant,
    batch_logits,
    check_explain,
    module_fixtures,
    seeded_embeds,
)
from conceptattention.testing.references.qwenimage import naive_qwenimage_scores


GEN_KW = dict(height=32, width=48, num_inference_steps=2, max_sequence_length=64, output_type="pt")


class TestQwenImageBattery(AdapterBattery):
    """The shared adapter battery on a tiny Qwen-Image (3 blocks, padded prompt) and a tiny QwenImagePipeline."""

    concept_dim = 16
    expected_grid = (1, 4, 6)
    pipeline_kwargs = GEN_KW
    pipeline_cfg_kwargs = dict(true_cfg_scale=2.0, negative_prompt="blurry")
    expected_pipeline_grid = (1, 4, 6)
    tiny_transformer = tiny_qwenimage_transformer
    tiny_inputs = tiny_qwenimage_inputs
    tiny_pipeline = tiny_qwenimage_pipeline
    naive_reference = naive_qwenimage_scores


transformer, pipe = module_fixtures(TestQwenImageBattery)


def test_registry(transformer):
    assert get_adapter(transformer).name == "qwenimage"


def test_concepts_sit_after_the_prompt_and_share_one_position(transformer):
    inputs = tiny_qwenimage_inputs(text_tokens=7, padded_text=0)
    embeds = seeded_embeds(3, 16, seed=3)
    ours = assert_reference_not_variant(
        transformer, inputs, embeds, [1], naive_qwenimage_scores, wrong=dict(concept_position=0)
    )
    assert_concepts_permute(transformer, inputs, embeds, [1], ours, order=[1, 2, 0])


def test_zero_cond_t_uses_first_half_of_temb():
    model = tiny_qwenimage_transformer(num_layers=2, zero_cond_t=True, seed=2)
    inputs = tiny_qwenimage_inputs(batch_size=2)
    embeds = torch.randn(2, 16)
    reference = model(**inputs)[0]
    with ConceptAttention(model, concept_embeds=embeds, layers=[0, 1], softmax=False) as ca:
        output = model(**inputs)[0]
    assert torch.equal(reference, output)
    expected = naive_qwenimage_scores(model, inputs, embeds, [0, 1]).mean(0).float()  # [B, C, I]
    assert_close_scaled(batch_logits(ca), expected)


def test_padding_mask_is_kept_for_the_image(transformer):
    masked = tiny_qwenimage_inputs(padded_text=3)
    assert_padding_mask_kept(transformer, masked, dict(masked, encoder_hidden_states_mask=None), dim=16)


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
        assert_mean_of_concept_span(encoded[index], hidden, ids, tokenizer, concept, start, rtol=1e-5, atol=1e-6)


def test_explain_shape_and_samples(pipe):
    check_explain(
        pipe, height=32, width=48, grid=(1, 4, 6), bad_height=36, bad_match="multiples of 8",
        skipped_block=pipe.transformer.transformer_blocks[2], layers=[1],  # the last selected block
    )
