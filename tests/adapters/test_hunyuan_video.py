"""HunyuanVideo adapter: the shared battery (video maps per latent frame), refiner path, conditioning, refusals."""

from __future__ import annotations

import pytest
import torch

from conceptattention import ConceptAttention, UnsupportedSetupError, explain, get_adapter
from conceptattention.adapters.hunyuan_video import HunyuanVideoAdapter
from conceptattention.testing import (
    tiny_hunyuan_video_inputs,
    tiny_hunyuan_video_pipeline,
    tiny_hunyuan_video_transformer,
)
from conceptattention.testing.battery import (
    AdapterBattery,
    assert_close_scaled,
    assert_mean_of_concept_span,
    layer_logits,
    module_fixtures,
    seeded_embeds,
)
from conceptattention.testing.references.hunyuan_video import naive_hunyuan_video_scores


GEN_KW = dict(
    height=16,
    width=16,
    num_frames=9,
    num_inference_steps=2,
    max_sequence_length=16,
    prompt_template={"template": "{}", "crop_start": 0},
    output_type="latent",  # the tiny video VAE is the slow part; latents are what bit-identity is about
)


class TestHunyuanVideoBattery(AdapterBattery):
    """The shared adapter battery on a tiny HunyuanVideo (3 double blocks) and a tiny HunyuanVideoPipeline."""

    concept_dim = 16
    expected_grid = (2, 3, 4)
    pipeline_kwargs = GEN_KW
    pipeline_cfg_kwargs = dict(true_cfg_scale=2.0, negative_prompt="blurry")
    expected_pipeline_grid = (3, 2, 2)
    tiny_transformer = tiny_hunyuan_video_transformer
    tiny_inputs = tiny_hunyuan_video_inputs
    tiny_pipeline = tiny_hunyuan_video_pipeline
    naive_reference = naive_hunyuan_video_scores


transformer, pipe = module_fixtures(TestHunyuanVideoBattery)


def test_registry_and_modality(transformer):
    adapter = get_adapter(transformer)
    assert adapter.name == "hunyuan_video" and adapter.modality == "video"


def test_prompt_conditioning_option(transformer):
    inputs = tiny_hunyuan_video_inputs()
    embeds = seeded_embeds(3, 16, seed=4)
    logits = {}
    for conditioning in ("null_pooled", "prompt"):
        logits[conditioning] = layer_logits(transformer, inputs, embeds, [2], concept_conditioning=conditioning)
        expected = naive_hunyuan_video_scores(transformer, inputs, embeds, [2], conditioning=conditioning)[0, 0]
        assert_close_scaled(logits[conditioning], expected.float())
    assert not torch.allclose(logits["null_pooled"], logits["prompt"])


def test_maps_are_per_frame(transformer):
    inputs = tiny_hunyuan_video_inputs(frames=3)
    with ConceptAttention(transformer, concept_embeds=torch.randn(2, 16)) as ca:
        transformer(**inputs)
    maps = ca.maps.tensor  # [C, F, h, w]
    assert maps.shape == (2, 3, 3, 4)
    assert not torch.allclose(maps[:, 0], maps[:, 1])


def test_token_replace_refused():
    from diffusers import HunyuanVideoTransformer3DModel

    torch.manual_seed(0)
    model = HunyuanVideoTransformer3DModel(
        in_channels=4,
        out_channels=4,
        num_attention_heads=2,
        attention_head_dim=10,
        num_layers=1,
        num_single_layers=1,
        num_refiner_layers=1,
        patch_size=1,
        patch_size_t=1,
        text_embed_dim=16,
        pooled_projection_dim=8,
        rope_axes_dim=(2, 4, 4),
        image_condition_type="token_replace",
    )
    with pytest.raises(UnsupportedSetupError, match="token-replace"):
        ConceptAttention(model, concept_embeds=torch.randn(2, 16)).__enter__()


def test_concept_encoding_in_llama_template(pipe):
    from diffusers.pipelines.hunyuan_video.pipeline_hunyuan_video import DEFAULT_PROMPT_TEMPLATE

    concepts = ["red car", "sky"]
    encoded = HunyuanVideoAdapter().encode_concepts(pipe, concepts, "mean")
    tokenizer, template = pipe.tokenizer, DEFAULT_PROMPT_TEMPLATE["template"]
    for index, concept in enumerate(concepts):
        text = template.format(concept)
        ids = tokenizer(text, return_tensors="pt").input_ids  # [1, L]
        with torch.no_grad():
            hidden = pipe.text_encoder(input_ids=ids, output_hidden_states=True).hidden_states[-3][0]  # [L, D]
        start = len(tokenizer(text[: text.rindex(concept)]).input_ids)
        assert_mean_of_concept_span(encoded[index], hidden, ids, tokenizer, concept, start, rtol=1e-5, atol=1e-6)


def test_explain_is_refused_clearly(pipe):
    from PIL import Image

    with pytest.raises(NotImplementedError, match="text-to-video"):
        explain(pipe, Image.new("RGB", (16, 16)), ["house", "sky"], height=16, width=16)
