"""The public API's names: explain() reads a list as a batch of images (as diffusers does) and video frames go to
explain_video(); old meanings and names stay one release with a DeprecationWarning."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from PIL import Image

import conceptattention
from conceptattention import ConfigError, explain, explain_video
from conceptattention.testing import tiny_cogvideox_pipeline, tiny_flux_pipeline


CONCEPTS = ["dog", "sky"]


def _image(seed: int, size: tuple[int, int] = (32, 32)) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8))


@pytest.fixture(scope="module")
def flux():
    return tiny_flux_pipeline(num_layers=2)


@pytest.fixture(scope="module")
def cogvideox():
    return tiny_cogvideox_pipeline()


class TestExplainList:
    def test_a_list_is_a_batch_of_images_each_as_alone(self, flux, tmp_path) -> None:
        first, second = _image(0), _image(1)
        path = tmp_path / "second.png"
        second.save(path)
        with warnings.catch_warnings():
            warnings.simplefilter("error", DeprecationWarning)  # no change of meaning here: no warning
            batch = explain(flux, [first, path], CONCEPTS, height=32, width=32, num_samples=2)
        assert isinstance(batch, list) and len(batch) == 2
        assert batch[0] == explain(flux, first, CONCEPTS, height=32, width=32, num_samples=2)
        assert batch[1] == explain(flux, second, CONCEPTS, height=32, width=32, num_samples=2)
        assert batch[0] != batch[1]  # two images, two results
        assert explain(flux, (first,), CONCEPTS, height=32, width=32)[0].tensor.shape == (2, 1, 16, 16)

    def test_an_empty_list_is_refused(self, flux) -> None:
        with pytest.raises(ConfigError, match="image list is empty"):
            explain(flux, [], CONCEPTS)

    def test_video_frames_go_to_explain_video(self, cogvideox) -> None:
        frames = [_image(index, (24, 16)) for index in range(5)]  # 1 + 4k frames: 2 latent frames
        maps = explain_video(cogvideox, frames, ["cat", "sky"], height=16, width=24, num_samples=2)
        assert maps.tensor.shape == (2, 2, 2, 3)  # [C, F, h, w]: one map frame per latent frame
        assert maps.settings["path"] == "explain"

    def test_a_list_on_a_video_model_keeps_its_old_meaning_with_a_warning(self, cogvideox) -> None:
        frames = [_image(index, (24, 16)) for index in range(5)]
        with pytest.warns(DeprecationWarning, match=r"explain_video\(pipeline, frames, concepts\)"):
            old = explain(cogvideox, frames, ["cat", "sky"], height=16, width=24)
        assert old == explain_video(cogvideox, frames, ["cat", "sky"], height=16, width=24)

    def test_explain_video_refuses_images_and_image_models(self, flux, cogvideox) -> None:
        with pytest.raises(ConfigError, match="non-empty list of the video's frames"):
            explain_video(cogvideox, _image(0, (24, 16)), ["cat"])
        with pytest.raises(ConfigError, match="non-empty list"):
            explain_video(cogvideox, [], ["cat"])
        with pytest.raises(ConfigError, match="for video models"):
            explain_video(flux, [_image(0)], CONCEPTS)


def test_new_names_are_exported() -> None:
    assert "explain_video" in conceptattention.__all__ and "ConceptAttentionError" in conceptattention.__all__
    assert conceptattention.explain_video is explain_video
