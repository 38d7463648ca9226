"""What an evaluation scores: benchmarks adapted to one interface, their items, and how an item's maps are scored.

Datasets are adapted to one interface (:class:`EvaluationDataset`): ImageNet-Segmentation and PascalVOC
single-class (fg/bg targets, loaders of :mod:`conceptattention.evaluation.datasets`) and ShapesWorld (multi-class
targets, imported lazily from :mod:`conceptattention.shapesworld`). :func:`build_dataset` opens one by name
(``--dataset``), :func:`score_item` turns one item's maps into per-image metric records. The loop that runs a method
over a dataset is :mod:`conceptattention.evaluation.loop`.
"""

from __future__ import annotations

import hashlib
import json
import os
import warnings
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from conceptattention.evaluation.datasets import (
    DatasetFormatError,
    ImageNetSegmentation,
    PascalVOCSingleClass,
    SegmentationSample,
)
from conceptattention.evaluation.methods import MethodError
from conceptattention.evaluation.metrics import per_image_counts
from conceptattention.evaluation.multiclass_metrics import multiclass_per_image_counts


__all__ = [
    "DATASETS",
    "EvaluationDataset",
    "EvaluationItem",
    "ImageNetSegEvaluation",
    "ShapesWorldEvaluation",
    "VOCEvaluation",
    "build_dataset",
    "parse_shapesworld_spec",
    "read_class_names",
    "score_item",
]

DATASETS: tuple[str, ...] = ("imagenet-seg", "voc", "shapesworld")
"""Dataset names accepted by :func:`build_dataset` and ``--dataset``."""

_DEFAULT_LABEL_SIZE = 224  # Chefer geometry: square 224 x 224 labels
_SHAPESWORLD_DEFAULT_IMAGES = 200


@dataclass
class EvaluationItem:
    """One image ready for a method and the metrics.

    Attributes:
        index: Position in the dataset.
        id: Dataset identifier.
        image: RGB image.
        concepts: Concept list given to the method.
        caption: The dataset's caption (``"a {class}"`` for ImageNet and VOC, the scene caption for ShapesWorld).
        binary_targets: ``(concept, target)`` pairs scored fg/bg: ``target`` int8 ``[H, W]`` (1 fg, 0 bg, -1 void).
        class_target: Multi-class target int64 ``[H, W]`` of indices into the dataset's ``class_names`` (-1 void),
            or ``None`` for fg/bg datasets.
        concept_classes: For multi-class datasets, the class index of every concept.
        class_name: The target class (reports).

    Example:
        >>> item = EvaluationItem(0, "a", Image.new("RGB", (4, 4)), ("dog", "sky"), "a dog",
        ...                       (("dog", np.zeros((8, 8), np.int8)),))
        >>> item.label_size()
        (8, 8)
    """

    index: int
    id: str
    image: Image.Image
    concepts: tuple[str, ...]
    caption: str
    binary_targets: tuple[tuple[str, np.ndarray], ...]
    class_target: np.ndarray | None = None
    concept_classes: tuple[int, ...] | None = None
    class_name: str = ""

    def label_size(self) -> tuple[int, int]:
        """``(H, W)`` of the targets."""
        target = self.class_target if self.class_target is not None else self.binary_targets[0][1]
        return int(target.shape[0]), int(target.shape[1])


class EvaluationDataset(ABC):
    """The runner's view of a benchmark.

    Attributes:
        name: Dataset name (one of :data:`DATASETS`).
        protocol: Default prediction rule, ``"mean"`` or ``"argmax"``.
        class_names: Class vocabulary of multi-class targets, or ``None``.

    Example:
        >>> dataset = build_dataset("shapesworld", "test:4")
        >>> len(dataset), dataset.protocol, dataset.item_id(3)
        (4, 'argmax', 'test-0-000003')
    """

    name: str = ""
    protocol: str = "mean"
    class_names: tuple[str, ...] | None = None

    @abstractmethod
    def __len__(self) -> int:
        """Number of images."""

    @abstractmethod
    def item_id(self, index: int) -> str:
        """The identifier of image ``index`` (cheap: no image is decoded)."""

    @abstractmethod
    def item(self, index: int) -> EvaluationItem:
        """Image ``index`` with its concepts and targets."""

    @abstractmethod
    def describe(self) -> dict[str, Any]:
        """JSON-serialisable settings that define the data (part of a run's identity)."""

    def ids(self) -> list[str]:
        """Every identifier, in order."""
        return [self.item_id(index) for index in range(len(self))]

    def fingerprint(self) -> dict[str, Any]:
        """Number of images and a SHA-256 of their identifiers."""
        digest = hashlib.sha256("\n".join(self.ids()).encode("utf-8")).hexdigest()
        return {"num_images": len(self), "ids_sha256": digest}


def _caption_for(class_name: str) -> str:
    return f"a {class_name}"


def _single_class_item(index: int, sample: SegmentationSample) -> EvaluationItem:
    """An ImageNet-Segmentation or PascalVOC sample as an item: its class scored fg/bg against its target ``[H, W]``."""
    return EvaluationItem(
        index=index,
        id=sample.id,
        image=sample.image,
        concepts=tuple(sample.concepts),
        caption=_caption_for(sample.class_name),
        binary_targets=((sample.class_name, sample.target),),
        class_name=sample.class_name,
    )


class ImageNetSegEvaluation(EvaluationDataset):
    """ImageNet-Segmentation (``gtsegs_ijcv.mat``): the class name against its mask, mean threshold.

    Args:
        mat_path: The user-supplied ``gtsegs_ijcv.mat``.
        label_size: Square label side (224: Chefer geometry) or ``None`` for native labels.
        concepts: ``"default"`` (the paper's background words) or a list of background words.
        class_names: wnid -> class name table (without it the concepts are wnids, which text encoders do not
            understand).

    Example:
        >>> data = ImageNetSegEvaluation("gtsegs_ijcv.mat", class_names={"n02085620": "dog"})  # doctest: +SKIP
        >>> data.item(0).caption  # doctest: +SKIP
        'a dog'
    """

    name = "imagenet-seg"
    protocol = "mean"

    def __init__(
        self,
        mat_path: str | os.PathLike[str],
        *,
        label_size: int | None = _DEFAULT_LABEL_SIZE,
        concepts: str | Sequence[str] = "default",
        class_names: Mapping[str, str] | None = None,
    ) -> None:
        self.path = Path(mat_path)
        self.label_size = label_size
        self.loader = ImageNetSegmentation(self.path, concepts=concepts, class_names=class_names, size=label_size)
        self._class_names_sha = (
            hashlib.sha256(json.dumps(dict(class_names), sort_keys=True).encode()).hexdigest() if class_names else None
        )
        self._ids: list[str] | None = None

    def __len__(self) -> int:
        return len(self.loader)

    def ids(self) -> list[str]:
        if self._ids is None:
            self._ids = [self.loader.read_id(index) for index in range(len(self.loader))]
        return list(self._ids)

    def item_id(self, index: int) -> str:
        return self.ids()[index]

    def item(self, index: int) -> EvaluationItem:
        return _single_class_item(index, self.loader[index])

    def describe(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "label_size": self.label_size,
            "background_concepts": list(self.loader.background_concepts),
            "class_names_sha256": self._class_names_sha,
            **self.fingerprint(),
        }


class VOCEvaluation(EvaluationDataset):
    """PascalVOC single-class split: the class against its mask; argmax over concepts (official protocol).

    Args:
        root: ``VOCdevkit`` (or ``VOC2012``) folder.
        split: Id list of ``ImageSets/Segmentation`` (``"val"`` in the paper).
        label_size: Square label side used for selection and targets (224 in the paper).
        concepts: ``"default"`` (the paper's background words) or a list of background words.

    Example:
        >>> data = VOCEvaluation("data/VOCdevkit")  # doctest: +SKIP
        >>> data.item(0).concepts  # doctest: +SKIP
        ('background', 'floor', 'grass', 'tree', 'sky', 'plane')
    """

    name = "voc"
    protocol = "argmax"

    def __init__(
        self,
        root: str | os.PathLike[str],
        *,
        split: str = "val",
        label_size: int | None = _DEFAULT_LABEL_SIZE,
        concepts: str | Sequence[str] = "default",
    ) -> None:
        self.label_size = label_size
        self.loader = PascalVOCSingleClass(root, split=split, size=label_size, concepts=concepts)
        self.split = split

    def __len__(self) -> int:
        return len(self.loader)

    def ids(self) -> list[str]:
        return self.loader.ids

    def item_id(self, index: int) -> str:
        return self.loader.ids[index]

    def item(self, index: int) -> EvaluationItem:
        return _single_class_item(index, self.loader[index])

    def describe(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "split": self.split,
            "label_size": self.label_size,
            "background_concepts": list(self.loader.background_concepts),
            "skipped": {reason: len(ids) for reason, ids in self.loader.skipped.items()},
            **self.fingerprint(),
        }


def _shapesworld_api() -> tuple[Any, tuple[str, ...], tuple[str, ...]]:
    """``(ShapesWorldDataset, BACKGROUNDS, OBJECTS)`` from the ShapesWorld package, imported lazily."""
    try:
        from conceptattention.shapesworld import dataset as shapes_dataset
        from conceptattention.shapesworld import render as shapes_render
    except ImportError as error:
        raise DatasetFormatError(
            f"The ShapesWorld dataset is not available in this installation ({error}); reinstall conceptattention."
        ) from error
    return shapes_dataset.ShapesWorldDataset, tuple(shapes_render.BACKGROUNDS), tuple(shapes_render.OBJECTS)


class ShapesWorldEvaluation(EvaluationDataset):
    """ShapesWorld scenes: multi-class argmax over the scene's concepts, plus fg/bg scores of every object.

    Concepts of a scene: its object names (once each) followed by its backgrounds (``"sky"`` and the ground). The
    multi-class target labels every pixel with its object class, or its background where no object is; classes are
    ``BACKGROUNDS + OBJECTS`` of ShapesWorld. Every object concept is also scored fg/bg against its exact mask.

    Args:
        split: ``"test"`` or ``"heldout"`` (or ``"train"``).
        num_images: Number of scenes.
        seed: Seed of the split's random stream.
        size: Render (and label) resolution; ``None`` for the native 32 x 32.
        version: ShapesWorld data version (``"v1"``, the shipped model's, or ``"v2"``).

    Example:
        >>> item = ShapesWorldEvaluation("test", num_images=2).item(0)
        >>> item.label_size(), item.concepts
        ((32, 32), ('flower', 'tree', 'sky', 'sand'))
    """

    name = "shapesworld"
    protocol = "argmax"

    def __init__(
        self,
        split: str = "test",
        *,
        num_images: int = _SHAPESWORLD_DEFAULT_IMAGES,
        seed: int = 0,
        size: int | None = None,
        version: str = "v1",
    ) -> None:
        dataset_class, backgrounds, objects = _shapesworld_api()
        self._backgrounds, self._objects = backgrounds, objects
        self.class_names = backgrounds + objects
        self.split, self.seed = split, seed
        try:
            self._data = (
                dataset_class(split, seed=seed, n=num_images, version=version)
                if size is None
                else dataset_class(split, seed=seed, n=num_images, size=size, version=version)
            )
        except ValueError as error:
            raise DatasetFormatError(f"Invalid ShapesWorld data: {error}") from error
        self.size, self.version = size, version

    def __len__(self) -> int:
        return len(self._data)

    def item_id(self, index: int) -> str:
        if not 0 <= index < len(self):
            raise IndexError(f"Index {index} is out of range for {len(self)} scenes.")
        prefix = "" if self.version == "v1" else f"{self.version}-"
        return f"{prefix}{self.split}-{self.seed}-{index:06d}"

    def item(self, index: int) -> EvaluationItem:
        sample = self._data[index]
        objects = tuple(dict.fromkeys(sample.object_concepts))
        backgrounds = tuple(word for word in dict.fromkeys(sample.background_concepts) if word not in objects)
        num_backgrounds = len(self._backgrounds)
        object_class = sample.object_class.numpy().astype(np.int64)  # [S, S]: 0 or object index + 1
        background = sample.background.numpy().astype(np.int64)  # [S, S]: background index
        class_target = np.where(object_class > 0, num_backgrounds + object_class - 1, background)  # [S, S]
        concept_classes = tuple(num_backgrounds + self._objects.index(word) for word in objects) + tuple(
            self._backgrounds.index(word) for word in backgrounds
        )
        binary_targets = tuple(
            (word, sample.concept_mask(word).numpy().astype(np.int8)) for word in objects
        )  # [S, S] each
        return EvaluationItem(
            index=index,
            id=self.item_id(index),
            image=sample.pil(),
            concepts=objects + backgrounds,
            caption=sample.caption,
            binary_targets=binary_targets,
            class_target=class_target,
            concept_classes=concept_classes,
            class_name=",".join(objects),
        )

    def describe(self) -> dict[str, Any]:
        described = {"name": self.name, "split": self.split, "seed": self.seed, "size": self.size}
        return described if self.version == "v1" else {**described, "version": self.version}


def parse_shapesworld_spec(data: str | None, *, default_images: int = _SHAPESWORLD_DEFAULT_IMAGES) -> tuple[str, int, int]:
    """A ShapesWorld data spec ``"SPLIT[:N[:SEED]]"`` as ``(split, n, seed)``.

    Args:
        data: The spec (``--data``); ``None`` means ``"test"``.
        default_images: ``N`` when the spec does not give it.

    Raises:
        DatasetFormatError: A malformed spec, an unknown split or ``N < 1``.

    Example:
        >>> parse_shapesworld_spec("heldout:500"), parse_shapesworld_spec(None)
        (('heldout', 500, 0), ('test', 200, 0))
    """
    parts = (data or "test").split(":")
    if len(parts) > 3 or not parts[0]:
        raise DatasetFormatError(
            f"--data for ShapesWorld is SPLIT[:N[:SEED]] (e.g. 'test', 'heldout:500', 'test:200:1'), got {data!r}."
        )
    try:
        num_images = int(parts[1]) if len(parts) > 1 else default_images
        seed = int(parts[2]) if len(parts) > 2 else 0
    except ValueError as error:
        raise DatasetFormatError(
            f"--data for ShapesWorld is SPLIT[:N[:SEED]] with integers N and SEED, got {data!r}."
        ) from error
    if num_images < 1:
        raise DatasetFormatError(f"ShapesWorld needs at least one image, got N={num_images}.")
    return parts[0], num_images, seed


def read_class_names(path: str | os.PathLike[str]) -> dict[str, str]:
    """A wnid -> class name table from a JSON object file or a two-column TSV/CSV file.

    Raises:
        DatasetFormatError: If the file is missing or not in one of those formats.

    Example:
        >>> import tempfile
        >>> path = Path(tempfile.mkdtemp()) / "names.tsv"
        >>> _ = path.write_text("n02085620\\tdog\\n")
        >>> read_class_names(path)
        {'n02085620': 'dog'}
    """
    file_path = Path(path)
    if not file_path.is_file():
        raise DatasetFormatError(f"Class-name table {file_path} does not exist.")
    text = file_path.read_text(encoding="utf-8")
    if file_path.suffix.lower() == ".json":
        try:
            table = json.loads(text)
        except json.JSONDecodeError as error:
            raise DatasetFormatError(f"{file_path} is not valid JSON: {error}.") from error
        if not isinstance(table, dict) or not all(isinstance(v, str) for v in table.values()):
            raise DatasetFormatError(f"{file_path} must hold one JSON object mapping wnids to class names.")
        return {str(key): value for key, value in table.items()}
    table = {}
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip() or line.startswith("#"):
            continue
        cells = [cell.strip() for cell in line.replace("\t", ",").split(",", 1)]
        if len(cells) != 2 or not all(cells):
            raise DatasetFormatError(f"{file_path}:{number}: expected 'wnid<TAB>name' or 'wnid,name', got {line!r}.")
        table[cells[0]] = cells[1]
    return table


def build_dataset(
    name: str,
    data: str | os.PathLike[str] | None,
    *,
    label_size: int | None | str = "default",
    concepts: str | Sequence[str] = "default",
    class_names: Mapping[str, str] | str | os.PathLike[str] | None = None,
    split: str = "val",
    version: str = "v1",
) -> EvaluationDataset:
    """Open a benchmark by name.

    Args:
        name: ``"imagenet-seg"`` (``data``: ``gtsegs_ijcv.mat``), ``"voc"`` (``data``: the ``VOCdevkit`` folder) or
            ``"shapesworld"`` (``data``: ``SPLIT[:N[:SEED]]``, default ``"test"`` with 200 scenes).
        data: Path or ShapesWorld spec.
        label_size: Square label side; ``"default"`` (224 for ImageNet and VOC, native for ShapesWorld); ``None``
            or 0 for native labels.
        concepts: ``"default"`` or a list of background words (ImageNet and VOC).
        class_names: ImageNet wnid -> name table, or the path of one (JSON object or two-column TSV/CSV).
        split: VOC split.
        version: ShapesWorld data version.

    Returns:
        The dataset.

    Raises:
        DatasetNotFoundError: Missing file or folder.
        DatasetFormatError: Unknown name, bad arguments or files.

    Example:
        >>> build_dataset("coco", "x")
        Traceback (most recent call last):
        ...
        conceptattention.evaluation.datasets.DatasetFormatError: Unknown dataset 'coco'; choose one of imagenet-seg, voc, shapesworld.
    """
    if name not in DATASETS:
        raise DatasetFormatError(f"Unknown dataset {name!r}; choose one of {', '.join(DATASETS)}.")
    size: int | None
    if label_size == "default":
        size = None if name == "shapesworld" else _DEFAULT_LABEL_SIZE
    else:
        size = None if label_size in (None, 0) else label_size  # type: ignore[assignment]
        if size is not None and (isinstance(size, bool) or not isinstance(size, int) or size < 1):
            raise DatasetFormatError(
                f"label_size must be a positive integer, 0/None (native) or 'default', got {size!r}."
            )
    if name == "shapesworld":
        split_name, num_images, seed = parse_shapesworld_spec(None if data is None else str(data))
        return ShapesWorldEvaluation(split_name, num_images=num_images, seed=seed, size=size, version=version)
    if data is None:
        what = "gtsegs_ijcv.mat" if name == "imagenet-seg" else "the VOCdevkit folder"
        raise DatasetFormatError(f"Dataset {name!r} needs --data (the path of {what}).")
    if name == "imagenet-seg":
        table = read_class_names(class_names) if isinstance(class_names, str | os.PathLike) else class_names
        if table is None:
            warnings.warn(
                "No class-name table given for ImageNet-Segmentation: the concepts will be wnids (e.g. 'n02085620'), "
                "which text encoders do not understand. Pass class_names / --class-names.",
                UserWarning,
                stacklevel=2,
            )
        return ImageNetSegEvaluation(data, label_size=size, concepts=concepts, class_names=table)
    return VOCEvaluation(data, split=split, label_size=size, concepts=concepts)



# ----------------------------------------------------------------------------------------------------------------
# Scoring
# ----------------------------------------------------------------------------------------------------------------


def score_item(
    item: EvaluationItem,
    maps: torch.Tensor,
    *,
    prediction_rule: str,
    num_classes: int | None = None,
    upsample: str = "bilinear",
    ap_scores: str = "normalized",
) -> dict[str, Any]:
    """Score one image's maps against its targets.

    Maps are resized to the label resolution; with ``prediction_rule="argmax"`` a pixel is predicted as the concept
    with the largest map there, with ``"mean"`` each target concept's map is thresholded at its mean (Chefer). AP
    always ranks the target concept's map. Multi-class targets are always scored by the argmax.

    Args:
        item: The image and its targets.
        maps: Float ``[C, h, w]`` maps, concepts in ``item.concepts`` order.
        prediction_rule: ``"mean"`` or ``"argmax"``.
        num_classes: Size of the class vocabulary of multi-class targets.
        upsample: ``"bilinear"`` or ``"nearest"``.
        ap_scores: ``"normalized"`` (standard) or ``"raw"``.

    Returns:
        ``{"binary": [per-target records with "concept"], "multiclass": record or None}``.

    Example:
        >>> item = EvaluationItem(0, "a", Image.new("RGB", (2, 2)), ("dog", "sky"), "a dog",
        ...                       (("dog", np.array([[1, 0]], np.int8)),))
        >>> maps = torch.tensor([[[0.9, 0.1]], [[0.2, 0.8]]])  # [C, h, w]
        >>> record = score_item(item, maps, prediction_rule="argmax")["binary"][0]
        >>> record["tp"], record["tn"], record["average_precision"]
        (1, 1, 1.0)
    """
    if maps.ndim != 3 or maps.shape[0] != len(item.concepts):
        raise ValueError(f"Expected maps of shape [{len(item.concepts)}, h, w], got {list(maps.shape)}.")
    if prediction_rule not in ("mean", "argmax"):
        raise ValueError(f"prediction_rule must be 'mean' or 'argmax', got {prediction_rule!r}.")
    if prediction_rule == "argmax" and len(item.concepts) == 1:
        raise MethodError(
            f"Image {item.id!r} has the single concept {item.concepts[0]!r}: an argmax over one concept predicts every "
            "pixel as foreground. Add background concepts, or use the mean threshold (--prediction mean)."
        )
    size = item.label_size()
    align = False if upsample == "bilinear" else None
    resized = F.interpolate(maps[:, None].float(), size=size, mode=upsample, align_corners=align)[:, 0]  # [C, H, W]
    needs_argmax = prediction_rule == "argmax" or item.class_target is not None
    segmentation = resized.argmax(dim=0) if needs_argmax else None  # [H, W] concept indices
    binary = []
    for concept, target in item.binary_targets:
        index = item.concepts.index(concept)
        prediction = (segmentation == index) if prediction_rule == "argmax" and segmentation is not None else None
        record = per_image_counts(resized[index], target, prediction=prediction, ap_scores=ap_scores, image_id=item.id)
        binary.append({"concept": concept, **record})
    multiclass = None
    if item.class_target is not None and segmentation is not None:
        if item.concept_classes is None or num_classes is None:
            raise ValueError("Multi-class targets need the class of every concept and the number of classes.")
        classes = torch.tensor(item.concept_classes, dtype=torch.long)[segmentation]  # [H, W] class indices
        multiclass = multiclass_per_image_counts(classes, item.class_target, num_classes, image_id=item.id)
    return {"binary": binary, "multiclass": multiclass}
