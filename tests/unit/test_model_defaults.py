"""Recommended settings carried by a model (ModelDefaults) and the explain path over several noise levels."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from PIL import Image

from conceptattention import ConceptAttention, ConfigError, explain
from conceptattention.config import ModelDefaults, check_noise_levels, model_defaults, set_model_defaults
from conceptattention.testing import tiny_flux_pipeline


CONCEPTS = ["dog", "rock", "sky"]


@pytest.fixture(scope="module")
def image() -> Image.Image:
    generator = torch.Generator().manual_seed(0)
    pixels = (torch.rand(32, 32, 3, generator=generator) * 255).to(torch.uint8).numpy()
    return Image.fromarray(pixels)


@pytest.fixture()
def pipe():
    return tiny_flux_pipeline(num_layers=4)


def test_check_noise_levels_accepts_numbers_and_lists():
    assert check_noise_levels(0.5) == (0.5,)
    assert check_noise_levels(1) == (1.0,)
    assert check_noise_levels([0.1, 0.9]) == (0.1, 0.9)


@pytest.mark.parametrize(
    "bad", [0.0, 1.5, -0.2, [], [0.5, 0.5], [0.5, 2.0], "0.5", True, [True], None, [float("nan")]]
)
def test_check_noise_levels_refuses_bad_values(bad):
    with pytest.raises(ConfigError, match="noise"):
        check_noise_levels(bad)


@pytest.mark.parametrize(
    "data, message",
    [
        ({"layers": []}, "non-empty"),
        ({"layers": ["transformer_blocks.1"]}, "block indices"),
        ({"layers": [1.5]}, "block indices"),
        ({"noise_levels": [0.0]}, "noise_level"),
        ({"layer": [1]}, "Unknown model default"),
    ],
)
def test_model_defaults_refuse_bad_entries(data, message):
    with pytest.raises(ConfigError, match=message):
        ModelDefaults.from_dict(data)


def test_model_defaults_round_trip_and_absence():
    defaults = ModelDefaults.from_dict({"layers": [2, 3], "noise_levels": [0.3]})
    assert ModelDefaults.from_dict(defaults.to_dict()) == defaults
    assert model_defaults(torch.nn.Linear(1, 1)) == ModelDefaults()
    assert ModelDefaults().to_dict() == {}


def test_recorded_layers_replace_the_architecture_default_and_explicit_layers_win(pipe):
    assert ConceptAttention(pipe, CONCEPTS).layers == (0, 1, 2, 3)  # tiny FLUX: the last four of four blocks
    set_model_defaults(pipe.transformer, ModelDefaults(layers=(1, -1)))
    assert ConceptAttention(pipe, CONCEPTS).layers == (1, 3)
    assert ConceptAttention(pipe, CONCEPTS, layers=(0,)).layers == (0,)
    set_model_defaults(pipe.transformer, ModelDefaults(layers=(7,)))
    with pytest.raises(ConfigError, match="out of range"):
        ConceptAttention(pipe, CONCEPTS)


def test_explain_over_several_levels_is_the_mean_of_single_levels(pipe, image):
    kwargs = dict(caption="a dog", num_samples=2, height=32, width=32)
    both = explain(pipe, image, CONCEPTS, noise_level=[0.3, 0.8], **kwargs)
    low = explain(pipe, image, CONCEPTS, noise_level=0.3, **kwargs)
    high = explain(pipe, image, CONCEPTS, noise_level=0.8, **kwargs)
    torch.testing.assert_close(both.tensor, (low.tensor + high.tensor) / 2, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(both.logits, (low.logits + high.logits) / 2, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(low.tensor, high.tensor)  # the levels differ, so the mean is not trivially either
    assert both.settings["noise_level"] == [0.3, 0.8]
    assert low.settings["noise_level"] == 0.3


def test_explain_uses_the_model_noise_levels_only_when_none_is_given(pipe, image):
    kwargs = dict(num_samples=1, height=32, width=32)
    default = explain(pipe, image, CONCEPTS, **kwargs)
    assert default.settings["noise_level"] == 0.5
    assert torch.equal(default.tensor, explain(pipe, image, CONCEPTS, noise_level=0.5, **kwargs).tensor)
    set_model_defaults(pipe.transformer, ModelDefaults(layers=(2,), noise_levels=(0.2, 0.6)))
    recommended = explain(pipe, image, CONCEPTS, **kwargs)
    assert recommended.settings["noise_level"] == [0.2, 0.6]
    assert recommended.settings["resolved_layers"] == ["transformer_blocks.2"]
    manual = explain(pipe, image, CONCEPTS, noise_level=[0.2, 0.6], layers=(2,), **kwargs)
    assert torch.equal(recommended.tensor, manual.tensor)
    explicit = explain(pipe, image, CONCEPTS, noise_level=0.5, **kwargs)
    assert explicit.settings["noise_level"] == 0.5


def test_explain_refuses_bad_noise_levels_before_running(pipe, image):
    for bad in (0.0, [0.4, 0.4], [], [0.5, 1.2]):
        with pytest.raises(ConfigError, match="noise"):
            explain(pipe, image, CONCEPTS, noise_level=bad, height=32, width=32)


def test_shapesworld_loader_applies_and_validates_recommended_settings(tmp_path):
    from conceptattention.models import shipped_model_dir
    from conceptattention.shapesworld import ModelError, load_pipeline

    settings = json.loads((shipped_model_dir() / "shapesworld.json").read_text())
    loaded = load_pipeline()
    recorded = model_defaults(loaded.transformer)
    assert recorded == ModelDefaults.from_dict(settings["recommended"]["concept_attention"])
    assert loaded.tokenizer_2.model_max_length == settings["model"]["max_sequence_length"] == 32
    assert ConceptAttention(loaded, ["boat", "sea"]).layers == recorded.layers

    folder = tmp_path / "model"
    shutil.copytree(shipped_model_dir(), folder, ignore=shutil.ignore_patterns("*.png", "train_log.json"))
    settings["recommended"]["concept_attention"] = {"layers": [4, 5], "noise_level": 0.5}
    (folder / "shapesworld.json").write_text(json.dumps(settings))
    with pytest.raises(ModelError, match="recommended.concept_attention"):
        load_pipeline(folder)


def test_missing_shipped_weights_are_an_installation_error(tmp_path, monkeypatch):
    """No random-weight stand-in at run time: without the shipped ShapesWorld files the default model is refused with
    a message that names the folder and the way out (reinstall, or --model)."""
    from conceptattention import models

    empty = tmp_path / "shapesworld"
    empty.mkdir()
    monkeypatch.setattr(models, "shipped_model_dir", lambda: empty)
    for name in (None, models.DEFAULT_MODEL):
        with pytest.raises(models.ModelLoadError, match=r"(?s)missing from .*shapesworld.*Reinstall.*--model"):
            models.load_model(name)
