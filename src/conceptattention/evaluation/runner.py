"""The evaluation runner: one method on one dataset, resumable, sharded over processes, with a report.

Output folder layout::

    OUT/
      run.json                    what is evaluated (dataset, method, model, metric settings); checked on resume
      results/rank-00000.jsonl    one JSON line per image, appended and flushed as soon as it is scored
      results/rank-00001.jsonl    (one file per process of a multi-process run)
      report.json, report.md      metrics, configuration, package versions, git revision, hardware, timing

* **Resume**: with ``resume=True`` (``--resume``) the images already in a results file are skipped, so a killed run
  continues without recomputing or double counting anything. A torn last line (a process killed while writing it)
  is ignored and cut off before appending. The configuration must equal the one in ``run.json``.
* **Several processes** (``accelerate launch --num_processes N -m conceptattention.cli.evaluate ...``; on CPUs
  add ``--multi_gpu``, since accelerate's ``--cpu`` starts one process): the images not yet done are
  dealt round-robin to the processes; each writes its own results file; after a barrier the main process merges
  all files. Per-image records hold integer counts and one AP each, and the dataset metrics are sums and an
  exactly rounded mean (``math.fsum``) of them, so the merged metrics are identical to a one-process run.
* **Speed and timing**: the next image is loaded and the previous one scored and written in two worker threads
  while the model runs. Every record stores the seconds spent in the model (``explain`` / DAAM: encoding,
  noising, forward) and the main thread's seconds for that image (waiting for its data, the model, waiting for the
  previous image's scoring); their sums give the runner's overhead beyond the model, ``1 - model / image``, in the
  report (with the wall-clock variant of the main process).

Datasets are adapted to one interface (:class:`EvaluationDataset`): ImageNet-Segmentation and PascalVOC
single-class (fg/bg targets, loaders of :mod:`conceptattention.evaluation.datasets`) and ShapesWorld (multi-class
targets, imported lazily from :mod:`conceptattention.shapesworld`).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import time
import warnings
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from conceptattention.errors import ConceptAttentionError
from conceptattention.evaluation.datasets import (
    DatasetFormatError,
    ImageNetSegmentation,
    PascalVOCSingleClass,
    SegmentationSample,
)
from conceptattention.evaluation.methods import MapRequest, Method, MethodError
from conceptattention.evaluation.metrics import (
    aggregate,
    aggregate_multiclass,
    multiclass_per_image_counts,
    per_image_counts,
)
from conceptattention.evaluation.report import environment_info, git_revision, hardware_info, write_report
from conceptattention.outputs import (
    OutputExistsError,
    OutputPathError,
    atomic_write_json,
    check_writable_location,
    protected_location,
)


__all__ = [
    "DATASETS",
    "EvaluationDataset",
    "EvaluationItem",
    "ImageNetSegEvaluation",
    "ProcessContext",
    "ResultsFileError",
    "RunMismatchError",
    "ShapesWorldEvaluation",
    "VOCEvaluation",
    "build_dataset",
    "build_report",
    "check_output_folder",
    "evaluate",
    "load_results",
    "process_context",
    "read_class_names",
    "score_item",
]

DATASETS: tuple[str, ...] = ("imagenet-seg", "voc", "shapesworld")
"""Dataset names accepted by :func:`build_dataset` and ``--dataset``."""

RUN_FORMAT = "conceptattention.evaluation.run"
RUN_FORMAT_VERSION = 1
_RESULTS_FOLDER = "results"
_DEFAULT_LABEL_SIZE = 224  # Chefer geometry: square 224 x 224 labels
_SHAPESWORLD_DEFAULT_IMAGES = 200


class ResultsFileError(ConceptAttentionError, ValueError):
    """A results file is corrupt in a way that resuming cannot repair (not just a torn last line)."""


class RunMismatchError(ConceptAttentionError, ValueError):
    """The output folder holds a run with another configuration (or of other data) than the one requested."""


# ----------------------------------------------------------------------------------------------------------------
# Datasets
# ----------------------------------------------------------------------------------------------------------------


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


def _parse_shapesworld_spec(data: str | None) -> tuple[str, int, int]:
    """``"SPLIT[:N[:SEED]]"`` -> ``(split, n, seed)``."""
    parts = (data or "test").split(":")
    if len(parts) > 3 or not parts[0]:
        raise DatasetFormatError(
            f"--data for ShapesWorld is SPLIT[:N[:SEED]] (e.g. 'test', 'heldout:500', 'test:200:1'), got {data!r}."
        )
    try:
        num_images = int(parts[1]) if len(parts) > 1 else _SHAPESWORLD_DEFAULT_IMAGES
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
        split_name, num_images, seed = _parse_shapesworld_spec(None if data is None else str(data))
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


# ----------------------------------------------------------------------------------------------------------------
# Processes
# ----------------------------------------------------------------------------------------------------------------


def _no_barrier() -> None:
    return None


@dataclass
class ProcessContext:
    """Where this process stands in a (possibly) multi-process run.

    Attributes:
        rank: Index of this process (0 = main).
        world_size: Number of processes.
        device: The device this process should use (``None``: the caller decides).
        barrier: Blocks until every process reached it.

    Example:
        >>> ProcessContext().is_main
        True
    """

    rank: int = 0
    world_size: int = 1
    device: str | None = None
    barrier: Callable[[], None] = field(default=_no_barrier, repr=False)

    @property
    def is_main(self) -> bool:
        """Whether this is the main process (it prepares the folder and writes the report)."""
        return self.rank == 0


def process_context() -> ProcessContext:
    """The context of this process: from accelerate when launched with several processes, else a single process.

    ``accelerate launch`` (and ``torchrun``) set ``WORLD_SIZE``; only then is :class:`accelerate.PartialState`
    created (it initialises the process group and picks this process's device; CPU processes when
    ``ACCELERATE_USE_CPU`` is set, as by ``accelerate launch --cpu``, or when no GPU is available).

    Raises:
        MissingExtraError: Several processes were launched but accelerate (the eval extra) is not installed.

    Example:
        >>> process_context().world_size  # a plain Python process
        1
    """
    world_size = int(os.environ.get("WORLD_SIZE", "1") or 1)
    if world_size <= 1:
        return ProcessContext()
    from conceptattention.extras import require  # accelerate: the eval extra (MissingExtraError names it)

    PartialState = require("accelerate", "eval", purpose="A run launched as several processes").PartialState
    # CPU processes (accelerate launch --cpu, or no GPU) need cpu=True for a gloo process group.
    use_cpu = os.environ.get("ACCELERATE_USE_CPU", "").lower() in ("1", "true", "yes") or not torch.cuda.is_available()
    state = PartialState(cpu=use_cpu)
    return ProcessContext(
        rank=int(state.process_index),
        world_size=int(state.num_processes),
        device=str(state.device),
        barrier=state.wait_for_everyone,
    )


# ----------------------------------------------------------------------------------------------------------------
# Results files
# ----------------------------------------------------------------------------------------------------------------


def _results_folder(out: Path) -> Path:
    return out / _RESULTS_FOLDER


def _results_file(out: Path, rank: int) -> Path:
    return _results_folder(out) / f"rank-{rank:05d}.jsonl"


def _read_results_file(path: Path) -> tuple[list[dict[str, Any]], bool]:
    """The complete records of one results file, and whether it ends with a torn (unterminated) line."""
    data = path.read_bytes()
    lines = data.split(b"\n")
    records = []
    for number, line in enumerate(lines[:-1], start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as error:
            raise ResultsFileError(
                f"{path}:{number} is not a valid result line ({error}); the file was edited or corrupted. Remove "
                "the line (it is recomputed on --resume) or start over with --overwrite."
            ) from error
        if not isinstance(record, dict) or not isinstance(record.get("index"), int) or "binary" not in record:
            raise ResultsFileError(f"{path}:{number} is not a result record of conceptattention evaluate.")
        records.append(record)
    return records, bool(lines[-1].strip())


def _cut_torn_tail(path: Path) -> None:
    """Truncate a results file after its last complete line (a process was killed while writing)."""
    data = path.read_bytes()
    keep = data.rfind(b"\n") + 1
    if keep != len(data):
        with open(path, "r+b") as handle:
            handle.truncate(keep)


def load_results(out: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """Every per-image record of an evaluation folder, merged over processes, sorted by dataset index.

    A torn last line of a file is ignored; an image recorded twice (which the runner never does) is kept once.

    Args:
        out: The evaluation output folder.

    Returns:
        The records (dicts with ``index``, ``id``, ``binary``, ``multiclass``, ``seconds`` ...).

    Raises:
        ResultsFileError: A line in the middle of a file is not a valid record.

    Example:
        >>> load_results("no/such/run")
        []
    """
    folder = _results_folder(Path(out))
    if not folder.is_dir():
        return []
    by_index: dict[int, dict[str, Any]] = {}
    for path in sorted(folder.glob("rank-*.jsonl")):
        records, _torn = _read_results_file(path)
        for record in records:
            by_index.setdefault(record["index"], record)
    return [by_index[index] for index in sorted(by_index)]


# ----------------------------------------------------------------------------------------------------------------
# The run
# ----------------------------------------------------------------------------------------------------------------


def _json_normalised(value: Any) -> Any:
    return json.loads(json.dumps(value))


def check_output_folder(out: str | os.PathLike[str], *, resume: bool, overwrite: bool) -> None:
    """Refuse an unusable output folder before any work (the configuration is compared later, by :func:`evaluate`).

    Raises:
        ValueError: ``resume`` and ``overwrite`` together.
        OutputPathError: ``out`` is a file.
        OutputExistsError: ``out`` exists and neither ``resume`` nor ``overwrite`` is given.

    Example:
        >>> check_output_folder("no/such/folder", resume=False, overwrite=False)  # a new folder is fine
    """
    _check_output(Path(out), None, resume=resume, overwrite=overwrite)


def check_reusable_folder(
    out: Path, marker: str, *, resume: bool, overwrite: bool, exists_message: str, foreign_message: str
) -> Path | None:
    """The checks shared by run and sweep folders, before anything is written (run by every process).

    Args:
        out: The output folder.
        marker: The JSON file that identifies the folder's contents (``run.json``, ``sweep.json``).
        resume: Continue in an existing folder.
        overwrite: Replace an existing folder's results.
        exists_message: The error for an existing folder without ``resume`` or ``overwrite``.
        foreign_message: The error for a non-empty folder without ``marker`` when resuming.

    Returns:
        The marker file to compare with the requested configuration (resuming into a folder that has one), else
        ``None``: nothing more to check.

    Raises:
        ValueError: ``resume`` and ``overwrite`` together.
        OutputPathError: ``out`` is a file, cannot be written, or (with ``overwrite``) is not a folder of this program
            (no valid ``marker``) or a protected location (home, root, the current directory or an ancestor).
        OutputExistsError: ``out`` exists and neither ``resume`` nor ``overwrite`` is given.
        RunMismatchError: ``resume`` into a non-empty folder without ``marker``.
    """
    if resume and overwrite:
        raise ValueError(
            "--resume and --overwrite exclude each other: resume keeps the results, overwrite drops them."
        )
    if not os.path.lexists(out):
        check_writable_location(out)
        return None
    if not out.is_dir():
        raise OutputPathError(f"The output path '{out}' is a file, not a folder; choose another --out.")
    if overwrite:
        _check_replaceable(out, marker)
        check_writable_location(out)
        return None
    if not resume:
        raise OutputExistsError(exists_message)
    marker_file = out / marker
    if not marker_file.is_file():
        if any(out.iterdir()):
            raise RunMismatchError(foreign_message)
        return None
    return marker_file


#: The keys every marker file of a run or sweep folder has (what ``--overwrite`` checks before replacing results).
_MARKER_KEYS = {"run.json": ("dataset", "method"), "sweep.json": ("sweep",)}


def _check_replaceable(out: Path, marker: str) -> None:
    """Refuse ``--overwrite`` of a folder that is not a run/sweep folder of this program, or a protected location."""
    protected = protected_location(out)
    if protected is not None:
        raise OutputPathError(f"'{out}' cannot be used as an output folder: {protected}. Choose another --out.")
    if not any(out.iterdir()):
        return
    try:
        stored = json.loads((out / marker).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        stored = None
    if not isinstance(stored, dict) or not all(key in stored for key in _MARKER_KEYS.get(marker, ())):
        raise OutputPathError(
            f"'{out}' exists but has no valid {marker}: conceptattention did not write it, so --overwrite does not "
            "replace it. Choose another --out (or delete that folder yourself)."
        )


def _check_output(out: Path, identity: dict[str, Any] | None, *, resume: bool, overwrite: bool) -> None:
    """Refuse unusable output folders before anything is written (run by every process)."""
    run_file = check_reusable_folder(
        out,
        "run.json",
        resume=resume,
        overwrite=overwrite,
        exists_message=f"The output folder '{out}' already exists; pass --resume to continue the run in it, or "
        "--overwrite to start over.",
        foreign_message=f"'{out}' exists but has no run.json: it is not an evaluation folder. Choose another --out.",
    )
    if run_file is None or identity is None:
        return
    try:
        stored = json.loads(run_file.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as error:
        raise RunMismatchError(f"{run_file} is unreadable ({error}); start over with --overwrite.") from error
    if stored != identity:
        keys = sorted(key for key in set(stored) | set(identity) if stored.get(key) != identity.get(key))
        details = "; ".join(f"{key}: stored {stored.get(key)!r}, requested {identity.get(key)!r}" for key in keys)
        raise RunMismatchError(
            f"'{out}' holds a run with another configuration ({details}). Use another --out, or --overwrite to "
            "replace it."
        )


def _prepare_output(out: Path, identity: dict[str, Any], *, overwrite: bool) -> bool:
    """Create (or clear, with ``overwrite``) the folder, write run.json, cut torn tails. Returns whether created."""
    created = not os.path.lexists(out)
    if overwrite and not created:
        for name in ("run.json", "report.json", "report.md"):
            (out / name).unlink(missing_ok=True)
        shutil.rmtree(_results_folder(out), ignore_errors=True)
    _results_folder(out).mkdir(parents=True, exist_ok=True)
    if not (out / "run.json").is_file():
        atomic_write_json(out / "run.json", identity)
    for path in _results_folder(out).glob("rank-*.jsonl"):
        _cut_torn_tail(path)
    return created


@contextmanager
def removed_on_failure(folder: Path, *, created: bool, has_results: Callable[[], bool]) -> Iterator[None]:
    """Delete ``folder`` when the body fails, if this process created it and no result was written into it.

    Nothing was computed then, so no partial output is left behind; the error propagates.

    Args:
        folder: The output folder.
        created: Whether this process created it (false on processes other than the main one).
        has_results: Whether any result has been written into it (asked only after a failure).
    """
    try:
        yield
    except BaseException:
        if created and not has_results():
            shutil.rmtree(folder, ignore_errors=True)
        raise


def _has_results(out: Path) -> bool:
    folder = _results_folder(out)
    return folder.is_dir() and any(path.stat().st_size > 0 for path in folder.glob("rank-*.jsonl"))


def _batches(indices: Sequence[int], size: int) -> list[list[int]]:
    return [list(indices[start : start + size]) for start in range(0, len(indices), size)]


def _progress(total: int, description: str, enabled: bool) -> Any:
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=description, unit="img", disable=not enabled, dynamic_ncols=True)


def evaluate(
    pipeline: Any,
    dataset: EvaluationDataset,
    method: Method,
    out: str | os.PathLike[str],
    *,
    limit: int | None = None,
    batch_size: int = 1,
    resume: bool = False,
    overwrite: bool = False,
    ap_scores: str = "normalized",
    model_name: str | None = None,
    progress: bool = True,
    context: ProcessContext | None = None,
) -> dict[str, Any] | None:
    """Evaluate one method on one dataset, writing per-image results as they come and a final report.

    Args:
        pipeline: The diffusers pipeline (already on this process's device).
        dataset: The benchmark (:func:`build_dataset`).
        method: The method (:func:`~conceptattention.evaluation.methods.get_method`).
        out: Output folder (see the module docstring for its layout).
        limit: Evaluate only the first ``limit`` images.
        batch_size: Images per model forward for methods that batch images (DAAM); ConceptAttention methods run
            one forward per image with all its noise samples batched.
        resume: Continue the run in an existing ``out`` (same configuration), skipping images already done.
        overwrite: Delete the results of an existing run in ``out`` first.
        ap_scores: ``"normalized"`` (standard) or ``"raw"`` (the official VOC script's AP on raw maps).
        model_name: Description of the model (part of the run's identity and the report).
        progress: Show a progress bar (main process only).
        context: The process context (default: a single process; see :func:`process_context`).

    Returns:
        The report (on the main process; ``None`` on the others).

    Raises:
        OutputExistsError: ``out`` exists and neither ``resume`` nor ``overwrite`` is given.
        RunMismatchError: ``resume`` into a folder holding another configuration or other data.
        ResultsFileError: A results file is corrupt beyond a torn last line.
        MethodError: The method cannot run on this pipeline.
        ValueError: Bad ``limit``, ``batch_size`` or ``ap_scores``.

    Example:
        >>> from conceptattention.evaluation import build_dataset, get_method, evaluate
        >>> data = build_dataset("voc", "data/VOCdevkit")  # doctest: +SKIP
        >>> report = evaluate(pipe, data, get_method("conceptattention"), "runs/voc-ca")  # doctest: +SKIP
        >>> report["metrics"]["binary"]["miou"]  # doctest: +SKIP
        0.7645
    """
    context = context or ProcessContext()
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
        raise ValueError(f"limit must be a positive integer or None, got {limit!r}.")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}.")
    if ap_scores not in ("normalized", "raw"):
        raise ValueError(f"ap_scores must be 'normalized' or 'raw', got {ap_scores!r}.")
    if len(dataset) == 0:
        raise DatasetFormatError(f"The {dataset.name} dataset holds no image to evaluate.")
    method.check_pipeline(pipeline)
    rule = method.prediction_rule(dataset.protocol)
    out = Path(out)
    identity = _json_normalised(
        {
            "format": RUN_FORMAT,
            "format_version": RUN_FORMAT_VERSION,
            "dataset": dataset.describe(),
            "method": {key: value for key, value in method.to_dict().items() if key != "description"},
            "model": model_name,
            "metrics": {"prediction_rule": rule, "ap_scores": ap_scores},
        }
    )
    _check_output(out, identity, resume=resume, overwrite=overwrite)
    context.barrier()
    created = _prepare_output(out, identity, overwrite=overwrite) if context.is_main else False
    context.barrier()
    with removed_on_failure(out, created=context.is_main and created, has_results=lambda: _has_results(out)):
        return _run(pipeline, dataset, method, out, identity, rule, limit, batch_size, ap_scores, progress, context)


def _run(
    pipeline: Any,
    dataset: EvaluationDataset,
    method: Method,
    out: Path,
    identity: dict[str, Any],
    rule: str,
    limit: int | None,
    batch_size: int,
    ap_scores: str,
    progress: bool,
    context: ProcessContext,
) -> dict[str, Any] | None:
    started = time.perf_counter()
    done = {record["index"]: record["id"] for record in load_results(out)}
    num_images = len(dataset)
    for index, stored_id in done.items():
        if index >= num_images or dataset.item_id(index) != stored_id:
            raise RunMismatchError(
                f"The results in '{out}' hold image {index} as {stored_id!r}, but the dataset has "
                f"{dataset.item_id(index) if index < num_images else 'no such image'!r} there: the data changed. "
                "Start over with --overwrite."
            )
    selected = range(min(limit, num_images) if limit is not None else num_images)
    pending = [index for index in selected if index not in done]
    shard = pending[context.rank :: context.world_size]
    batches = _batches(shard, batch_size if method.batches_images else 1)
    num_classes = len(dataset.class_names) if dataset.class_names is not None else None
    model_seconds = 0.0

    def load(indices: list[int]) -> list[EvaluationItem]:
        return [dataset.item(index) for index in indices]

    def score_and_write(items: list[EvaluationItem], maps: list[torch.Tensor], seconds: dict[str, float]) -> None:
        for item, item_maps in zip(items, maps):
            scored = score_item(
                item,
                item_maps,
                prediction_rule=rule,
                num_classes=num_classes,
                upsample=method.upsample,
                ap_scores=ap_scores,
            )
            line = {
                "index": item.index,
                "id": item.id,
                "class_name": item.class_name,
                "concepts": list(item.concepts),
                "grid_size": list(item_maps.shape[-2:]),
                **scored,
                "seconds": seconds,
            }
            handle.write(json.dumps(line, allow_nan=False, ensure_ascii=False) + "\n")
        handle.flush()

    # Three stages overlap: the next batch is loaded and the previous one scored and written (one worker thread
    # each) while the model runs on the current one. A record's "image" seconds are the main thread's time for
    # its batch (waiting for data, the model, waiting for the previous batch's scoring), so their sum is the
    # wall time of the loop and 1 - model / image is the runner's overhead beyond the model.
    with (
        open(_results_file(out, context.rank), "a", encoding="utf-8") as handle,
        ThreadPoolExecutor(max_workers=1, thread_name_prefix="prefetch") as loader,
        ThreadPoolExecutor(max_workers=1, thread_name_prefix="scoring") as scorer,
        _progress(len(shard), f"{method.name} / {dataset.name}", progress and context.is_main) as bar,
    ):
        upcoming: Future[list[EvaluationItem]] | None = loader.submit(load, batches[0]) if batches else None
        scoring: Future[None] | None = None
        for position in range(len(batches)):
            batch_started = time.perf_counter()
            assert upcoming is not None
            items = upcoming.result()
            upcoming = loader.submit(load, batches[position + 1]) if position + 1 < len(batches) else None
            model_started = time.perf_counter()
            maps = method.compute_maps(
                pipeline,
                [MapRequest(item.image, item.concepts, item.caption, getattr(dataset, "version", "v1")) for item in items],
            )
            batch_model = time.perf_counter() - model_started
            if scoring is not None:
                scoring.result()  # at most one batch waits for scoring; re-raises its errors here
                bar.update(len(batches[position - 1]))
            model_seconds += batch_model
            seconds = {
                "model": batch_model / len(items),
                "image": (time.perf_counter() - batch_started) / len(items),
            }
            scoring = scorer.submit(score_and_write, items, maps, seconds)
        if scoring is not None:
            scoring.result()
            bar.update(len(batches[-1]))
    wall_seconds = time.perf_counter() - started
    context.barrier()
    if not context.is_main:
        return None
    records = [record for record in load_results(out) if record["index"] < len(selected)]
    missing = len(selected) - len(records)
    if missing:
        raise ResultsFileError(f"{missing} image(s) have no result in '{out}' after the run; rerun with --resume.")
    invocation = {
        "new_images": len(shard) if context.world_size == 1 else len(pending),
        "wall_seconds": wall_seconds,
        "main_process_model_seconds": model_seconds,
        "main_process_overhead_fraction": (1.0 - model_seconds / wall_seconds) if shard and wall_seconds > 0 else None,
    }
    report = build_report(
        identity,
        records,
        class_names=dataset.class_names,
        settings={"limit": limit, "batch_size": batch_size, "prediction_rule": rule, "ap_scores": ap_scores},
        invocation=invocation,
        processes=context.world_size,
        device=context.device or _pipeline_device(pipeline),
    )
    write_report(out, report)
    return report


def _pipeline_device(pipeline: Any) -> str | None:
    device = getattr(pipeline, "device", None)
    return str(device) if device is not None else None


def build_report(
    identity: Mapping[str, Any],
    records: Sequence[Mapping[str, Any]],
    *,
    class_names: Sequence[str] | None,
    settings: Mapping[str, Any],
    invocation: Mapping[str, Any],
    processes: int,
    device: str | None,
) -> dict[str, Any]:
    """The report of a run from its identity and per-image records (see :func:`evaluate`).

    Returns:
        A JSON-serialisable dict: ``dataset``, ``method``, ``model``, ``settings``, ``metrics`` (``binary``: the
        fg/bg metrics of :func:`~conceptattention.evaluation.metrics.aggregate`; ``multiclass``: those of
        :func:`~conceptattention.evaluation.metrics.aggregate_multiclass` or ``None``), ``per_image`` APs,
        ``versions``, ``git``, ``hardware`` and ``timing``.

    Example:
        >>> record = {"index": 0, "id": "a", "multiclass": None, "seconds": {"model": 0.9, "image": 1.0},
        ...           "binary": [{"concept": "dog", "tp": 1, "fp": 0, "tn": 1, "fn": 0, "void": 0,
        ...                       "average_precision": 1.0}]}
        >>> identity = {"dataset": {"name": "voc"}, "method": {"name": "m"}, "model": None}
        >>> report = build_report(identity, [record], class_names=None, settings={}, invocation={}, processes=1,
        ...                       device="cpu")
        >>> report["metrics"]["binary"]["miou"], round(report["timing"]["runner_overhead_fraction"], 3)
        (1.0, 0.1)
    """
    binary_records = [record for line in records for record in line["binary"]]
    multiclass_records = [line["multiclass"] for line in records if line.get("multiclass") is not None]
    model_seconds = math.fsum(float(line.get("seconds", {}).get("model", 0.0)) for line in records)
    image_seconds = math.fsum(float(line.get("seconds", {}).get("image", 0.0)) for line in records)
    return {
        "format": "conceptattention.evaluation.report",
        "format_version": RUN_FORMAT_VERSION,
        "dataset": dict(identity["dataset"]),
        "method": dict(identity["method"]),
        "model": identity.get("model"),
        "settings": dict(settings),
        "metrics": {
            "num_images": len(records),
            "binary": aggregate(binary_records) if binary_records else None,
            "multiclass": aggregate_multiclass(multiclass_records, class_names) if multiclass_records else None,
        },
        "per_image": [
            {
                "index": line["index"],
                "id": line["id"],
                "concept": record["concept"],
                "average_precision": record["average_precision"],
            }
            for line in records
            for record in line["binary"]
        ],
        "versions": environment_info(),
        "git": git_revision(),
        "hardware": hardware_info(device),
        "timing": {
            "processes": processes,
            "model_seconds": model_seconds,
            "image_seconds": image_seconds,
            "runner_overhead_fraction": (1.0 - model_seconds / image_seconds) if image_seconds > 0 else 0.0,
            **invocation,
        },
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
