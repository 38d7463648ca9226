"""DAAM-style baseline on a tiny random Stable Diffusion pipeline built in memory (offline)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from diffusers.models.attention_processor import Attention, AttnProcessor
from PIL import Image

from conceptattention.evaluation import (
    DAAMError,
    DAAMRecorder,
    MethodError,
    build_dataset,
    concept_token_positions,
    daam_explain,
    daam_prompt,
    evaluate,
    get_method,
)
from conceptattention.testing import (
    quiet_pipeline,
    seeded_eval,
    tiny_autoencoder_kl,
    tiny_clip_tokenizer,
    tiny_flux_pipeline,
)


def tiny_unet(seed: int, **config: Any) -> Any:
    """A random 2-level ``UNet2DConditionModel`` (8 -> 16 channels, 4-channel latents); ``config`` adds the blocks."""
    from diffusers import UNet2DConditionModel

    return seeded_eval(
        seed,
        UNet2DConditionModel,
        sample_size=8,
        in_channels=4,
        out_channels=4,
        layers_per_block=1,
        block_out_channels=(8, 16),
        attention_head_dim=4,
        norm_num_groups=4,
        **config,
    )


def tiny_vae(seed: int | None) -> Any:
    """A random 2-level ``AutoencoderKL`` (scale 2, 4 latent channels); ``seed=None`` continues the global RNG."""
    return tiny_autoencoder_kl((4, 8), latent_channels=4, norm_num_groups=4, sample_size=16, seed=seed)


def clip_config(tokenizer: Any, **extra: Any) -> Any:
    """A 2-layer, 16-wide ``CLIPTextConfig`` for the in-memory CLIP tokenizer."""
    from transformers import CLIPTextConfig

    return CLIPTextConfig(
        vocab_size=len(tokenizer),
        hidden_size=16,
        intermediate_size=32,
        num_attention_heads=2,
        num_hidden_layers=2,
        bos_token_id=0,
        eos_token_id=1,
        pad_token_id=1,
        max_position_embeddings=77,
        **extra,
    )


def ddim() -> Any:
    from diffusers import DDIMScheduler

    return DDIMScheduler(steps_offset=1, clip_sample=False)


def tiny_sd_pipeline(seed: int = 0) -> Any:
    """A random-weight ``StableDiffusionPipeline``: 2-level UNet with cross-attention, 2-level VAE (scale 2)."""
    from diffusers import StableDiffusionPipeline
    from transformers import CLIPTextModel

    tokenizer = tiny_clip_tokenizer()
    unet = tiny_unet(
        seed,
        down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=16,
    )
    return quiet_pipeline(
        StableDiffusionPipeline(
            vae=tiny_vae(seed + 1),
            text_encoder=seeded_eval(seed + 2, CLIPTextModel, clip_config(tokenizer)),
            tokenizer=tokenizer,
            unet=unet,
            scheduler=ddim(),
            safety_checker=None,
            feature_extractor=None,
            requires_safety_checker=False,
        )
    )


def tiny_sdxl_pipeline(seed: int = 0) -> Any:
    """A random-weight ``StableDiffusionXLPipeline``: two CLIP encoders (concatenated), text-time conditioning.

    Only the UNet is seeded: the VAE and the encoders continue the RNG after it.
    """
    from diffusers import StableDiffusionXLPipeline
    from transformers import CLIPTextModel, CLIPTextModelWithProjection

    tokenizer = tiny_clip_tokenizer()
    unet = tiny_unet(
        seed,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=32,  # 16 + 16: both encoders' hidden states, concatenated
        addition_embed_type="text_time",
        addition_time_embed_dim=4,
        projection_class_embeddings_input_dim=16 + 6 * 4,  # pooled projection + six time ids
    )
    vae = tiny_vae(None)
    text_encoder = seeded_eval(None, CLIPTextModel, clip_config(tokenizer))
    text_encoder_2 = seeded_eval(None, CLIPTextModelWithProjection, clip_config(tokenizer, projection_dim=16))
    return quiet_pipeline(
        StableDiffusionXLPipeline(
            vae=vae,
            text_encoder=text_encoder,
            text_encoder_2=text_encoder_2,
            tokenizer=tokenizer,
            tokenizer_2=tiny_clip_tokenizer(),
            unet=unet,
            scheduler=ddim(),
        )
    )


GENERATE = dict(height=16, width=24, num_inference_steps=2, output_type="np")


@pytest.fixture(scope="module")
def pipe() -> Any:
    torch.set_num_threads(1)
    return tiny_sd_pipeline()


def generate(pipe: Any, guidance_scale: float = 1.0, prompt: str = "a dog on grass", **overrides: Any) -> np.ndarray:
    generator = torch.Generator().manual_seed(0)
    return pipe(prompt, generator=generator, guidance_scale=guidance_scale, **{**GENERATE, **overrides}).images


def cross_attention_modules(pipe: Any) -> list[Attention]:
    return [module for module in pipe.unet.modules() if isinstance(module, Attention) and module.is_cross_attention]


@contextmanager
def replaced_processors(modules: list[Attention], make_processor: Callable[[], Any]) -> Iterator[None]:
    """Give each module a fresh processor from ``make_processor`` inside the block; restore the originals after."""
    originals = [module.processor for module in modules]
    for module in modules:
        module.set_processor(make_processor())
    try:
        yield
    finally:
        for module, original in zip(modules, originals):
            module.set_processor(original)


def random_image(height: int, width: int, seed: int) -> Image.Image:
    pixels = np.random.default_rng(seed).integers(0, 256, size=(height, width, 3), dtype=np.uint8)  # [H, W, 3]
    return Image.fromarray(pixels)


class TestRecorder:
    @pytest.mark.parametrize("guidance_scale", [1.0, 5.0])
    def test_output_is_bit_identical_while_recording(self, pipe: Any, guidance_scale: float) -> None:
        plain = generate(pipe, guidance_scale)
        with DAAMRecorder(pipe) as recorder:
            recorded = generate(pipe, guidance_scale)
        assert np.array_equal(plain, recorded)
        assert recorder.num_recorded_calls == 2 and recorder.num_recorded_layers == 2 * len(recorder.layer_names)
        # The latent grid is read from the latents (16 x 24 pixels / VAE factor 2), and with guidance only the
        # conditional half of the [uncond, cond] batch is kept.
        assert recorder.heat_maps.shape == (1, 77, 8, 12)

    def test_processors_are_restored_after_an_exception(self, pipe: Any) -> None:
        modules = cross_attention_modules(pipe)
        originals = [module.processor for module in modules]
        self_attention = [
            m.processor for m in pipe.unet.modules() if isinstance(m, Attention) and not m.is_cross_attention
        ]
        with pytest.raises(RuntimeError, match="boom"):
            with DAAMRecorder(pipe):
                assert all(module.processor is not original for module, original in zip(modules, originals))
                raise RuntimeError("boom")
        assert all(module.processor is original for module, original in zip(modules, originals))
        assert self_attention == [
            m.processor for m in pipe.unet.modules() if isinstance(m, Attention) and not m.is_cross_attention
        ]
        assert not pipe.unet._forward_pre_hooks
        assert np.array_equal(generate(pipe), generate(pipe))  # still a working, unmodified pipeline

    def test_probabilities_equal_the_reference_attention_scores(
        self, pipe: Any, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """Each layer's recorded probabilities equal diffusers' own ``get_attention_scores`` (classic processor)."""
        modules = cross_attention_modules(pipe)
        captured: list[tuple[Attention, torch.Tensor]] = []
        reference = Attention.get_attention_scores

        def capture(attn: Attention, query: torch.Tensor, key: torch.Tensor, mask: Any = None) -> torch.Tensor:
            probabilities = reference(attn, query, key, mask)  # [B * heads, N, L]
            if attn.is_cross_attention:
                captured.append((attn, probabilities.detach().clone()))
            return probabilities

        monkeypatch.setattr(Attention, "get_attention_scores", capture)
        with replaced_processors(modules, AttnProcessor):
            latents = torch.randn(2, 4, 8, 12, generator=torch.Generator().manual_seed(1))  # [B, c, h, w]
            text = torch.randn(2, 77, 16, generator=torch.Generator().manual_seed(2))  # [B, L, D]
            with DAAMRecorder(pipe.unet, interpolation="nearest") as recorder, torch.no_grad():
                pipe.unet(latents, torch.tensor([500, 500]), encoder_hidden_states=text)
        assert len(captured) == len(modules)
        expected = torch.zeros(2, 77, 8, 12)
        for module, probabilities in captured:
            heads = module.heads
            averaged = probabilities.view(2, heads, -1, 77).mean(dim=1)  # [B * heads, N, L] -> [B, N, L]
            factor = int(round((8 * 12 / averaged.shape[1]) ** 0.5))
            grid = averaged.transpose(1, 2).reshape(2, 77, 8 // factor, 12 // factor)  # [B, L, h_l, w_l]
            expected += F.interpolate(grid, size=(8, 12), mode="nearest")
        assert torch.allclose(recorder.heat_maps, expected, atol=1e-5)

    def test_maps_of_all_tokens_sum_to_the_number_of_layers(self, pipe: Any) -> None:
        """Softmax rows sum to one and bilinear upsampling preserves that, so every pixel sums to layers x calls."""
        with DAAMRecorder(pipe, interpolation="bilinear", layers=[0, 2, -1]) as recorder:
            generate(pipe)
        assert len(recorder.layers) == 3
        totals = recorder.heat_maps.sum(dim=1)  # [B, h, w]
        assert torch.allclose(totals, torch.full_like(totals, 3 * 2), atol=1e-4)
        assert recorder.settings()["layers"] == [recorder.layer_names[index] for index in recorder.layers]

    def test_timestep_selection(self, pipe: Any) -> None:
        with DAAMRecorder(pipe, timesteps=[1]) as recorder:
            generate(pipe)
        assert recorder.num_calls == 2 and recorder.num_recorded_calls == 1

    def test_refusals(self, pipe: Any) -> None:
        with pytest.raises(DAAMError, match="UNet pipeline"):
            DAAMRecorder(tiny_flux_pipeline())
        with pytest.raises(DAAMError, match="out of range"):
            DAAMRecorder(pipe, layers=[99])
        with pytest.raises(DAAMError, match="No DAAM maps recorded"):
            DAAMRecorder(pipe).heat_maps  # noqa: B018

        class AdapterProcessor(AttnProcessor):
            def __call__(  # an IP-Adapter-like processor with an extra input
                self,
                attn: Any,
                hidden_states: Any,
                encoder_hidden_states: Any = None,
                attention_mask: Any = None,
                temb: Any = None,
                ip_adapter_masks: Any = None,
            ) -> Any:
                return super().__call__(attn, hidden_states, encoder_hidden_states, attention_mask, temb)

        with replaced_processors(cross_attention_modules(pipe)[:1], AdapterProcessor):
            with pytest.raises(DAAMError, match="ip_adapter_masks"):
                with DAAMRecorder(pipe):
                    pass
        assert all(not type(m.processor).__name__.startswith("_Recording") for m in cross_attention_modules(pipe))


class TestStableDiffusionXL:
    def test_recording_and_real_images(self) -> None:
        pipe = tiny_sdxl_pipeline()
        plain = generate(pipe, 5.0, "a dog", width=16)  # guidance 5 (SDXL's default): batched CFG
        with DAAMRecorder(pipe) as recorder:
            recorded = generate(pipe, 5.0, "a dog", width=16)
        assert np.array_equal(plain, recorded) and recorder.heat_maps.shape == (1, 77, 8, 8)
        maps = daam_explain(pipe, [random_image(20, 30, 0)] * 2, [["dog", "sky"], ["cat"]], captions=["a dog", ""])
        assert [m.concepts for m in maps] == [("dog", "sky"), ("cat",)] and maps[0].grid_size == (6, 10)  # 12 x 20 px
        assert all(bool(torch.isfinite(m.tensor).all()) and float(m.tensor.max()) > 0 for m in maps)


class TestPromptAndTokens:
    def test_prompt(self) -> None:
        assert daam_prompt("a dog", ["dog", "grass"]) == "a dog, a dog, a grass"
        assert daam_prompt("  ", ["sky"]) == "a sky"

    def test_token_positions_cover_every_occurrence(self) -> None:
        tokenizer = tiny_clip_tokenizer()  # character level: "dog" is three tokens
        prompt = daam_prompt("a dog", ["dog", "red car"])
        ids = tokenizer(prompt).input_ids
        positions = concept_token_positions(tokenizer, prompt, "dog")
        assert len(positions) == 6 and all(tokenizer.decode([ids[p]]).strip() in "dog" for p in positions)
        car = concept_token_positions(tokenizer, prompt, "red car")
        assert "".join(tokenizer.decode([ids[p]]) for p in car).replace(" ", "") == "redcar"

    def test_missing_and_truncated_concepts(self) -> None:
        tokenizer = tiny_clip_tokenizer()
        with pytest.raises(DAAMError, match="do not appear"):
            concept_token_positions(tokenizer, "a dog", "cat")
        long_prompt = daam_prompt("", ["background"] * 8 + ["elephant"])
        with pytest.raises(DAAMError, match="reads only 77"):
            concept_token_positions(tokenizer, long_prompt, "elephant")


class TestExplain:
    def test_maps_per_image_and_batching(self, pipe: Any) -> None:
        images = [random_image(20, 30, 0), random_image(30, 30, 1)]
        concepts = [["dog", "grass"], ["cat", "sky", "grass"]]
        modules = cross_attention_modules(pipe)
        originals = [module.processor for module in modules]
        batched = daam_explain(
            pipe, images, concepts, captions=["a dog", "a cat"], num_samples=2, height=16, width=24, seed=3
        )
        assert all(module.processor is original for module, original in zip(modules, originals))
        assert [maps.concepts for maps in batched] == [("dog", "grass"), ("cat", "sky", "grass")]
        assert all(maps.grid_size == (8, 12) and maps.num_frames == 1 for maps in batched)
        assert all(bool((maps.tensor >= 0).all()) and float(maps.tensor.max()) > 0 for maps in batched)
        assert batched[1].settings["prompt"] == "a cat, a cat, a sky, a grass"
        alone = daam_explain(
            pipe, images[1:], concepts[1:], captions=["a cat"], num_samples=2, height=16, width=24, seed=3
        )
        assert torch.allclose(alone[0].tensor, batched[1].tensor, atol=1e-6)
        other_seed = daam_explain(
            pipe, images[1:], concepts[1:], captions=["a cat"], num_samples=2, height=16, width=24
        )
        assert not torch.allclose(other_seed[0].tensor, batched[1].tensor)

    def test_default_resolution_keeps_the_aspect_ratio(self, pipe: Any) -> None:
        (maps,) = daam_explain(pipe, [random_image(10, 40, 0)], [["dog", "sky"]])
        # Model area 16 x 16 pixels (sample size 8 x VAE factor 2), multiples of 4: 8 x 32 pixels -> 4 x 16 latents.
        assert (maps.settings["height"], maps.settings["width"]) == (8, 32) and maps.grid_size == (4, 16)

    def test_argument_errors(self, pipe: Any) -> None:
        image = random_image(16, 16, 0)
        with pytest.raises(DAAMError, match="one concept list"):
            daam_explain(pipe, [image], [["a"], ["b"]])
        with pytest.raises(DAAMError, match="noise_level"):
            daam_explain(pipe, [image], [["dog"]], noise_level=1.5)
        with pytest.raises(DAAMError, match="multiples of 4"):
            daam_explain(pipe, [image], [["dog"]], height=10, width=16)


class TestRunner:
    def test_daam_through_the_runner_batches_images(
        self, pipe: Any, tmp_path: Path, make_voc: Callable[..., Path]
    ) -> None:
        labels = {}
        for index in range(3):
            label = np.zeros((24, 32), dtype=np.uint8)  # [H, W]
            label[4:18, 5 + index : 20 + index] = 8 + index
            labels[f"2008_{index:06d}"] = label
        dataset = build_dataset("voc", make_voc(tmp_path / "data", labels), label_size=32)
        method = get_method("daam", resolution=16)
        one = evaluate(pipe, dataset, method, tmp_path / "one", progress=False)
        batched = evaluate(pipe, dataset, method, tmp_path / "batched", batch_size=2, progress=False)
        assert one is not None and batched is not None
        assert one["settings"]["prediction_rule"] == "mean"  # the baselines' protocol, also on VOC
        for key in ("tp", "fp", "tn", "fn"):
            assert abs(one["metrics"]["binary"][key] - batched["metrics"]["binary"][key]) <= 2
        assert batched["metrics"]["binary"]["map"] == pytest.approx(one["metrics"]["binary"]["map"], abs=1e-4)
        with pytest.raises(MethodError, match="multi-modal diffusion transformer"):
            get_method("conceptattention").check_pipeline(pipe)
