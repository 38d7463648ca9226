"""Zero-shot segmentation metrics: the Chefer et al. (2021) standard, plus labelled paper-compatibility columns.

(About 600 lines on purpose: one job, the binary per-image metrics and their aggregation; the multi-class metrics
live in :mod:`~conceptattention.evaluation.multiclass_metrics`, and ~20 lines here are their deprecated aliases.)

Definitions (as in Chefer et al. 2021, ``hila-chefer/Transformer-Explainability``,
``baselines/ViT/imagenet_seg_eval.py``):

* Per image, the saliency map is min-max normalised over its valid pixels (label ``0`` or ``1``; void ``-1`` is
  excluded everywhere) and thresholded strictly at its mean (or at a fixed threshold in ``[0, 1]``).
* **Pixel accuracy** and the background/foreground **IoUs** are computed from true/false positive/negative counts
  summed over the whole dataset (micro), never as means of per-image values. ``miou`` is the mean of the background
  IoU and the foreground IoU.
* **mAP** is the mean over images of a per-image average precision computed on one *pooled* vector: the scores
  ``concat(1 - s, s)`` against the labels ``concat(t == 0, t == 1)`` (valid pixels only).
* ``paper_compatible_miou = acc / (2 - acc)`` reproduces the number the official ConceptAttention ImageNet harness
  reports as "mIoU" (its IoU code receives stacked two-channel masks without an argmax). It is *not* an IoU.
* ``paper_compatible_voc_pixel_accuracy = 2C / (N + N_valid)`` reproduces the official PascalVOC accuracy, in which
  void pixels count as half wrong.

The counting is done with torchmetrics (``binary_stat_scores``, ``binary_average_precision``). Every image becomes
one JSON-serialisable record of integer counts and one float (its AP); dataset-level numbers are pure functions of a
list of records (:func:`aggregate`), so records written by several processes, or stored by a resumable runner, combine
exactly: concatenate the lists and aggregate again. The multi-class (argmax) metrics, built the same way, are in
:mod:`conceptattention.evaluation.multiclass_metrics`.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from typing import Any, Literal

import numpy as np
import torch

from conceptattention.errors import ConceptAttentionError
from conceptattention.extras import lazy_function


# torchmetrics (the eval extra) is imported on first use, so this module imports without it
_CLASSIFICATION = "torchmetrics.functional.classification"
binary_average_precision = lazy_function(_CLASSIFICATION, "binary_average_precision", "eval")
binary_stat_scores = lazy_function(_CLASSIFICATION, "binary_stat_scores", "eval")


__all__ = [
    "MetricInputError",
    "SegmentationMetrics",
    "aggregate",
    "binarize_saliency",
    "normalize_saliency",
    "per_image_counts",
    "pooled_average_precision",
]

VOID_LABEL = -1
"""Label value of pixels that are ignored by every metric (VOC boundaries and difficult regions)."""

Threshold = Literal["mean"] | float
APScores = Literal["normalized", "raw"]

_BINARY_COUNT_KEYS = ("tp", "fp", "tn", "fn", "void")


class MetricInputError(ConceptAttentionError, ValueError):
    """Raised when a saliency map, a prediction or a label cannot be scored as given."""


# ----------------------------------------------------------------------------------------------------------------
# Input checking
# ----------------------------------------------------------------------------------------------------------------


def as_tensor(array: torch.Tensor | np.ndarray, name: str) -> torch.Tensor:
    """Converts a numpy array or tensor to a CPU tensor, rejecting anything else with a clear message.

    Args:
        array: The input (any shape).
        name: Its argument name (errors).

    Raises:
        MetricInputError: ``array`` is neither a tensor nor a numpy array.

    Example:
        >>> as_tensor(np.zeros((2, 3), np.int8), "target").shape
        torch.Size([2, 3])
    """
    if isinstance(array, torch.Tensor):
        return array.detach().cpu()
    if isinstance(array, np.ndarray):
        return torch.from_numpy(np.ascontiguousarray(array))
    raise MetricInputError(f"`{name}` must be a torch.Tensor or numpy.ndarray, got {type(array).__name__}.")


def _check_binary_target(target: torch.Tensor | np.ndarray) -> torch.Tensor:
    """Returns the label as an int64 tensor with values in {-1, 0, 1}, or raises."""
    target = as_tensor(target, "target")
    if target.ndim != 2:
        raise MetricInputError(f"`target` must be a 2-D [H, W] label map, got shape {tuple(target.shape)}.")
    if target.is_floating_point() or target.is_complex():
        raise MetricInputError(
            f"`target` must hold integer or boolean labels (1 = foreground, 0 = background, -1 = void), "
            f"got dtype {target.dtype}; convert it with `.long()` after checking its values."
        )
    target = target.long()
    bad_values = torch.unique(target[(target != 0) & (target != 1) & (target != VOID_LABEL)])
    if bad_values.numel() > 0:
        raise MetricInputError(
            f"`target` may only contain 1 (foreground), 0 (background) and -1 (void); found {bad_values.tolist()[:10]}. "
            "Binarise multi-class labels first (every object class -> 1, void 255 -> -1)."
        )
    return target


def _label_shaped(
    value: torch.Tensor | np.ndarray, name: str, target_shape: tuple[int, ...], fix: str
) -> torch.Tensor:
    """``value`` as a tensor (:func:`as_tensor`) of the label's shape ``target_shape``, or a MetricInputError naming
    ``name``, both shapes and how to ``fix`` it."""
    tensor = as_tensor(value, name)
    if tuple(tensor.shape) != target_shape:
        raise MetricInputError(
            f"`{name}` has shape {tuple(tensor.shape)} but `target` has shape {target_shape}; {fix}"
        )
    return tensor


def _check_scores(scores: torch.Tensor | np.ndarray, target_shape: tuple[int, ...]) -> torch.Tensor:
    """Returns the saliency map as a float64 tensor of the label's shape, or raises."""
    scores = _label_shaped(
        scores, "scores", target_shape, "upsample the saliency map to the label resolution before scoring it."
    )
    if scores.is_complex():
        raise MetricInputError(f"`scores` must be real-valued, got dtype {scores.dtype}.")
    scores = scores.to(torch.float64)
    if not torch.isfinite(scores).all():
        raise MetricInputError(
            "`scores` contains NaN or infinite values; a saliency map must be finite (check the map computation, "
            "e.g. a softmax over an empty concept set or a division by zero)."
        )
    return scores


def _check_threshold(threshold: Threshold) -> Threshold:
    """Validates a binarisation threshold: ``"mean"`` or a number in [0, 1]."""
    if isinstance(threshold, str):
        if threshold != "mean":
            raise MetricInputError(f"`threshold` must be 'mean' or a number in [0, 1], got {threshold!r}.")
        return threshold
    if isinstance(threshold, bool) or not isinstance(threshold, (int, float)) or not 0.0 <= float(threshold) <= 1.0:
        raise MetricInputError(
            f"`threshold` must be 'mean' or a number in [0, 1] (it applies to the min-max normalised map), "
            f"got {threshold!r}."
        )
    return float(threshold)


def _check_ap_scores(ap_scores: str) -> APScores:
    """Validates the choice of AP scores."""
    if ap_scores not in ("normalized", "raw"):
        raise MetricInputError(f"`ap_scores` must be 'normalized' or 'raw', got {ap_scores!r}.")
    return ap_scores  # type: ignore[return-value]


# ----------------------------------------------------------------------------------------------------------------
# Per-image binarisation and AP
# ----------------------------------------------------------------------------------------------------------------


def _valid_mask_for(scores: torch.Tensor, valid_mask: torch.Tensor | np.ndarray | None) -> torch.Tensor:
    """Returns the boolean valid-pixel mask of ``scores`` (all True for ``None``), or raises."""
    if valid_mask is None:
        return torch.ones_like(scores, dtype=torch.bool)
    valid = as_tensor(valid_mask, "valid_mask").bool()
    if valid.shape != scores.shape:
        raise MetricInputError(
            f"`valid_mask` has shape {tuple(valid.shape)} but `scores` has shape {tuple(scores.shape)}."
        )
    return valid


def _min_max(scores: torch.Tensor, valid: torch.Tensor) -> tuple[torch.Tensor, bool]:
    """Min-max normalises float64 ``scores`` over ``valid``; returns ``(normalised, is_constant)``."""
    if not valid.any():
        raise MetricInputError("No valid pixel to normalise over: every label pixel is void (-1).")
    valid_scores = scores[valid]  # [N_valid]
    low, high = valid_scores.min(), valid_scores.max()
    if high == low:
        return torch.zeros_like(scores), True
    return (scores - low) / (high - low), False


def _threshold_normalized(normalized: torch.Tensor, valid: torch.Tensor, threshold: Threshold) -> torch.Tensor:
    """``normalized > mean(normalized[valid])`` or ``normalized > threshold`` (strict), as bool ``[H, W]``."""
    cut = normalized[valid].mean() if threshold == "mean" else torch.tensor(threshold, dtype=torch.float64)
    return normalized > cut


def normalize_saliency(
    scores: torch.Tensor | np.ndarray, valid_mask: torch.Tensor | np.ndarray | None = None
) -> torch.Tensor:
    """Min-max normalises a saliency map over its valid pixels, following Chefer et al.

    A constant map (``max == min`` over the valid pixels) has no defined normalisation; as in Chefer's
    ``imagenet_seg_eval.py`` (which zeroes the NaNs it produces) it becomes all zeros, so it is predicted all
    background. (For its AP, see :func:`per_image_counts`.)

    Args:
        scores: Saliency map, float ``[H, W]`` (any real dtype).
        valid_mask: Boolean ``[H, W]``; only these pixels define the minimum and maximum. ``None`` means all pixels.

    Returns:
        float64 tensor ``[H, W]``: ``(s - min) / (max - min)``; values at invalid pixels are computed with the same
        affine map (they may fall outside [0, 1]) and must be ignored by the caller.

    Raises:
        MetricInputError: If the map is not finite, the mask has another shape, or no pixel is valid.

    Example:
        >>> normalize_saliency(torch.tensor([[1.0, 3.0], [5.0, 3.0]])).tolist()
        [[0.0, 0.5], [1.0, 0.5]]
    """
    scores = as_tensor(scores, "scores")
    scores = _check_scores(scores, tuple(scores.shape))
    normalized, _is_constant = _min_max(scores, _valid_mask_for(scores, valid_mask))
    return normalized


def binarize_saliency(
    scores: torch.Tensor | np.ndarray,
    valid_mask: torch.Tensor | np.ndarray | None = None,
    *,
    threshold: Threshold = "mean",
) -> tuple[torch.Tensor, torch.Tensor]:
    """Binarises a saliency map by the Chefer standard: min-max normalise, then ``s > mean(s)`` (strict).

    Statistics (minimum, maximum, mean) are taken over valid pixels only. Because min-max normalisation is affine
    and increasing, thresholding at the mean equals thresholding the raw map at its raw mean. A constant map is
    predicted all background (see :func:`normalize_saliency`).

    Args:
        scores: Saliency map, float ``[H, W]``, already at the label resolution.
        valid_mask: Boolean ``[H, W]`` of pixels that count (label != -1); ``None`` means all pixels.
        threshold: ``"mean"`` (the standard) or a fixed value in [0, 1] applied to the normalised map.

    Returns:
        ``(prediction, normalized)``: a bool tensor ``[H, W]`` (True = foreground) and the float64 normalised map
        ``[H, W]``.

    Raises:
        MetricInputError: On a non-finite map, a bad threshold, or no valid pixel.

    Example:
        >>> prediction, normalized = binarize_saliency(torch.tensor([[0.0, 1.0], [3.0, 4.0]]))
        >>> prediction.tolist()
        [[False, False], [True, True]]
    """
    threshold = _check_threshold(threshold)
    scores = as_tensor(scores, "scores")
    scores = _check_scores(scores, tuple(scores.shape))
    valid = _valid_mask_for(scores, valid_mask)
    normalized, _is_constant = _min_max(scores, valid)
    return _threshold_normalized(normalized, valid, threshold), normalized


def _pooled_ap(background_scores: torch.Tensor, foreground_scores: torch.Tensor, valid_target: torch.Tensor) -> float:
    """AP of ``concat(background, foreground)`` scores against ``concat(t == 0, t == 1)``; inputs are ``[N_valid]``."""
    pooled_scores = torch.cat([background_scores, foreground_scores])  # [2 * N_valid]
    pooled_labels = torch.cat([valid_target == 0, valid_target == 1]).long()  # [2 * N_valid]
    # torchmetrics applies a sigmoid to scores outside [0, 1]; in float it saturates and would create ties. An
    # increasing affine map of the pooled vector into [0, 1] leaves the ranking, hence the AP, unchanged.
    low, high = pooled_scores.min(), pooled_scores.max()
    pooled_scores = (pooled_scores - low) / (high - low) if high > low else torch.zeros_like(pooled_scores)
    return float(binary_average_precision(pooled_scores, pooled_labels, thresholds=None))


def pooled_average_precision(scores: torch.Tensor | np.ndarray, target: torch.Tensor | np.ndarray) -> float:
    """Average precision of one image on the pooled two-channel vector, as in Chefer et al.

    The vector pools the background channel and the foreground channel of the valid pixels:
    ``scores = concat(1 - s, s)``, ``labels = concat(t == 0, t == 1)``, and AP is the non-interpolated step sum
    ``sum_n (R_n - R_{n-1}) P_n`` (torchmetrics ``binary_average_precision`` with exact thresholds, equal to
    ``sklearn.metrics.average_precision_score`` up to torchmetrics' float32 precision and recall, about 1e-7).
    Exactly half of the pooled labels are positive, so AP is always defined.

    AP depends only on the ranking of the pooled vector, and ``1 - s`` is ranked against ``s``: pass the min-max
    normalised map for the standard metric (raw maps, as in the official VOC script, rank differently).

    Args:
        scores: Saliency ``[H, W]`` (normally the min-max normalised map).
        target: Labels ``[H, W]`` in {-1 (void, ignored), 0, 1}.

    Returns:
        The AP in [0, 1].

    Raises:
        MetricInputError: On mismatched shapes, bad labels, non-finite scores or no valid pixel.

    Example:
        >>> pooled_average_precision(torch.tensor([[0.0, 1.0]]), torch.tensor([[0, 1]]))
        1.0
    """
    target = _check_binary_target(target)
    scores = _check_scores(scores, tuple(target.shape))
    valid = target != VOID_LABEL
    if not valid.any():
        raise MetricInputError("No valid pixel for the average precision: every label pixel is void (-1).")
    valid_scores = scores[valid]  # [N_valid]
    return _pooled_ap(1.0 - valid_scores, valid_scores, target[valid])


# ----------------------------------------------------------------------------------------------------------------
# Binary (foreground / background) metrics
# ----------------------------------------------------------------------------------------------------------------


def per_image_counts(
    scores: torch.Tensor | np.ndarray,
    target: torch.Tensor | np.ndarray,
    *,
    threshold: Threshold = "mean",
    prediction: torch.Tensor | np.ndarray | None = None,
    ap_scores: APScores = "normalized",
    image_id: str | None = None,
) -> dict[str, Any]:
    """Scores one image and returns its JSON-serialisable record of counts and AP.

    Args:
        scores: Saliency map of the target concept, float ``[H, W]`` at the label resolution.
        target: Labels ``[H, W]`` (int or bool): 1 foreground, 0 background, -1 void (ignored everywhere).
        threshold: ``"mean"`` (standard) or a fixed value in [0, 1] on the normalised map. Ignored when
            ``prediction`` is given.
        prediction: Optional precomputed foreground mask ``[H, W]`` (bool or {0, 1}), e.g. an argmax over concepts
            as in the official PascalVOC protocol; replaces the thresholding of ``scores``.
        ap_scores: ``"normalized"`` (standard: AP on the min-max normalised map) or ``"raw"`` (AP on ``scores`` as
            given, the official PascalVOC behaviour).
        image_id: Optional identifier stored in the record.

    Returns:
        ``{"id", "tp", "fp", "tn", "fn", "void", "average_precision"}`` with foreground as the positive class; counts
        are ints over valid pixels, ``void`` counts ignored pixels, and ``average_precision`` is a float, or ``None``
        when the image has no valid pixel. A map that is constant over the valid pixels is predicted all background
        and, with ``ap_scores="normalized"``, gets AP 0.5 (Chefer zeroes both channels of the pooled vector).

    Raises:
        MetricInputError: On bad shapes, dtypes, label values, non-finite scores or options.

    Example:
        >>> record = per_image_counts(torch.tensor([[0.0, 1.0], [0.2, 0.9]]), torch.tensor([[0, 1], [0, -1]]))
        >>> record["tp"], record["fp"], record["tn"], record["fn"], record["void"]
        (1, 0, 2, 0, 1)
    """
    ap_scores = _check_ap_scores(ap_scores)
    threshold = _check_threshold(threshold)
    target = _check_binary_target(target)
    scores = _check_scores(scores, tuple(target.shape))
    if prediction is not None:
        prediction = _check_prediction_mask(prediction, tuple(target.shape))
    valid = target != VOID_LABEL
    num_void = int((~valid).sum())
    if not valid.any():
        return {"id": image_id, "tp": 0, "fp": 0, "tn": 0, "fn": 0, "void": num_void, "average_precision": None}

    normalized, is_constant = _min_max(scores, valid)
    predicted_foreground = _threshold_normalized(normalized, valid, threshold) if prediction is None else prediction
    # Integer predictions: torchmetrics thresholds (and may sigmoid) float inputs, never integer ones.
    tp, fp, tn, fn, _support = binary_stat_scores(
        predicted_foreground.long(), target, ignore_index=VOID_LABEL
    ).tolist()

    valid_target = target[valid]  # [N_valid]
    if ap_scores == "raw":
        valid_scores = scores[valid]  # [N_valid]
        average_precision = _pooled_ap(1.0 - valid_scores, valid_scores, valid_target)
    elif is_constant:
        # Chefer zeroes the NaNs of 0/0 in *both* channels (1 - s and s): an all-tied vector, AP = 0.5. Setting
        # s = 0 before forming 1 - s would instead rank every background-channel entry first.
        zeros = torch.zeros_like(valid_target, dtype=torch.float64)  # [N_valid]
        average_precision = _pooled_ap(zeros, zeros, valid_target)
    else:
        valid_scores = normalized[valid]  # [N_valid]
        average_precision = _pooled_ap(1.0 - valid_scores, valid_scores, valid_target)
    return {
        "id": image_id,
        "tp": int(tp),
        "fp": int(fp),
        "tn": int(tn),
        "fn": int(fn),
        "void": num_void,
        "average_precision": average_precision,
    }


def _check_prediction_mask(prediction: torch.Tensor | np.ndarray, target_shape: tuple[int, ...]) -> torch.Tensor:
    """Returns a precomputed foreground mask as bool, or raises."""
    prediction = _label_shaped(
        prediction, "prediction", target_shape, "resize the mask (nearest) to the label resolution first."
    )
    if prediction.dtype != torch.bool:
        if prediction.is_floating_point() or not bool(((prediction == 0) | (prediction == 1)).all()):
            raise MetricInputError(
                "`prediction` must be a boolean or {0, 1} integer foreground mask; for an argmax over concepts pass "
                "`labels == target_concept_index`."
            )
    return prediction.bool()


def _check_binary_record(record: Mapping[str, Any], position: int) -> None:
    """Raises if a record lacks a count or holds a negative one."""
    for key in (*_BINARY_COUNT_KEYS, "average_precision"):
        if key not in record:
            raise MetricInputError(
                f"Record {position} has no {key!r}; records must come from `per_image_counts` "
                f"(keys {list(_BINARY_COUNT_KEYS)} and 'average_precision')."
            )
    if any(int(record[key]) < 0 for key in _BINARY_COUNT_KEYS):
        raise MetricInputError(f"Record {position} has a negative count: {dict(record)}.")


def _safe_ratio(numerator: int | float, denominator: int | float) -> float:
    """``numerator / denominator``, or 0.0 for 0 / 0 (the torchmetrics ``zero_division=0`` convention)."""
    return float(numerator) / float(denominator) if denominator else 0.0


def aggregate(records: Iterable[Mapping[str, Any]]) -> dict[str, Any]:
    """Computes the dataset metrics from per-image records (:func:`per_image_counts`).

    Counts are summed over images (micro), then turned into metrics; AP is averaged over the images that have at
    least one valid pixel. Aggregating the concatenation of several lists of records gives exactly the result of
    scoring all images in one process.

    Args:
        records: Per-image records, e.g. read back from a JSON file.

    Returns:
        A dict with

        * ``pixel_accuracy``: ``(TP + TN) / (TP + FP + TN + FN)`` over all valid pixels;
        * ``iou_background``, ``iou_foreground``: ``TN / (TN + FP + FN)`` and ``TP / (TP + FP + FN)`` (0 when the
          union is empty);
        * ``miou``: their mean (the standard fg/bg mIoU);
        * ``map``: mean of the per-image pooled APs;
        * ``num_images``, ``num_images_with_ap``, ``num_valid_pixels``, ``num_void_pixels``, ``tp``, ``fp``, ``tn``,
          ``fn``;
        * ``paper_compatible_miou``: ``acc / (2 - acc)``, the official ConceptAttention ImageNet "mIoU" (not an IoU);
        * ``paper_compatible_voc_pixel_accuracy``: ``2 (TP + TN) / (N + N_valid)``, the official PascalVOC accuracy
          in which void pixels count as half wrong.

    Raises:
        MetricInputError: If there are no records, a record is malformed, or no image has a valid pixel.

    Example:
        >>> records = [per_image_counts(torch.tensor([[0.0, 1.0]]), torch.tensor([[0, 1]]))]
        >>> aggregate(records)["miou"]
        1.0
    """
    records = list(records)
    if not records:
        raise MetricInputError("No images were scored; call `update` (or `per_image_counts`) at least once.")
    totals = dict.fromkeys(_BINARY_COUNT_KEYS, 0)
    average_precisions: list[float] = []
    for position, record in enumerate(records):
        _check_binary_record(record, position)
        for key in _BINARY_COUNT_KEYS:
            totals[key] += int(record[key])
        if record["average_precision"] is not None:
            average_precisions.append(float(record["average_precision"]))
    tp, fp, tn, fn, num_void = (totals[key] for key in _BINARY_COUNT_KEYS)
    num_valid = tp + fp + tn + fn
    if num_valid == 0:
        raise MetricInputError("Every scored pixel is void (-1); there is nothing to measure.")

    pixel_accuracy = (tp + tn) / num_valid
    iou_background = _safe_ratio(tn, tn + fp + fn)
    iou_foreground = _safe_ratio(tp, tp + fp + fn)
    return {
        "pixel_accuracy": pixel_accuracy,
        "miou": (iou_background + iou_foreground) / 2.0,
        "iou_background": iou_background,
        "iou_foreground": iou_foreground,
        "map": math.fsum(average_precisions) / len(average_precisions),
        "num_images": len(records),
        "num_images_with_ap": len(average_precisions),
        "num_valid_pixels": num_valid,
        "num_void_pixels": num_void,
        "tp": tp,
        "fp": fp,
        "tn": tn,
        "fn": fn,
        "paper_compatible_miou": pixel_accuracy / (2.0 - pixel_accuracy),
        "paper_compatible_voc_pixel_accuracy": 2.0 * (tp + tn) / (2 * num_valid + num_void),
    }


class RecordAccumulator:
    """The per-image record store shared by :class:`SegmentationMetrics` and
    :class:`~conceptattention.evaluation.multiclass_metrics.MulticlassSegmentationMetrics`.

    Example:
        >>> store = RecordAccumulator()
        >>> store._store({"tp": 1}), len(store), store.records
        ({'tp': 1}, 1, [{'tp': 1}])
    """

    def __init__(self) -> None:
        self._records: list[dict[str, Any]] = []

    def _store(self, record: dict[str, Any]) -> dict[str, Any]:
        """Appends one image's record; returns a copy of it."""
        self._records.append(record)
        return dict(record)

    @property
    def records(self) -> list[dict[str, Any]]:
        """Copies of the per-image records, in update order."""
        return [dict(record) for record in self._records]

    def __len__(self) -> int:
        return len(self._records)

    def reset(self) -> None:
        """Forgets every image."""
        self._records.clear()


class SegmentationMetrics(RecordAccumulator):
    """Accumulates fg/bg segmentation metrics over a dataset (Chefer-standard definitions).

    Each :meth:`update` appends one per-image record (ints and one float). :meth:`compute` aggregates them, so the
    state is exactly mergeable (:meth:`merge`) and serialisable (:meth:`state_dict` is plain JSON).

    Args:
        threshold: ``"mean"`` (standard) or a fixed value in [0, 1] on the normalised map.
        ap_scores: ``"normalized"`` (standard) or ``"raw"`` (the official PascalVOC script's AP on the raw map).

    Example:
        >>> metrics = SegmentationMetrics()
        >>> _ = metrics.update(torch.tensor([[0.1, 0.9], [0.2, 0.8]]), torch.tensor([[0, 1], [0, 1]]), image_id="a")
        >>> result = metrics.compute()
        >>> result["pixel_accuracy"], result["miou"], result["map"], result["num_images"]
        (1.0, 1.0, 1.0, 1)
    """

    def __init__(self, *, threshold: Threshold = "mean", ap_scores: APScores = "normalized") -> None:
        super().__init__()
        self.threshold = _check_threshold(threshold)
        self.ap_scores = _check_ap_scores(ap_scores)

    def update(
        self,
        scores: torch.Tensor | np.ndarray,
        target: torch.Tensor | np.ndarray,
        *,
        prediction: torch.Tensor | np.ndarray | None = None,
        image_id: str | None = None,
    ) -> dict[str, Any]:
        """Scores one image and stores its record.

        Args:
            scores: Saliency map float ``[H, W]`` at the label resolution.
            target: Labels ``[H, W]``: 1 foreground, 0 background, -1 void.
            prediction: Optional precomputed foreground mask ``[H, W]`` replacing the thresholding.
            image_id: Optional identifier kept in the record.

        Returns:
            The stored record (see :func:`per_image_counts`).
        """
        record = per_image_counts(
            scores,
            target,
            threshold=self.threshold,
            prediction=prediction,
            ap_scores=self.ap_scores,
            image_id=image_id,
        )
        return self._store(record)

    def compute(self) -> dict[str, Any]:
        """Returns the dataset metrics of every image seen so far (see :func:`aggregate`)."""
        return aggregate(self._records)

    def merge(self, other: SegmentationMetrics) -> None:
        """Appends another accumulator's records (e.g. from another process); settings must match."""
        if not isinstance(other, SegmentationMetrics):
            raise MetricInputError(f"Can only merge a SegmentationMetrics, got {type(other).__name__}.")
        if (other.threshold, other.ap_scores) != (self.threshold, self.ap_scores):
            raise MetricInputError(
                f"Cannot merge metrics computed with different settings: threshold={other.threshold!r}, "
                f"ap_scores={other.ap_scores!r} vs threshold={self.threshold!r}, ap_scores={self.ap_scores!r}."
            )
        self._records.extend(other.records)

    def state_dict(self) -> dict[str, Any]:
        """JSON-serialisable state: the settings and the per-image records."""
        return {"threshold": self.threshold, "ap_scores": self.ap_scores, "records": self.records}

    @classmethod
    def from_state_dict(cls, state: Mapping[str, Any]) -> SegmentationMetrics:
        """Rebuilds an accumulator from :meth:`state_dict` output (validating every record)."""
        for key in ("threshold", "ap_scores", "records"):
            if key not in state:
                raise MetricInputError(f"State has no {key!r}; it must come from `SegmentationMetrics.state_dict()`.")
        metrics = cls(threshold=state["threshold"], ap_scores=state["ap_scores"])
        for position, record in enumerate(state["records"]):
            _check_binary_record(record, position)
            metrics._records.append(dict(record))
        return metrics


_MOVED_TO_MULTICLASS = ("MulticlassSegmentationMetrics", "aggregate_multiclass", "multiclass_per_image_counts")


def __getattr__(name: str) -> Any:
    """The multi-class metrics under their old path (deprecated: import them from ``multiclass_metrics``)."""
    if name in _MOVED_TO_MULTICLASS:
        import warnings

        from conceptattention.evaluation import multiclass_metrics

        warnings.warn(
            f"conceptattention.evaluation.metrics.{name} moved to conceptattention.evaluation.multiclass_metrics "
            "(or import it from conceptattention.evaluation); the old path goes in the next release.",
            DeprecationWarning,
            stacklevel=2,
        )
        return getattr(multiclass_metrics, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
