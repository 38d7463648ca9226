"""Video outputs: frame bookkeeping, per-frame overlays, GIF/MP4 files read back, the grid figure, bad inputs."""

from __future__ import annotations

import imageio.v3 as iio
import numpy as np
import pytest
import torch
from PIL import Image

from conceptattention import ConceptMaps
from conceptattention.video import (
    VideoOutputError,
    frames_grid_figure,
    overlay_frames,
    save_overlay_video,
    to_pil_frames,
    video_frame_to_map_frame,
)


@pytest.fixture(scope="module", autouse=True)
def one_thread(single_thread: None) -> None:
    """This module runs on one thread (``single_thread``, tests/conftest.py)."""


def striped_maps() -> ConceptMaps:
    """Two concepts, three map frames of 2×3 tokens: concept "a" is 1 in the left column of frame 0, the middle
    column of frame 1 and the right column of frame 2 (0 elsewhere); "b" is its complement."""
    a = torch.zeros(3, 2, 3)
    for frame in range(3):
        a[frame, :, frame] = 1.0
    return ConceptMaps(["a", "b"], torch.stack([a, 1 - a]))  # [2, 3, 2, 3]


def gray_frames(count: int = 9, size: tuple[int, int] = (48, 32)) -> list[Image.Image]:
    return [Image.new("RGB", size, (20 * index, 100, 255 - 20 * index)) for index in range(count)]


class TestFrameMapping:
    def test_identity_when_counts_match(self):
        assert video_frame_to_map_frame(4, 4) == [0, 1, 2, 3]

    def test_causal_vae_compression(self):
        # 49 frames (CogVideoX) → 13 latent frames; frame 0 alone, then groups of 4
        mapping = video_frame_to_map_frame(49, 13)
        assert mapping[:6] == [0, 1, 1, 1, 1, 2] and mapping[-4:] == [12] * 4
        assert [mapping.count(frame) for frame in range(13)] == [1] + [4] * 12

    def test_cogvideox_15_padding_and_temporal_patches(self):
        # 81 frames → 21 latent frames, padded at the front to 22 → 11 map frames; padded latent 0 is a pad frame
        mapping = video_frame_to_map_frame(81, 11)
        assert mapping == video_frame_to_map_frame(81, 11, patch_size_t=2)
        assert mapping[0] == 0 and mapping[1:5] == [1] * 4 and mapping[5:9] == [1] * 4 and mapping[9] == 2
        assert mapping[-1] == 10

    @pytest.mark.parametrize(
        "args, message",
        [
            ((9, 5), "do not fit"),
            ((9, 3, 4, 2), "patch_size_t 2"),
            ((0, 3), "num_video_frames"),
            ((9, 3, 0), "temporal_compression"),
        ],
    )
    def test_inconsistent_counts(self, args, message):
        with pytest.raises(VideoOutputError, match=message):
            video_frame_to_map_frame(*args)


class TestToPilFrames:
    def test_torch_float_layout(self):
        video = torch.rand(5, 3, 8, 12)
        frames = to_pil_frames(video)
        assert len(frames) == 5 and frames[0].size == (12, 8)
        np.testing.assert_array_equal(np.asarray(frames[2]), np.round(video[2].permute(1, 2, 0).numpy() * 255))

    def test_numpy_uint8_and_pil_lists(self):
        video = np.random.default_rng(0).integers(0, 255, (4, 8, 12, 3), dtype=np.uint8)
        frames = to_pil_frames(video)
        np.testing.assert_array_equal(np.asarray(frames[3]), video[3])
        assert to_pil_frames(frames)[1].mode == "RGB"

    @pytest.mark.parametrize(
        "video, message",
        [
            (torch.rand(2, 5, 3, 8, 8), "one video"),
            (torch.rand(4, 3, 8, 8) * 3, r"\[0, 1\]"),
            ("video.mp4", "list of PIL images"),
            (np.zeros((2, 8, 8, 3), dtype=np.int32), "uint8 or float"),
        ],
    )
    def test_bad_videos(self, video, message):
        with pytest.raises(VideoOutputError, match=message):
            to_pil_frames(video)


class TestOverlays:
    def test_each_video_frame_uses_its_map_frame(self):
        frames = gray_frames(9, (30, 20))
        overlays = overlay_frames(frames, striped_maps(), "a", alpha=1.0, cmap="gray")
        assert len(overlays) == 9 and all(overlay.size == (30, 20) for overlay in overlays)
        mapping = video_frame_to_map_frame(9, 3)
        for overlay, map_frame in zip(overlays, mapping):
            columns = np.asarray(overlay)[10, [2, 15, 27], 0]  # centres of the three token columns
            assert int(np.argmax(columns)) == map_frame and columns.max() > 200 and columns.min() < 50

    def test_alpha_zero_returns_the_frames(self):
        frames = gray_frames(9)
        overlays = overlay_frames(frames, striped_maps(), "b", alpha=0.0)
        assert all(np.array_equal(np.asarray(o), np.asarray(f)) for o, f in zip(overlays, frames))

    def test_scopes(self):
        values = torch.stack([torch.full((2, 3), 0.2), torch.full((2, 3), 0.8)])  # frame 0 weak, frame 1 strong
        values[:, 0, 0] += 0.1
        maps = ConceptMaps(["a"], values[None])  # [1, 2, 2, 3]
        frames = gray_frames(2)
        concept = overlay_frames(frames, maps, "a", alpha=1.0, cmap="gray", scope="concept")
        frame = overlay_frames(frames, maps, "a", alpha=1.0, cmap="gray", scope="frame")
        # one range over the video: the weak frame stays dark; per-frame ranges stretch both frames alike
        assert np.asarray(concept[0]).mean() < 60 < np.asarray(concept[1]).mean()
        np.testing.assert_allclose(np.asarray(frame[0]), np.asarray(frame[1]), atol=1)


class TestFiles:
    def test_gif_round_trip(self, tmp_path):
        frames = gray_frames(9)
        path = save_overlay_video(frames, striped_maps(), "a", tmp_path / "sub" / "a.gif", fps=10)
        assert path == tmp_path / "sub" / "a.gif"
        video = iio.imread(path, index=None)
        assert video.shape == (9, 32, 48, 3)
        expected = np.stack([np.asarray(o) for o in overlay_frames(frames, striped_maps(), "a")])
        assert np.abs(video.astype(int) - expected.astype(int)).mean() < 8  # GIF palette quantisation only
        assert iio.immeta(path, index=0)["duration"] == 100
        assert [p.name for p in (tmp_path / "sub").iterdir()] == ["a.gif"]  # no temporary file left

    def test_mp4_round_trip_with_odd_size(self, tmp_path):
        frames = gray_frames(9, (47, 31))
        path = save_overlay_video(frames, striped_maps(), "b", tmp_path / "b.mp4", fps=8)
        video = iio.imread(path, index=None, plugin="FFMPEG")
        assert video.shape == (9, 32, 48, 3)  # sides rounded up to even for H.264
        assert iio.immeta(path, plugin="FFMPEG")["fps"] == 8
        expected = np.stack([np.asarray(o.resize((48, 32))) for o in overlay_frames(frames, striped_maps(), "b")])
        assert np.abs(video.astype(int) - expected.astype(int)).mean() < 20  # lossy, but the same pictures

    @pytest.mark.parametrize(
        "name, kwargs, message",
        [
            ("a.avi", {}, r"\.gif or \.mp4"),
            ("a.gif", {"fps": 0}, "fps"),
            ("a.gif", {"concept": "c"}, "Unknown concept 'c'"),
            ("a.gif", {"alpha": 2.0}, "alpha"),
            ("a.gif", {"cmap": "no-such-map"}, "colormap"),
            ("a.gif", {"scope": "pixel"}, "scope"),
            ("a.gif", {"frames": gray_frames(4)}, "do not fit"),
            ("a.gif", {"frames": []}, "non-empty"),
            ("a.mp4", {"frames": gray_frames(8) + gray_frames(1, (10, 10))}, "same size"),
            ("a.gif", {"maps": torch.rand(1, 3, 2, 3)}, "ConceptMaps"),
        ],
    )
    def test_bad_inputs_write_nothing(self, tmp_path, name, kwargs, message):
        arguments = {"frames": gray_frames(9), "maps": striped_maps(), "concept": "a", **kwargs}
        with pytest.raises(VideoOutputError, match=message):
            save_overlay_video(path=tmp_path / "out" / name, **arguments)
        assert not (tmp_path / "out").exists()


class TestGridFigure:
    def test_layout_and_save(self, tmp_path):
        figure = frames_grid_figure(gray_frames(9), striped_maps(), max_columns=5)
        assert len(figure.axes) == 3 * 5  # frames row + one row per concept
        assert figure.axes[2].get_title() == "frame 4 (map 1)"
        figure.savefig(tmp_path / "grid.png")
        assert Image.open(tmp_path / "grid.png").size[0] > 100

    def test_subset_of_concepts_and_bad_options(self):
        figure = frames_grid_figure(gray_frames(3), ConceptMaps(["a", "b"], torch.rand(2, 3, 2, 2)), ["b"])
        assert len(figure.axes) == 2 * 3
        with pytest.raises(VideoOutputError, match="non-empty list"):
            frames_grid_figure(gray_frames(3), striped_maps(), [])
        with pytest.raises(VideoOutputError, match="Unknown concept"):
            frames_grid_figure(gray_frames(9), striped_maps(), ["z"])
        with pytest.raises(VideoOutputError, match="max_columns"):
            frames_grid_figure(gray_frames(9), striped_maps(), max_columns=0)
