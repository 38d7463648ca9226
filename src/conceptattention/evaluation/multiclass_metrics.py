"""Multi-class (argmax) segmentation metrics: per-class IoU and pixel accuracy of a labelled argmax prediction.

Used by the multi-class ShapesWorld benchmark (every pixel labelled with its object class or its background). Built
like the fg/bg metrics of :mod:`conceptattention.evaluation.metrics`: each image becomes a JSON-serialisable record of
integer per-class counts (torchmetrics ``multiclass_stat_scores``; void ``-1`` pixels excluded), and the dataset
metrics are a pure function of the records (:func:`aggregate_multiclass`), so records of several processes combine
exactly.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np
import torch

from conceptattention.evaluation.metrics import VOID_LABEL, MetricInputError, RecordAccumulator, as_tensor
from conceptattention.extras import lazy_function


# torchmetrics (the eval extra) is imported on first use, so this module imports without it
multiclass_stat_scores = lazy_function("torchmetrics.functional.classification", "multiclass_stat_scores", "eval")


__all__ = ["MulticlassSegmentationMetrics", "aggregate_multiclass", "multiclass_per_image_counts"]

_MULTICLASS_COUNT_KEYS = ("intersection", "predicted", "labelled")


def multiclass_per_image_counts(
    prediction: torch.Tensor | np.ndarray,
    target: torch.Tensor | np.ndarray,
    num_classes: int,
    *,
    image_id: str | None = None,
) -> dict[str, Any]:
    """Counts one image of a multi-class argmax segmentation.

    Args:
        prediction: Either class indices ``[H, W]`` (int) or per-class scores ``[C, H, W]`` (float; argmax over
            ``C`` is taken).
        target: Class indices ``[H, W]`` in ``[0, num_classes)``, or -1 for void (ignored).
        num_classes: Number of classes ``C``.
        image_id: Optional identifier stored in the record.

    Returns:
        ``{"id", "intersection", "predicted", "labelled", "void"}``: per-class lists of ints over valid pixels
        (true positives, predicted pixels, labelled pixels) and the number of void pixels.

    Raises:
        MetricInputError: On bad shapes or out-of-range class indices.

    Example:
        >>> record = multiclass_per_image_counts(torch.tensor([[0, 2], [1, 1]]), torch.tensor([[0, 2], [2, -1]]), 3)
        >>> record["intersection"], record["predicted"], record["labelled"], record["void"]
        ([1, 0, 1], [1, 1, 1], [1, 0, 2], 1)
    """
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
        raise MetricInputError(f"`num_classes` must be a positive int, got {num_classes!r}.")
    target = as_tensor(target, "target")
    if target.ndim != 2 or target.is_floating_point():
        raise MetricInputError(
            f"`target` must be an integer [H, W] class map, got shape {tuple(target.shape)}, dtype {target.dtype}."
        )
    target = target.long()
    prediction = as_tensor(prediction, "prediction")
    if prediction.ndim == 3 and prediction.is_floating_point():
        prediction = prediction.argmax(dim=0)  # [C, H, W] -> [H, W]
    if tuple(prediction.shape) != tuple(target.shape) or prediction.is_floating_point():
        raise MetricInputError(
            f"`prediction` must be integer class indices [H, W] or float scores [C, H, W] matching `target` "
            f"{tuple(target.shape)}; got shape {tuple(prediction.shape)}, dtype {prediction.dtype}."
        )
    prediction = prediction.long()
    if prediction.numel() and (prediction.min() < 0 or prediction.max() >= num_classes):
        raise MetricInputError(f"`prediction` holds class indices outside [0, {num_classes}).")
    bad_target = (target != VOID_LABEL) & ((target < 0) | (target >= num_classes))
    if bad_target.any():
        raise MetricInputError(
            f"`target` holds values outside [0, {num_classes}) other than -1 (void): "
            f"{torch.unique(target[bad_target]).tolist()[:10]}."
        )
    num_void = int((target == VOID_LABEL).sum())
    # [C, 5] rows of (tp, fp, tn, fn, support); void pixels are excluded by ignore_index.
    stats = multiclass_stat_scores(
        prediction.unsqueeze(0), target.unsqueeze(0), num_classes, average=None, ignore_index=VOID_LABEL
    )
    tp, fp, fn = stats[:, 0], stats[:, 1], stats[:, 3]
    return {
        "id": image_id,
        "intersection": [int(value) for value in tp],
        "predicted": [int(value) for value in tp + fp],
        "labelled": [int(value) for value in tp + fn],
        "void": num_void,
    }


def aggregate_multiclass(
    records: Iterable[Mapping[str, Any]], class_names: Sequence[str] | None = None
) -> dict[str, Any]:
    """Computes multi-class segmentation metrics from per-image records (:func:`multiclass_per_image_counts`).

    ``IoU_c = I_c / (P_c + L_c - I_c)`` from counts summed over the dataset; ``miou`` is the mean over the classes
    present (non-empty union, i.e. predicted or labelled somewhere); ``pixel_accuracy = sum_c I_c / sum_c L_c``
    over valid pixels.

    Args:
        records: Per-image records, all with the same number of classes.
        class_names: Optional names, one per class, used as keys of ``per_class_iou``.

    Returns:
        ``pixel_accuracy``, ``miou``, ``per_class_iou`` (name or index as str -> IoU, ``None`` for absent classes),
        ``classes_present``, ``num_images``, ``num_valid_pixels``, ``num_void_pixels`` and the summed count lists.

    Raises:
        MetricInputError: On no records, inconsistent class counts, or no valid pixel.

    Example:
        >>> record = multiclass_per_image_counts(torch.tensor([[0, 1]]), torch.tensor([[0, 1]]), 3)
        >>> result = aggregate_multiclass([record], ["sky", "dog", "cat"])
        >>> result["miou"], result["per_class_iou"]
        (1.0, {'sky': 1.0, 'dog': 1.0, 'cat': None})
    """
    records = list(records)
    if not records:
        raise MetricInputError("No images were scored; call `update` (or `multiclass_per_image_counts`) first.")
    num_classes = _multiclass_record_size(records[0], 0)
    if class_names is not None and len(class_names) != num_classes:
        raise MetricInputError(f"Got {len(class_names)} class names for {num_classes} classes.")
    totals = {key: np.zeros(num_classes, dtype=np.int64) for key in _MULTICLASS_COUNT_KEYS}
    num_void = 0
    for position, record in enumerate(records):
        if _multiclass_record_size(record, position) != num_classes:
            raise MetricInputError(f"Record {position} has a different number of classes than record 0.")
        for key in _MULTICLASS_COUNT_KEYS:
            totals[key] += np.asarray(record[key], dtype=np.int64)
        num_void += int(record["void"])
    intersection, predicted, labelled = (totals[key] for key in _MULTICLASS_COUNT_KEYS)
    num_valid = int(labelled.sum())
    if num_valid == 0:
        raise MetricInputError("Every scored pixel is void (-1); there is nothing to measure.")
    union = predicted + labelled - intersection
    names = list(class_names) if class_names is not None else [str(index) for index in range(num_classes)]
    per_class_iou = {
        name: (float(intersection[index]) / float(union[index]) if union[index] > 0 else None)
        for index, name in enumerate(names)
    }
    present_ious = [iou for iou in per_class_iou.values() if iou is not None]
    return {
        "pixel_accuracy": float(intersection.sum()) / num_valid,
        "miou": math.fsum(present_ious) / len(present_ious),
        "per_class_iou": per_class_iou,
        "classes_present": [name for name, iou in per_class_iou.items() if iou is not None],
        "num_images": len(records),
        "num_valid_pixels": num_valid,
        "num_void_pixels": num_void,
        "intersection": intersection.tolist(),
        "predicted": predicted.tolist(),
        "labelled": labelled.tolist(),
    }


def _multiclass_record_size(record: Mapping[str, Any], position: int) -> int:
    """Returns the number of classes of a multi-class record, validating its keys and counts."""
    for key in (*_MULTICLASS_COUNT_KEYS, "void"):
        if key not in record:
            raise MetricInputError(
                f"Record {position} has no {key!r}; records must come from `multiclass_per_image_counts`."
            )
    sizes = {len(record[key]) for key in _MULTICLASS_COUNT_KEYS}
    if len(sizes) != 1:
        raise MetricInputError(f"Record {position} has count lists of different lengths.")
    if any(int(value) < 0 for key in _MULTICLASS_COUNT_KEYS for value in record[key]) or int(record["void"]) < 0:
        raise MetricInputError(f"Record {position} has a negative count.")
    return sizes.pop()


class MulticlassSegmentationMetrics(RecordAccumulator):
    """Accumulates multi-class (argmax) segmentation metrics, e.g. for ShapesWorld or VOC multi-class.

    Args:
        num_classes: Number of classes ``C`` (including any background class).
        class_names: Optional ``C`` names used as keys of ``per_class_iou``.

    Example:
        >>> metrics = MulticlassSegmentationMetrics(3, class_names=["background", "circle", "square"])
        >>> _ = metrics.update(torch.tensor([[0, 1], [2, 2]]), torch.tensor([[0, 1], [2, 0]]))
        >>> result = metrics.compute()
        >>> result["pixel_accuracy"], result["per_class_iou"]["square"]
        (0.75, 0.5)
    """

    def __init__(self, num_classes: int, *, class_names: Sequence[str] | None = None) -> None:
        if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
            raise MetricInputError(f"`num_classes` must be a positive int, got {num_classes!r}.")
        if class_names is not None and len(class_names) != num_classes:
            raise MetricInputError(f"Got {len(class_names)} class names for num_classes={num_classes}.")
        super().__init__()
        self.num_classes = num_classes
        self.class_names = list(class_names) if class_names is not None else None

    def update(
        self,
        prediction: torch.Tensor | np.ndarray,
        target: torch.Tensor | np.ndarray,
        *,
        image_id: str | None = None,
    ) -> dict[str, Any]:
        """Counts one image and stores its record.

        Args:
            prediction: Class indices ``[H, W]`` or per-class scores ``[C, H, W]`` (argmax taken).
            target: Class indices ``[H, W]``, -1 for void.
            image_id: Optional identifier kept in the record.

        Returns:
            The stored record (see :func:`multiclass_per_image_counts`).
        """
        record = multiclass_per_image_counts(prediction, target, self.num_classes, image_id=image_id)
        return self._store(record)

    def compute(self) -> dict[str, Any]:
        """Returns the dataset metrics of every image seen so far (see :func:`aggregate_multiclass`)."""
        return aggregate_multiclass(self._records, self.class_names)

    def merge(self, other: MulticlassSegmentationMetrics) -> None:
        """Appends another accumulator's records; the class count must match."""
        if not isinstance(other, MulticlassSegmentationMetrics) or other.num_classes != self.num_classes:
            raise MetricInputError("Can only merge a MulticlassSegmentationMetrics with the same `num_classes`.")
        self._records.extend(other.records)

    def state_dict(self) -> dict[str, Any]:
        """JSON-serialisable state: the settings and the per-image records."""
        return {"num_classes": self.num_classes, "class_names": self.class_names, "records": self.records}

    @classmethod
    def from_state_dict(cls, state: Mapping[str, Any]) -> MulticlassSegmentationMetrics:
        """Rebuilds an accumulator from :meth:`state_dict` output (validating every record)."""
        for key in ("num_classes", "class_names", "records"):
            if key not in state:
                raise MetricInputError(
                    f"State has no {key!r}; it must come from `MulticlassSegmentationMetrics.state_dict()`."
                )
        metrics = cls(state["num_classes"], class_names=state["class_names"])
        for position, record in enumerate(state["records"]):
            if _multiclass_record_size(record, position) != metrics.num_classes:
                raise MetricInputError(f"Record {position} does not have {metrics.num_classes} classes.")
            metrics._records.append(dict(record))
        return metrics
