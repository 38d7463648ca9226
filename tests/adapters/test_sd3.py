"""SD3 / SD3.5 adapter: the shared battery (SD3 and an SD3.5-like config), a naive reference, and SD3 quirks.

Quirks covered: the ``context_pre_only`` last block, SD3.5 dual attention (``attn2`` keeps the shared stock
processor), RMS QK-norm, classifier-free guidance batches (maps from the conditional half), skip-layer guidance calls
(neither recorded nor counted), feed-forward chunking, CLIP concept embeddings that never use the start token and
pool multi-token concepts, and the real-image path.
"""

from __future__ import annotations

import functools

import pytest
import torch
from diffusers.models.attention_processor import AttnProcessor2_0, JointAttnProcessor2_0

from conceptattention import ConceptAttention, UnsupportedSetupError, explain
from conceptattention.adapters.sd3 import SD3Adapter, SD3ConceptAttnProcessor
from conceptattention.testing import tiny_sd3_inputs, tiny_sd3_pipeline, tiny_sd3_transformer
from conceptattention.testing.battery import (
    AdapterBattery,
    assert_cfg_conditional_half,
    assert_close_scaled,
    assert_t5_concept_means,
    batch_logits,
    make_generate,
    random_image,
    seeded_embeds,
)
from conceptattention.testing.references.sd3 import naive_sd3_scores


GEN_KW = dict(height=32, width=48, num_inference_steps=2, guidance_scale=1.0, max_sequence_length=16, output_type="pt")
CFG_KW = dict(guidance_scale=5.0)


generate = make_generate(GEN_KW)
concept_embeds = functools.partial(seeded_embeds, dim=48)


@pytest.fixture(scope="module")
def pipe():
    return tiny_sd3_pipeline(num_layers=3)


@pytest.fixture(scope="module")
def pipe35():
    return tiny_sd3_pipeline(num_layers=3, sd35=True)


@pytest.fixture(scope="module")
def image():
    return random_image()


class TestSD3Battery(AdapterBattery):
    """The shared adapter battery on SD3 (last block ``context_pre_only``; CFG on and off)."""

    concept_dim = 48
    expected_grid = (1, 4, 6)
    pipeline_kwargs = GEN_KW
    pipeline_cfg_kwargs = CFG_KW
    expected_pipeline_grid = (1, 8, 12)
    tiny_transformer = tiny_sd3_transformer
    tiny_inputs = tiny_sd3_inputs
    tiny_pipeline = tiny_sd3_pipeline
    naive_reference = naive_sd3_scores
    tiny_kwargs = dict(num_layers=3, sd35=False)


class TestSD35Battery(TestSD3Battery):
    """The shared battery on an SD3.5-medium-like config: RMS QK-norm and dual attention in block 0."""

    tiny_kwargs = dict(num_layers=3, sd35=True)
    fused_changes_model = True  # diffusers' FusedJointAttnProcessor2_0 applies no QK-norm

    def test_fused_qkv_projections(self):
        """diffusers 0.42.1 cannot run a fused SD3.5-medium (dual attention): fuse_qkv_projections gives attn2 the
        joint FusedJointAttnProcessor2_0, which needs encoder states. Fails once diffusers fixes it (then the
        battery's test applies)."""
        model = self.make_transformer()
        model.fuse_qkv_projections()
        with pytest.raises(AttributeError):
            self.run(model, self.make_inputs())


class TestMethod:
    """The optimised path matches the naive full-masked-attention reference beyond the battery's defaults."""

    @pytest.mark.parametrize("sd35", [False, True])
    @pytest.mark.parametrize("conditioning", ["null_pooled", "prompt"])
    def test_conditioning_matches_reference(self, sd35, conditioning):
        model = tiny_sd3_transformer(sd35=sd35)
        inputs = tiny_sd3_inputs(batch_size=2, seed=3)
        embeds = concept_embeds()
        with ConceptAttention(
            model, concept_embeds=embeds, layers=[0, 1, 2], softmax=False, concept_conditioning=conditioning
        ) as ca:
            model(**inputs)
        reference = naive_sd3_scores(model, inputs, embeds, [0, 1, 2], conditioning=conditioning)  # [L, B, C, I]
        assert_close_scaled(batch_logits(ca), reference.mean(0).float())  # [B, C, I]

    def test_conditionings_differ(self):
        model = tiny_sd3_transformer()
        results = {}
        for conditioning in ("null_pooled", "prompt"):
            with ConceptAttention(model, concept_embeds=concept_embeds(), concept_conditioning=conditioning) as ca:
                model(**tiny_sd3_inputs())
            results[conditioning] = ca.maps.tensor
        assert not torch.allclose(results["null_pooled"], results["prompt"])

    def test_last_block_context_pre_only_alone(self):
        model = tiny_sd3_transformer()
        last = model.transformer_blocks[-1]
        assert last.context_pre_only and last.ff_context is None and last.attn.to_add_out is None
        inputs = tiny_sd3_inputs(batch_size=2)
        embeds = concept_embeds()
        with ConceptAttention(model, concept_embeds=embeds, layers=[-1], softmax=False) as ca:
            model(**inputs)
        assert_close_scaled(batch_logits(ca), naive_sd3_scores(model, inputs, embeds, [2])[0].float())  # [B, C, I]
        assert ca.batch_maps[0].settings["resolved_layers"] == ["transformer_blocks.2"]

    def test_feed_forward_chunking_is_honoured(self):
        model = tiny_sd3_transformer()
        inputs = tiny_sd3_inputs(text_tokens=6)
        with ConceptAttention(model, concept_embeds=concept_embeds(), softmax=False) as plain:
            reference = model(**inputs)[0]
        model.enable_forward_chunking(chunk_size=1, dim=1)
        calls = []
        handle = model.transformer_blocks[0].ff_context.register_forward_pre_hook(lambda *args: calls.append(1))
        try:
            with ConceptAttention(model, concept_embeds=concept_embeds(), softmax=False) as chunked:
                output = model(**inputs)[0]
        finally:
            handle.remove()
            model.disable_forward_chunking()
        assert len(calls) == 6 + 3  # one chunk per prompt token and per concept token
        torch.testing.assert_close(output, reference)
        torch.testing.assert_close(chunked.maps.logits, plain.maps.logits, rtol=1e-5, atol=1e-5)

    def test_default_layers_are_all_blocks(self):
        assert SD3Adapter().default_layers(38) == tuple(range(38))
        model = tiny_sd3_transformer()
        assert ConceptAttention(model, concept_embeds=concept_embeds()).layers == (0, 1, 2)


class TestDualAttention:
    """SD3.5-medium: ``attn`` and ``attn2`` share one processor instance; only ``attn`` is replaced."""

    def test_attn2_keeps_the_shared_stock_processor(self):
        model = tiny_sd3_transformer(sd35=True)
        block = model.transformer_blocks[0]
        shared = block.attn.processor
        assert block.attn2.processor is shared and type(shared) is JointAttnProcessor2_0
        attn2_calls = []
        handle = block.attn2.register_forward_hook(lambda module, args, output: attn2_calls.append(output))
        try:
            with ConceptAttention(model, concept_embeds=concept_embeds()):
                assert isinstance(block.attn.processor, SD3ConceptAttnProcessor)
                assert block.attn2.processor is shared
                model(**tiny_sd3_inputs())
            assert len(attn2_calls) == 1
            model(**tiny_sd3_inputs())
        finally:
            handle.remove()
        assert torch.equal(attn2_calls[0], attn2_calls[1])  # attn2 computes the same with and without concepts
        assert block.attn.processor is shared and block.attn2.processor is shared


class TestGuidance:
    """Classifier-free guidance batches and skip-layer guidance."""

    def test_cfg_maps_come_from_the_conditional_half(self, pipe):
        assert_cfg_conditional_half(pipe, lambda pipe: generate(pipe, **CFG_KW), rtol=0, atol=0)

    def test_skip_layer_guidance_calls_are_ignored(self, pipe35):
        kwargs = dict(
            **CFG_KW, skip_guidance_layers=[1], skip_layer_guidance_start=0.0, skip_layer_guidance_stop=1.0
        )
        steps = GEN_KW["num_inference_steps"] + 1
        reference = generate(pipe35, num_inference_steps=steps, **kwargs)
        transformer = pipe35.transformer
        main_calls, skip_calls = [], []

        def grab(module, args, call_kwargs):
            (skip_calls if call_kwargs.get("skip_layers") else main_calls).append(dict(call_kwargs))

        handle = transformer.register_forward_pre_hook(grab, with_kwargs=True)
        try:
            with ConceptAttention(pipe35, ["house", "red car"], keep_per_step=True, softmax=False) as ca:
                images = generate(pipe35, num_inference_steps=steps, **kwargs)
        finally:
            handle.remove()
        assert torch.equal(reference, images)
        assert len(main_calls) == steps and len(skip_calls) == steps - 1  # SLG ran, on every step after the first
        assert ca.session.num_recorded_calls == steps
        assert sorted({step for step, _ in ca.per_step_scores}) == list(range(steps))
        # each recorded step equals a replay of that step's guidance call alone (its conditional half)
        for step, call in enumerate(main_calls):
            with ConceptAttention(
                transformer, concept_embeds=ca.session.concept_embeds, keep_per_step=True, softmax=False
            ) as replay:
                transformer(**call)
            for layer in ca.layers:
                torch.testing.assert_close(ca.per_step_scores[(step, layer)], replay.per_step_scores[(0, layer)][1:])

    def test_timestep_selection_counts_denoising_steps_only(self, pipe35):
        kwargs = dict(
            **CFG_KW, skip_guidance_layers=[1], skip_layer_guidance_start=0.0, skip_layer_guidance_stop=1.0
        )
        with ConceptAttention(pipe35, ["house", "sea"], timesteps=[2], keep_per_step=True) as ca:
            generate(pipe35, num_inference_steps=3, **kwargs)
        assert {step for step, _ in ca.per_step_scores} == {2}


class TestConceptEncoding:
    """CLIP concept embeddings: never the start token, pooled content tokens, one concept per encoder row."""

    @staticmethod
    def manual_clip(pipe, concepts, pooling):
        parts = []
        for tokenizer, encoder in ((pipe.tokenizer, pipe.text_encoder), (pipe.tokenizer_2, pipe.text_encoder_2)):
            tokens = tokenizer(list(concepts), padding="longest", return_tensors="pt")
            with torch.no_grad():
                hidden = encoder(tokens.input_ids, output_hidden_states=True).hidden_states[-2]  # [C, L, D]
            rows = []
            for index in range(len(concepts)):
                end = int((tokens.input_ids[index] == tokenizer.eos_token_id).nonzero()[0])  # first end token
                content = hidden[index, 1:end]  # positions between the start and the end token
                rows.append({"mean": content.mean(0), "first": content[0], "last": content[-1]}[pooling])
            parts.append(torch.stack(rows))
        return torch.cat(parts, dim=-1)  # [C, 32]

    @pytest.mark.parametrize("pooling", ["mean", "first", "last"])
    def test_matches_manual_pooling_and_zero_padding(self, pipe, pooling):
        concepts = ["red car", "sky"]
        encoded = SD3Adapter().encode_concepts(pipe, concepts, pooling)
        assert encoded.shape == (2, 48)
        torch.testing.assert_close(encoded[:, :32], self.manual_clip(pipe, concepts, pooling))
        assert torch.equal(encoded[:, 32:], torch.zeros(2, 16))  # CLIP-L ⊕ CLIP-G zero-padded to the T5 width

    def test_start_token_never_used(self, pipe):
        concepts = ["dog", "sky", "red car"]
        first = SD3Adapter().encode_concepts(pipe, concepts, "first")
        tokens = pipe.tokenizer(concepts, padding="longest", return_tensors="pt")
        with torch.no_grad():
            hidden = pipe.text_encoder(tokens.input_ids, output_hidden_states=True).hidden_states[-2]
        start_state = hidden[0, 0]  # the same vector for every concept
        for index in range(len(concepts)):
            assert not torch.allclose(first[index, :16], start_state)
        assert torch.cdist(first, first).add(torch.eye(3)).min() > 1e-3  # all concepts differ

    def test_multi_token_concepts_are_pooled_and_independent(self, pipe):
        adapter = SD3Adapter()
        mean = adapter.encode_concepts(pipe, ["red car", "sky"], "mean")
        first = adapter.encode_concepts(pipe, ["red car", "sky"], "first")
        assert not torch.allclose(mean[0], first[0])  # "red car" is not truncated to its first token
        alone = adapter.encode_concepts(pipe, ["sky"], "mean")
        torch.testing.assert_close(alone[0], mean[1], rtol=1e-5, atol=1e-6)  # no dependence on other concepts

    def test_t5_stream(self, pipe):
        concepts = ["red car", "sky"]
        encoded = SD3Adapter().encode_concepts(pipe, concepts, "mean", text_encoder="t5")
        assert_t5_concept_means(encoded, pipe.tokenizer_3, pipe.text_encoder_3, concepts)

    def test_pipeline_without_t5(self):
        pipe = tiny_sd3_pipeline(num_layers=2, with_t5=False)
        reference = generate(pipe)
        with ConceptAttention(pipe, ["house", "sea"]) as ca:
            images = generate(pipe)
        assert torch.equal(reference, images)
        assert ca.maps.tensor.shape == (2, 1, 8, 12)
        with pytest.raises(ValueError, match="no T5 encoder"):
            SD3Adapter().encode_concepts(pipe, ["sky"], "mean", text_encoder="t5")

    def test_bad_text_encoder_choice(self, pipe):
        with pytest.raises(ValueError, match="'clip' or 't5'"):
            SD3Adapter().encode_concepts(pipe, ["sky"], "mean", text_encoder="llama")
        with pytest.raises(ValueError, match="not offered by the sd3 adapter"):
            ConceptAttention(pipe, ["sky"], concept_text_encoder="llama")

    def test_deprecated_constructor_option(self, pipe):
        """``SD3Adapter("t5")`` (the old way, by re-registering) still works for one release, with a warning."""
        with pytest.warns(DeprecationWarning, match="concept_text_encoder='t5' to ConceptAttention"):
            adapter = SD3Adapter("t5")
        expected = SD3Adapter().encode_concepts(pipe, ["sky"], "mean", text_encoder="t5")
        torch.testing.assert_close(adapter.encode_concepts(pipe, ["sky"], "mean"), expected, rtol=0, atol=0)
        with pytest.warns(DeprecationWarning), pytest.raises(ValueError, match="'clip' or 't5'"):
            SD3Adapter("llama")


class TestWideClipLayout:
    """CLIP-L ⊕ CLIP-G wider than joint_attention_dim (diffusers' own SD3 test layout): the pipeline crops the prompt's
    CLIP part to the T5 width, and concepts are laid out the same way instead of being refused."""

    def test_wide_clip_pipeline(self, pipe):
        from diffusers import StableDiffusion3Pipeline
        from transformers import CLIPTextConfig, CLIPTextModelWithProjection

        from conceptattention.testing import tiny_clip_tokenizer

        tokenizer = tiny_clip_tokenizer()

        def wide_clip(seed: int) -> CLIPTextModelWithProjection:
            torch.manual_seed(seed)
            config = CLIPTextConfig(
                vocab_size=len(tokenizer), hidden_size=32, intermediate_size=37, num_attention_heads=4,
                num_hidden_layers=2, bos_token_id=0, eos_token_id=1, pad_token_id=1, projection_dim=16,
                max_position_embeddings=77,
            )
            return CLIPTextModelWithProjection(config).eval()

        components = {**pipe.components, "text_encoder": wide_clip(10), "text_encoder_2": wide_clip(11)}
        components.update(tokenizer=tokenizer, tokenizer_2=tokenizer)
        wide = StableDiffusion3Pipeline(**components)
        wide.set_progress_bar_config(disable=True)
        joint_dim = wide.transformer.config.joint_attention_dim
        assert 32 + 32 > joint_dim  # the layout under test
        embeds = SD3Adapter().encode_concepts(wide, ["house", "sea"], "mean")
        assert embeds.shape == (2, joint_dim)
        reference = generate(wide)
        with ConceptAttention(wide, ["house", "sea"]) as ca:
            output = generate(wide)
        assert torch.equal(reference, output)
        assert torch.isfinite(ca.maps.tensor).all()


class TestRefusals:
    def test_foreign_processor_refused(self):
        model = tiny_sd3_transformer()
        model.transformer_blocks[1].attn.set_processor(AttnProcessor2_0())
        with pytest.raises(UnsupportedSetupError, match="transformer_blocks.1.attn uses AttnProcessor2_0"):
            ConceptAttention(model, concept_embeds=concept_embeds()).__enter__()

    def test_missing_pooled_projections(self):
        model = tiny_sd3_transformer()
        inputs = tiny_sd3_inputs()
        inputs["pooled_projections"] = None
        with pytest.raises(ValueError, match="pooled_projections"):
            with ConceptAttention(model, concept_embeds=concept_embeds()):
                model(**inputs)


class TestExplain:
    """The real-image path: VAE shift/scale, flow-matching noise, timestep in the 0..1000 scale, early exit."""

    def test_prepare_explain_inputs(self, pipe, image):
        batch = SD3Adapter().prepare_explain(
            pipe, image, caption="a cat", noise_level=0.25, seeds=[0, 1], height=32, width=48,
            guidance_scale=3.5, image_pooled="zero",
        )
        kwargs = batch.transformer_kwargs
        assert kwargs["hidden_states"].shape == (2, 4, 16, 24)
        assert torch.equal(kwargs["timestep"], torch.full((2,), 250.0))
        assert torch.equal(kwargs["pooled_projections"], torch.zeros(2, 32))
        # x_t = (1 - t)·x_0 + t·ε with x_0 = (mode - shift)·scale
        from conceptattention.images import image_to_tensor

        pixels = image_to_tensor(image.resize((48, 32), resample=3)).unsqueeze(0)
        with torch.no_grad():
            clean = (pipe.vae.encode(pixels).latent_dist.mode() - pipe.vae.config.shift_factor) * pipe.vae.config.scaling_factor
        noise = torch.randn(4, 16, 24, generator=torch.Generator().manual_seed(1))
        torch.testing.assert_close(kwargs["hidden_states"][1], 0.75 * clean[0] + 0.25 * noise)
        caption = SD3Adapter().prepare_explain(
            pipe, image, caption="a cat", noise_level=0.25, seeds=[0], height=32, width=48,
            guidance_scale=3.5, image_pooled="caption",
        )
        assert not torch.equal(caption.transformer_kwargs["pooled_projections"], torch.zeros(1, 32))

    def test_shapes_samples_and_early_exit(self, pipe, image):
        generate(pipe, **CFG_KW)  # leaves the pipeline's guidance scale above 1: explain must not halve its batch
        calls = []
        handle = pipe.transformer.norm_out.register_forward_pre_hook(lambda *args: calls.append(1))
        try:
            two = explain(pipe, image, ["cat", "sky"], height=32, width=48, num_samples=2)
        finally:
            handle.remove()
        assert calls == []  # early exit after the last joint block
        assert two.tensor.shape == (2, 1, 8, 12)
        torch.testing.assert_close(two.tensor.sum(0), torch.ones(1, 8, 12))
        singles = [explain(pipe, image, ["cat", "sky"], height=32, width=48, seed=seed).tensor for seed in (0, 1)]
        assert not torch.allclose(singles[0], singles[1])
        torch.testing.assert_close(two.tensor, torch.stack(singles).mean(0))

    def test_default_resolution_and_bad_size(self, pipe, image):
        pipe.default_sample_size = 16  # 16 latent px · VAE 2 → a 32×32 target area
        try:
            maps = explain(pipe, image, ["cat", "sky"])
        finally:
            pipe.default_sample_size = pipe.transformer.config.sample_size
        assert maps.settings["height"] < maps.settings["width"]
        assert maps.settings["height"] % 4 == 0 and maps.settings["width"] % 4 == 0
        with pytest.raises(ValueError, match="multiples of 4"):
            explain(pipe, image, ["cat", "sky"], height=30, width=48)
