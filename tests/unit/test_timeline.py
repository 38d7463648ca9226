"""Maps through time and depth (``conceptattention.timeline``): per-step and per-block maps, guard, drawing."""

from __future__ import annotations

import pytest
import torch
from PIL import Image

from conceptattention import ConceptAttention, ConceptMaps, explain
from conceptattention.models import load_model
from conceptattention.testing import tiny_flux_pipeline
from conceptattention.timeline import (
    TimelineError,
    TimelineMemoryError,
    check_timeline_memory,
    estimate_timeline_bytes,
    maps_over,
    save_animation,
    timeline_figure,
    timeline_frames,
    timeline_labels,
)


PROMPT = "a red boat on the sea under a yellow sun"
CONCEPTS = ["boat", "sea", "sun"]


@pytest.fixture(scope="module")
def shapesworld():
    torch.set_num_threads(1)
    return load_model().pipeline


@pytest.fixture(scope="module")
def shapesworld_run(shapesworld):
    """The shipped model, 4 steps, every joint block selected, per-step scores kept."""
    pipe = shapesworld
    generator = torch.Generator("cpu").manual_seed(0)
    with ConceptAttention(pipe, CONCEPTS, keep_per_step=True, layers=list(range(6))) as attention:
        image = pipe(PROMPT, num_inference_steps=4, generator=generator, height=32, width=32).images[0]
    return attention, image


def per_layer_softmax_mean(tensors: list[torch.Tensor]) -> torch.Tensor:
    """The paper's arithmetic written out: softmax over concepts of each ``[1, C, I]`` tensor, then the mean."""
    return torch.stack([tensor.softmax(dim=1) for tensor in tensors]).mean(0)  # [1, C, I]


class TestShippedModel:
    def test_one_map_set_per_step_and_per_block(self, shapesworld_run):
        attention, _ = shapesworld_run
        steps, blocks = maps_over(attention, "steps"), maps_over(attention, "blocks")
        assert len(steps) == 4 and len(blocks) == 6
        assert [item.settings["step"] for item in steps] == [0, 1, 2, 3]
        assert [item.settings["block"] for item in blocks] == [0, 1, 2, 3, 4, 5]
        assert timeline_labels(steps) == ["step 0", "step 1", "step 2", "step 3"]
        for item in steps + blocks:
            assert item.concepts == tuple(CONCEPTS)
            assert item.tensor.shape == attention.maps.tensor.shape == (3, 1, 16, 16)

    def test_mean_over_steps_and_over_blocks_is_the_normal_map(self, shapesworld_run):
        """Every step holds the same 6 layers and every layer the same 4 steps: equal weights, so the means agree."""
        attention, _ = shapesworld_run
        normal = attention.maps
        for over in ("steps", "blocks"):
            parts = maps_over(attention, over)
            assert torch.allclose(torch.stack([item.tensor for item in parts]).mean(0), normal.tensor, atol=1e-6)
            assert torch.allclose(torch.stack([item.logits for item in parts]).mean(0), normal.logits, atol=1e-5)

    def test_each_step_is_the_softmax_mean_over_its_layers(self, shapesworld_run):
        attention, _ = shapesworld_run
        scores = attention.per_step_scores
        for item in maps_over(attention, "steps"):
            step = item.settings["step"]
            expected = per_layer_softmax_mean([scores[(step, layer)] for layer in range(6)])  # [1, C, I]
            assert torch.allclose(item.tensor.reshape(1, 3, -1), expected, atol=1e-6)
        block = maps_over(attention, "blocks")[2]
        expected = per_layer_softmax_mean([scores[(step, 2)] for step in range(4)])
        assert torch.allclose(block.tensor.reshape(1, 3, -1), expected, atol=1e-6)

    def test_steps_differ(self, shapesworld_run):
        """The per-step maps are not all the same map (the animation has something to show)."""
        attention, _ = shapesworld_run
        steps = maps_over(attention, "steps")
        assert not torch.allclose(steps[0].tensor, steps[-1].tensor, atol=1e-3)

    def test_drawing(self, shapesworld_run, tmp_path):
        attention, image = shapesworld_run
        steps = maps_over(attention, "steps")
        pictures = timeline_frames(steps, image, tile=64)
        assert len(pictures) == 4
        assert {picture.size for picture in pictures} == {(64 * 4, 64 + 20)}  # image + 3 concepts, 20 px header
        assert pictures[0].tobytes() != pictures[-1].tobytes()
        figure = timeline_figure(steps, image)
        assert len(figure.axes) == 3 * 4  # rows = concepts, columns = steps
        assert [axis.get_title() for axis in figure.axes[:4]] == ["step 0", "step 1", "step 2", "step 3"]
        assert len(timeline_figure(maps_over(attention, "blocks"), image, max_columns=3).axes) == 3 * 3
        path = save_animation(pictures, tmp_path / "a.gif")
        with Image.open(path) as gif:
            assert gif.n_frames == 4


def test_after_mean_order_steps_are_softmax_of_their_mean_logits():
    """With normalization_order="after_mean" each step's map is the softmax of its mean logits; the logits (not
    the maps) average to the run's logits."""
    pipe = tiny_flux_pipeline(num_layers=2)
    with ConceptAttention(pipe, ["dog", "sky"], keep_per_step=True, normalization_order="after_mean") as attention:
        pipe("a dog", height=32, width=32, num_inference_steps=3, max_sequence_length=32)
    steps = maps_over(attention, "steps")
    assert len(steps) == 3
    for item in steps:
        assert torch.allclose(item.tensor, item.logits.softmax(dim=0), atol=1e-6)
    mean_logits = torch.stack([item.logits for item in steps]).mean(0)
    assert torch.allclose(mean_logits, attention.maps.logits, atol=1e-5)


def test_timesteps_selection_gives_only_the_selected_steps():
    pipe = tiny_flux_pipeline(num_layers=2)
    with ConceptAttention(pipe, ["dog", "sky"], keep_per_step=True, timesteps=[0, 2]) as attention:
        pipe("a dog", height=32, width=32, num_inference_steps=4, max_sequence_length=32)
    assert [item.settings["step"] for item in maps_over(attention, "steps")] == [0, 2]


def test_keeping_per_step_scores_leaves_the_image_unchanged():
    pipe = tiny_flux_pipeline(num_layers=2)
    call = {"height": 32, "width": 32, "num_inference_steps": 2, "max_sequence_length": 32, "output_type": "pt"}
    plain = pipe("a dog", generator=torch.Generator().manual_seed(1), **call).images
    with ConceptAttention(pipe, ["dog", "sky"], keep_per_step=True):
        kept = pipe("a dog", generator=torch.Generator().manual_seed(1), **call).images
    assert torch.equal(plain, kept)


def test_explain_steps_are_noise_levels_and_average_to_the_maps():
    pipe = tiny_flux_pipeline(num_layers=2)
    image = Image.new("RGB", (32, 32), (200, 40, 40))
    captured = []
    maps = explain(
        pipe,
        image,
        ["dog", "sky"],
        noise_level=[0.3, 0.6, 0.9],
        num_samples=2,
        height=32,
        width=32,
        keep_per_step=True,
        on_attention=captured.append,
    )
    levels = maps_over(captured[0], "steps")
    assert len(levels) == 3
    assert all(item.tensor.shape == maps.tensor.shape for item in levels)
    assert torch.allclose(torch.stack([item.tensor for item in levels]).mean(0), maps.tensor, atol=1e-6)
    blocks = maps_over(captured[0], "blocks")
    assert len(blocks) == 2
    assert torch.allclose(torch.stack([item.tensor for item in blocks]).mean(0), maps.tensor, atol=1e-6)


class TestErrors:
    def test_needs_keep_per_step(self):
        pipe = tiny_flux_pipeline(num_layers=2)
        with ConceptAttention(pipe, ["dog", "sky"]) as attention:
            pipe("a dog", height=32, width=32, num_inference_steps=1, max_sequence_length=32)
        with pytest.raises(TimelineError, match="keep_per_step=True"):
            maps_over(attention, "steps")

    def test_before_a_run_and_bad_axis(self):
        pipe = tiny_flux_pipeline(num_layers=2)
        attention = ConceptAttention(pipe, ["dog", "sky"], keep_per_step=True)
        with pytest.raises(TimelineError, match="No per-step scores"):
            maps_over(attention, "steps")
        with pytest.raises(TimelineError, match="'steps' or 'blocks'"):
            maps_over(attention, "heads")

    def test_drawing_inputs(self):
        maps = [ConceptMaps(["a"], torch.rand(1, 1, 2, 2)), ConceptMaps(["b"], torch.rand(1, 1, 2, 2))]
        with pytest.raises(TimelineError, match="same concepts"):
            timeline_frames(maps, Image.new("RGB", (8, 8)))
        with pytest.raises(TimelineError, match="non-empty list"):
            timeline_figure([], Image.new("RGB", (8, 8)))
        with pytest.raises(TimelineError, match="labels"):
            timeline_frames(maps[:1], Image.new("RGB", (8, 8)), labels=["x", "y"])


class TestMemoryGuard:
    def test_estimate_is_the_product(self):
        assert estimate_timeline_bytes(steps=28, layers=4, concepts=5, image_tokens=4096, batch=2) == (
            28 * 4 * 5 * 4096 * 2 * 4
        )
        with pytest.raises(TimelineError):
            estimate_timeline_bytes(steps=-1, layers=1, concepts=1, image_tokens=1)

    def test_refuses_above_the_limit_with_the_number(self):
        estimate = estimate_timeline_bytes(steps=50, layers=19, concepts=20, image_tokens=4096 * 32, batch=1)
        with pytest.raises(TimelineMemoryError) as error:
            check_timeline_memory(estimate, limit_gb=8)
        message = str(error.value)
        assert f"{estimate:,} bytes" in message and "8 GiB" in message
        assert "about 9.28 GiB" in message  # 50 x 19 x 20 x 131072 x 4 = 9,961,472,000 bytes
        check_timeline_memory(estimate, limit_gb=10)  # a higher limit lets it through
        with pytest.raises(TimelineError, match="positive"):
            check_timeline_memory(1, limit_gb=0)
