"""Thin loaders for the zero-shot segmentation benchmarks of the ConceptAttention paper.

(About 600 lines on purpose: the two loaders share the file checks and the sample type; splitting them would
separate one format's reader from the validation it relies on.)

Both loaders read user-supplied files and download nothing:

* :class:`ImageNetSegmentation` reads ``gtsegs_ijcv.mat`` (Guillaumin et al., IJCV 2014; 4,276 images), a MATLAB
  v7.3 file, i.e. HDF5 with a struct ``value`` of cells ``img``, ``gt``, ``id``, ``target`` whose entries are object
  references into ``/#refs#``, arrays stored axis-reversed (MATLAB is column-major).
* :class:`PascalVOCSingleClass` reads a ``VOCdevkit`` tree and keeps the images with at most one object class after
  the nearest resize of the label to 224 x 224 (the paper's "single class" split, 930 images of VOC2012 ``val``).

Both yield :class:`SegmentationSample` objects with binary targets (1 foreground, 0 background, -1 void). The image is
returned at its native resolution; the target at the loader's label resolution, to which saliency maps must be
upsampled before scoring (see ``conceptattention.evaluation.metrics``).

Both are ``torch.utils.data.Dataset`` subclasses; samples hold PIL images, so batch them in a ``DataLoader`` with
``collate_fn=list``.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch.utils.data
from PIL import Image

from conceptattention.errors import ConceptAttentionError
from conceptattention.extras import lazy_module


h5py = lazy_module("h5py", "eval")  # the eval extra, imported when a .mat file is first read


__all__ = [
    "IMAGENET_BACKGROUND_CONCEPTS",
    "VOC_BACKGROUND_CONCEPTS",
    "VOC_CLASS_NAMES",
    "VOC_CLASS_RENAMES",
    "DatasetFormatError",
    "DatasetNotFoundError",
    "ImageNetSegmentation",
    "PascalVOCSingleClass",
    "SegmentationSample",
]

IMAGENET_BACKGROUND_CONCEPTS: tuple[str, ...] = ("background", "floor", "tree", "person", "grass", "face")
"""Background concepts the paper adds to the class name on ImageNet-Segmentation (official scripts)."""

VOC_BACKGROUND_CONCEPTS: tuple[str, ...] = ("background", "floor", "grass", "tree", "sky")
"""Background concepts the paper adds to the class name on PascalVOC (official scripts)."""

VOC_CLASS_NAMES: tuple[str, ...] = (
    "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
    "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train", "tvmonitor",
)  # fmt: skip
"""The 20 PascalVOC object classes; label value ``k`` (1..20) is ``VOC_CLASS_NAMES[k - 1]``."""

VOC_CLASS_RENAMES: Mapping[str, str] = {
    "aeroplane": "plane",
    "bicycle": "bike",
    "diningtable": "table",
    "motorbike": "motorcycle",
    "pottedplant": "pot",
    "tvmonitor": "monitor",
}
"""Single common words the paper uses as concepts for VOC class names (the other 14 names are kept)."""

VOID_LABEL = -1
_VOC_VOID_INDEX = 255
_MATLAB_V5_MAGIC = b"MATLAB 5.0 MAT-file"

ConceptSpec = Literal["default"] | Sequence[str]


class DatasetFormatError(ConceptAttentionError, ValueError):
    """Raised when a dataset file or folder does not have the expected format or content."""


class DatasetNotFoundError(DatasetFormatError, FileNotFoundError):
    """Raised when a dataset file or folder does not exist (also a ``FileNotFoundError``)."""


@dataclass(frozen=True)
class SegmentationSample:
    """One evaluation image with its binary target and concept set.

    Attributes:
        id: Dataset identifier (ImageNet: e.g. ``"n02085620_1234"``; VOC: e.g. ``"2007_000033"``).
        image: RGB image at native resolution.
        target: int8 ``[H_label, W_label]``: 1 foreground, 0 background, -1 void (ignored by the metrics). Its size
            is the loader's label resolution and may differ from the image's.
        class_name: The target concept (the class word used in prompts and concept lists).
        concepts: Concept list for the method, containing ``class_name`` exactly once.
        source_class: The dataset's own class label (ImageNet: the ``target`` string; VOC: the original class name).

    Example:
        >>> sample = SegmentationSample("x", Image.new("RGB", (4, 2)), np.zeros((2, 4), np.int8), "dog", ["dog"], "dog")
        >>> sample.target.shape, sample.image.size
        ((2, 4), (4, 2))
    """

    id: str
    image: Image.Image
    target: np.ndarray
    class_name: str
    concepts: list[str]
    source_class: str = field(default="")

    def __post_init__(self) -> None:
        if self.target.ndim != 2 or self.target.dtype != np.int8:
            raise DatasetFormatError(
                f"Sample {self.id!r}: `target` must be an int8 [H, W] array, got {self.target.dtype} "
                f"{self.target.shape}."
            )
        if self.class_name not in self.concepts:
            raise DatasetFormatError(f"Sample {self.id!r}: class {self.class_name!r} is missing from its concepts.")


# ----------------------------------------------------------------------------------------------------------------
# Shared helpers
# ----------------------------------------------------------------------------------------------------------------


def _background_concepts(concepts: ConceptSpec, default: tuple[str, ...]) -> tuple[str, ...]:
    """Resolves the ``concepts`` argument of a loader to a tuple of background words."""
    if isinstance(concepts, str):
        if concepts != "default":
            raise DatasetFormatError(
                f"`concepts` must be 'default' or a list of background words, got the string {concepts!r}; "
                f"write concepts=[{concepts!r}] for a single word."
            )
        return default
    words = tuple(concepts)
    if not all(isinstance(word, str) and word.strip() for word in words):
        raise DatasetFormatError(f"`concepts` must contain non-empty strings only, got {list(words)!r}.")
    return words


def _concepts_with(class_name: str, background: Sequence[str], *, class_first: bool) -> list[str]:
    """Puts the class name with the background words, dropping a background word equal to the class."""
    others = [word for word in background if word != class_name]
    return [class_name, *others] if class_first else [*others, class_name]


def _check_size(size: int | None) -> int | None:
    """Validates a label resolution."""
    if size is not None and (isinstance(size, bool) or not isinstance(size, int) or size < 1):
        raise DatasetFormatError(f"`size` must be a positive int (square label side) or None, got {size!r}.")
    return size


def _resize_nearest(label: np.ndarray, size: int | None) -> np.ndarray:
    """Nearest-resizes a uint8 ``[H, W]`` label to ``[size, size]`` with PIL (as torchvision's ``Resize`` does)."""
    if size is None:
        return label
    return np.asarray(Image.fromarray(label).resize((size, size), Image.Resampling.NEAREST))


# ----------------------------------------------------------------------------------------------------------------
# ImageNet-Segmentation (gtsegs_ijcv.mat)
# ----------------------------------------------------------------------------------------------------------------


def _decode_matlab_text(dataset: h5py.Dataset, what: str) -> str:
    """Decodes a MATLAB char array (HDF5 ``(L, 1)`` uint16, UTF-16 code units) to ``str``."""
    data = np.asarray(dataset[()])
    if data.dtype.kind in ("u", "i") and data.dtype.itemsize <= 2:
        code_units = data.ravel().astype("<u2")  # [L]
        return code_units.tobytes().decode("utf-16-le")
    if data.dtype.kind in ("S", "O", "U"):
        value = data.ravel()[0] if data.ndim else data.item()
        return value.decode("utf-8") if isinstance(value, bytes) else str(value)
    raise DatasetFormatError(f"Cannot decode {what}: expected a MATLAB char array (uint16), got dtype {data.dtype}.")


def _to_uint8_image(array: np.ndarray, entry: int) -> np.ndarray:
    """Casts image data to uint8, accepting uint8, bool, small integers and floats in [0, 1] or [0, 255]."""
    if array.dtype == np.uint8:
        return array
    if array.dtype == np.bool_:
        return array.astype(np.uint8) * 255
    if array.size and np.issubdtype(array.dtype, np.number):
        low, high = float(array.min()), float(array.max())
        if np.issubdtype(array.dtype, np.floating) and low >= 0.0 and high <= 1.0:
            return np.round(array * 255.0).astype(np.uint8)
        if low >= 0.0 and high <= 255.0:
            return np.round(array).astype(np.uint8)
    raise DatasetFormatError(f"Entry {entry}: image data of dtype {array.dtype} is not in the uint8 range [0, 255].")


def _to_binary_mask(array: np.ndarray, entry: int, mask_index: int) -> np.ndarray:
    """Casts mask storage ({0, 1} or {0, 255}, any numeric or bool dtype) to uint8 {0, 1}."""
    if array.dtype == np.bool_:
        return array.astype(np.uint8)
    if not np.issubdtype(array.dtype, np.number):
        raise DatasetFormatError(f"Entry {entry}, mask {mask_index}: unsupported mask dtype {array.dtype}.")
    values = set(np.unique(array).tolist())
    if values <= {0, 1} or values <= {0, 255}:
        return (array != 0).astype(np.uint8)
    shown = sorted(values)[:10]
    raise DatasetFormatError(
        f"Entry {entry}, mask {mask_index}: expected a binary mask stored as {{0, 1}} or {{0, 255}}, found values "
        f"{shown}{' ...' if len(values) > 10 else ''}."
    )


class ImageNetSegmentation(torch.utils.data.Dataset):
    """ImageNet-Segmentation (Guillaumin et al. 2014) read from a user-supplied ``gtsegs_ijcv.mat`` (MATLAB v7.3).

    The HDF5 handle is opened lazily in each process (HDF5 handles cannot be pickled into ``DataLoader`` workers;
    pickling the dataset drops the handle) and reopened after a fork. Entry ``i`` is read as in Chefer's loader:
    image ``f[f["/value/img"][i, 0]]`` transposed ``(2, 1, 0)`` to ``[H, W, 3]`` (greyscale ``[H, W]`` is converted to
    RGB), mask ``f[f[f["/value/gt"][i, 0]][j, 0]]`` transposed to ``[H, W]`` (a cell of masks; ``mask_index`` picks
    one), ``id`` and ``target`` decoded from UTF-16 code units.

    The class name is looked up in ``class_names`` (keys: the wnid, i.e. the part of ``id`` before ``"_"``, or the
    ``target`` string), otherwise it is the ``target`` string itself (typically a wnid such as ``"n02085620"``, which a
    text encoder will not understand: supply a table for meaningful concepts). The concept set of an image is
    ``[class_name] + background`` words (paper default :data:`IMAGENET_BACKGROUND_CONCEPTS`).

    Args:
        mat_path: Path to ``gtsegs_ijcv.mat``.
        concepts: ``"default"`` (the paper's background words) or a list of background words (may be empty).
        class_names: Optional wnid -> class name table; when given, every entry must be covered.
        mask_index: Which mask of an entry's ``gt`` cell to use (the known code uses the first).
        size: Optional square label side: the target is nearest-resized to ``[size, size]`` (Chefer geometry: 224).
            ``None`` keeps the native resolution.

    Raises:
        DatasetNotFoundError: If the file does not exist.
        DatasetFormatError: If it is a MATLAB v5 file, not HDF5, or lacks the ``/value`` cells; bad arguments.

    Example:
        >>> dataset = ImageNetSegmentation("gtsegs_ijcv.mat", class_names={"n02085620": "dog"})  # doctest: +SKIP
        >>> sample = dataset[0]  # doctest: +SKIP
        >>> sample.concepts  # doctest: +SKIP
        ['dog', 'background', 'floor', 'tree', 'person', 'grass', 'face']
    """

    _FIELDS = ("img", "gt", "id", "target")

    def __init__(
        self,
        mat_path: str | os.PathLike[str],
        *,
        concepts: ConceptSpec = "default",
        class_names: Mapping[str, str] | None = None,
        mask_index: int = 0,
        size: int | None = None,
    ) -> None:
        self.mat_path = Path(mat_path)
        self.background_concepts = _background_concepts(concepts, IMAGENET_BACKGROUND_CONCEPTS)
        self.class_names = dict(class_names) if class_names is not None else None
        if isinstance(mask_index, bool) or not isinstance(mask_index, int) or mask_index < 0:
            raise DatasetFormatError(f"`mask_index` must be a non-negative int, got {mask_index!r}.")
        self.mask_index = mask_index
        self.size = _check_size(size)
        self._check_file_kind()
        with h5py.File(self.mat_path, "r") as handle:  # temporary handle: only N and the layout
            self._num_entries = self._validate_layout(handle)
        self._handle: h5py.File | None = None
        self._handle_pid: int | None = None

    def _check_file_kind(self) -> None:
        """Rejects missing files, MATLAB v5 files and non-HDF5 files with actionable messages."""
        if not self.mat_path.exists():
            raise DatasetNotFoundError(
                f"{self.mat_path} does not exist. ImageNet-Segmentation is user-supplied: obtain gtsegs_ijcv.mat "
                "(Guillaumin et al., IJCV 2014) and pass its path."
            )
        if not self.mat_path.is_file():
            raise DatasetFormatError(f"{self.mat_path} is not a file; pass the path of gtsegs_ijcv.mat itself.")
        if h5py.is_hdf5(self.mat_path):
            return
        with open(self.mat_path, "rb") as stream:
            header = stream.read(128)
        if header.startswith(_MATLAB_V5_MAGIC):
            raise DatasetFormatError(
                f"{self.mat_path} is a MATLAB v5 MAT-file; this loader reads MATLAB v7.3 (HDF5) files such as the "
                "original gtsegs_ijcv.mat. Re-save it in MATLAB with save(..., 'value', '-v7.3') or use the "
                "original file."
            )
        raise DatasetFormatError(f"{self.mat_path} is not a MATLAB v7.3 (HDF5) file (no HDF5 signature found).")

    def _validate_layout(self, handle: h5py.File) -> int:
        """Checks the ``/value`` struct of cells and returns the number of entries."""
        value = handle.get("value")
        if not isinstance(value, h5py.Group):
            raise DatasetFormatError(
                f"{self.mat_path} has no struct 'value'; expected the gtsegs_ijcv.mat layout "
                f"(/value/{{{','.join(self._FIELDS)}}})."
            )
        counts = {}
        for name in self._FIELDS:
            cell = value.get(name)
            if not isinstance(cell, h5py.Dataset) or h5py.check_dtype(ref=cell.dtype) is not h5py.Reference:
                raise DatasetFormatError(f"{self.mat_path}: /value/{name} is missing or is not a cell of references.")
            if cell.ndim != 2 or 1 not in cell.shape:
                raise DatasetFormatError(
                    f"{self.mat_path}: /value/{name} has shape {cell.shape}; expected a vector cell (N, 1)."
                )
            counts[name] = cell.size
        if len(set(counts.values())) != 1:
            raise DatasetFormatError(f"{self.mat_path}: the cells of /value have different lengths {counts}.")
        return counts["img"]

    # -- handle management ---------------------------------------------------------------------------------------

    def _file(self) -> h5py.File:
        """Returns this process's HDF5 handle, opening it on first use (and again after a fork)."""
        pid = os.getpid()
        if self._handle is None or self._handle_pid != pid:
            self._handle = h5py.File(self.mat_path, "r")
            self._handle_pid = pid
        return self._handle

    def close(self) -> None:
        """Closes this process's HDF5 handle (it is reopened on the next access)."""
        if self._handle is not None and self._handle_pid == os.getpid():
            self._handle.close()
        self._handle, self._handle_pid = None, None

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_handle"], state["_handle_pid"] = None, None  # h5py handles cannot be pickled
        return state

    # -- reading -------------------------------------------------------------------------------------------------

    def __len__(self) -> int:
        return self._num_entries

    def _entry_index(self, index: int) -> int:
        if isinstance(index, bool) or not isinstance(index, (int, np.integer)):
            raise TypeError(f"Dataset indices must be integers, got {type(index).__name__}.")
        position = int(index) + (self._num_entries if index < 0 else 0)
        if not 0 <= position < self._num_entries:
            raise IndexError(f"Index {index} is out of range for {self._num_entries} images.")
        return position

    def _dereference(self, name: str, position: int) -> h5py.Dataset:
        """Returns the referenced dataset of cell ``/value/<name>`` at ``position``."""
        handle = self._file()
        references = handle["value"][name]
        reference = references[position, 0] if references.shape[1] == 1 else references[0, position]
        if not reference:
            raise DatasetFormatError(f"Entry {position}: /value/{name} holds a null reference.")
        target = handle[reference]
        if not isinstance(target, h5py.Dataset):
            raise DatasetFormatError(f"Entry {position}: /value/{name} does not reference an array.")
        return target

    def _mask_datasets(self, position: int) -> list[h5py.Dataset]:
        """Returns the mask arrays of entry ``position`` (its ``gt`` cell, in MATLAB linear order)."""
        cell = self._dereference("gt", position)
        if h5py.check_dtype(ref=cell.dtype) is not h5py.Reference:
            return [cell]  # a bare mask instead of a cell of masks
        handle = self._file()
        return [handle[reference] for reference in np.asarray(cell[()]).ravel()]

    def num_masks(self, index: int) -> int:
        """Number of masks in the ``gt`` cell of entry ``index``."""
        return len(self._mask_datasets(self._entry_index(index)))

    def read_id(self, index: int) -> str:
        """The ``id`` string of entry ``index`` (e.g. ``"n02085620_1234"``), without reading the image."""
        position = self._entry_index(index)
        return _decode_matlab_text(self._dereference("id", position), f"/value/id of entry {position}")

    def read_image(self, index: int) -> Image.Image:
        """The RGB image of entry ``index`` at native resolution."""
        position = self._entry_index(index)
        array = np.asarray(self._dereference("img", position)[()])
        if array.ndim == 3:
            array = array.transpose(2, 1, 0)  # MATLAB [3, W, H] -> [H, W, 3]
            if array.shape[2] == 1:
                array = array[:, :, 0]  # [H, W, 1] -> [H, W]
        elif array.ndim == 2:
            array = array.T  # MATLAB [W, H] -> [H, W] (greyscale)
        if array.ndim not in (2, 3) or (array.ndim == 3 and array.shape[2] != 3) or 0 in array.shape:
            raise DatasetFormatError(
                f"Entry {position}: expected an H x W x 3 or H x W image, got an array of shape {array.shape}."
            )
        return Image.fromarray(_to_uint8_image(np.ascontiguousarray(array), position)).convert("RGB")

    def read_masks(self, index: int) -> list[np.ndarray]:
        """All masks of entry ``index`` as uint8 {0, 1} arrays ``[H, W]`` at native resolution."""
        position = self._entry_index(index)
        masks = []
        for mask_index, dataset in enumerate(self._mask_datasets(position)):
            array = np.asarray(dataset[()])
            if array.ndim != 2 or 0 in array.shape:
                raise DatasetFormatError(
                    f"Entry {position}, mask {mask_index}: expected a 2-D mask, got {array.shape}."
                )
            masks.append(np.ascontiguousarray(_to_binary_mask(array, position, mask_index).T))  # [W, H] -> [H, W]
        return masks

    def _class_name(self, image_id: str, source_class: str) -> str:
        if self.class_names is None:
            return source_class
        wnid = image_id.split("_")[0]
        for key in (wnid, source_class):
            if key in self.class_names:
                return self.class_names[key]
        raise DatasetFormatError(
            f"Image {image_id!r}: `class_names` has no entry for wnid {wnid!r} (or target {source_class!r}); add it "
            "to the table or pass class_names=None to use the target strings."
        )

    def __getitem__(self, index: int) -> SegmentationSample:
        position = self._entry_index(index)
        image_id = self.read_id(position)
        source_class = _decode_matlab_text(self._dereference("target", position), f"/value/target of entry {position}")
        image = self.read_image(position)
        masks = self.read_masks(position)
        if self.mask_index >= len(masks):
            raise DatasetFormatError(
                f"Entry {position} ({image_id}) has {len(masks)} mask(s); mask_index={self.mask_index} does not exist."
            )
        mask = masks[self.mask_index]
        if mask.shape != (image.height, image.width):
            raise DatasetFormatError(
                f"Entry {position} ({image_id}): mask shape {mask.shape} differs from image shape "
                f"{(image.height, image.width)}."
            )
        class_name = self._class_name(image_id, source_class)
        return SegmentationSample(
            id=image_id,
            image=image,
            target=_resize_nearest(mask, self.size).astype(np.int8),
            class_name=class_name,
            concepts=_concepts_with(class_name, self.background_concepts, class_first=True),
            source_class=source_class,
        )

    def __iter__(self) -> Iterator[SegmentationSample]:
        for position in range(len(self)):
            yield self[position]


# ----------------------------------------------------------------------------------------------------------------
# PascalVOC 2012, single-class split
# ----------------------------------------------------------------------------------------------------------------


class PascalVOCSingleClass(torch.utils.data.Dataset):
    """PascalVOC segmentation images with a single object class, the paper's "PascalVOC" benchmark.

    For every id of ``ImageSets/Segmentation/<split>.txt``, the palette label ``SegmentationClass/<id>.png`` is
    nearest-resized to ``size x size`` (the selection depends on it: small objects can vanish); the image is kept if
    the classes present (void 255 excluded) are background plus one object class, or one object class alone. Images
    with several object classes are skipped, and so are images with no object left (no target class); both are
    counted in :attr:`skipped`. The target is binarised: every object class -> 1, background -> 0, void 255 -> -1.
    Class names are renamed to common words (:data:`VOC_CLASS_RENAMES`); concepts are the background words followed
    by the class name (paper default :data:`VOC_BACKGROUND_CONCEPTS`). All labels are read once, at construction.

    Args:
        root: The ``VOCdevkit`` folder (containing ``VOC2012``) or the ``VOC2012`` folder itself.
        split: Name of the id list in ``ImageSets/Segmentation`` (``"val"`` in the paper).
        size: Square label side for selection and targets (224 in the paper); ``None`` keeps native labels.
        concepts: ``"default"`` (the paper's background words) or a list of background words (may be empty).

    Raises:
        DatasetNotFoundError: If the folder, the id list, or an image or label file is missing.
        DatasetFormatError: If a label is not a palette PNG with values in {0..20, 255}; bad arguments.

    Example:
        >>> dataset = PascalVOCSingleClass("data/VOCdevkit")  # doctest: +SKIP
        >>> len(dataset), dataset.num_skipped  # doctest: +SKIP
        (930, 519)
        >>> dataset[0].concepts  # doctest: +SKIP
        ['background', 'floor', 'grass', 'tree', 'sky', 'plane']
    """

    def __init__(
        self,
        root: str | os.PathLike[str],
        *,
        split: str = "val",
        size: int | None = 224,
        concepts: ConceptSpec = "default",
    ) -> None:
        self.root = self._resolve_root(Path(root))
        self.split = split
        self.size = _check_size(size)
        self.background_concepts = _background_concepts(concepts, VOC_BACKGROUND_CONCEPTS)
        all_ids = self._read_split(split)
        self._check_files_exist(all_ids)
        kept: list[tuple[str, int]] = []
        multiple_classes: list[str] = []
        no_object: list[str] = []
        for image_id in all_ids:
            present = set(np.unique(self._read_label(image_id)).tolist()) - {_VOC_VOID_INDEX}
            object_classes = sorted(present - {0})
            if len(object_classes) > 1:
                multiple_classes.append(image_id)
            elif not object_classes:
                no_object.append(image_id)
            else:
                kept.append((image_id, object_classes[0]))
        self._samples = kept
        self.num_candidates = len(all_ids)
        self.skipped: dict[str, tuple[str, ...]] = {
            "multiple_classes": tuple(multiple_classes),
            "no_object": tuple(no_object),
        }

    @property
    def ids(self) -> list[str]:
        """Ids of the kept images, in split order."""
        return [image_id for image_id, _ in self._samples]

    @property
    def num_skipped(self) -> int:
        """Number of split images left out (several object classes, or no object after the resize)."""
        return sum(len(ids) for ids in self.skipped.values())

    @staticmethod
    def _resolve_root(root: Path) -> Path:
        """Returns the ``VOC2012`` folder given it or the ``VOCdevkit`` folder above it."""
        if not root.exists():
            raise DatasetNotFoundError(
                f"{root} does not exist. PascalVOC is user-supplied: extract VOCtrainval_11-May-2012.tar and pass the "
                "VOCdevkit folder."
            )
        for candidate in (root / "VOC2012", root):
            if (candidate / "ImageSets" / "Segmentation").is_dir():
                return candidate
        raise DatasetNotFoundError(
            f"{root} is not a VOCdevkit or VOC2012 folder: expected VOC2012/ImageSets/Segmentation, "
            "VOC2012/JPEGImages and VOC2012/SegmentationClass below it."
        )

    def _read_split(self, split: str) -> list[str]:
        split_dir = self.root / "ImageSets" / "Segmentation"
        split_file = split_dir / f"{split}.txt"
        if not split_file.is_file():
            available = sorted(path.stem for path in split_dir.glob("*.txt"))
            raise DatasetNotFoundError(f"No split {split!r} in {split_dir}; available: {available}.")
        ids = [line.strip() for line in split_file.read_text().splitlines() if line.strip()]
        if not ids:
            raise DatasetFormatError(f"{split_file} lists no image ids.")
        return ids

    def _image_path(self, image_id: str) -> Path:
        return self.root / "JPEGImages" / f"{image_id}.jpg"

    def _label_path(self, image_id: str) -> Path:
        return self.root / "SegmentationClass" / f"{image_id}.png"

    def _check_files_exist(self, ids: Sequence[str]) -> None:
        for kind, path_of in (("image", self._image_path), ("label", self._label_path)):
            missing = [image_id for image_id in ids if not path_of(image_id).is_file()]
            if missing:
                raise DatasetNotFoundError(
                    f"{len(missing)} {kind} file(s) of split {self.split!r} are missing, e.g. "
                    f"{path_of(missing[0])}; the VOCdevkit tree is incomplete."
                )

    def _read_label(self, image_id: str) -> np.ndarray:
        """Returns the palette-index label ``[size, size]`` (or native) as uint8, validated."""
        path = self._label_path(image_id)
        with Image.open(path) as label_image:
            if label_image.mode not in ("P", "L"):
                raise DatasetFormatError(
                    f"{path} has mode {label_image.mode!r}; expected a palette-indexed PNG (mode 'P') as shipped in "
                    "SegmentationClass (colour-converted copies lose the class indices)."
                )
            label = np.asarray(label_image, dtype=np.uint8)
        label = _resize_nearest(label, self.size)
        invalid = (label > len(VOC_CLASS_NAMES)) & (label != _VOC_VOID_INDEX)
        if invalid.any():
            raise DatasetFormatError(
                f"{path} has label values {sorted(set(label[invalid].tolist()))[:10]} outside 0..20 and 255 (void)."
            )
        return label

    def __len__(self) -> int:
        return len(self._samples)

    def __getitem__(self, index: int) -> SegmentationSample:
        if isinstance(index, bool) or not isinstance(index, (int, np.integer)):
            raise TypeError(f"Dataset indices must be integers, got {type(index).__name__}.")
        image_id, class_index = self._samples[index]  # IndexError past the end, as a sequence should
        label = self._read_label(image_id)
        target = np.where(label == _VOC_VOID_INDEX, VOID_LABEL, (label > 0).astype(np.int8)).astype(np.int8)
        source_class = VOC_CLASS_NAMES[class_index - 1]
        class_name = VOC_CLASS_RENAMES.get(source_class, source_class)
        with Image.open(self._image_path(image_id)) as image:
            rgb = image.convert("RGB")
        return SegmentationSample(
            id=image_id,
            image=rgb,
            target=target,
            class_name=class_name,
            concepts=_concepts_with(class_name, self.background_concepts, class_first=False),
            source_class=source_class,
        )

    def __iter__(self) -> Iterator[SegmentationSample]:
        for position in range(len(self)):
            yield self[position]
