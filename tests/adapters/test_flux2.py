"""FLUX.2 adapter: the shared battery (with a tiny Flux2KleinPipeline), concept RoPE ids, refusals and text encoding.

The battery's pipeline is ``Flux2KleinPipeline`` (Qwen3 text encoder, built offline). ``Flux2Pipeline`` (FLUX.2-dev,
guidance-distilled, Mistral-Small-3 text encoder) is tested too, with one difference from the real thing: its
tokenizer is a ``PixtralProcessor``, which needs torchvision (not installed), so a tokenizer with a Mistral-style chat
template stands in for it.
"""

from __future__ import annotations

import pytest
import torch
from diffusers.models.transformers.transformer_flux2 import Flux2AttnProcessor, Flux2KVAttnProcessor

from conceptattention import ConceptAttention, UnsupportedSetupError, get_adapter
from conceptattention.adapters.flux2 import Flux2Adapter, template_content_span
from conceptattention.testing import (
    tiny_flux2_inputs,
    tiny_flux2_klein_pipeline,
    tiny_flux2_pipeline,
    tiny_flux2_transformer,
)
from conceptattention.testing.battery import (
    AdapterBattery,
    assert_close_scaled,
    assert_concepts_permute,
    assert_mean_of_concept_span,
    assert_reference_not_variant,
    check_explain,
    module_fixtures,
    seeded_embeds,
)
from conceptattention.testing.references.flux2 import naive_flux2_scores


GEN_KW = dict(height=32, width=48, num_inference_steps=2, max_sequence_length=64, output_type="pt", guidance_scale=1.0)


class TestFlux2Battery(AdapterBattery):
    """The shared adapter battery on a tiny FLUX.2 (3 double blocks) and a tiny Flux2KleinPipeline (whose first
    positional argument is ``image``: the battery passes the prompt by keyword)."""

    concept_dim = 24
    expected_grid = (1, 4, 6)
    pipeline_kwargs = GEN_KW
    pipeline_cfg_kwargs = dict(guidance_scale=3.0)
    expected_pipeline_grid = (1, 16, 24)
    tiny_transformer = tiny_flux2_transformer
    tiny_inputs = tiny_flux2_inputs
    tiny_pipeline = tiny_flux2_klein_pipeline
    naive_reference = naive_flux2_scores


transformer, pipe = module_fixtures(TestFlux2Battery)


def test_registry_and_default_layers(transformer):
    adapter = get_adapter(transformer)
    assert adapter.name == "flux2"
    assert adapter.default_layers(8) == (5, 6, 7)


def test_concepts_sit_after_the_prompt_and_share_one_position(transformer):
    inputs = tiny_flux2_inputs(text_tokens=6)
    embeds = seeded_embeds(3, 24, seed=3)
    # the right reference puts the concepts at l = 6, the wrong one at a colliding l = 0
    ours = assert_reference_not_variant(transformer, inputs, embeds, [1], naive_flux2_scores, wrong=dict(concept_l=0))
    assert_concepts_permute(transformer, inputs, embeds, [1], ours, order=[2, 0, 1])


def test_guidance_distilled_model():
    model = tiny_flux2_transformer(num_layers=2, guidance_embeds=True, seed=1)
    inputs = tiny_flux2_inputs(guidance=3.5)
    embeds = torch.randn(2, 24)
    reference = model(**inputs)[0]
    with ConceptAttention(model, concept_embeds=embeds, layers=[1], softmax=False) as ca:
        output = model(**inputs)[0]
    assert torch.equal(reference, output)
    assert_close_scaled(ca.maps.logits.flatten(1), naive_flux2_scores(model, inputs, embeds, [1])[0, 0].float())


def test_kv_cache_processor_refused():
    model = tiny_flux2_transformer(num_layers=2)
    model.transformer_blocks[1].attn.set_processor(Flux2KVAttnProcessor())
    with pytest.raises(UnsupportedSetupError, match="KV cache"):
        ConceptAttention(model, concept_embeds=torch.randn(2, 24)).__enter__()
    assert not getattr(model, "_conceptattention_active", False)
    model.transformer_blocks[1].attn.set_processor(Flux2AttnProcessor())
    with pytest.raises(UnsupportedSetupError, match="kv_cache_mode"):
        with ConceptAttention(model, concept_embeds=torch.randn(2, 24)):
            model(**tiny_flux2_inputs(), kv_cache_mode="cached")


def test_reference_image_tokens_refused(transformer):
    inputs = tiny_flux2_inputs(height=2, width=3)
    reference_ids = inputs["img_ids"].clone()
    reference_ids[..., 0] = 10  # a reference image's time coordinate
    inputs["img_ids"] = torch.cat([inputs["img_ids"], reference_ids], dim=1)
    inputs["hidden_states"] = torch.cat([inputs["hidden_states"], inputs["hidden_states"]], dim=1)
    with pytest.raises(ValueError, match="reference-image"):
        with ConceptAttention(transformer, concept_embeds=torch.randn(2, 24)):
            transformer(**inputs)


def test_template_content_span():
    assert template_content_span([1, 2, 9, 9, 3], [1, 2, 3]) == (2, 4)
    # template tokens inside the concept do not confuse it
    assert template_content_span([5, 6, 5, 7, 7], [5, 6, 7]) == (2, 4)


def test_concept_encoding_in_chat_template(pipe):
    concepts = ["red car", "sky"]
    encoded = Flux2Adapter().encode_concepts(pipe, concepts, "mean")  # [C, 24]
    assert encoded.shape == (2, 24)
    tokenizer = pipe.tokenizer
    for index, concept in enumerate(concepts):
        chat = tokenizer.apply_chat_template(
            [{"role": "user", "content": concept}], tokenize=False, add_generation_prompt=True, enable_thinking=False
        )
        ids = tokenizer(chat, return_tensors="pt").input_ids  # [1, L]
        with torch.no_grad():
            states = pipe.text_encoder(input_ids=ids, output_hidden_states=True).hidden_states
        hidden = torch.cat([states[k] for k in (9, 18, 27)], dim=-1)[0]  # [L, 24]
        start = len(tokenizer(chat[: chat.index(concept)]).input_ids)
        assert_mean_of_concept_span(encoded[index], hidden, ids, tokenizer, concept, start)


def test_pipeline_concept_strings_change_with_pooling(pipe):
    maps = {}
    for pooling in ("mean", "last"):
        with ConceptAttention(pipe, ["red car", "sky"], concept_pooling=pooling) as ca:
            pipe(prompt="a red car", generator=torch.Generator().manual_seed(0), **GEN_KW)
        maps[pooling] = ca.maps.tensor
    assert not torch.allclose(maps["mean"], maps["last"])


def test_explain_shape_and_samples(pipe):
    check_explain(
        pipe, height=32, width=48, grid=(1, 16, 24),
        skipped_block=pipe.transformer.single_transformer_blocks[0], layers=[0],  # the last selected double block
    )


def test_flux2_dev_pipeline_mistral_encoder_bit_identical_and_encoding():
    """Flux2Pipeline: guidance-distilled transformer, concepts in the Mistral chat template with the system message."""
    pipe = tiny_flux2_pipeline(num_layers=2)
    kwargs = dict(height=32, width=32, num_inference_steps=2, max_sequence_length=256, output_type="pt")

    def run():
        return pipe(prompt="a red car", generator=torch.Generator().manual_seed(0), **kwargs).images

    reference = run()
    with ConceptAttention(pipe, ["red car", "sky"]) as ca:
        images = run()
    assert torch.equal(reference, images)
    assert ca.maps.tensor.shape == (2, 1, 16, 16)

    from diffusers.pipelines.flux2.pipeline_flux2 import format_input

    encoded = Flux2Adapter().encode_concepts(pipe, ["red car", "sky"], "mean")  # [C, 24]
    tokenizer = pipe.tokenizer
    for index, concept in enumerate(["red car", "sky"]):
        messages = format_input(prompts=[concept], system_message=pipe.system_message)
        ids = torch.tensor(tokenizer.apply_chat_template(messages, tokenize=True, return_dict=True)["input_ids"])
        with torch.no_grad():
            states = pipe.text_encoder(input_ids=ids, output_hidden_states=True, use_cache=False).hidden_states
        hidden = torch.cat([states[k] for k in (10, 20, 30)], dim=-1)[0]  # [L, 24]
        start = len(ids[0]) - 1 - len(tokenizer(concept).input_ids)  # the concept ends just before [/INST]
        assert_mean_of_concept_span(encoded[index], hidden, ids, tokenizer, concept, start)
