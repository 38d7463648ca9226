"""Builders of tiny synthetic benchmark files in the real on-disk formats (nothing is downloaded), and the tiny
FLUX pipeline the evaluation runs use."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import pytest
import torch
from PIL import Image

from conceptattention.testing import tiny_flux_pipeline


@dataclass
class FakeEntry:
    """One ``gtsegs_ijcv.mat`` entry: image ``[H, W, 3]`` or ``[H, W]`` uint8, masks ``[H, W]`` as stored."""

    image_id: str
    image: np.ndarray
    masks: Sequence[np.ndarray]
    target: str | None = None
    mask_matlab_class: str = "logical"
    extra: dict[str, str] = field(default_factory=dict)


def _matlab_text(text: str) -> np.ndarray:
    """A MATLAB char row vector as HDF5 stores it: ``(L, 1)`` uint16 UTF-16-LE code units."""
    return np.frombuffer(text.encode("utf-16-le"), dtype="<u2")[:, None]  # [L] -> [L, 1]


def write_fake_gtsegs(path: Path, entries: Sequence[FakeEntry], *, matlab_header: bool = True) -> Path:
    """Writes an HDF5 file laid out like MATLAB v7.3's ``save('gtsegs_ijcv.mat', 'value', '-v7.3')``.

    ``/value`` is a struct (group) of four ``(N, 1)`` cells of object references; the arrays live in ``/#refs#``,
    stored axis-reversed (column-major); ``gt{i}`` is itself a cell ``(n_masks, 1)`` of references.
    """
    reference_dtype = h5py.ref_dtype
    with h5py.File(path, "w", userblock_size=512) as handle:
        refs = handle.create_group("#refs#")
        value = handle.create_group("value")
        value.attrs["MATLAB_class"] = np.bytes_("struct")

        def put(array: np.ndarray, matlab_class: str) -> h5py.Reference:
            dataset = refs.create_dataset(f"o{len(refs)}", data=array)
            dataset.attrs["MATLAB_class"] = np.bytes_(matlab_class)
            return dataset.ref

        columns = {name: np.empty((len(entries), 1), dtype=reference_dtype) for name in ("img", "gt", "id", "target")}
        for row, entry in enumerate(entries):
            # MATLAB column-major: [H, W, 3] -> [3, W, H], greyscale [H, W] -> [W, H]
            image = entry.image.transpose(2, 1, 0) if entry.image.ndim == 3 else entry.image.T
            columns["img"][row, 0] = put(image, "uint8")
            mask_refs = np.array([[put(mask.T, entry.mask_matlab_class)] for mask in entry.masks], reference_dtype)
            columns["gt"][row, 0] = put(mask_refs, "cell")  # [n_masks, 1] cell of references
            columns["id"][row, 0] = put(_matlab_text(entry.image_id), "char")
            target = entry.target if entry.target is not None else entry.image_id.split("_")[0]
            columns["target"][row, 0] = put(_matlab_text(target), "char")
        for name, column in columns.items():
            value.create_dataset(name, data=column).attrs["MATLAB_class"] = np.bytes_("cell")
    if matlab_header:
        text = b"MATLAB 7.3 MAT-file, Platform: GLNXA64, Created on: Mon Jan  1 00:00:00 2024 HDF5 schema 1.00 ."
        header = text.ljust(116, b" ") + b"\x00" * 8 + b"\x00\x02" + b"IM"  # 128 bytes, in the 512-byte user block
        with open(path, "r+b") as stream:
            stream.write(header)
    return path


def write_fake_mat_v5(path: Path) -> Path:
    """Writes a file that starts like a MATLAB v5 MAT-file (128-byte header, then one empty data element)."""
    text = b"MATLAB 5.0 MAT-file, Platform: GLNXA64, Created on: Mon Jan  1 00:00:00 2024"
    header = text.ljust(116, b" ") + b"\x00" * 8 + b"\x00\x01" + b"IM"
    path.write_bytes(header + b"\x0e\x00\x00\x00\x00\x00\x00\x00")
    return path


VOC_PALETTE = [value for index in range(256) for value in ((index * 37) % 256, (index * 91) % 256, (index * 53) % 256)]


def write_palette_png(path: Path, label: np.ndarray) -> None:
    """Saves a uint8 ``[H, W]`` label as a palette ('P') PNG, as VOC's SegmentationClass files are stored."""
    image = Image.fromarray(label.astype(np.uint8))
    image.putpalette(VOC_PALETTE)  # turns the 'L' image into a 'P' image with the same indices
    assert image.mode == "P"
    image.save(path)


def write_fake_voc(root: Path, labels: Mapping[str, np.ndarray], *, split: str = "val") -> Path:
    """Writes ``root/VOCdevkit/VOC2012`` with one JPEG and one palette PNG per id; returns the VOCdevkit folder."""
    voc = root / "VOCdevkit" / "VOC2012"
    for folder in ("JPEGImages", "SegmentationClass", "ImageSets/Segmentation"):
        (voc / folder).mkdir(parents=True, exist_ok=True)
    generator = np.random.default_rng(0)
    for image_id, label in labels.items():
        pixels = generator.integers(0, 256, size=(*label.shape, 3), dtype=np.uint8)  # [H, W, 3]
        Image.fromarray(pixels).save(voc / "JPEGImages" / f"{image_id}.jpg")
        write_palette_png(voc / "SegmentationClass" / f"{image_id}.png", label)
    (voc / "ImageSets" / "Segmentation" / f"{split}.txt").write_text("".join(f"{image_id}\n" for image_id in labels))
    return root / "VOCdevkit"


def pixel_lost_by_nearest_resize(shape: tuple[int, int], size: int) -> tuple[int, int]:
    """A source pixel ``(row, col)`` that PIL's nearest resize to ``size x size`` never samples."""
    height, width = shape
    row_index = Image.fromarray(np.arange(height, dtype=np.int32)[:, None].repeat(2, 1))  # [H, 2] of row numbers
    col_index = Image.fromarray(np.arange(width, dtype=np.int32)[None, :].repeat(2, 0))  # [2, W] of column numbers
    rows = np.asarray(row_index.resize((2, size), Image.Resampling.NEAREST))[:, 0]  # [size] sampled source rows
    cols = np.asarray(col_index.resize((size, 2), Image.Resampling.NEAREST))[0]  # [size] sampled source columns
    lost_row = next(row for row in range(height) if row not in set(rows.tolist()))
    lost_col = next(col for col in range(width) if col not in set(cols.tolist()))
    return lost_row, lost_col


@pytest.fixture
def make_gtsegs() -> Callable[..., Path]:
    """The :func:`write_fake_gtsegs` builder."""
    return write_fake_gtsegs


@pytest.fixture
def make_mat_v5() -> Callable[[Path], Path]:
    """The :func:`write_fake_mat_v5` builder."""
    return write_fake_mat_v5


@pytest.fixture
def make_voc() -> Callable[..., Path]:
    """The :func:`write_fake_voc` builder."""
    return write_fake_voc


@pytest.fixture
def fake_entry_type() -> type[FakeEntry]:
    """The :class:`FakeEntry` record type (conftest modules are not importable by name)."""
    return FakeEntry


@pytest.fixture
def lost_pixel() -> Callable[[tuple[int, int], int], tuple[int, int]]:
    """The :func:`pixel_lost_by_nearest_resize` helper."""
    return pixel_lost_by_nearest_resize


@pytest.fixture
def palette_png_writer() -> Callable[[Path, np.ndarray], None]:
    """The :func:`write_palette_png` helper."""
    return write_palette_png


@pytest.fixture(scope="module")
def pipe() -> Any:
    """A tiny 4-block FLUX pipeline, one per test module (run on one thread)."""
    torch.set_num_threads(1)
    return tiny_flux_pipeline(num_layers=4)
