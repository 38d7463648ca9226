"""HunyuanVideo 1.5 adapter: the shared battery on a tiny model (all double blocks, [video, text] with Qwen, ByT5
and image-embedding tokens in the text stream), per-frame maps, text type embedding, image-to-video layout."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
import torch
from diffusers.models.transformers.transformer_hunyuan_video15 import HunyuanVideo15AttnProcessor2_0

from conceptattention import ConceptAttention, get_adapter
from conceptattention.adapters.hunyuan_video15 import HunyuanVideo15Adapter
from conceptattention.testing import (
    tiny_hunyuan_video15_inputs,
    tiny_hunyuan_video15_pipeline,
    tiny_hunyuan_video15_transformer,
)
from conceptattention.testing.battery import (
    assert_close_scaled,
    assert_concepts_permute,
    assert_reference_not_variant,
    assert_subclassed_processor_refused,
    module_fixtures,
    seeded_embeds,
)
from conceptattention.testing.references.hunyuan_video15 import naive_hunyuan_video15_scores
from conceptattention.testing.zoo_battery import GuidedPipelineChecks, StockGraphBreaksCompile, ZooBattery


GEN_KW = dict(height=32, width=32, num_frames=5, num_inference_steps=2, output_type="latent")


@contextmanager
def _guided(pipe: Any) -> Iterator[None]:
    """The pipeline's guider at scale 3 (a conditional and an unconditional call per step) inside the block."""
    scale = pipe.guider.guidance_scale
    pipe.guider.guidance_scale = 3.0
    try:
        yield
    finally:
        pipe.guider.guidance_scale = scale


class TestHunyuanVideo15Battery(GuidedPipelineChecks, StockGraphBreaksCompile, ZooBattery):
    """The shared adapter battery on a tiny HunyuanVideo 1.5 (3 blocks, text-to-video inputs) and a tiny offline
    ``HunyuanVideo15Pipeline`` (guider at scale 1 by default)."""

    concept_dim = 16
    expected_grid = (2, 3, 4)
    pipeline_kwargs = GEN_KW
    expected_pipeline_grid = (3, 16, 16)
    tiny_transformer = tiny_hunyuan_video15_transformer
    tiny_inputs = tiny_hunyuan_video15_inputs
    tiny_pipeline = tiny_hunyuan_video15_pipeline
    naive_reference = naive_hunyuan_video15_scores

    guided = staticmethod(_guided)


transformer, pipe = module_fixtures(TestHunyuanVideo15Battery)


def test_pipeline_concept_encoding(pipe):
    """With the pipeline's own encoder and chat tokenizer, concepts encode and run end to end."""
    encoded = HunyuanVideo15Adapter().encode_concepts(pipe, ["red car", "sky"], "mean")
    assert encoded.shape == (2, 16) and torch.isfinite(encoded).all()


def test_registry_and_stock_processor_kept(transformer):
    adapter = get_adapter(transformer)
    assert adapter.name == "hunyuan_video15" and adapter.modality == "video"
    with ConceptAttention(transformer, concept_embeds=torch.randn(2, 16)):
        transformer(**tiny_hunyuan_video15_inputs())
        assert type(transformer.transformer_blocks[0].attn.processor.original) is HunyuanVideo15AttnProcessor2_0


def test_concepts_take_the_prompt_text_type(transformer):
    """Concepts carry the MLLM-text type embedding (type 0), as prompt tokens; the glyph type would differ."""
    inputs = tiny_hunyuan_video15_inputs()
    embeds = seeded_embeds(3, 16, seed=5)
    ours = assert_reference_not_variant(
        transformer, inputs, embeds, [2], naive_hunyuan_video15_scores, wrong=dict(concept_type=1)
    )
    assert_concepts_permute(transformer, inputs, embeds, [2], ours, [2, 0, 1])


def test_image_to_video_layout(transformer):
    """With SigLIP image tokens in the text stream, outputs stay bit-identical and maps match the reference."""
    inputs = tiny_hunyuan_video15_inputs(image_to_video=True)
    with torch.no_grad():
        reference = transformer(**inputs)[0]
    embeds = seeded_embeds(2, 16, seed=6)
    with ConceptAttention(transformer, concept_embeds=embeds, layers=[1], softmax=False) as ca:
        with torch.no_grad():
            output = transformer(**inputs)[0]
    assert torch.equal(reference, output)
    expected = naive_hunyuan_video15_scores(transformer, inputs, embeds, [1])[0, 0].float()
    assert_close_scaled(ca.maps.logits.flatten(1), expected)


def test_maps_are_per_frame(transformer):
    with ConceptAttention(transformer, concept_embeds=torch.randn(2, 16)) as ca:
        transformer(**tiny_hunyuan_video15_inputs(frames=3))
    assert ca.maps.tensor.shape == (2, 3, 3, 4)
    assert not torch.allclose(ca.maps.tensor[:, 0], ca.maps.tensor[:, 1])


def test_subclassed_processor_refused():
    model = tiny_hunyuan_video15_transformer(num_layers=2)
    assert_subclassed_processor_refused(model, model.transformer_blocks[1].attn, HunyuanVideo15AttnProcessor2_0, 16)


def test_concept_encoding_matches_the_pipelines_prompt_encoder():
    """A concept's embedding is the mean of the states the pipeline's own prompt encoder
    (``HunyuanVideo15Pipeline._get_mllm_prompt_embeds``, uncropped) gives its tokens in the same chat."""
    from types import SimpleNamespace

    from diffusers import HunyuanVideo15Pipeline

    from conceptattention.testing import tiny_byte_level_tokenizer, tiny_qwen25vl_encoder

    tokenizer = tiny_byte_level_tokenizer()
    text_encoder = tiny_qwen25vl_encoder(len(tokenizer), seed=1)
    pipe = SimpleNamespace(text_encoder=text_encoder, tokenizer=tokenizer, _execution_device=torch.device("cpu"))
    concepts = ["red car", "sky"]
    encoded = HunyuanVideo15Adapter().encode_concepts(pipe, concepts, "mean")
    for index, concept in enumerate(concepts):
        with torch.no_grad():
            states, mask = HunyuanVideo15Pipeline._get_mllm_prompt_embeds(
                text_encoder, tokenizer, [concept], torch.device("cpu"), tokenizer_max_length=700, crop_start=0
            )  # [1, 700, D]
        length = int(mask.sum())
        end = length - len(tokenizer("<|im_end|>\n<|im_start|>assistant\n").input_ids)  # the chat's closing tokens
        start = end - len(tokenizer(concept).input_ids)
        torch.testing.assert_close(encoded[index], states[0, start:end].mean(0), rtol=1e-5, atol=1e-6)


def test_pipeline_without_text_encoder_refused():
    from types import SimpleNamespace

    with pytest.raises(ValueError, match="concept_embeds="):
        HunyuanVideo15Adapter().encode_concepts(SimpleNamespace(), ["cat"], "mean")
