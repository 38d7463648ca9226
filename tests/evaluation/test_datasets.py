"""Tests of the dataset loaders on synthetic files written in the real formats."""

from __future__ import annotations

import pickle
from collections.abc import Callable
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import pytest
import torch.utils.data
from PIL import Image

from conceptattention.evaluation import (
    IMAGENET_BACKGROUND_CONCEPTS,
    VOC_BACKGROUND_CONCEPTS,
    DatasetFormatError,
    DatasetNotFoundError,
    ImageNetSegmentation,
    PascalVOCSingleClass,
    SegmentationMetrics,
    SegmentationSample,
)


def rgb(height: int, width: int, seed: int) -> np.ndarray:
    """A random uint8 image ``[H, W, 3]``."""
    return np.random.default_rng(seed).integers(0, 256, size=(height, width, 3), dtype=np.uint8)


def box_mask(height: int, width: int, top: int, left: int, bottom: int, right: int) -> np.ndarray:
    """A {0, 1} uint8 mask ``[H, W]`` with one rectangle."""
    mask = np.zeros((height, width), dtype=np.uint8)
    mask[top:bottom, left:right] = 1
    return mask


@pytest.fixture
def imagenet_entries(fake_entry_type: Any) -> list[Any]:
    """Entries covering the loader checklist of evaluation.md §7.1."""
    return [
        # Non-square RGB with two masks in its cell.
        fake_entry_type("n02085620_1234", rgb(5, 7, 0), [box_mask(5, 7, 1, 2, 4, 6), box_mask(5, 7, 0, 0, 2, 2)]),
        # Greyscale image; mask stored as {0, 255}.
        fake_entry_type(
            "n01440764_77",
            np.random.default_rng(1).integers(0, 256, size=(4, 6), dtype=np.uint8),
            [box_mask(4, 6, 0, 0, 2, 3) * 255],
            mask_matlab_class="uint8",
        ),
        # All-background mask stored as double; non-ASCII id; explicit target string.
        fake_entry_type(
            "n03000000_Ωé9", rgb(6, 3, 2), [np.zeros((6, 3))], target="n03000000", mask_matlab_class="double"
        ),
    ]


@pytest.fixture
def gtsegs_path(tmp_path: Path, make_gtsegs: Callable[..., Path], imagenet_entries: list[Any]) -> Path:
    return make_gtsegs(tmp_path / "gtsegs_ijcv.mat", imagenet_entries)


class TestFakeGtsegsFile:
    """The synthetic file has the MATLAB v7.3 layout that the known readers expect."""

    def test_layout_and_reference_expressions(self, gtsegs_path: Path, imagenet_entries: list[Any]) -> None:
        with open(gtsegs_path, "rb") as stream:
            assert stream.read(19) == b"MATLAB 7.3 MAT-file"
        with h5py.File(gtsegs_path, "r") as handle:
            assert handle["value"].attrs["MATLAB_class"] == b"struct"
            assert {name: handle["value"][name].shape for name in ("img", "gt", "id", "target")} == dict.fromkeys(
                ("img", "gt", "id", "target"), (3, 1)
            )
            # The expressions of Chefer's data/Imagenet.py read the first entry back.
            image = np.array(handle[handle["/value/img"][0, 0]]).transpose(2, 1, 0)
            mask = np.array(handle[handle[handle["/value/gt"][0, 0]][0, 0]]).T
            assert np.array_equal(image, imagenet_entries[0].image)
            assert np.array_equal(mask, imagenet_entries[0].masks[0])


class TestImageNetSegmentation:
    """The gtsegs_ijcv.mat loader."""

    def test_length_and_samples(self, gtsegs_path: Path, imagenet_entries: list[Any]) -> None:
        dataset = ImageNetSegmentation(gtsegs_path)
        assert len(dataset) == 3
        sample = dataset[0]
        assert isinstance(sample, SegmentationSample)
        assert sample.id == "n02085620_1234"
        assert sample.image.mode == "RGB" and sample.image.size == (7, 5)
        assert np.array_equal(np.asarray(sample.image), imagenet_entries[0].image)
        assert sample.target.dtype == np.int8
        assert np.array_equal(sample.target, imagenet_entries[0].masks[0])
        assert sample.class_name == "n02085620" == sample.source_class
        assert sample.concepts == ["n02085620", *IMAGENET_BACKGROUND_CONCEPTS]

    def test_greyscale_image_becomes_rgb_and_255_mask_is_binarised(
        self, gtsegs_path: Path, imagenet_entries: list[Any]
    ) -> None:
        sample = ImageNetSegmentation(gtsegs_path)[1]
        grey = imagenet_entries[1].image
        assert sample.image.mode == "RGB" and sample.image.size == (6, 4)
        assert np.array_equal(np.asarray(sample.image), np.repeat(grey[:, :, None], 3, axis=2))
        assert set(np.unique(sample.target).tolist()) == {0, 1}
        assert np.array_equal(sample.target, imagenet_entries[1].masks[0] // 255)

    def test_non_ascii_id_double_mask_and_all_background(self, gtsegs_path: Path) -> None:
        sample = ImageNetSegmentation(gtsegs_path)[-1]
        assert sample.id == "n03000000_Ωé9"
        assert sample.target.shape == (6, 3) and not sample.target.any()

    def test_all_masks_are_exposed(self, gtsegs_path: Path, imagenet_entries: list[Any]) -> None:
        dataset = ImageNetSegmentation(gtsegs_path)
        assert [dataset.num_masks(index) for index in range(3)] == [2, 1, 1]
        masks = dataset.read_masks(0)
        assert all(np.array_equal(read, written) for read, written in zip(masks, imagenet_entries[0].masks))
        second = ImageNetSegmentation(gtsegs_path, mask_index=1)[0]
        assert np.array_equal(second.target, imagenet_entries[0].masks[1])
        with pytest.raises(DatasetFormatError, match="mask_index=1 does not exist"):
            second_dataset = ImageNetSegmentation(gtsegs_path, mask_index=1)
            second_dataset[1]

    def test_class_names_table_and_custom_concepts(self, gtsegs_path: Path) -> None:
        table = {"n02085620": "dog", "n01440764": "fish", "n03000000": "grass"}
        dataset = ImageNetSegmentation(gtsegs_path, class_names=table, concepts=["sky", "grass"])
        assert [sample.class_name for sample in dataset] == ["dog", "fish", "grass"]
        assert dataset[0].concepts == ["dog", "sky", "grass"]
        assert dataset[2].concepts == ["grass", "sky"]  # the class is not repeated as a background word
        assert ImageNetSegmentation(gtsegs_path, concepts=[])[0].concepts == ["n02085620"]

    def test_missing_class_name_is_an_error(self, gtsegs_path: Path) -> None:
        dataset = ImageNetSegmentation(gtsegs_path, class_names={"n02085620": "dog"})
        assert dataset[0].class_name == "dog"
        with pytest.raises(DatasetFormatError, match="no entry for wnid 'n01440764'"):
            dataset[1]

    def test_label_resize_to_square(self, gtsegs_path: Path) -> None:
        sample = ImageNetSegmentation(gtsegs_path, size=224)[0]
        assert sample.target.shape == (224, 224) and sample.image.size == (7, 5)
        assert set(np.unique(sample.target).tolist()) == {0, 1}

    def test_handle_is_lazy_picklable_and_per_process(
        self, gtsegs_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        dataset = ImageNetSegmentation(gtsegs_path)
        assert dataset._handle is None  # only a temporary handle was used for the length
        first_id = dataset[0].id
        handle = dataset._handle
        assert handle is not None and handle.id.valid
        clone = pickle.loads(pickle.dumps(dataset))
        assert clone._handle is None and clone[0].id == first_id
        monkeypatch.setattr("os.getpid", lambda: -12345)  # as in a forked DataLoader worker
        assert dataset[1].id == "n01440764_77"
        assert dataset._handle is not handle and dataset._handle_pid == -12345
        dataset.close()
        clone.close()
        handle.close()

    def test_dataloader_with_a_worker(self, gtsegs_path: Path) -> None:
        loader = torch.utils.data.DataLoader(
            ImageNetSegmentation(gtsegs_path), batch_size=2, num_workers=1, collate_fn=list
        )
        ids = [sample.id for batch in loader for sample in batch]
        assert ids == ["n02085620_1234", "n01440764_77", "n03000000_Ωé9"]

    def test_samples_feed_the_metrics(self, gtsegs_path: Path) -> None:
        metrics = SegmentationMetrics()
        for sample in ImageNetSegmentation(gtsegs_path):
            metrics.update(sample.target.astype(np.float64), sample.target, image_id=sample.id)  # perfect maps
        result = metrics.compute()
        assert result["pixel_accuracy"] == 1.0 and result["num_images"] == 3

    def test_index_errors(self, gtsegs_path: Path) -> None:
        dataset = ImageNetSegmentation(gtsegs_path)
        with pytest.raises(IndexError):
            dataset[3]
        with pytest.raises(TypeError):
            dataset["0"]  # type: ignore[index]


class TestImageNetSegmentationErrors:
    """Bad files and arguments are rejected with actionable messages."""

    def test_missing_file(self, tmp_path: Path) -> None:
        with pytest.raises(DatasetNotFoundError, match="user-supplied"):
            ImageNetSegmentation(tmp_path / "nope.mat")
        with pytest.raises(FileNotFoundError):
            ImageNetSegmentation(tmp_path / "nope.mat")

    def test_matlab_v5_file(self, tmp_path: Path, make_mat_v5: Callable[[Path], Path]) -> None:
        with pytest.raises(DatasetFormatError, match="MATLAB v5 MAT-file.*-v7.3"):
            ImageNetSegmentation(make_mat_v5(tmp_path / "old.mat"))

    def test_not_hdf5(self, tmp_path: Path) -> None:
        path = tmp_path / "text.mat"
        path.write_text("hello")
        with pytest.raises(DatasetFormatError, match="not a MATLAB v7.3"):
            ImageNetSegmentation(path)

    def test_hdf5_without_value_struct(self, tmp_path: Path) -> None:
        path = tmp_path / "other.mat"
        with h5py.File(path, "w") as handle:
            handle.create_dataset("x", data=np.zeros(3))
        with pytest.raises(DatasetFormatError, match="no struct 'value'"):
            ImageNetSegmentation(path)

    def test_non_binary_mask(self, tmp_path: Path, make_gtsegs: Callable[..., Path], fake_entry_type: Any) -> None:
        mask = np.array([[0, 1, 2], [0, 0, 1]], dtype=np.uint8)
        path = make_gtsegs(
            tmp_path / "bad.mat", [fake_entry_type("n1_1", rgb(2, 3, 0), [mask], mask_matlab_class="uint8")]
        )
        with pytest.raises(DatasetFormatError, match=r"\{0, 1\} or \{0, 255\}.*\[0, 1, 2\]"):
            ImageNetSegmentation(path)[0]

    def test_mask_image_shape_mismatch(
        self, tmp_path: Path, make_gtsegs: Callable[..., Path], fake_entry_type: Any
    ) -> None:
        path = make_gtsegs(tmp_path / "bad.mat", [fake_entry_type("n1_1", rgb(2, 3, 0), [np.zeros((3, 2), np.uint8)])])
        with pytest.raises(DatasetFormatError, match="differs from image shape"):
            ImageNetSegmentation(path)[0]

    @pytest.mark.parametrize(
        ("kwargs", "message"),
        [({"concepts": "sky"}, "concepts=\\['sky'\\]"), ({"mask_index": -1}, "mask_index"), ({"size": 0}, "size")],
    )
    def test_bad_arguments(self, gtsegs_path: Path, kwargs: dict[str, Any], message: str) -> None:
        with pytest.raises(DatasetFormatError, match=message):
            ImageNetSegmentation(gtsegs_path, **kwargs)


VOC_SIZE = 224


@pytest.fixture
def voc_labels(lost_pixel: Callable[[tuple[int, int], int], tuple[int, int]]) -> dict[str, np.ndarray]:
    """Labels (palette indices) covering evaluation.md §7.2."""
    cat = np.zeros((60, 80), dtype=np.uint8)  # non-square, one class with a void ring
    cat[9:41, 19:61] = 255
    cat[10:40, 20:60] = 8  # cat
    two_classes = np.zeros((50, 50), dtype=np.uint8)
    two_classes[5:20, 5:20] = 12  # dog
    two_classes[30:45, 30:45] = 15  # person
    tiny = np.zeros((300, 500), dtype=np.uint8)
    tiny[lost_pixel((300, 500), VOC_SIZE)] = 3  # a one-pixel bird that the nearest resize drops
    plane = np.ones((40, 40), dtype=np.uint8)  # aeroplane filling the image, with void pixels
    plane[0, :] = 255
    return {
        "2007_000032": cat,
        "2007_000039": two_classes,
        "2007_000063": tiny,
        "2007_000068": plane,
        "2007_000121": np.zeros((30, 30), dtype=np.uint8),  # background only
    }


@pytest.fixture
def voc_root(tmp_path: Path, make_voc: Callable[..., Path], voc_labels: dict[str, np.ndarray]) -> Path:
    return make_voc(tmp_path, voc_labels)


class TestPascalVOCSingleClass:
    """The VOC single-class split."""

    def test_selection_and_skip_counts(self, voc_root: Path) -> None:
        dataset = PascalVOCSingleClass(voc_root)
        assert dataset.ids == ["2007_000032", "2007_000068"]
        assert len(dataset) == 2 and dataset.num_candidates == 5 and dataset.num_skipped == 3
        assert dataset.skipped == {"multiple_classes": ("2007_000039",), "no_object": ("2007_000063", "2007_000121")}

    def test_selection_happens_after_the_resize(self, voc_root: Path) -> None:
        native = PascalVOCSingleClass(voc_root, size=None)
        assert "2007_000063" in native.ids  # the one-pixel bird survives without the resize
        sample = native[native.ids.index("2007_000063")]
        assert sample.class_name == "bird" and int(sample.target.sum()) == 1 and sample.target.shape == (300, 500)

    def test_sample_target_void_and_concepts(self, voc_root: Path, voc_labels: dict[str, np.ndarray]) -> None:
        sample = PascalVOCSingleClass(voc_root)[0]
        assert sample.id == "2007_000032" and sample.image.mode == "RGB" and sample.image.size == (80, 60)
        assert sample.target.shape == (VOC_SIZE, VOC_SIZE) and sample.target.dtype == np.int8
        resized = np.asarray(Image.fromarray(voc_labels["2007_000032"]).resize((VOC_SIZE, VOC_SIZE), Image.NEAREST))
        assert np.array_equal(sample.target == -1, resized == 255)
        assert np.array_equal(sample.target == 1, resized == 8)
        assert np.array_equal(sample.target == 0, resized == 0)
        assert (sample.target == -1).any()
        assert sample.class_name == "cat" == sample.source_class
        assert sample.concepts == [*VOC_BACKGROUND_CONCEPTS, "cat"]

    def test_class_rename_and_full_image_object(self, voc_root: Path) -> None:
        sample = PascalVOCSingleClass(voc_root, concepts=["sky"])[1]
        assert sample.source_class == "aeroplane" and sample.class_name == "plane"
        assert sample.concepts == ["sky", "plane"]
        assert set(np.unique(sample.target).tolist()) == {-1, 1}

    def test_void_handling_in_both_accuracy_modes(self, voc_root: Path) -> None:
        sample = PascalVOCSingleClass(voc_root)[0]
        metrics = SegmentationMetrics()
        metrics.update(sample.target.clip(min=0).astype(np.float64), sample.target)  # perfect on valid pixels
        result = metrics.compute()
        num_void = int((sample.target == -1).sum())
        num_valid = sample.target.size - num_void
        assert result["pixel_accuracy"] == 1.0 and result["num_void_pixels"] == num_void
        assert result["paper_compatible_voc_pixel_accuracy"] == pytest.approx(
            2 * num_valid / (num_valid + sample.target.size)
        )

    def test_voc2012_folder_is_accepted(self, voc_root: Path) -> None:
        assert PascalVOCSingleClass(voc_root / "VOC2012").ids == PascalVOCSingleClass(voc_root).ids


class TestPascalVOCErrors:
    """Bad folders and files are rejected with actionable messages."""

    def test_missing_root(self, tmp_path: Path) -> None:
        with pytest.raises(DatasetNotFoundError, match="user-supplied"):
            PascalVOCSingleClass(tmp_path / "missing")
        with pytest.raises(DatasetNotFoundError, match="not a VOCdevkit"):
            PascalVOCSingleClass(tmp_path)

    def test_missing_split(self, voc_root: Path) -> None:
        with pytest.raises(DatasetNotFoundError, match=r"No split 'train'.*\['val'\]"):
            PascalVOCSingleClass(voc_root, split="train")

    def test_missing_image(self, voc_root: Path) -> None:
        (voc_root / "VOC2012" / "JPEGImages" / "2007_000039.jpg").unlink()
        with pytest.raises(DatasetNotFoundError, match="1 image file"):
            PascalVOCSingleClass(voc_root)

    def test_colour_label_is_rejected(self, voc_root: Path) -> None:
        path = voc_root / "VOC2012" / "SegmentationClass" / "2007_000032.png"
        Image.open(path).convert("RGB").save(path)
        with pytest.raises(DatasetFormatError, match="palette-indexed"):
            PascalVOCSingleClass(voc_root)

    def test_out_of_range_label(self, voc_root: Path, palette_png_writer: Callable[[Path, np.ndarray], None]) -> None:
        palette_png_writer(
            voc_root / "VOC2012" / "SegmentationClass" / "2007_000121.png", np.full((4, 4), 30, np.uint8)
        )
        with pytest.raises(DatasetFormatError, match=r"\[30\] outside 0..20"):
            PascalVOCSingleClass(voc_root)

    def test_bad_size(self, voc_root: Path) -> None:
        with pytest.raises(DatasetFormatError, match="size"):
            PascalVOCSingleClass(voc_root, size=-3)
