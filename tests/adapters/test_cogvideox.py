"""CogVideoX adapter: the shared battery (1.0 sin-cos and 1.5 RoPE + ``patch_size_t=2``), a naive reference, and
video specifics: maps per token frame derived from the call's latent shape, no padding concepts, classifier-free
guidance halves, concept encoding, the real-video path, and GIF/MP4 outputs of a generated video.
"""

from __future__ import annotations

import functools

import imageio.v3 as iio
import pytest
import torch
from PIL import Image

from conceptattention import ConceptAttention, explain
from conceptattention.adapters.cogvideox import CogVideoXAdapter
from conceptattention.session import EarlyExit
from conceptattention.testing import tiny_cogvideox_inputs, tiny_cogvideox_pipeline, tiny_cogvideox_transformer
from conceptattention.testing.battery import (
    AdapterBattery,
    assert_cfg_conditional_half,
    assert_close_scaled,
    assert_t5_poolings,
    batch_logits,
    make_generate,
    seeded_embeds,
    t5_content_states,
)
from conceptattention.testing.references.cogvideox import naive_cogvideox_scores
from conceptattention.video import frames_grid_figure, save_overlay_video


GEN_KW = dict(
    height=16, width=24, num_frames=9, num_inference_steps=2, guidance_scale=1.0, max_sequence_length=16,
    output_type="pt",
)
CFG_KW = dict(guidance_scale=6.0)


generate = make_generate(GEN_KW, output="frames")
concept_embeds = functools.partial(seeded_embeds, dim=32)


_CONFIG_MODELS: dict[str, torch.nn.Module] = {}


@pytest.fixture(scope="module")
def pipe():
    return tiny_cogvideox_pipeline("1.0")


@pytest.fixture(scope="module")
def pipe15():
    return tiny_cogvideox_pipeline("1.5")


class TestCogVideoX10Battery(AdapterBattery):
    """The shared battery on CogVideoX 1.0 (2b-like: 3-D sin-cos positions): 2 latent frames → 2 map frames."""

    concept_dim = 32
    expected_grid = (2, 2, 3)
    pipeline_kwargs = GEN_KW
    pipeline_cfg_kwargs = CFG_KW
    expected_pipeline_grid = (3, 2, 3)  # 9 frames → 3 latent frames
    naive_reference = naive_cogvideox_scores
    version = "1.0"
    latent_frames = 2

    def make_transformer(self):
        return tiny_cogvideox_transformer(self.version, num_layers=3)

    def make_inputs(self, batch_size: int = 1, seed: int = 0):
        if self.version not in _CONFIG_MODELS:  # only the config (text length, widths, RoPE) is read
            _CONFIG_MODELS[self.version] = tiny_cogvideox_transformer(self.version, num_layers=1)
        model = _CONFIG_MODELS[self.version]
        return tiny_cogvideox_inputs(model, batch_size=batch_size, frames=self.latent_frames, seed=seed)

    def output_of(self, result):
        return result[0]

    def make_pipeline(self):
        return tiny_cogvideox_pipeline(self.version)



class TestCogVideoX15Battery(TestCogVideoX10Battery):
    """The shared battery on CogVideoX 1.5 (RoPE, ``patch_size_t=2``): 4 latent frames → 2 map frames; the pipeline
    pads 3 latent frames to 4 → 2 map frames."""

    expected_grid = (2, 2, 3)
    expected_pipeline_grid = (2, 2, 3)
    version = "1.5"
    latent_frames = 4


class TestMethod:
    @pytest.mark.parametrize("version", ["1.0", "1.0-rope", "1.5"])
    @pytest.mark.parametrize("space", ["output", "cross_attention"])
    def test_matches_reference_all_layers(self, version, space):
        model = tiny_cogvideox_transformer(version, num_layers=3)
        frames = 4 if version == "1.5" else 3
        inputs = tiny_cogvideox_inputs(model, batch_size=2, frames=frames, seed=2)
        embeds = concept_embeds(4)
        with ConceptAttention(model, concept_embeds=embeds, layers=[0, 1, 2], space=space, softmax=False) as ca:
            model(**inputs)
        reference = naive_cogvideox_scores(model, inputs, embeds, [0, 1, 2], space=space)  # [L, B, C, V]
        assert_close_scaled(batch_logits(ca), reference.mean(0).float())  # [B, C, V]

    @pytest.mark.parametrize(
        "version, latent_frames, grid", [("1.0", 3, (3, 2, 3)), ("1.0", 1, (1, 2, 3)), ("1.5", 6, (3, 2, 3))]
    )
    def test_grid_follows_the_call_latent_shape(self, version, latent_frames, grid):
        model = tiny_cogvideox_transformer(version)
        inputs = tiny_cogvideox_inputs(model, frames=latent_frames, height=4, width=6)
        with ConceptAttention(model, concept_embeds=concept_embeds()) as ca:
            model(**inputs)
        assert ca.maps.tensor.shape == (3, *grid)
        assert ca.maps.num_frames == grid[0]

    def test_exactly_the_given_concepts_in_the_softmax(self):
        # no padding slots: with two concepts the maps are a two-way softmax of the two concepts' logits
        model = tiny_cogvideox_transformer()
        inputs = tiny_cogvideox_inputs(model)
        with ConceptAttention(model, concept_embeds=concept_embeds(2), keep_per_step=True) as ca:
            model(**inputs)
        per_layer = [ca.per_step_scores[(0, layer)] for layer in ca.layers]  # each [1, 2, V]
        expected = torch.stack([torch.softmax(scores, dim=1) for scores in per_layer]).mean(0)[0]  # [2, V]
        torch.testing.assert_close(ca.maps.tensor.flatten(1), expected)


class TestGuidanceAndEncoding:
    def test_cfg_maps_come_from_the_conditional_half(self, pipe):
        assert_cfg_conditional_half(pipe, lambda pipe: generate(pipe, **CFG_KW), rtol=0, atol=0)

    def test_concepts_pool_t5_content_tokens(self, pipe):
        concepts = ["red car", "sky"]
        encoded = {p: CogVideoXAdapter().encode_concepts(pipe, concepts, p) for p in ("mean", "first", "last")}
        assert_t5_poolings(encoded, *t5_content_states(pipe.tokenizer, pipe.text_encoder, concepts))

    def test_missing_timestep(self):
        model = tiny_cogvideox_transformer()
        inputs = tiny_cogvideox_inputs(model)
        inputs["timestep"] = None
        with pytest.raises(ValueError, match="timestep"):
            with ConceptAttention(model, concept_embeds=concept_embeds()):
                model(**inputs)


class TestVideoOutputs:
    def test_generated_video_to_gif_mp4_and_grid(self, pipe15, tmp_path):
        with ConceptAttention(pipe15, ["house", "sea"]) as ca:
            video = pipe15(
                "a red house by the sea", generator=torch.Generator().manual_seed(0), **{**GEN_KW, "output_type": "pil"}
            ).frames[0]
        assert len(video) == 9 and ca.maps.num_frames == 2
        gif = save_overlay_video(video, ca.maps, "house", tmp_path / "house.gif", fps=8)
        mp4 = save_overlay_video(video, ca.maps, "sea", tmp_path / "sea.mp4", fps=8)
        assert iio.imread(gif, index=None).shape == (9, 16, 24, 3)
        assert iio.imread(mp4, index=None, plugin="FFMPEG").shape == (9, 16, 24, 3)
        figure = frames_grid_figure(video, ca.maps, max_columns=4)
        assert len(figure.axes) == 3 * 4


class TestExplain:
    """The real-video path (DDIM-style ``scheduler.add_noise``), through ``explain`` for one image."""

    def test_image_as_one_frame_video(self, pipe, pipe15):
        image = Image.fromarray((torch.rand(20, 30, 3, generator=torch.Generator().manual_seed(0)) * 255).byte().numpy())
        maps = explain(pipe, image, ["cat", "sky"], height=16, width=24, num_samples=2)
        assert maps.tensor.shape == (2, 1, 2, 3)
        torch.testing.assert_close(maps.tensor.sum(0), torch.ones(1, 2, 3))
        maps15 = explain(pipe15, image, ["cat", "sky"], height=16, width=24)  # 1 latent frame padded to 2
        assert maps15.tensor.shape == (2, 1, 2, 3)

    def test_video_frames_and_noise(self, pipe):
        frames = [Image.new("RGB", (24, 16), (10 * i, 50, 200 - 10 * i)) for i in range(9)]
        adapter = CogVideoXAdapter()
        batch = adapter.prepare_explain(
            pipe, frames, caption="", noise_level=0.5, seeds=[0, 1], height=16, width=24, guidance_scale=0.0,
            image_pooled="zero",
        )
        kwargs = batch.transformer_kwargs
        assert kwargs["hidden_states"].shape == (2, 3, 4, 4, 6)  # [N, F_lat, c, h, w]
        assert kwargs["timestep"].tolist() == [500, 500]
        assert kwargs["encoder_hidden_states"].shape == (2, 16, 32)  # max_text_seq_length tokens
        noise = torch.randn(3, 4, 4, 6, generator=torch.Generator().manual_seed(0))
        clean = (kwargs["hidden_states"][0] - (1 - pipe.scheduler.alphas_cumprod[500]) ** 0.5 * noise)
        clean = clean / pipe.scheduler.alphas_cumprod[500] ** 0.5
        other = (kwargs["hidden_states"][1] - (1 - pipe.scheduler.alphas_cumprod[500]) ** 0.5 * torch.randn(
            3, 4, 4, 6, generator=torch.Generator().manual_seed(1)
        )) / pipe.scheduler.alphas_cumprod[500] ** 0.5
        torch.testing.assert_close(clean, other, rtol=1e-4, atol=1e-4)  # both rows noise the same clean latents
        attention = ConceptAttention(pipe, ["cat", "sky"])
        attention._reduce_batch = attention._stop_after_last_layer = True
        with attention, torch.no_grad():
            with pytest.raises(EarlyExit):
                pipe.transformer(**kwargs)
        assert attention.maps.tensor.shape == (2, 3, 2, 3)

    @pytest.mark.parametrize(
        "frames, size, message",
        [(8, (16, 24), "1 \\+ 4·k frames"), (9, (12, 24), "multiples of 8"), (0, (16, 24), "non-empty")],
    )
    def test_bad_inputs(self, pipe, frames, size, message):
        video = [Image.new("RGB", (24, 16)) for _ in range(frames)]
        with pytest.raises(ValueError, match=message):
            CogVideoXAdapter().prepare_explain(
                pipe, video, caption="", noise_level=0.5, seeds=[0], height=size[0], width=size[1],
                guidance_scale=0.0, image_pooled="zero",
            )
