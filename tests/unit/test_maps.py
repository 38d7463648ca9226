"""Tests for conceptattention.maps.ConceptMaps: validation, tensor views, images, figures and files."""

from __future__ import annotations

import io
import json
import warnings
from pathlib import Path

import matplotlib
import numpy as np
import pytest
import torch
from PIL import Image
from safetensors import safe_open
from safetensors.torch import save as save_safetensors
from safetensors.torch import save_file

from conceptattention import outputs
from conceptattention.encoding import ConceptError, validate_concepts
from conceptattention.maps import ConceptMaps, ConceptMapsFileError, ConceptMapsNotFoundError
from conceptattention.outputs import OutputPathError
from conceptattention.plotting import MAX_LABEL_CHARS


# Two concepts, two frames, a 2x2 grid; values chosen so that every expectation below can be worked out by hand.
RAW = torch.tensor(
    [
        [[[1.0, 3.0], [5.0, 9.0]], [[-2.0, -2.0], [-2.0, -2.0]]],  # "dog": frame 0, frame 1 (constant)
        [[[0.0, 0.0], [0.0, 10.0]], [[4.0, 2.0], [0.0, 2.0]]],  # "grass": frame 0, frame 1
    ]
)  # [C=2, F=2, h=2, w=2]


@pytest.fixture
def video_maps() -> ConceptMaps:
    return ConceptMaps(["dog", "grass"], RAW, logits=RAW * 2, settings={"layers": (15, 16), "softmax": False})


def _image_maps(concepts: list[str], seed: int = 0, grid: tuple[int, int] = (4, 6)) -> ConceptMaps:
    generator = torch.Generator().manual_seed(seed)
    scores = torch.randn(len(concepts), 1, *grid, generator=generator)  # [C, 1, h, w]
    return ConceptMaps(concepts, scores.softmax(dim=0), logits=scores)


class TestConstruction:
    """Validation and storage of the constructor arguments."""

    def test_properties(self, video_maps: ConceptMaps) -> None:
        assert video_maps.concepts == ("dog", "grass")
        assert video_maps.num_concepts == 2
        assert video_maps.num_frames == 2
        assert video_maps.grid_size == (2, 2)
        assert len(video_maps) == 2
        assert list(video_maps) == ["dog", "grass"]
        assert "dog" in video_maps and "cat" not in video_maps and 3 not in video_maps
        assert repr(video_maps) == "ConceptMaps(concepts=('dog', 'grass'), frames=2, grid_size=(2, 2), logits=True)"

    def test_tensors_are_float32_cpu_copies(self) -> None:
        maps_input = RAW.to(torch.float64)
        logits_input = RAW.clone()
        maps = ConceptMaps(("dog", "grass"), maps_input, logits=logits_input)
        assert maps.tensor.dtype == torch.float32 and maps.tensor.device.type == "cpu"
        assert maps.logits is not None and maps.logits.dtype == torch.float32
        maps_input.zero_()
        logits_input.zero_()
        torch.testing.assert_close(maps.tensor, RAW)
        torch.testing.assert_close(maps.logits, RAW)

    def test_half_precision_input(self) -> None:
        maps = ConceptMaps(["dog", "grass"], RAW.to(torch.bfloat16))
        assert maps.tensor.dtype == torch.float32
        torch.testing.assert_close(maps.tensor, RAW)
        assert maps.logits is None

    def test_settings_are_a_json_normalised_copy(self) -> None:
        settings = {"layers": (15, 16), "nested": {"steps": [0, 1]}, "model": "flux"}
        maps = ConceptMaps(["dog"], torch.zeros(1, 1, 2, 2), settings=settings)
        settings["nested"]["steps"].append(2)
        assert maps.settings == {"layers": [15, 16], "nested": {"steps": [0, 1]}, "model": "flux"}
        maps.settings["model"] = "changed"
        assert maps.settings["model"] == "flux"
        assert ConceptMaps(["dog"], torch.zeros(1, 1, 2, 2)).settings == {}

    def test_old_names_warn_and_still_work(self, video_maps: ConceptMaps) -> None:
        """``maps`` (the tensor: ``ca.maps.maps`` stuttered) is ``tensor``, ``config`` (a dict, unlike the dataclass
        ``ConceptAttention.config``) is ``settings``: the old names stay one release, with a DeprecationWarning."""
        with pytest.warns(DeprecationWarning, match=r"ConceptMaps\.maps is deprecated; use ConceptMaps\.tensor"):
            tensor = video_maps.maps
        assert tensor is video_maps.tensor
        with pytest.warns(DeprecationWarning, match=r"ConceptMaps\.config is deprecated; use ConceptMaps\.settings"):
            settings = video_maps.config
        assert settings == video_maps.settings == {"layers": [15, 16], "softmax": False}
        with pytest.warns(DeprecationWarning, match=r"ConceptMaps\(config=\.\.\.\) is deprecated"):
            old = ConceptMaps(["dog", "grass"], RAW, logits=RAW * 2, config={"layers": (15, 16), "softmax": False})
        assert old == video_maps
        with pytest.raises(ValueError, match="not both"), pytest.warns(DeprecationWarning):
            ConceptMaps(["dog"], torch.zeros(1, 1, 2, 2), settings={}, config={})

    def test_new_names_do_not_warn(self, video_maps: ConceptMaps) -> None:
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            assert video_maps.tensor.shape == (2, 2, 2, 2)
            assert video_maps.settings["softmax"] is False

    def test_getitem(self, video_maps: ConceptMaps) -> None:
        torch.testing.assert_close(video_maps["grass"], RAW[1])
        assert video_maps["dog"].shape == (2, 2, 2)

    @pytest.mark.parametrize("key", ["cat", 0, None])
    def test_getitem_unknown_concept_lists_known_ones(self, video_maps: ConceptMaps, key: object) -> None:
        with pytest.raises(KeyError, match=r"known concepts: \['dog', 'grass'\]"):
            video_maps[key]  # type: ignore[index]

    @pytest.mark.parametrize(
        ("concepts", "message"),
        [
            ([], "empty"),
            ("dog", "list of strings"),
            (["dog", "dog"], "unique"),
            (["Sea", "sea "], "unique"),
            (["red car", "Red  Car"], "unique"),
            (["dog", ""], "empty or only whitespace"),
            (["dog", "  "], "empty or only whitespace"),
            (["dog", 3], "must be strings"),
        ],
    )
    def test_invalid_concepts(self, concepts: object, message: str) -> None:
        """The checks of encoding.validate_concepts: a ConceptError, which is still a ValueError."""
        with pytest.raises(ConceptError, match=message):
            ConceptMaps(concepts, torch.zeros(2, 1, 2, 2))  # type: ignore[arg-type]
        with pytest.raises(ValueError, match=message):
            ConceptMaps(concepts, torch.zeros(2, 1, 2, 2))  # type: ignore[arg-type]

    def test_concepts_are_whitespace_normalised_as_everywhere(self) -> None:
        maps = ConceptMaps([" red  car ", "sky"], torch.zeros(2, 1, 2, 2))
        assert maps.concepts == ("red car", "sky")
        assert maps.concepts == validate_concepts([" red  car ", "sky"])

    @pytest.mark.parametrize(
        ("tensor", "message"),
        [
            (np.zeros((2, 1, 2, 2), dtype=np.float32), "torch.Tensor"),
            (torch.zeros(2, 2, 2), r"unsqueeze\(1\)"),
            (torch.zeros(2, 1, 1, 2, 2), "4 dimensions"),
            (torch.zeros(2, 1, 2, 2, dtype=torch.int64), "floating-point"),
            (torch.zeros(3, 1, 2, 2), "3 maps .* 2 concepts"),
            (torch.zeros(2, 0, 2, 2), "empty"),
            (torch.tensor([float("nan")]).expand(2, 1, 2, 2), "NaN"),
            (torch.tensor([float("inf")]).expand(2, 1, 2, 2), "infinite"),
            (torch.full((2, 1, 2, 2), 1e39, dtype=torch.float64), "float32"),  # overflows in float32
        ],
    )
    def test_invalid_maps(self, tensor: object, message: str) -> None:
        with pytest.raises(ValueError, match=message):
            ConceptMaps(["dog", "grass"], tensor)  # type: ignore[arg-type]

    def test_invalid_logits(self) -> None:
        with pytest.raises(ValueError, match="logits shape"):
            ConceptMaps(["dog", "grass"], RAW, logits=RAW[:, :1])
        with pytest.raises(ValueError, match="logits contains NaN"):
            ConceptMaps(["dog", "grass"], RAW, logits=torch.full_like(RAW, float("nan")))
        with pytest.raises(ValueError, match="logits must be a torch.Tensor"):
            ConceptMaps(["dog", "grass"], RAW, logits=[1.0])  # type: ignore[arg-type]

    @pytest.mark.parametrize(
        ("config", "message"),
        [
            ([("layers", 1)], "mapping"),
            ({"layers": range(3)}, "JSON-serialisable"),
            ({"dtype": torch.float16}, "JSON-serialisable"),
            ({"noise": float("nan")}, "JSON-serialisable"),
            ({1: "layer"}, "keys must be strings"),
        ],
    )
    def test_invalid_settings(self, config: object, message: str) -> None:
        with pytest.raises(ValueError, match=message):
            ConceptMaps(["dog"], torch.zeros(1, 1, 2, 2), settings=config)  # type: ignore[arg-type]

    def test_equality(self, video_maps: ConceptMaps) -> None:
        same = ConceptMaps(
            ["dog", "grass"], RAW.clone(), logits=RAW * 2, settings={"layers": [15, 16], "softmax": False}
        )
        assert video_maps == same
        assert video_maps != ConceptMaps(["dog", "grass"], RAW, logits=RAW * 2, settings={"layers": [15]})
        assert video_maps != ConceptMaps(["dog", "grass"], RAW, settings={"layers": [15, 16], "softmax": False})
        assert video_maps != ConceptMaps(["grass", "dog"], RAW, logits=RAW * 2, settings=video_maps.settings)
        assert video_maps != ConceptMaps(["dog", "grass"], RAW + 1, logits=RAW * 2, settings=video_maps.settings)
        assert video_maps != "not maps"
        with pytest.raises(TypeError):
            hash(video_maps)


class TestTensorViews:
    """upsample, normalized and segmentation on hand-computed examples."""

    def test_bilinear_upsample(self) -> None:
        maps = ConceptMaps(["a"], torch.tensor([[[[0.0, 1.0], [2.0, 3.0]]]]))  # [1, 1, 2, 2]
        # align_corners=False: output pixel centres map to source coordinates -0.25, 0.25, 0.75, 1.25 (clamped),
        # i.e. interpolation weights [0, 0.25, 0.75, 1]; the value is x + 2 * y.
        expected = torch.tensor(
            [
                [0.0, 0.25, 0.75, 1.0],
                [0.5, 0.75, 1.25, 1.5],
                [1.5, 1.75, 2.25, 2.5],
                [2.0, 2.25, 2.75, 3.0],
            ]
        )
        upsampled = maps.upsample((4, 4))
        assert upsampled.shape == (1, 1, 4, 4)
        torch.testing.assert_close(upsampled[0, 0], expected)

    def test_nearest_upsample_and_shape_with_frames(self, video_maps: ConceptMaps) -> None:
        upsampled = video_maps.upsample((4, 6), mode="nearest")
        assert upsampled.shape == (2, 2, 4, 6)
        expected = RAW.repeat_interleave(2, dim=2).repeat_interleave(3, dim=3)  # [2, 2, 4, 6]
        torch.testing.assert_close(upsampled, expected)

    def test_upsample_to_the_same_size_is_the_identity(self, video_maps: ConceptMaps) -> None:
        torch.testing.assert_close(video_maps.upsample((2, 2)), RAW)

    @pytest.mark.parametrize("size", [(0, 4), (4, -1), (4,), (4, 4, 4), (4.0, 4), "44", None, (True, 4)])
    def test_upsample_invalid_size(self, video_maps: ConceptMaps, size: object) -> None:
        with pytest.raises(ValueError, match="size must be"):
            video_maps.upsample(size)  # type: ignore[arg-type]

    def test_upsample_invalid_mode(self, video_maps: ConceptMaps) -> None:
        with pytest.raises(ValueError, match="Unknown upsampling mode"):
            video_maps.upsample((4, 4), mode="lanczos")

    def test_normalized_per_concept_and_frame(self, video_maps: ConceptMaps) -> None:
        expected = torch.tensor(
            [
                [[[0.0, 0.25], [0.5, 1.0]], [[0.0, 0.0], [0.0, 0.0]]],  # constant frame -> zeros
                [[[0.0, 0.0], [0.0, 1.0]], [[1.0, 0.5], [0.0, 0.5]]],
            ]
        )
        normalized = video_maps.normalized()
        assert normalized.dtype == torch.float32
        torch.testing.assert_close(normalized, expected)
        torch.testing.assert_close(video_maps.normalized("concept"), expected)

    def test_normalized_over_all_concepts_and_frames(self, video_maps: ConceptMaps) -> None:
        # global minimum -2, maximum 10: (x + 2) / 12
        expected = (
            torch.tensor(
                [
                    [[[3.0, 5.0], [7.0, 11.0]], [[0.0, 0.0], [0.0, 0.0]]],
                    [[[2.0, 2.0], [2.0, 12.0]], [[6.0, 4.0], [2.0, 4.0]]],
                ]
            )
            / 12.0
        )
        torch.testing.assert_close(video_maps.normalized("all"), expected)

    def test_normalized_constant_maps_give_zeros_not_nan(self) -> None:
        maps = ConceptMaps(["a", "b"], torch.full((2, 3, 2, 2), 0.5))
        for scope in ("concept", "all"):
            normalized = maps.normalized(scope)  # type: ignore[arg-type]
            assert torch.equal(normalized, torch.zeros(2, 3, 2, 2))

    def test_normalized_extreme_values_do_not_overflow(self) -> None:
        extreme = torch.tensor([[[[-3e38, 3e38]]]])  # max - min overflows float32
        maps = ConceptMaps(["a"], extreme)
        torch.testing.assert_close(maps.normalized(), torch.tensor([[[[0.0, 1.0]]]]))

    def test_normalized_invalid_scope(self, video_maps: ConceptMaps) -> None:
        with pytest.raises(ValueError, match="'concept' or 'all'"):
            video_maps.normalized("frame")  # type: ignore[arg-type]

    def test_segmentation(self, video_maps: ConceptMaps) -> None:
        labels = video_maps.segmentation()
        assert labels.dtype == torch.int64
        assert labels.tolist() == [[[0, 0], [0, 1]], [[1, 1], [1, 1]]]

    def test_segmentation_ties_go_to_the_first_concept(self) -> None:
        maps = ConceptMaps(["a", "b", "c"], torch.tensor([[[[0.2, 0.5]]], [[[0.5, 0.5]]], [[[0.5, 0.1]]]]))
        assert maps.segmentation().tolist() == [[[1, 0]]]

    def test_segmentation_with_size_upsamples_bilinearly_first(self) -> None:
        maps = ConceptMaps(["a", "b"], torch.tensor([[[[1.0, 0.0]]], [[[0.7, 0.7]]]]))  # [2, 1, 1, 2]
        # bilinear to width 8: a = [1, 1, 0.875, 0.625, 0.375, 0.125, 0, 0] and b = 0.7 everywhere, so the boundary
        # falls after three pixels (nearest upsampling would put it after four).
        labels = maps.segmentation(size=(2, 8))
        assert labels.shape == (1, 2, 8)
        assert labels.tolist() == [[[0, 0, 0, 1, 1, 1, 1, 1]] * 2]


class TestImages:
    """heatmap, overlay, segmentation_image, legend."""

    def test_heatmap_colours_follow_the_colormap(self, video_maps: ConceptMaps) -> None:
        plasma = matplotlib.colormaps["plasma"]
        heat = video_maps.heatmap("dog")
        assert heat.mode == "RGB" and heat.size == (2, 2)
        for (row, column), value in {(0, 0): 0.0, (0, 1): 0.25, (1, 0): 0.5, (1, 1): 1.0}.items():
            assert heat.getpixel((column, row)) == tuple(plasma(value, bytes=True)[:3])

    def test_heatmap_scope_frame_and_cmap(self, video_maps: ConceptMaps) -> None:
        viridis = matplotlib.colormaps["viridis"]
        heat = video_maps.heatmap("grass", frame=1, cmap="viridis", scope="all")
        # frame 1 of "grass" is [[4, 2], [0, 2]]; with scope "all" the range is [-2, 10]
        assert heat.getpixel((0, 0)) == tuple(viridis(0.5, bytes=True)[:3])
        assert heat.getpixel((0, 1)) == tuple(viridis(2.0 / 12.0, bytes=True)[:3])

    def test_heatmap_size_is_height_width(self, video_maps: ConceptMaps) -> None:
        heat = video_maps.heatmap("dog", size=(3, 8))
        assert heat.size == (8, 3)
        # bilinear upsampling of the normalised map, then the colormap
        expected_values = torch.nn.functional.interpolate(
            video_maps.normalized()[0:1, 0:1], size=(3, 8), mode="bilinear", align_corners=False
        )[0, 0]  # [3, 8]
        expected = matplotlib.colormaps["plasma"](expected_values.numpy(), bytes=True)[..., :3]
        np.testing.assert_array_equal(np.asarray(heat), expected)

    def test_heatmap_errors(self, video_maps: ConceptMaps) -> None:
        with pytest.raises(KeyError, match="known concepts"):
            video_maps.heatmap("cat")
        with pytest.raises(ValueError, match="colormap"):
            video_maps.heatmap("dog", cmap="no-such-map")
        for frame in (2, -1, True, 0.0):
            with pytest.raises(ValueError, match="frame must be"):
                video_maps.heatmap("dog", frame=frame)  # type: ignore[arg-type]
        with pytest.raises(ValueError, match="size must be"):
            video_maps.heatmap("dog", size=(0, 3))
        with pytest.raises(ValueError, match="scope"):
            video_maps.heatmap("dog", scope="global")  # type: ignore[arg-type]

    def test_overlay_has_the_image_size(self) -> None:
        maps = _image_maps(["cat", "sofa"])
        image = Image.new("RGB", (90, 40), (10, 200, 30))
        overlay = maps.overlay(image, "cat")
        assert overlay.mode == "RGB"
        assert overlay.size == image.size

    def test_overlay_blends_with_alpha(self) -> None:
        maps = _image_maps(["cat", "sofa"])
        pixels = np.random.default_rng(0).integers(0, 256, size=(12, 18, 3), dtype=np.uint8)
        image = Image.fromarray(pixels)
        heat = np.asarray(maps.heatmap("sofa", size=(12, 18))).astype(np.float64)
        np.testing.assert_array_equal(np.asarray(maps.overlay(image, "sofa", alpha=0.0)), pixels)
        np.testing.assert_array_equal(np.asarray(maps.overlay(image, "sofa", alpha=1.0)), heat)
        blended = np.asarray(maps.overlay(image, "sofa", alpha=0.25)).astype(np.float64)
        np.testing.assert_allclose(blended, 0.75 * pixels + 0.25 * heat, atol=1.0)

    def test_overlay_accepts_other_image_modes(self) -> None:
        maps = _image_maps(["cat"])
        assert maps.overlay(Image.new("L", (8, 4), 100), "cat").mode == "RGB"
        transparent = maps.overlay(Image.new("RGBA", (8, 4), (0, 0, 0, 0)), "cat", alpha=0.0)
        assert transparent.getpixel((0, 0)) == (255, 255, 255)  # composited on white

    def test_overlay_errors(self) -> None:
        maps = _image_maps(["cat"])
        with pytest.raises(ValueError, match="load_image"):
            maps.overlay(np.zeros((4, 4, 3), dtype=np.uint8), "cat")  # type: ignore[arg-type]
        for alpha in (-0.1, 1.5, "0.5"):
            with pytest.raises(ValueError, match="alpha"):
                maps.overlay(Image.new("RGB", (4, 4)), "cat", alpha=alpha)  # type: ignore[arg-type]
        with pytest.raises(KeyError):
            maps.overlay(Image.new("RGB", (4, 4)), "dog")

    def test_segmentation_image_uses_the_legend_colours(self, video_maps: ConceptMaps) -> None:
        legend = dict(video_maps.legend())
        labels = video_maps.segmentation()
        for frame in (0, 1):
            image = video_maps.segmentation_image(frame=frame)
            assert image.mode == "RGB" and image.size == (2, 2)
            for row in range(2):
                for column in range(2):
                    concept = video_maps.concepts[labels[frame, row, column]]
                    assert image.getpixel((column, row)) == legend[concept]

    def test_segmentation_image_size(self) -> None:
        maps = ConceptMaps(["a", "b"], torch.tensor([[[[1.0, 0.0]]], [[[0.0, 1.0]]]]))
        image = maps.segmentation_image(size=(2, 4))
        assert image.size == (4, 2)
        colour_a, colour_b = (colour for _, colour in maps.legend())
        assert [image.getpixel((column, 1)) for column in range(4)] == [colour_a, colour_a, colour_b, colour_b]

    def test_legend_uses_tab10_first(self) -> None:
        tab10 = matplotlib.colormaps["tab10"].colors
        legend = _image_maps(["cat", "sofa", "lamp"]).legend()
        assert [concept for concept, _ in legend] == ["cat", "sofa", "lamp"]
        assert [colour for _, colour in legend] == [tuple(round(255 * c) for c in tab10[i]) for i in range(3)]
        twelve = _image_maps([f"c{i}" for i in range(12)]).legend()
        assert [colour for _, colour in twelve[:10]] == [tuple(round(255 * c) for c in tab10[i]) for i in range(10)]

    @pytest.mark.parametrize("count", [12, 20, 33, 60])
    def test_many_concepts_get_clearly_different_colours(self, count: int) -> None:
        """No two legend colours are closer than tab10's closest pair (67 RGB units): tab20's light blue and light
        cyan (25 apart) and evenly spaced hues for 33 concepts (34 apart) were near-identical (issue 16)."""
        colours = np.array([colour for _, colour in _image_maps([f"c{i}" for i in range(count)], grid=(1, 1)).legend()])
        distances = np.linalg.norm(colours[:, None, :].astype(float) - colours[None, :, :], axis=-1)  # [C, C]
        distances[np.eye(count, dtype=bool)] = np.inf
        assert distances.min() >= 60
        assert (colours.max(axis=1) >= 48).all() and (colours.min(axis=1) <= 216).all()  # no near-black/near-white

    @pytest.mark.parametrize("count", [1, 10, 20, 33])
    def test_palette_colours_are_distinct(self, count: int) -> None:
        colours = [colour for _, colour in _image_maps([f"c{i}" for i in range(count)], grid=(1, 1)).legend()]
        assert len(colours) == count
        assert len(set(colours)) == count
        assert all(isinstance(channel, int) and 0 <= channel <= 255 for colour in colours for channel in colour)


class TestFigure:
    """figure builds a matplotlib grid of every view."""

    def test_figure_without_image(self) -> None:
        maps = _image_maps(["cat", "sofa", "lamp"])
        figure = maps.figure()
        assert len(figure.axes) == 4  # three concepts and the segmentation
        assert [axes.get_title() for axes in figure.axes] == ["cat", "sofa", "lamp", "segmentation"]
        legend = figure.axes[-1].get_legend()
        assert [text.get_text() for text in legend.get_texts()] == ["cat", "sofa", "lamp"]

    def test_long_concept_label_is_cut_and_does_not_widen_the_figure(self) -> None:
        long_concept = "word " * 200  # a 1,000-character concept
        maps = _image_maps([long_concept.strip(), "sky"])
        figure = maps.figure()
        title = figure.axes[0].get_title()
        assert len(title) == MAX_LABEL_CHARS and title.endswith("\u2026")
        legend_texts = [text.get_text() for text in figure.axes[-1].get_legend().get_texts()]
        assert legend_texts == [title, "sky"]
        buffer = io.BytesIO()
        figure.savefig(buffer, format="png", dpi=100, bbox_inches="tight")
        assert Image.open(io.BytesIO(buffer.getvalue())).width < 1500  # 10,020 px before the cut

    def test_figure_with_image_has_an_image_panel_and_renders(self) -> None:
        maps = _image_maps(["cat", "sofa", "lamp", "rug", "wall"])
        figure = maps.figure(Image.new("RGB", (48, 32), (0, 128, 255)), cmap="viridis")
        assert len(figure.axes) == 7
        assert figure.axes[0].get_title() == "image"
        buffer = io.BytesIO()
        figure.savefig(buffer, format="png")
        assert buffer.getvalue().startswith(b"\x89PNG")

    def test_figure_frame_selection(self, video_maps: ConceptMaps) -> None:
        figure = video_maps.figure(frame=1)
        segmentation_pixels = np.asarray(figure.axes[-1].get_images()[0].get_array())
        height, width = segmentation_pixels.shape[:2]
        assert max(height, width) == 256  # drawn upsampled, not at the 2x2 grid size
        expected = np.asarray(video_maps.segmentation_image((height, width), frame=1))
        np.testing.assert_array_equal(segmentation_pixels, expected)
        assert not np.array_equal(expected, np.asarray(video_maps.segmentation_image((height, width), frame=0)))

    def test_figure_panels_have_the_image_size(self) -> None:
        maps = _image_maps(["cat", "sofa"])
        figure = maps.figure(Image.new("RGB", (30, 20)))
        for axes in figure.axes:
            assert np.asarray(axes.get_images()[0].get_array()).shape[:2] == (20, 30)

    def test_figure_errors(self, video_maps: ConceptMaps) -> None:
        with pytest.raises(ValueError, match="frame must be"):
            video_maps.figure(frame=5)
        with pytest.raises(ValueError, match="PIL.Image.Image"):
            video_maps.figure(image=np.zeros((2, 2, 3)))  # type: ignore[arg-type]
        with pytest.raises(ValueError, match="colormap"):
            video_maps.figure(cmap="no-such-map")


class TestFiles:
    """save and load."""

    def test_round_trip(self, tmp_path: Path, video_maps: ConceptMaps) -> None:
        path = video_maps.save(tmp_path / "maps.safetensors")
        assert path == tmp_path / "maps.safetensors"
        loaded = ConceptMaps.load(path)
        assert loaded == video_maps
        assert loaded.settings == {"layers": [15, 16], "softmax": False}
        assert [entry.name for entry in tmp_path.iterdir()] == ["maps.safetensors"]  # no temporary files left

    def test_round_trip_without_logits_and_with_unicode_concepts(self, tmp_path: Path) -> None:
        maps = ConceptMaps(["chat noir", "ciel étoilé", "狗"], torch.rand(3, 1, 5, 7))
        loaded = ConceptMaps.load(maps.save(tmp_path / "maps.safetensors"))
        assert loaded == maps
        assert loaded.logits is None

    def test_file_is_plain_safetensors(self, tmp_path: Path, video_maps: ConceptMaps) -> None:
        path = video_maps.save(tmp_path / "maps.safetensors")
        with safe_open(str(path), framework="pt") as handle:
            assert set(handle.keys()) == {"maps", "logits"}
            torch.testing.assert_close(handle.get_tensor("maps"), RAW)
            metadata = handle.metadata()
        assert json.loads(metadata["concepts"]) == ["dog", "grass"]
        assert json.loads(metadata["config"]) == {"layers": [15, 16], "softmax": False}

    def test_save_replaces_atomically_and_a_failure_keeps_the_old_file(
        self, tmp_path: Path, video_maps: ConceptMaps, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        path = tmp_path / "maps.safetensors"
        _image_maps(["cat"]).save(path)
        old_bytes = path.read_bytes()

        def failing_replace(source: object, destination: object) -> None:
            raise OSError("disk full")

        monkeypatch.setattr(outputs.os, "replace", failing_replace)
        with pytest.raises(OSError, match="disk full"):
            video_maps.save(path)
        assert path.read_bytes() == old_bytes
        assert [entry.name for entry in tmp_path.iterdir()] == ["maps.safetensors"]
        monkeypatch.undo()
        video_maps.save(path)
        assert ConceptMaps.load(path) == video_maps

    def test_save_to_a_directory_is_refused(self, tmp_path: Path, video_maps: ConceptMaps) -> None:
        with pytest.raises(OutputPathError):
            video_maps.save(tmp_path)

    def test_load_missing_file(self, tmp_path: Path) -> None:
        with pytest.raises(ConceptMapsNotFoundError, match="missing.safetensors") as error_info:
            ConceptMaps.load(tmp_path / "missing.safetensors")
        assert isinstance(error_info.value, FileNotFoundError)
        assert isinstance(error_info.value, ValueError)

    def test_load_directory(self, tmp_path: Path) -> None:
        with pytest.raises(ConceptMapsFileError, match="is a directory"):
            ConceptMaps.load(tmp_path)

    def test_load_garbage(self, tmp_path: Path) -> None:
        path = tmp_path / "maps.safetensors"
        path.write_bytes(b"definitely not safetensors")
        with pytest.raises(ConceptMapsFileError, match="not a readable safetensors file"):
            ConceptMaps.load(path)

    def test_load_truncated(self, tmp_path: Path, video_maps: ConceptMaps) -> None:
        path = video_maps.save(tmp_path / "maps.safetensors")
        path.write_bytes(path.read_bytes()[:-20])
        with pytest.raises(ConceptMapsFileError, match="truncated or corrupt"):
            ConceptMaps.load(path)

    def test_load_foreign_safetensors(self, tmp_path: Path) -> None:
        path = tmp_path / "weights.safetensors"
        save_file({"weight": torch.zeros(2, 2)}, str(path))
        with pytest.raises(ConceptMapsFileError, match="not written by ConceptMaps.save"):
            ConceptMaps.load(path)

    def _write_with_metadata(self, path: Path, **overrides: str) -> Path:
        metadata = {
            "format": "conceptattention.ConceptMaps",
            "format_version": "1",
            "concepts": json.dumps(["a", "b"]),
            "config": "{}",
        }
        metadata.update(overrides)
        path.write_bytes(save_safetensors({"maps": torch.zeros(2, 1, 2, 2)}, metadata=metadata))
        return path

    def test_load_hand_written_file(self, tmp_path: Path) -> None:
        loaded = ConceptMaps.load(self._write_with_metadata(tmp_path / "maps.safetensors"))
        assert loaded == ConceptMaps(["a", "b"], torch.zeros(2, 1, 2, 2))

    def test_load_newer_format_version(self, tmp_path: Path) -> None:
        path = self._write_with_metadata(tmp_path / "maps.safetensors", format_version="99")
        with pytest.raises(ConceptMapsFileError, match="version '99'.*Upgrade"):
            ConceptMaps.load(path)

    @pytest.mark.parametrize(
        "overrides",
        [{"concepts": "not json"}, {"concepts": json.dumps(["a", "a"])}, {"concepts": json.dumps(["a"])}],
    )
    def test_load_invalid_metadata(self, tmp_path: Path, overrides: dict[str, str]) -> None:
        path = self._write_with_metadata(tmp_path / "maps.safetensors", **overrides)
        with pytest.raises(ConceptMapsFileError, match="invalid ConceptMaps data"):
            ConceptMaps.load(path)


class TestDrawingLivesInPlotting:
    """The drawing methods are conceptattention.plotting's free functions, bound to the maps (same API)."""

    @pytest.mark.parametrize("name", ["heatmap", "overlay", "legend", "segmentation_image", "figure"])
    def test_method_is_the_plotting_function(self, video_maps: ConceptMaps, name: str) -> None:
        import inspect

        from conceptattention import plotting

        function = getattr(plotting, name)
        assert getattr(ConceptMaps, name) is function
        method = getattr(video_maps, name)
        assert method.__func__ is function and method.__self__ is video_maps
        assert list(inspect.signature(method).parameters) == list(inspect.signature(function).parameters)[1:]

    def test_method_and_function_draw_the_same(self, video_maps: ConceptMaps) -> None:
        from conceptattention import plotting

        assert video_maps.heatmap("dog", size=(8, 8), frame=1).tobytes() == plotting.heatmap(
            video_maps, "dog", size=(8, 8), frame=1
        ).tobytes()
        assert video_maps.legend() == plotting.legend(video_maps)
