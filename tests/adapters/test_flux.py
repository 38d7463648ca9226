"""FLUX.1 adapter: the shared battery, plus the FLUX.1-specific checks (true CFG with guidance embeds, refusals,
method options, the explain path, IP-Adapter, memory features)."""

from __future__ import annotations

import warnings

import diffusers
import pytest
import torch
from diffusers.models.transformers.transformer_flux import FluxAttnProcessor

from conceptattention import (
    ConceptAttention,
    ConceptError,
    ConfigError,
    NoMapsError,
    UnsupportedModelError,
    UnsupportedSetupError,
    explain,
)
from conceptattention.testing import tiny_flux_inputs, tiny_flux_pipeline, tiny_flux_transformer
from conceptattention.testing.battery import (
    AdapterBattery,
    assert_subclassed_processor_refused,
    assert_t5_poolings,
    make_generate,
    random_image,
    t5_content_states,
)
from conceptattention.testing.references.flux import naive_flux_scores


GEN_KW = dict(height=32, width=48, num_inference_steps=3, max_sequence_length=32, output_type="pt")


@pytest.fixture(scope="module")
def transformer():
    return tiny_flux_transformer(num_layers=4, num_single_layers=2)


@pytest.fixture(scope="module")
def pipe():
    return tiny_flux_pipeline(num_layers=4)


generate = make_generate(GEN_KW, prompt="a dog on a rock")


def snapshot(transformer):
    return dict(transformer.attn_processors)


def assert_restored(transformer, before):
    after = snapshot(transformer)
    assert after.keys() == before.keys()
    assert all(after[name] is before[name] for name in before)
    assert not getattr(transformer, "_conceptattention_active", False)
    registry = getattr(transformer, "_diffusers_hook", None)
    if registry is not None:
        assert registry.get_hook("conceptattention_call") is None


class TestFluxBattery(AdapterBattery):
    """The shared adapter battery on FLUX.1: bit-identity and naive-reference agreement per (space, mode),
    restoration, determinism, layer selection, fused QKV, torch.compile, pipeline bit-identity and true CFG."""

    concept_dim = 32
    expected_grid = (1, 4, 6)
    pipeline_kwargs = GEN_KW
    pipeline_cfg_kwargs = dict(negative_prompt="blurry", true_cfg_scale=2.0)  # FluxPipeline's true CFG (2 calls)
    expected_pipeline_grid = (1, 16, 24)
    tiny_transformer = tiny_flux_transformer
    tiny_inputs = tiny_flux_inputs
    tiny_pipeline = tiny_flux_pipeline
    naive_reference = naive_flux_scores

    def make_compile_transformer(self):
        return tiny_flux_transformer(num_layers=6, num_single_layers=2)  # more blocks than graphs


class TestBitIdentity:
    """With concept maps on, outputs are torch.equal to outputs without (beyond the battery: a batch of two, a
    guidance-distilled model under true CFG)."""

    def test_batch_of_two_identical(self, transformer):
        inputs = tiny_flux_inputs(batch_size=2, seed=3)
        reference = transformer(**inputs)[0]
        with ConceptAttention(transformer, concept_embeds=torch.randn(4, 32)):
            output = transformer(**inputs)[0]
        assert torch.equal(reference, output)

    def test_guidance_model_identical_and_true_cfg(self):
        pipe = tiny_flux_pipeline(num_layers=3, guidance_embeds=True)
        kwargs = dict(negative_prompt="blurry", true_cfg_scale=2.0, guidance_scale=3.5)
        reference = generate(pipe, **kwargs)
        with ConceptAttention(pipe, ["dog", "sky"]) as ca:
            image = generate(pipe, **kwargs)
        assert torch.equal(reference, image)
        # true CFG makes two transformer calls per step; only the conditional one is recorded
        assert ca.session.num_recorded_calls == GEN_KW["num_inference_steps"]


class TestRestoration:
    """Processors and hooks are always put back (beyond the battery: a KeyboardInterrupt mid-pipeline, an error in
    the capture hook, the hook registry, re-entry, a processor replaced inside the block)."""

    def test_restored_after_exception_mid_run(self, pipe):
        before = snapshot(pipe.transformer)

        def explode(*args, **kwargs):
            raise KeyboardInterrupt("stop mid-run")

        with pytest.raises(KeyboardInterrupt):
            with ConceptAttention(pipe, ["dog", "sky"]):
                generate(pipe, callback_on_step_end=explode)
        assert_restored(pipe.transformer, before)
        # and the model still works identically afterwards
        assert torch.equal(generate(pipe), generate(pipe))

    def test_restored_after_exception_in_processor(self, transformer):
        before = snapshot(transformer)
        inputs = tiny_flux_inputs()
        inputs["pooled_projections"] = None  # the capture hook refuses this call
        with pytest.raises(ValueError, match="pooled_projections"):
            with ConceptAttention(transformer, concept_embeds=torch.randn(2, 32)):
                transformer(**inputs)
        assert_restored(transformer, before)

    def test_hook_registry_cleaned_when_created(self):
        model = tiny_flux_transformer(num_layers=2)
        assert not hasattr(model, "_diffusers_hook")
        with ConceptAttention(model, concept_embeds=torch.randn(2, 32)):
            model(**tiny_flux_inputs())
        assert not hasattr(model, "_diffusers_hook")
        assert "forward" not in vars(model)

    def test_reentry_raises(self, transformer):
        ca = ConceptAttention(transformer, concept_embeds=torch.randn(2, 32))
        with ca:
            with pytest.raises(RuntimeError, match="already active"):
                ca.__enter__()
            other = ConceptAttention(transformer, concept_embeds=torch.randn(2, 32))
            with pytest.raises(RuntimeError, match="Another ConceptAttention"):
                other.__enter__()

    def test_processor_replaced_inside_block_raises(self, transformer):
        before = snapshot(transformer)
        with pytest.raises(RuntimeError, match="replaced"):
            with ConceptAttention(transformer, concept_embeds=torch.randn(2, 32)):
                transformer.transformer_blocks[0].attn.set_processor(FluxAttnProcessor())
                transformer(**tiny_flux_inputs())
        # the user's replacement is undone by the restore; the original processors are back
        assert_restored(transformer, before)


class TestRefusals:
    """Clear errors instead of silently wrong maps."""

    def test_maps_before_run_raise(self, transformer):
        ca = ConceptAttention(transformer, concept_embeds=torch.randn(2, 32))
        with pytest.raises(NoMapsError, match="run the pipeline inside"):
            _ = ca.maps
        with ca:
            with pytest.raises(NoMapsError):
                _ = ca.maps

    def test_unsupported_model_names_supported_and_registration(self):
        from diffusers import WanTransformer3DModel

        torch.manual_seed(0)
        wan = WanTransformer3DModel(
            patch_size=(1, 2, 2),
            num_attention_heads=2,
            attention_head_dim=12,
            in_channels=4,
            out_channels=4,
            text_dim=16,
            freq_dim=256,
            ffn_dim=32,
            num_layers=2,
            cross_attn_norm=True,
            qk_norm="rms_norm_across_heads",
            rope_max_seq_len=32,
        )
        with pytest.raises(UnsupportedModelError, match="FluxTransformer2DModel.*register_adapter"):
            ConceptAttention(wan, concept_embeds=torch.randn(2, 16))

    def test_gradient_checkpointing_with_grad_raises(self):
        model = tiny_flux_transformer(num_layers=2)
        model.enable_gradient_checkpointing()
        with pytest.raises(UnsupportedSetupError, match="Gradient checkpointing"):
            with ConceptAttention(model, concept_embeds=torch.randn(2, 32)):
                with torch.enable_grad():
                    model(**tiny_flux_inputs())
        with ConceptAttention(model, concept_embeds=torch.randn(2, 32)) as ca:  # fine without gradients
            with torch.no_grad():
                model(**tiny_flux_inputs())
        assert ca.maps.tensor.shape[0] == 2

    @pytest.mark.parametrize(
        ("config_name", "kwargs"),
        [
            case
            for case in [
                ("FirstBlockCacheConfig", dict(threshold=0.2)),
                (
                    "FasterCacheConfig",
                    dict(spatial_attention_block_skip_range=2, current_timestep_callback=lambda: 500),
                ),
                (
                    "PyramidAttentionBroadcastConfig",
                    dict(spatial_attention_block_skip_range=2, current_timestep_callback=lambda: 500),
                ),
                ("TaylorSeerCacheConfig", {}),
                ("MagCacheConfig", dict(num_inference_steps=2, mag_ratios=[1.0, 1.0])),
                ("SeaCacheConfig", {}),
                ("TextKVCacheConfig", {}),
            ]
            if hasattr(diffusers, case[0])  # the caches of the installed diffusers (SeaCache: 0.41 and later)
        ],
    )
    def test_cache_accelerator_refused_by_name(self, config_name, kwargs):
        import diffusers

        model = tiny_flux_transformer(num_layers=2)
        model.enable_cache(getattr(diffusers, config_name)(**kwargs))
        before = dict(model.attn_processors)
        cache = config_name.removesuffix("Config")
        with pytest.raises(
            UnsupportedSetupError, match=rf"The {cache} cache accelerator.*transformer\.disable_cache\(\)"
        ):
            ConceptAttention(model, concept_embeds=torch.randn(2, 32)).__enter__()
        assert all(model.attn_processors[name] is before[name] for name in before)
        model.disable_cache()  # the way out the message gives
        with ConceptAttention(model, concept_embeds=torch.randn(2, 32)) as ca, torch.no_grad():
            model(**tiny_flux_inputs())
        assert torch.isfinite(ca.maps.tensor).all()

    def test_cache_applied_with_hook_function_refused(self):
        from diffusers.hooks import FirstBlockCacheConfig, apply_first_block_cache

        model = tiny_flux_transformer(num_layers=2)
        apply_first_block_cache(model, FirstBlockCacheConfig(threshold=0.2))  # no enable_cache: hooks only
        with pytest.raises(UnsupportedSetupError, match="The FirstBlockCache cache accelerator"):
            ConceptAttention(model, concept_embeds=torch.randn(2, 32)).__enter__()

    def test_cache_enabled_inside_the_block_refused(self):
        from diffusers import FirstBlockCacheConfig

        model = tiny_flux_transformer(num_layers=2)
        with ConceptAttention(model, concept_embeds=torch.randn(2, 32)):
            model.enable_cache(FirstBlockCacheConfig(threshold=0.2))
            with pytest.raises(UnsupportedSetupError, match="The FirstBlockCache cache accelerator"), torch.no_grad():
                model(**tiny_flux_inputs())
        model.disable_cache()

    def test_foreign_processor_raises(self):
        model = tiny_flux_transformer(num_layers=2)
        assert_subclassed_processor_refused(model, model.transformer_blocks[1].attn, FluxAttnProcessor, 32)

    def test_parallel_config_raises(self):
        model = tiny_flux_transformer(num_layers=2)
        model._parallel_config = object()
        with pytest.raises(UnsupportedSetupError, match="parallelism"):
            ConceptAttention(model, concept_embeds=torch.randn(2, 32)).__enter__()

    @pytest.mark.parametrize(
        "concepts, message",
        [([], "empty"), (["dog", "dog"], "twice"), (["dog", "  "], "empty"), ("dog", "list of strings")],
    )
    def test_bad_concepts(self, pipe, concepts, message):
        with pytest.raises(ConceptError, match=message):
            ConceptAttention(pipe, concepts)

    def test_concept_too_long(self, pipe):
        with pytest.raises(ConceptError, match="tokens long"):
            with ConceptAttention(pipe, ["dog", "x" * 600]):
                pass

    def test_strings_need_a_pipeline(self, transformer):
        with pytest.raises(ConceptError, match="concept_embeds"):
            ConceptAttention(transformer, ["dog", "sky"])

    @pytest.mark.parametrize(
        "options, message",
        [
            (dict(layers=[7]), "out of range"),
            (dict(layers=["single_transformer_blocks.9"]), "Unknown layer"),
            (dict(layers=[1, -3]), "selected twice"),
            (dict(space="attention"), "space"),
            (dict(concept_attention="all"), "concept_attention"),
            (dict(timesteps=[-1]), "non-negative"),
            (dict(temperature=0), "temperature"),
        ],
    )
    def test_bad_options(self, transformer, options, message):
        with pytest.raises(ConfigError, match=message):
            ConceptAttention(transformer, concept_embeds=torch.randn(2, 32), **options)

    def test_single_concept_softmax_warns(self, transformer):
        with pytest.warns(UserWarning, match="single concept"):
            ca = ConceptAttention(transformer, concept_embeds=torch.randn(1, 32))
        with ca:
            transformer(**tiny_flux_inputs())
        assert not ca.maps.settings["effective_softmax"]
        assert not torch.allclose(ca.maps.tensor, torch.ones_like(ca.maps.tensor))


class TestMethod:
    """The method's options on FLUX.1 (the battery compares every space and mode with the naive reference)."""

    def test_softmax_per_layer_then_mean(self, transformer):
        inputs = tiny_flux_inputs(height=3, width=4)
        embeds = torch.randn(3, 32, generator=torch.Generator().manual_seed(3))
        with ConceptAttention(transformer, concept_embeds=embeds, layers=[1, 3]) as ca:
            transformer(**inputs)
        reference = naive_flux_scores(transformer, inputs, embeds, [1, 3])  # [L, B, C, I]
        expected = torch.softmax(reference, dim=2).mean(0)[0].reshape(3, 1, 3, 4).float()
        torch.testing.assert_close(ca.maps.tensor, expected, rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(ca.maps.tensor.sum(0), torch.ones(1, 3, 4))

    def test_prompt_conditioning(self, transformer):
        inputs = tiny_flux_inputs(height=2, width=3)
        embeds = torch.randn(2, 32, generator=torch.Generator().manual_seed(4))
        with ConceptAttention(
            transformer, concept_embeds=embeds, layers=[2], softmax=False, concept_conditioning="prompt"
        ) as ca:
            transformer(**inputs)
        reference = naive_flux_scores(transformer, inputs, embeds, [2], conditioning="prompt")
        torch.testing.assert_close(ca.maps.logits.flatten(1), reference[0, 0].float(), rtol=1e-4, atol=1e-3)

    def test_layer_selection_noncontiguous_negative_and_paths(self, transformer):
        inputs = tiny_flux_inputs()
        embeds = torch.randn(2, 32)
        results = []
        for layers in ([0, 3], [0, -1], ["transformer_blocks.0", "transformer_blocks.3"]):
            with ConceptAttention(transformer, concept_embeds=embeds, layers=layers, keep_per_step=True) as ca:
                transformer(**inputs)
            assert sorted(layer for _, layer in ca.per_step_scores) == [0, 3]
            results.append(ca.maps.tensor)
        assert torch.equal(results[0], results[1]) and torch.equal(results[0], results[2])
        assert ca.maps.settings["resolved_layers"] == ["transformer_blocks.0", "transformer_blocks.3"]

    def test_default_layers_are_last_four(self):
        from conceptattention.adapters.flux import FluxAdapter

        assert FluxAdapter().default_layers(19) == (15, 16, 17, 18)
        assert FluxAdapter().default_layers(2) == (0, 1)

    def test_timestep_selection(self, pipe):
        with ConceptAttention(pipe, ["dog", "sky"], timesteps=[0, 2], keep_per_step=True) as ca:
            generate(pipe)
        assert sorted({step for step, _ in ca.per_step_scores}) == [0, 2]
        with ConceptAttention(pipe, ["dog", "sky"], timesteps=[7]) as ca:
            generate(pipe)
        with pytest.raises(NoMapsError, match="timesteps"):
            _ = ca.maps

    def test_concept_encoding_pools_content_tokens(self, pipe):
        from conceptattention.adapters.flux import FluxAdapter

        concepts = ["red car", "sky"]
        encoded = {p: FluxAdapter().encode_concepts(pipe, concepts, p) for p in ("mean", "first", "last")}
        # content-token pooling; a multi-word concept is not truncated to its first token
        assert_t5_poolings(encoded, *t5_content_states(pipe.tokenizer_2, pipe.text_encoder_2, concepts))

    def test_pooling_changes_maps(self, pipe):
        maps = {}
        for pooling in ("mean", "first"):
            with ConceptAttention(pipe, ["red car", "sky"], concept_pooling=pooling) as ca:
                generate(pipe)
            maps[pooling] = ca.maps.tensor
        assert not torch.allclose(maps["mean"], maps["first"])

    def test_batch_of_images_and_non_square(self, pipe):
        with ConceptAttention(pipe, ["dog", "sky"]) as ca:
            generate(pipe, num_images_per_prompt=2, height=48, width=32)
        assert len(ca.batch_maps) == 2
        assert ca.batch_maps[0].tensor.shape == (2, 1, 24, 16)
        with pytest.raises(ValueError, match="batch_maps"):
            _ = ca.maps

@pytest.fixture(scope="module")
def image():
    return random_image()


class TestExplain:
    """The real-image path."""

    def test_shape_and_settings(self, pipe, image):
        maps = explain(pipe, image, ["dog", "sky"], height=32, width=48, num_samples=2)
        assert maps.tensor.shape == (2, 1, 16, 24)
        assert maps.settings["num_samples"] == 2 and maps.settings["path"] == "explain"
        torch.testing.assert_close(maps.tensor.sum(0), torch.ones(1, 16, 24))

    def test_default_resolution_keeps_aspect(self, pipe, image):
        pipe.default_sample_size = 16  # 16 latent px · vae 1 → a 16×16 area target for this tiny VAE
        try:
            maps = explain(pipe, image, ["dog", "sky"])
        finally:
            del pipe.default_sample_size
        assert maps.settings["height"] < maps.settings["width"]

    def test_samples_change_result_and_batching_is_exact(self, pipe, image):
        one = explain(pipe, image, ["dog", "sky"], height=32, width=32, num_samples=1)
        three = explain(pipe, image, ["dog", "sky"], height=32, width=32, num_samples=3)
        chunked = explain(pipe, image, ["dog", "sky"], height=32, width=32, num_samples=3, samples_per_batch=2)
        assert not torch.allclose(one.tensor, three.tensor)
        torch.testing.assert_close(three.tensor, chunked.tensor)
        # mean over samples of single-sample maps (seeds 0, 1, 2)
        singles = [explain(pipe, image, ["dog", "sky"], height=32, width=32, seed=s).tensor for s in range(3)]
        torch.testing.assert_close(three.tensor, torch.stack(singles).mean(0))

    def test_early_exit_skips_single_blocks(self, pipe, image):
        calls = []
        handle = pipe.transformer.single_transformer_blocks[0].register_forward_pre_hook(lambda *a: calls.append(1))
        try:
            explain(pipe, image, ["dog", "sky"], height=32, width=32, layers=[1])
        finally:
            handle.remove()
        assert calls == []

    @pytest.mark.parametrize(
        "kwargs, message",
        [
            (dict(noise_level=0.0), "noise_level"),
            (dict(noise_level=1.5), "noise_level"),
            (dict(num_samples=0), "num_samples"),
            (dict(height=32), "both height and width"),
            (dict(height=33, width=32), "multiples"),
            (dict(timesteps=[0]), "timesteps"),
        ],
    )
    def test_bad_arguments(self, pipe, image, kwargs, message):
        with pytest.raises((ValueError,), match=message):
            explain(pipe, image, ["dog", "sky"], **kwargs)


def test_no_warnings_from_processors(transformer):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with ConceptAttention(transformer, concept_embeds=torch.randn(2, 32)):
            transformer(**tiny_flux_inputs())


def _load_random_ip_adapter(pipe, clip_dim: int = 8, seed: int = 3) -> None:
    """A random-weight IP-Adapter (diffusers' Flux IP-Adapter layout) loaded through the transformer's own loader."""
    transformer = pipe.transformer
    generator = torch.Generator().manual_seed(seed)
    joint, inner = transformer.config.joint_attention_dim, transformer.inner_dim
    image_proj = {
        "proj.weight": torch.randn(4 * joint, clip_dim, generator=generator) * 0.1,  # 4 image tokens
        "proj.bias": torch.zeros(4 * joint),
        "norm.weight": torch.ones(joint),
        "norm.bias": torch.zeros(joint),
    }
    ip_adapter = {}
    for index in range(len(transformer.transformer_blocks)):
        for name in ("to_k_ip", "to_v_ip"):
            ip_adapter[f"{index}.{name}.weight"] = torch.randn(inner, joint, generator=generator) * 0.1
            ip_adapter[f"{index}.{name}.bias"] = torch.zeros(inner)
    transformer._load_ip_adapter_weights(
        [{"image_proj": image_proj, "ip_adapter": ip_adapter}], low_cpu_mem_usage=False
    )


def test_ip_adapter_supported():
    """With an IP-Adapter loaded (FluxIPAdapterAttnProcessor, an nn.Module with weights), the concept processor
    wraps it: the image is unchanged, maps are recorded, the adapter's weights stay in the module tree, and the very
    same processors are back afterwards."""
    from diffusers.models.transformers.transformer_flux import FluxIPAdapterAttnProcessor

    pipe = tiny_flux_pipeline(num_layers=3)
    plain = generate(pipe)
    _load_random_ip_adapter(pipe)
    ip_kwargs = dict(
        ip_adapter_image_embeds=[torch.randn(1, 1, 8, generator=torch.Generator().manual_seed(4))],  # [B, images, D]
        negative_ip_adapter_image_embeds=[torch.zeros(1, 1, 8)],  # no image encoder in the tiny pipeline
    )
    before = snapshot(pipe.transformer)
    assert isinstance(before["transformer_blocks.0.attn.processor"], FluxIPAdapterAttnProcessor)
    reference = generate(pipe, **ip_kwargs)
    assert not torch.equal(reference, plain)  # the adapter is active
    with ConceptAttention(pipe, ["dog", "rock", "sky"]) as ca:
        weights = {name for name, _ in pipe.transformer.named_parameters() if "to_k_ip" in name}
        output = generate(pipe, **ip_kwargs)
    assert torch.equal(reference, output)
    assert len(weights) == 6 and all(".processor.original.to_k_ip." in name for name in weights)  # still registered
    assert torch.isfinite(ca.maps.tensor).all() and ca.maps.tensor.shape == (3, 1, 16, 24)
    assert_restored(pipe.transformer, before)


def test_compiled_pipeline_transformer():
    """``pipe.transformer = torch.compile(pipe.transformer)``: ConceptAttention builds on ``_orig_mod``; the compiled
    pipeline's images with maps equal its images without, and the maps equal the eager pipeline's."""
    pipe = tiny_flux_pipeline(num_layers=3)
    with ConceptAttention(pipe, ["dog", "sky"]) as eager:
        generate(pipe)
    torch._dynamo.reset()
    try:
        pipe.transformer = torch.compile(pipe.transformer, backend="aot_eager")
        plain = generate(pipe)
        with ConceptAttention(pipe, ["dog", "sky"]) as ca:
            output = generate(pipe)
        assert ca.transformer is pipe.transformer._orig_mod
        assert torch.equal(plain, output)
        torch.testing.assert_close(ca.maps.tensor, eager.maps.tensor)
        assert not torch._dynamo.utils.counters["graph_break"]
    finally:
        torch._dynamo.reset()


@pytest.mark.slow
def test_regional_compile_inductor():
    """``compile_repeated_blocks()`` with the default (inductor) backend on the CPU: images with maps are bit-identical
    to the compiled images without, maps match the eager ones, two graphs for the concept blocks (the first joint
    block and the rest), none per block, no graph break (~1 min: inductor compiles C++ kernels)."""
    model = tiny_flux_transformer(num_layers=4, num_single_layers=1)
    inputs = tiny_flux_inputs()
    embeds = torch.randn(3, 32, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        with ConceptAttention(model, concept_embeds=embeds) as eager:
            model(**inputs)
        torch._dynamo.reset()
        counters = torch._dynamo.utils.counters
        counters.clear()
        try:
            model.compile_repeated_blocks()
            plain = model(**inputs)[0]
            graphs_off = counters["stats"]["unique_graphs"]
            with ConceptAttention(model, concept_embeds=embeds) as ca:
                first = model(**inputs)[0]
                second = model(**inputs)[0]
            assert torch.equal(plain, first) and torch.equal(plain, second)
            torch.testing.assert_close(ca.maps.tensor, eager.maps.tensor)
            assert counters["stats"]["unique_graphs"] - graphs_off <= 2, dict(counters["stats"])
            assert not counters["graph_break"], dict(counters["graph_break"])
        finally:
            torch._dynamo.reset()


def test_attention_backend_set_inside_the_block_reaches_the_stock_processor():
    """``set_attention_backend`` inside the ``with`` block reaches diffusers' processor that computes the joint
    attention (wrapped by ours), and stays on it after the block."""
    from diffusers.models.attention_dispatch import _AttentionBackendRegistry

    model = tiny_flux_transformer(num_layers=2)
    inputs = tiny_flux_inputs()
    stock = model.transformer_blocks[0].attn.processor
    active = _AttentionBackendRegistry._active_backend
    try:
        with ConceptAttention(model, concept_embeds=torch.randn(2, 32)) as ca, torch.no_grad():
            model.set_attention_backend("native")
            ours = model.transformer_blocks[0].attn.processor
            assert ours is not stock and ours.original is stock
            assert stock._attention_backend is not None and ours._attention_backend is stock._attention_backend
            model(**inputs)
        assert torch.isfinite(ca.maps.tensor).all()
        assert model.transformer_blocks[0].attn.processor is stock and stock._attention_backend is not None
    finally:
        model.reset_attention_backend()
        _AttentionBackendRegistry._active_backend = active


class TestMemoryFeatures:
    """diffusers' layerwise casting and group offloading (CPU→CPU here: the hook order, not device moves)."""

    def run_pair(self, model):
        inputs = tiny_flux_inputs(seed=5)
        with torch.no_grad():
            reference = model(**inputs)[0]
            with ConceptAttention(
                model, concept_embeds=torch.randn(3, 32, generator=torch.Generator().manual_seed(0))
            ) as ca:
                output = model(**inputs)[0]
        assert torch.equal(reference, output)
        assert torch.isfinite(ca.maps.tensor).all()
        return ca.maps.tensor

    def test_layerwise_casting_fp8_storage(self):
        model = tiny_flux_transformer(num_layers=3)
        plain = self.run_pair(model)
        model.enable_layerwise_casting(storage_dtype=torch.float8_e4m3fn, compute_dtype=torch.float32)
        cast = self.run_pair(model)
        assert not torch.equal(plain, cast)  # the weights really changed precision

    @pytest.mark.parametrize("offload_type", ["block_level", "leaf_level"])
    def test_group_offloading(self, offload_type):
        from diffusers.hooks import apply_group_offloading

        model = tiny_flux_transformer(num_layers=3)
        plain = self.run_pair(model)
        kwargs = {"num_blocks_per_group": 1} if offload_type == "block_level" else {}
        apply_group_offloading(model, onload_device=torch.device("cpu"), offload_type=offload_type, **kwargs)
        torch.testing.assert_close(self.run_pair(model), plain)
