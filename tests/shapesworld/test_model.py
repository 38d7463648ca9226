"""ShapesWorld pipeline: identity VAE, tokenizers, RoPE lever, offline save/load, scheduler sign convention."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from conceptattention.shapesworld import (
    CAPTION_WORDS,
    ModelConfig,
    ModelError,
    ShapesWorldDataset,
    apply_position_lever,
    build_pipeline,
    load_pipeline,
    recommended_call_kwargs,
    remove_position_lever,
)
from conceptattention.shapesworld.model import SETTINGS_FILE, build_vae, save_pipeline
from conceptattention.shapesworld.text import build_clip_tokenizer, build_t5_tokenizer
from conceptattention.shapesworld.train import flow_target, noisy_latents


@pytest.fixture(scope="module")
def tiny_pipe():
    pipe = build_pipeline(ModelConfig.preset("tiny"), seed=0)
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.fixture(scope="module")
def saved_folder(tiny_pipe, tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("shapesworld_model")
    save_pipeline(tiny_pipe, folder, ModelConfig.preset("tiny"), extra={"note": "test"}, dtype=torch.float32)
    return folder


def _generate(pipe, prompt: str = "a red car on the grass", steps: int = 2) -> torch.Tensor:
    generator = torch.Generator().manual_seed(0)
    return pipe(
        prompt, num_inference_steps=steps, generator=generator, output_type="pt", **recommended_call_kwargs(pipe)
    ).images


def test_identity_vae_round_trips_images() -> None:
    vae = build_vae(ModelConfig())
    images = ShapesWorldDataset("test", 0, 1).render([0])[0].images * 2 - 1  # [1, 3, 32, 32] in [-1, 1]
    with torch.no_grad():
        latents = vae.encode(images).latent_dist.mode()
        decoded = vae.decode(latents).sample
    assert latents.shape == (1, 3, 32, 32)
    assert (latents - images).abs().max() < 1e-3
    assert (decoded - images).abs().max() < 1e-3


def test_tokenizers_map_every_caption_word_to_one_token() -> None:
    t5, clip = build_t5_tokenizer(), build_clip_tokenizer()
    for word in CAPTION_WORDS:
        assert t5(word).input_ids == [t5.convert_tokens_to_ids(word), t5.eos_token_id]
        assert clip(word).input_ids == [clip.bos_token_id, clip.convert_tokens_to_ids(word), clip.eos_token_id]
        assert t5.convert_tokens_to_ids(word) != t5.unk_token_id
    assert t5("A Red SUN").input_ids == t5("a red sun").input_ids
    assert t5("dragon").input_ids[0] == t5.unk_token_id


def test_position_lever_sets_theta_and_scales_ids_and_is_removable(tiny_pipe) -> None:
    from diffusers.models.transformers.transformer_flux import FluxPosEmbed

    pos_embed = tiny_pipe.transformer.pos_embed
    ids = torch.stack(torch.meshgrid(torch.zeros(1), torch.arange(4.0), torch.arange(4.0), indexing="ij"), -1).view(
        -1, 3
    )
    reference = FluxPosEmbed(theta=100, axes_dim=list(pos_embed.axes_dim))(ids * 3)
    assert pos_embed.theta == 100.0
    assert torch.allclose(pos_embed(ids)[0], reference[0]) and torch.allclose(pos_embed(ids)[1], reference[1])
    remove_position_lever(tiny_pipe.transformer)
    try:
        default = FluxPosEmbed(theta=10000, axes_dim=list(pos_embed.axes_dim))(ids)
        assert pos_embed.theta == 10000 and torch.allclose(pos_embed(ids)[0], default[0])
    finally:
        apply_position_lever(tiny_pipe.transformer, 100.0, 3.0)
    apply_position_lever(tiny_pipe.transformer, 100.0, 3.0)  # idempotent: one hook only
    assert len(pos_embed._forward_pre_hooks) == 1


def test_pipeline_saves_and_loads_offline(tiny_pipe, saved_folder, monkeypatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    index = json.loads((saved_folder / "model_index.json").read_text())
    assert index["_class_name"] == "FluxPipeline"
    assert index["tokenizer_2"] == ["transformers", "PreTrainedTokenizerFast"]
    assert not list(saved_folder.rglob("*.bin")), "weights must be safetensors only"
    loaded = load_pipeline(saved_folder)
    loaded.set_progress_bar_config(disable=True)
    assert type(loaded).__name__ == "FluxPipeline" and loaded.vae_scale_factor == 1
    assert loaded.transformer.pos_embed.theta == 100.0
    assert loaded.default_sample_size == 32
    assert loaded.shapesworld_settings["note"] == "test"
    assert loaded.tokenizer_2("a red sun").input_ids == tiny_pipe.tokenizer_2("a red sun").input_ids
    expected, actual = _generate(tiny_pipe), _generate(loaded)
    assert actual.shape == (1, 3, 32, 32)
    assert torch.allclose(expected, actual, atol=1e-5)
    # A call without height/width renders at the native size (default_sample_size is set by the loader).
    image = loaded("a sun", num_inference_steps=1, output_type="pt", max_sequence_length=32).images
    assert image.shape[-1] == 32


def test_half_precision_storage_is_close(tiny_pipe, tmp_path) -> None:
    save_pipeline(tiny_pipe, tmp_path, ModelConfig.preset("tiny"), dtype=torch.float16)
    loaded = load_pipeline(tmp_path)
    loaded.set_progress_bar_config(disable=True)
    assert loaded.transformer.dtype == torch.float32
    assert (_generate(tiny_pipe) - _generate(loaded)).abs().max() < 0.05


def test_loading_a_folder_without_settings_fails_clearly(saved_folder, tmp_path) -> None:
    with pytest.raises(ModelError, match="not a diffusers pipeline folder"):
        load_pipeline(tmp_path)
    (tmp_path / "model_index.json").write_text((saved_folder / "model_index.json").read_text())
    with pytest.raises(ModelError, match=SETTINGS_FILE):
        load_pipeline(tmp_path)


def test_flow_convention_matches_the_pipeline_scheduler(tiny_pipe) -> None:
    """An oracle transformer that predicts ``flow_target`` for a known x0 must make FluxPipeline land exactly on x0."""
    images = ShapesWorldDataset("test", 0, 1).render([0])[0].images  # [1, 3, 32, 32] in [0, 1]
    vae = tiny_pipe.vae
    with torch.no_grad():
        latents = (vae.encode(images * 2 - 1).latent_dist.mode() - vae.config.shift_factor) * vae.config.scaling_factor
    x0 = tiny_pipe._pack_latents(latents, 1, 3, 32, 32)  # [1, 256, 12]

    def oracle(module, args, kwargs, output):
        x_t, t = kwargs["hidden_states"], kwargs["timestep"].view(-1, 1, 1)
        noise = (x_t - (1 - t) * x0) / t  # invert x_t = noisy_latents(x0, noise, t)
        assert torch.allclose(noisy_latents(x0, noise, kwargs["timestep"]), x_t, atol=1e-5)
        return (flow_target(x0, noise),)

    handle = tiny_pipe.transformer.register_forward_hook(oracle, with_kwargs=True)
    try:
        generated = _generate(tiny_pipe, steps=4)
    finally:
        handle.remove()
    assert (generated - images).abs().max() < 2e-3
