"""HunyuanImage 2.1 adapter: the shared battery on a tiny HunyuanImage 2.1 model ([image, text] joint attention,
image-only RoPE, token refiner, padded prompt) and a tiny offline HunyuanImagePipeline (glyph prompts, guider CFG),
per-concept refinement, guidance embedding, concept encoding, refusals, the explain path."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from typing import Any

import numpy
import pytest
import torch
from diffusers.models.transformers.transformer_hunyuanimage import HunyuanImageAttnProcessor

from conceptattention import ConceptAttention, UnsupportedSetupError, get_adapter
from conceptattention.testing import (
    tiny_hunyuan_image_inputs,
    tiny_hunyuan_image_pipeline,
    tiny_hunyuan_image_transformer,
)
from conceptattention.testing.battery import (
    assert_close_scaled,
    assert_concepts_permute,
    assert_padding_mask_kept,
    assert_reference_not_variant,
    assert_subclassed_processor_refused,
    check_explain,
    layer_logits,
    module_fixtures,
    random_image,
    seeded_embeds,
)
from conceptattention.testing.references.hunyuan_image import naive_hunyuan_image_scores
from conceptattention.testing.zoo_battery import GuidedPipelineChecks, ZooBattery


GEN_KW = dict(height=32, width=48, num_inference_steps=2, output_type="pt")


def _guided(pipe: Any) -> AbstractContextManager[None]:
    """The pipeline with a classifier-free guidance guider for the duration of the block (two calls per step)."""

    @contextmanager
    def guided() -> Iterator[None]:
        from diffusers import AdaptiveProjectedMixGuidance

        pipe.guider = AdaptiveProjectedMixGuidance(guidance_scale=3.0)
        try:
            yield
        finally:
            pipe.guider = None

    return guided()


class TestHunyuanImageBattery(GuidedPipelineChecks, ZooBattery):
    """The shared adapter battery on a tiny HunyuanImage 2.1 (3 double blocks, padded prompt) and a tiny offline
    ``HunyuanImagePipeline`` (Qwen2.5-VL + ByT5, no guider by default)."""

    concept_dim = 16
    expected_grid = (1, 4, 6)
    pipeline_kwargs = GEN_KW
    expected_pipeline_grid = (1, 16, 24)
    tiny_transformer = tiny_hunyuan_image_transformer
    tiny_inputs = tiny_hunyuan_image_inputs
    tiny_pipeline = tiny_hunyuan_image_pipeline
    naive_reference = naive_hunyuan_image_scores

    guided = staticmethod(_guided)


transformer, pipe = module_fixtures(TestHunyuanImageBattery)


def test_glyph_prompt_stays_bit_identical(pipe):
    """A quoted text in the prompt adds ByT5 glyph tokens to the text stream: outputs stay bit-identical."""
    prompt = 'a sign saying "hello"'
    with torch.no_grad():
        reference = pipe(prompt, generator=torch.Generator().manual_seed(0), **GEN_KW).images
        with ConceptAttention(pipe, ["sign", "wall"]) as ca:
            output = pipe(prompt, generator=torch.Generator().manual_seed(0), **GEN_KW).images
    assert torch.equal(reference, output) and ca.maps.tensor.shape == (2, 1, 16, 24)


def test_registry_and_stock_processor_kept(transformer):
    assert get_adapter(transformer).name == "hunyuan_image"
    with ConceptAttention(transformer, concept_embeds=torch.randn(2, 16)):
        transformer(**tiny_hunyuan_image_inputs())
        assert type(transformer.transformer_blocks[0].attn.processor.original) is HunyuanImageAttnProcessor


def test_concepts_refined_one_by_one_and_permutable(transformer):
    """Each concept is refined as its own one-token prompt (refining them together would mix them)."""
    inputs = tiny_hunyuan_image_inputs()
    embeds = seeded_embeds(3, 16, seed=5)
    ours = assert_reference_not_variant(
        transformer, inputs, embeds, [2], naive_hunyuan_image_scores, wrong=dict(refine_concepts_together=True)
    )
    assert_concepts_permute(transformer, inputs, embeds, [2], ours, [1, 2, 0])


def test_padding_mask_kept(transformer):
    masked = tiny_hunyuan_image_inputs(padded_text=4)
    assert_padding_mask_kept(transformer, masked, dict(masked, encoder_attention_mask=torch.ones(1, 8)), dim=16)


def test_guidance_embedding_model():
    """Guidance-distilled variant: temb includes the guidance embedding (captured from the blocks)."""
    model = tiny_hunyuan_image_transformer(num_layers=2, guidance_embeds=True)
    inputs = dict(tiny_hunyuan_image_inputs(), guidance=torch.full((1,), 3500.0))
    embeds = seeded_embeds(2, 16, seed=3)
    ours = layer_logits(model, inputs, embeds, [1])
    assert_close_scaled(ours, naive_hunyuan_image_scores(model, inputs, embeds, [1])[0, 0].float())


def test_subclassed_processor_refused():
    model = tiny_hunyuan_image_transformer(num_layers=2)
    assert_subclassed_processor_refused(model, model.transformer_blocks[1].attn, HunyuanImageAttnProcessor, 16)


def test_video_latents_refused(transformer):
    inputs = dict(tiny_hunyuan_image_inputs(), hidden_states=torch.randn(1, 4, 2, 4, 6))
    with pytest.raises(ValueError, match="4-D image latents"):
        with ConceptAttention(transformer, concept_embeds=torch.randn(2, 16)):
            transformer(**inputs)


def test_model_without_qk_norm_refused():
    from diffusers import HunyuanImageTransformer2DModel

    model = HunyuanImageTransformer2DModel(
        in_channels=4, out_channels=4, num_attention_heads=2, attention_head_dim=8, num_layers=1, num_single_layers=1,
        num_refiner_layers=1, patch_size=(1, 1), text_embed_dim=16, rope_axes_dim=(4, 4), qk_norm=None,
    )
    with pytest.raises(UnsupportedSetupError, match="QK-norm"):
        ConceptAttention(model, concept_embeds=torch.randn(2, 16)).__enter__()


def test_concept_encoding_matches_the_pipelines_prompt_encoder():
    """A concept's embedding is the mean of the states ``HunyuanImagePipeline._get_qwen_prompt_embeds`` (uncropped)
    gives its tokens inside the same template (3rd-from-last layer)."""
    import inspect
    from types import SimpleNamespace

    from diffusers import HunyuanImagePipeline

    from conceptattention.adapters.hunyuan_image import HunyuanImageAdapter
    from conceptattention.testing import tiny_byte_level_tokenizer, tiny_qwen25vl_encoder

    tokenizer = tiny_byte_level_tokenizer()
    text_encoder = tiny_qwen25vl_encoder(len(tokenizer), seed=1)
    encode = HunyuanImagePipeline._get_qwen_prompt_embeds
    template = inspect.signature(encode).parameters["template"].default
    pipe = SimpleNamespace(
        text_encoder=text_encoder, tokenizer=tokenizer, prompt_template_encode=template,
        prompt_template_encode_start_idx=34, tokenizer_max_length=1000, _execution_device=torch.device("cpu"),
    )
    concepts = ["red car", "sky"]
    encoded = HunyuanImageAdapter().encode_concepts(pipe, concepts, "mean")
    for index, concept in enumerate(concepts):
        with torch.no_grad():
            states, mask = encode(pipe, tokenizer, text_encoder, [concept], tokenizer_max_length=300, drop_idx=0)
        end = int(mask.sum()) - len(tokenizer("<|im_end|>").input_ids)
        start = end - len(tokenizer(concept).input_ids)
        torch.testing.assert_close(encoded[index], states[0, start:end].mean(0), rtol=1e-5, atol=1e-6)


# ----- real images (explain path) ---------------------------------------------------------------------------------


def test_explain_shape_sums_and_early_exit(pipe):
    check_explain(
        pipe, height=32, width=48, grid=(1, 16, 24), bad_height=33, one_caption="",
        skipped_block=pipe.transformer.transformer_blocks[2], layers=[1],
    )


def test_explain_maps_equal_a_direct_call_on_the_same_noised_latents(pipe):
    """The explain maps are those of one transformer call on the VAE latents ``× scaling_factor`` noised by rectified
    flow with the seed's noise at ``timestep = 1000·t``, with the caption as the pipeline encodes it; the pipeline's
    scheduler puts ``t`` at timestep ``1000·t`` (so the explain call is a step the pipeline could have made)."""
    from conceptattention import explain
    from conceptattention.adapters.hunyuan_image import HunyuanImageAdapter

    image, concepts, level, seed = random_image(32, 48), ["house", "sky"], 0.25, 7
    pipe.scheduler.set_timesteps(sigmas=[level, 0.0], device="cpu")
    assert torch.allclose(pipe.scheduler.timesteps[0], torch.tensor(1000.0 * level))
    ours = explain(pipe, image, concepts, height=32, width=48, noise_level=level, seed=seed, caption="a house",
                   layers=[1, 2])
    embeds = HunyuanImageAdapter().encode_concepts(pipe, concepts, "mean")
    pixels = torch.from_numpy(numpy.asarray(image.convert("RGB"), dtype=numpy.float32) / 127.5 - 1.0)
    with torch.no_grad():
        latents = pipe.vae.encode(pixels.permute(2, 0, 1)[None]).latent_dist.mode() * pipe.vae.config.scaling_factor
        noise = torch.randn(latents.shape[1:], generator=torch.Generator().manual_seed(seed))[None]  # [1, c, h, w]
        prompt, mask, glyph, glyph_mask = pipe.encode_prompt(prompt="a house", device="cpu")
        with ConceptAttention(pipe.transformer, concepts, concept_embeds=embeds, layers=[1, 2]) as direct:
            pipe.transformer(
                hidden_states=(1 - level) * latents + level * noise, timestep=torch.full((1,), 1000.0 * level),
                encoder_hidden_states=prompt, encoder_attention_mask=mask, encoder_hidden_states_2=glyph,
                encoder_attention_mask_2=glyph_mask,
            )
    torch.testing.assert_close(ours.tensor, direct.maps.tensor, rtol=1e-5, atol=1e-6)


def test_explain_resolution_keeps_the_aspect_ratio(pipe):
    """The default size is the pipeline's default area (``default_sample_size·vae_scale_factor`` a side), aspect
    ratio kept, rounded to the size multiple."""
    adapter = get_adapter(pipe)
    side = pipe.default_sample_size * pipe.vae_scale_factor
    assert adapter.explain_resolution(pipe, (100, 100)) == (side, side)
    height, width = adapter.explain_resolution(pipe, (300, 200))
    assert height % 2 == 0 and width % 2 == 0 and abs(width / height - 1.5) < 0.05
