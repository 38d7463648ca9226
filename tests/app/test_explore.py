"""Exploring a result in the app without a browser: concepts ranked at a pixel, maps of each step and block, and
how the service keeps and prunes its run folders."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from conceptattention import ConceptMaps
from conceptattention.app import AppInputError, AppLimits, MapService, run_safely
from conceptattention.app.ui import ranking_html, view_to_outputs
from conceptattention.outputs import MARKER_NAME


TOY_PROMPT = "a red boat on the sea under a yellow sun"


@pytest.fixture(scope="module")
def explored(toy_model, tmp_path_factory):
    """One 5-step generation on the toy model with the maps of each step and block kept."""
    service = MapService(toy_model, work_dir=tmp_path_factory.mktemp("explore") / "work")
    result = service.generate(prompt=TOY_PROMPT, concepts="boat, sun, sea, sky", steps=5)
    return service, result


def saved_maps(result) -> ConceptMaps:
    return ConceptMaps.load(next(path for path in result.files if path.suffix == ".safetensors"))


class TestRanking:
    @pytest.mark.parametrize(("x", "y"), [(0, 0), (190, 300), (383, 383), (100, 40), (250, 250)])
    def test_first_concept_is_the_argmax_of_the_saved_maps(self, explored, x, y):
        service, result = explored
        ranking = service.rank_at(result.run_id, x, y)
        maps = saved_maps(result)
        size = (result.display_image.height, result.display_image.width)
        assert ranking[0][0] == maps.concepts[int(maps.segmentation(size=size)[0, y, x])]
        assert sorted(name for name, _ in ranking) == sorted(maps.concepts)
        scores = [score for _, score in ranking]
        assert scores == sorted(scores, reverse=True)
        upsampled = maps.upsample(size)[:, 0, y, x]
        for name, score in ranking:
            assert score == pytest.approx(float(upsampled[maps.concept_index(name)]), abs=1e-6)

    def test_the_ranking_changes_across_the_image(self, explored):
        service, result = explored
        firsts = {service.rank_at(result.run_id, x, y)[0][0] for x in range(0, 384, 48) for y in range(0, 384, 48)}
        assert len(firsts) >= 2

    def test_ranking_of_one_step(self, explored):
        service, result = explored
        step = result.timeline["steps"][1]
        ranking = service.rank_at(result.run_id, 200, 100, over="steps", index=1)
        size = (result.display_image.height, result.display_image.width)
        assert ranking[0][0] == step.concepts[int(step.segmentation(size=size)[0, 100, 200])]

    @pytest.mark.parametrize(
        ("arguments", "message"),
        [
            ({"x": 384, "y": 0}, "The pixel's x must be a whole number from 0 to 383"),
            ({"x": 0, "y": -1}, "The pixel's y must be a whole number from 0 to 383"),
            ({"x": 0, "y": 0, "over": "heads"}, "must be one of mean, steps, blocks"),
            ({"x": 0, "y": 0, "over": "steps", "index": 5}, "from 0 to 4"),
        ],
    )
    def test_bad_requests(self, explored, arguments, message):
        service, result = explored
        with pytest.raises(AppInputError, match=message.replace("(", r"\(")):
            service.rank_at(result.run_id, **arguments)

    def test_unknown_run(self, explored):
        service, _ = explored
        with pytest.raises(AppInputError, match="no longer kept"):
            service.rank_at("run-999999", 0, 0)

    def test_ranking_html(self):
        text = ranking_html([("sea", 0.75), ("<b>oat", 0.25)], 3, 4, "step 1 (2 of 5)")
        assert "pixel (3, 4)" in text and "step 1 (2 of 5)" in text
        assert text.index("sea") < text.index("&lt;b&gt;oat")
        assert "<b>oat" not in text


class TestStepsAndBlocks:
    def test_one_map_set_per_step_and_per_selected_block(self, explored):
        service, result = explored
        assert len(result.timeline["steps"]) == 5
        assert len(result.timeline["blocks"]) == len(service.default_layers) == 4
        assert result.settings["timeline"] == {"steps": 5, "blocks": 4}

    def test_their_means_are_the_result(self, explored):
        _, result = explored
        for over in ("steps", "blocks"):
            mean = torch.stack([part.tensor for part in result.timeline[over]]).mean(0)
            assert torch.allclose(mean, result.maps.tensor, atol=1e-6)

    def test_views(self, explored):
        service, result = explored
        first, last = service.view(result.run_id, "steps", 0), service.view(result.run_id, "steps", 4)
        assert first.caption == "step 0 (1 of 5)" and last.caption == "step 4 (5 of 5)"
        assert [concept for _, concept in first.overlays] == ["boat", "sun", "sea", "sky"]
        assert first.segmentation.size == result.display_image.size
        assert first.overlays[0][0].tobytes() != last.overlays[0][0].tobytes()
        block = service.view(result.run_id, "blocks", 3)
        assert block.caption.startswith("block 5 ")
        mean = service.view(result.run_id, "mean")
        assert mean.maps == result.maps
        heatmaps, overlays, segmentation, caption = view_to_outputs(first)
        assert len(heatmaps) == len(overlays) == 4 and caption == "Showing step 0 (1 of 5)."

    def test_not_kept_when_switched_off(self, service):
        result = service.generate(prompt=TOY_PROMPT, concepts="boat, sea", steps=2, timeline=False)
        assert result.timeline == {}
        with pytest.raises(AppInputError, match="not kept"):
            service.view(result.run_id, "steps", 0)
        assert service.rank_at(result.run_id, 5, 5)[0][0] in ("boat", "sea")  # ranking works without them

    def test_over_the_memory_limit_a_note_says_so(self, toy_model, tmp_path):
        service = MapService(toy_model, limits=AppLimits(max_timeline_bytes=1000), work_dir=tmp_path / "work")
        outcome = run_safely(lambda: service.generate(prompt=TOY_PROMPT, concepts="boat, sea", steps=2))
        assert outcome.result is not None and outcome.result.timeline == {}
        assert "were not kept" in outcome.status and "limit" in outcome.status

    def test_explain_keeps_the_blocks(self, service, tmp_path):
        path = tmp_path / "photo.png"
        pixels = np.zeros((32, 32, 3), dtype=np.uint8)
        pixels[16:] = (20, 60, 180)
        Image.fromarray(pixels).save(path)
        result = service.explain(image_path=str(path), concepts="sea, sky", samples=2, noise_level=0.5)
        assert len(result.timeline["steps"]) == 1  # one noise level
        assert len(result.timeline["blocks"]) == 4
        mean = torch.stack([part.tensor for part in result.timeline["blocks"]]).mean(0)
        assert torch.allclose(mean, result.maps.tensor, atol=1e-6)

    def test_bad_switch(self, service):
        with pytest.raises(AppInputError, match="on or off"):
            service.generate(prompt=TOY_PROMPT, concepts="boat, sea", steps=1, timeline="yes")


class TestRunFolders:
    def test_runs_carry_the_marker_and_are_pruned_with_remove_output_dir(self, toy_model, tmp_path):
        work = tmp_path / "work"
        work.mkdir()
        foreign = work / "run-000000"  # a folder with a run's name that this program did not write
        foreign.mkdir()
        (foreign / "notes.txt").write_text("mine")
        service = MapService(toy_model, limits=AppLimits(kept_runs=2), work_dir=work)
        results = [service.generate(prompt=TOY_PROMPT, concepts="boat, sea", steps=1, timeline=False) for _ in range(2)]
        first_dir = results[0].files[0].parent
        marker = json.loads((first_dir / MARKER_NAME).read_text())
        assert "maps.safetensors" in marker["files"]
        (results[1].files[0].parent / "added-by-someone.txt").write_text("x")  # now foreign content
        for _ in range(3):
            service.generate(prompt=TOY_PROMPT, concepts="boat, sea", steps=1, timeline=False)
        names = sorted(path.name for path in work.iterdir())
        assert (foreign / "notes.txt").read_text() == "mine"  # never deleted
        assert results[1].files[0].parent.name in names  # holds a foreign file: left alone
        assert first_dir.name not in names  # this program's own old run: pruned
        assert names[-2:] == ["run-000004", "run-000005"]
        with pytest.raises(AppInputError, match="no longer kept"):
            service.result(results[0].run_id)  # only the last kept_runs results stay in memory
        assert not [name for name in names if "tmp" in name]

    def test_views_point_into_the_finished_folder(self, explored):
        _, result = explored
        folder = result.files[0].parent
        assert Path(result.views["image"]).parent == folder
        assert all(Path(path).parent.parent == folder and Path(path).is_file() for path in result.views["overlays"])
