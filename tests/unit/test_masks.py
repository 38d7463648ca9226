"""Masks, label PNGs and COCO annotations from ConceptMaps (``conceptattention.masks``, ``ConceptMaps.masks``)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from conceptattention import ConceptMaps
from conceptattention.masks import (
    coco_annotations,
    concept_masks,
    label_image,
    labels_from_masks,
    none_pixels,
    otsu_threshold,
    read_legend,
    rle_encode,
    save_label_image,
    write_masks,
)


def random_maps(concepts=("cat", "sofa", "floor"), frames: int = 1, grid=(6, 8), seed: int = 0) -> ConceptMaps:
    generator = torch.Generator().manual_seed(seed)
    logits = torch.randn(len(concepts), frames, *grid, generator=generator) * 2  # [C, F, h, w]
    return ConceptMaps(list(concepts), logits.softmax(dim=0), logits=logits)


class TestRules:
    def test_shape_dtype_and_size(self) -> None:
        maps = random_maps(frames=2)
        for rule, threshold in (("mean", None), ("otsu", None), ("threshold", 0.4), ("argmax", None)):
            masks = maps.masks(rule, threshold=threshold, size=(12, 20))
            assert masks.dtype == torch.bool and masks.shape == (3, 2, 12, 20)
            assert masks.any() and not masks.all()
        assert maps.masks("mean").shape == (3, 2, 6, 8)  # token grid without a size

    def test_mean_rule_thresholds_each_upsampled_map_at_its_mean(self) -> None:
        maps = random_maps()
        upsampled = maps.upsample((12, 16))  # [C, F, H, W], the heatmaps' bilinear upsampling
        expected = upsampled > upsampled.mean(dim=(2, 3), keepdim=True)
        assert torch.equal(maps.masks("mean", size=(12, 16)), expected)

    def test_threshold_rule(self) -> None:
        maps = random_maps()
        assert torch.equal(maps.masks("threshold", threshold=0.5), maps.tensor > 0.5)
        assert not maps.masks("threshold", threshold=1.0).any()

    def test_argmax_rule_is_the_segmentation(self) -> None:
        maps = random_maps(frames=2)
        masks = maps.masks("argmax", size=(9, 11))
        assert torch.equal(masks.sum(dim=0), torch.ones(2, 9, 11, dtype=torch.long))  # one concept per pixel
        segmentation = maps.segmentation((9, 11))  # [F, H, W]
        for index in range(3):
            assert torch.equal(masks[index], segmentation == index)

    def test_otsu_rule_uses_the_otsu_threshold_of_each_map(self) -> None:
        maps = random_maps()
        masks = maps.masks("otsu", size=(12, 16))
        upsampled = maps.upsample((12, 16))
        for index in range(3):
            assert torch.equal(masks[index, 0], upsampled[index, 0] > otsu_threshold(upsampled[index, 0]))

    @pytest.mark.parametrize(
        ("kwargs", "message"),
        [
            ({"rule": "median"}, "Unknown mask rule"),
            ({"rule": "threshold"}, "needs threshold"),
            ({"rule": "mean", "threshold": 0.5}, "only used by rule='threshold'"),
            ({"rule": "threshold", "threshold": float("nan")}, "finite"),
            ({"rule": "argmax", "size": (0, 4)}, "size"),
            ({"rule": "argmax", "none": "high"}, "none must be a finite number"),
        ],
    )
    def test_bad_arguments(self, kwargs, message) -> None:
        with pytest.raises(ValueError, match=message):
            random_maps().masks(**kwargs)


class TestOtsu:
    def test_matches_scikit_image_on_known_inputs(self) -> None:
        # Reference values from skimage.filters.threshold_otsu (scikit-image 0.26.0, nbins=256) on these inputs.
        values = torch.tensor([0.0, 0.1, 0.2, 0.8, 0.9, 1.0])
        assert otsu_threshold(values) == pytest.approx(0.201171875, abs=1e-9)
        ramp = torch.arange(100, dtype=torch.float64) ** 2 / 100.0  # 0 .. 98.01, skewed
        assert otsu_threshold(ramp) == pytest.approx(39.62513671875, abs=1e-9)
        skewed = np.random.default_rng(0).random((20, 20)).astype(np.float32) ** 3  # [20, 20]
        assert otsu_threshold(torch.from_numpy(skewed)) == pytest.approx(0.39317492, abs=1e-6)

    def test_maximises_the_between_class_variance(self) -> None:
        """Against a brute force over the 256 bin centres, computed on the histogram with numpy."""
        values = torch.cat([torch.randn(500) * 0.3, torch.randn(300) * 0.5 + 3.0])
        counts, edges = np.histogram(values.numpy().astype(np.float64), bins=256)
        centers = (edges[:-1] + edges[1:]) / 2
        best, best_variance = None, -1.0
        for split in range(255):
            low, high = counts[: split + 1], counts[split + 1 :]
            w0, w1 = low.sum(), high.sum()
            if w0 == 0 or w1 == 0:
                continue
            m0 = (low * centers[: split + 1]).sum() / w0
            m1 = (high * centers[split + 1 :]).sum() / w1
            variance = w0 * w1 * (m0 - m1) ** 2
            if variance > best_variance:
                best, best_variance = centers[split], variance
        assert otsu_threshold(values) == pytest.approx(best, abs=1e-6)
        assert 0.5 < otsu_threshold(values) < 2.5  # between the two clusters

    def test_constant_and_bad_inputs(self) -> None:
        assert otsu_threshold(torch.full((4, 4), 0.25)) == 0.25
        with pytest.raises(ValueError, match="non-empty"):
            otsu_threshold(torch.tensor([]))
        with pytest.raises(ValueError, match="finite"):
            otsu_threshold(torch.tensor([0.0, float("inf")]))
        with pytest.raises(ValueError, match="bins"):
            otsu_threshold(torch.rand(5), bins=1)


class TestNone:
    def test_null_concept_takes_pixels_where_every_score_is_low(self) -> None:
        logits = torch.zeros(2, 1, 1, 4)  # [C, F, h, w]
        logits[0, 0, 0, 0] = 6.0  # one confident pixel for concept 0
        logits[1, 0, 0, 1] = 6.0  # one for concept 1; pixels 2 and 3 are low for both
        maps = ConceptMaps(["a", "b"], logits.softmax(dim=0), logits=logits)
        assert none_pixels(maps, 1.0)[0, 0].tolist() == [False, False, True, True]
        masks = maps.masks("argmax", none=1.0)
        assert masks[:, 0, 0].tolist() == [[True, False, False, False], [False, True, False, False]]

    def test_limits(self) -> None:
        maps = random_maps()
        assert not none_pixels(maps, -100.0).any()  # a very low null logit never wins: the default behaviour
        assert torch.equal(maps.masks("argmax", none=-100.0), maps.masks("argmax"))
        assert none_pixels(maps, 100.0, size=(12, 16)).all()
        assert not maps.masks("mean", none=100.0).any()

    def test_needs_logits(self) -> None:
        maps = ConceptMaps(["a", "b"], torch.rand(2, 1, 3, 3))
        with pytest.raises(ValueError, match="raw scores"):
            maps.masks("argmax", none=0.5)


class TestLabels:
    def test_label_image_palette_and_legend(self, tmp_path) -> None:
        maps = random_maps()
        image = label_image(maps, size=(12, 16))
        assert image.mode == "P" and image.size == (16, 12)
        labels = np.asarray(image)
        assert np.array_equal(labels, maps.segmentation((12, 16))[0].numpy() + 1)  # index = concept + 1
        palette = image.getpalette()[: 3 * 4]
        assert palette[:3] == [0, 0, 0]
        assert [tuple(palette[3 * i : 3 * i + 3]) for i in range(1, 4)] == maps.palette()
        path = save_label_image(image, tmp_path / "labels.png")
        reread = Image.open(path)
        assert reread.mode == "P" and np.array_equal(np.asarray(reread), labels)
        assert [entry["name"] for entry in read_legend(path)] == [None, "cat", "sofa", "floor"]

    def test_labels_zero_where_no_mask(self) -> None:
        maps = random_maps()
        masks = maps.masks("threshold", threshold=0.6)
        labels = labels_from_masks(masks, maps.tensor)
        assert torch.equal(labels == 0, ~masks.any(dim=0))
        on = labels > 0
        assert masks.gather(0, (labels.clamp(min=1) - 1)[None])[0][on].all()  # the label's own mask is on

    def test_read_legend_of_a_foreign_png(self, tmp_path) -> None:
        Image.new("P", (2, 2)).save(tmp_path / "x.png")
        with pytest.raises(ValueError, match="no 'legend'"):
            read_legend(tmp_path / "x.png")


class TestCoco:
    def test_rle_round_trip_and_coco_api(self, tmp_path) -> None:
        from pycocotools import mask as mask_util
        from pycocotools.coco import COCO

        maps = random_maps(frames=2)
        masks = maps.masks("argmax", size=(10, 14))
        coco = coco_annotations(masks, maps.concepts, ["a.png", "b.png"], colors=maps.palette())
        assert [image["id"] for image in coco["images"]] == [1, 2]
        assert [category["name"] for category in coco["categories"]] == ["cat", "sofa", "floor"]
        path = tmp_path / "annotations.json"
        path.write_text(json.dumps(coco))
        api = COCO(str(path))  # the reference loader accepts the file
        for annotation in coco["annotations"]:
            concept, frame = annotation["category_id"] - 1, annotation["image_id"] - 1
            decoded = api.annToMask(api.anns[annotation["id"]])
            assert np.array_equal(decoded, masks[concept, frame].numpy().astype(np.uint8))
            assert annotation["area"] == int(masks[concept, frame].sum())
            rle = {"size": annotation["segmentation"]["size"], "counts": annotation["segmentation"]["counts"].encode()}
            assert np.array_equal(mask_util.decode(rle), decoded)
        non_empty = {(c, f) for c in range(3) for f in range(2) if masks[c, f].any()}
        assert {(a["category_id"] - 1, a["image_id"] - 1) for a in coco["annotations"]} == non_empty

    def test_bbox_and_rle_string(self) -> None:
        mask = torch.zeros(5, 6, dtype=torch.bool)
        mask[1:4, 2:5] = True
        coco = coco_annotations(mask[None, None], ["box"], ["image.png"])
        (annotation,) = coco["annotations"]
        assert annotation["bbox"] == [2.0, 1.0, 3.0, 3.0] and annotation["area"] == 9
        assert rle_encode(mask) == annotation["segmentation"]

    def test_mismatched_lengths(self) -> None:
        masks = torch.zeros(2, 1, 3, 3, dtype=torch.bool)
        with pytest.raises(ValueError, match="concepts"):
            coco_annotations(masks, ["a"], ["x.png"])
        with pytest.raises(ValueError, match="file names"):
            coco_annotations(masks, ["a", "b"], ["x.png", "y.png"])
        with pytest.raises(ValueError, match="bool"):
            coco_annotations(masks.float(), ["a", "b"], ["x.png"])


def test_write_masks(tmp_path) -> None:
    maps = random_maps()
    files = write_masks(tmp_path, maps, "otsu", size=(12, 16), names=["cat", "sofa", "floor"])
    assert files["masks"] == {c: f"masks/{c}.png" for c in maps.concepts}
    expected = maps.masks("otsu", size=(12, 16))
    for index, concept in enumerate(maps.concepts):
        written = np.asarray(Image.open(tmp_path / files["masks"][concept]))
        assert written.dtype == np.uint8 and set(np.unique(written)) <= {0, 255}
        assert np.array_equal(written == 255, expected[index, 0].numpy())
    coco = json.loads((tmp_path / "annotations.json").read_text())
    assert coco["info"]["rule"] == "otsu" and coco["images"][0]["file_name"] == "image.png"
    assert json.loads((tmp_path / "legend.json").read_text())[2]["name"] == "sofa"
    assert Image.open(tmp_path / "labels.png").mode == "P"


def test_concept_masks_is_the_method() -> None:
    maps = random_maps()
    assert torch.equal(concept_masks(maps, "otsu", size=(7, 9)), maps.masks("otsu", size=(7, 9)))


def test_cli_mask_rules_match_the_library() -> None:
    """The CLI lists the rules without importing torch; they must stay the library's."""
    from conceptattention.cli.mask_options import MASK_RULES as CLI_RULES
    from conceptattention.masks import MASK_RULES

    assert CLI_RULES == MASK_RULES
