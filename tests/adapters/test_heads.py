"""Per-head maps (``keep_heads=True``) and head selection (``heads=[...]``) on a tiny FLUX.1 pipeline."""

from __future__ import annotations

import json

import pytest
import torch

from conceptattention import ConceptAttention, ConceptMaps
from conceptattention.cli.main import main
from conceptattention.config import ConceptAttentionConfig, ConfigError, head_memory_bytes
from conceptattention.core import saliency_scores
from conceptattention.testing import tiny_flux_pipeline

from .test_prompt_words import CALL, PROMPT, RawCapture, generate, model_dir, naive_word_maps, naive_words  # noqa: F401


CONCEPTS = ["car", "sand", "sky"]


@pytest.fixture(scope="module")
def pipe():
    pipeline = tiny_flux_pipeline(num_layers=3)
    pipeline.set_progress_bar_config(disable=True)
    return pipeline


@pytest.mark.parametrize("space", ["output", "cross_attention", "value"])
def test_head_scores_average_to_the_layer_scores(space):
    generator = torch.Generator().manual_seed(0)
    tensors = {
        "concept_output": torch.randn(2, 3, 12, generator=generator, dtype=torch.float64),
        "image_output": torch.randn(2, 5, 12, generator=generator, dtype=torch.float64),
        "image_query": torch.randn(2, 5, 4, 3, generator=generator, dtype=torch.float64),
        "concept_key": torch.randn(2, 3, 4, 3, generator=generator, dtype=torch.float64),
        "image_value": torch.randn(2, 5, 4, 3, generator=generator, dtype=torch.float64),
        "concept_value": torch.randn(2, 3, 4, 3, generator=generator, dtype=torch.float64),
    }
    heads = saliency_scores(space, per_head=True, **tensors)  # [B, C, H, I]
    assert heads.shape == (2, 3, 4, 5)
    torch.testing.assert_close(heads.mean(2).double(), saliency_scores(space, **tensors).double(), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("space", ["output", "cross_attention", "value"])
def test_per_head_maps_average_to_the_maps(pipe, space):
    with ConceptAttention(pipe, CONCEPTS, keep_heads=True, space=space, softmax=False) as raw:
        generate(pipe)
    maps = raw.maps
    assert maps.head_maps.shape == (3, 2, 1, 16, 16)  # [C, H, F, h, w]: the tiny model has 2 heads
    torch.testing.assert_close(maps.head_maps.double().mean(1), maps.tensor.double(), atol=1e-5, rtol=1e-5)
    with ConceptAttention(pipe, CONCEPTS, keep_heads=True, space=space) as softmax:
        generate(pipe)
    torch.testing.assert_close(softmax.maps.head_logits.double().mean(1), softmax.maps.logits.double(), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(softmax.maps.head_maps.sum(0), torch.ones(2, 1, 16, 16))  # each head: a softmax
    with ConceptAttention(pipe, CONCEPTS, space=space) as plain:
        generate(pipe)
    assert torch.equal(plain.maps.tensor, softmax.maps.tensor)  # keeping heads does not change the maps


def test_head_selection_matches_naive_reference(pipe):
    """heads=[1] on prompt words against the naive float64 reference from the raw hooked tensors."""
    capture = RawCapture(pipe.transformer)
    try:
        with ConceptAttention(pipe, "prompt", heads=[1], layers=[0, 2]) as attention:
            generate(pipe)
    finally:
        capture.remove()
    words = naive_words(pipe.tokenizer_2, PROMPT, 32)
    expected = naive_word_maps(capture.calls, words, [0, 2], "output", heads=[1])
    torch.testing.assert_close(attention.maps.tensor.flatten(1).double(), expected, atol=2e-5, rtol=1e-4)
    all_heads = naive_word_maps(capture.calls, words, [0, 2], "output")
    assert (expected - all_heads).abs().max() > 1e-3  # the selection changes the maps


def test_head_selection_of_concepts_follows_per_step_head_scores(pipe):
    with ConceptAttention(pipe, CONCEPTS, keep_heads=True, keep_per_step=True) as full:
        generate(pipe)
    with ConceptAttention(pipe, CONCEPTS, heads=[0]) as head0:
        generate(pipe)
    per_step = full.per_step_head_scores  # {(step, layer): [B, C, H, I]}
    expected = torch.stack([scores[:, :, 0].double().softmax(1) for scores in per_step.values()]).mean(0)
    torch.testing.assert_close(head0.maps.tensor.flatten(1).double(), expected[0], atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(full.maps.head(0).tensor, head0.maps.tensor, atol=1e-6, rtol=1e-5)
    assert head0.maps.settings["heads"] == [0]


def test_memory_estimate_matches_the_kept_tensors(pipe):
    with ConceptAttention(pipe, CONCEPTS, keep_heads=True, keep_per_step=True, layers=[0, 2]) as attention:
        generate(pipe)
    session = attention.session
    sums = session.head_accumulator.logit_sum.numel() + session.head_accumulator.probability_sum.numel()
    per_step = sum(t.numel() for t in session.head_accumulator.per_step.values())
    per_tensor = 1 * 3 * 2 * 256  # B x C x H x I
    assert sums == 2 * per_tensor and per_step == 2 * 2 * per_tensor  # 2 steps x 2 layers
    assert head_memory_bytes(3, 256, 2, 2, steps=2) == 4 * (2 * per_tensor + 2 * per_tensor + per_step)
    assert head_memory_bytes(5, 4096, 24, 4) == 6 * 5 * 24 * 4096 * 4  # the docstring's FLUX.1 example


def test_head_maps_survive_save_and_load(pipe, tmp_path):
    with ConceptAttention(pipe, CONCEPTS, keep_heads=True) as attention:
        generate(pipe)
    path = attention.maps.save(tmp_path / "maps.safetensors")
    loaded = ConceptMaps.load(path)
    assert torch.equal(loaded.head_maps, attention.maps.head_maps)
    assert torch.equal(loaded.head_logits, attention.maps.head_logits)


class TestRefusals:
    @pytest.mark.parametrize("heads", [[], [-1], [0, 0], [True], ["0"]])
    def test_bad_head_lists(self, heads):
        with pytest.raises(ConfigError):
            ConceptAttentionConfig(heads=heads)

    def test_head_out_of_range(self, pipe):
        with pytest.raises(ConfigError, match="2 heads"), ConceptAttention(pipe, CONCEPTS, heads=[2]):
            pass
        assert "encode_prompt" not in vars(pipe)

    def test_no_head_maps(self):
        with pytest.raises(ValueError, match="keep_heads=True"):
            ConceptMaps(["a"], torch.rand(1, 1, 2, 2)).head(0)


def test_cli_heads_and_keep_heads(model_dir, tmp_path, monkeypatch):  # noqa: F811
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    out = tmp_path / "run"
    base = ["generate", "--model", str(model_dir), "--prompt", "a red car", "--concepts", "car", "sky",
            "--height", "32", "--width", "32", "--steps", "2"]  # fmt: skip
    assert main([*base, "--heads", "1", "--keep-heads", "--out", str(out)]) == 0
    settings = json.loads((out / "settings.json").read_text())
    assert settings["method"]["heads"] == [1] and settings["method"]["keep_heads"] is True
    assert set(settings["files"]["heads"]) == {"0", "1"}
    assert (out / "heads" / "head1" / "sky.png").is_file()
    assert ConceptMaps.load(out / "maps.safetensors").head_maps.shape == (2, 2, 1, 16, 16)
    assert main([*base, "--heads", "7", "--out", str(tmp_path / "bad")]) == 2
    assert not (tmp_path / "bad").exists()
