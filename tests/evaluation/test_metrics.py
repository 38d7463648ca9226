"""Tests of the segmentation metrics: hand-counted cases, legacy identities, edge cases, torchmetrics cross-checks."""

from __future__ import annotations

import json
from fractions import Fraction

import numpy as np
import pytest
import torch
from torchmetrics.classification import BinaryAccuracy, MulticlassAccuracy, MulticlassJaccardIndex

from conceptattention.evaluation import (
    MetricInputError,
    MulticlassSegmentationMetrics,
    SegmentationMetrics,
    aggregate,
    aggregate_multiclass,
    binarize_saliency,
    multiclass_per_image_counts,
    normalize_saliency,
    per_image_counts,
    pooled_average_precision,
)


def step_average_precision(scores: list[float], labels: list[int]) -> float:
    """Non-interpolated AP by its definition: sum over distinct thresholds (descending) of (R_n - R_{n-1}) P_n."""
    positives = sum(labels)
    previous_recall, total = 0.0, 0.0
    for threshold in sorted(set(scores), reverse=True):
        selected = [label for score, label in zip(scores, labels) if score >= threshold]
        recall = sum(selected) / positives
        total += (recall - previous_recall) * (sum(selected) / len(selected))
        previous_recall = recall
    return total


def pooled_reference_ap(scores: np.ndarray, target: np.ndarray) -> float:
    """Reference pooled AP: concat(1 - s, s) against concat(t == 0, t == 1) over valid pixels."""
    valid = target >= 0
    pooled_scores = np.concatenate([1.0 - scores[valid], scores[valid]]).tolist()
    pooled_labels = np.concatenate([target[valid] == 0, target[valid] == 1]).astype(int).tolist()
    return step_average_precision(pooled_scores, pooled_labels)


def random_images(count: int, seed: int, *, void_fraction: float = 0.1) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Random (scores, target) pairs of varying non-square sizes with some void pixels."""
    generator = torch.Generator().manual_seed(seed)
    images = []
    for _ in range(count):
        height, width = (int(value) for value in torch.randint(3, 12, (2,), generator=generator))
        target = (torch.rand(height, width, generator=generator) > 0.6).long()
        target[torch.rand(height, width, generator=generator) < void_fraction] = -1
        scores = 0.5 * target.clamp(min=0).double() + torch.rand(
            height, width, generator=generator, dtype=torch.float64
        )
        images.append((scores, target))
    return images


# Hand-counted example. Scores min-max normalise to [[1, 1/8], [5/8, 0]], mean 7/16 -> prediction [[1, 0], [1, 0]].
HAND_SCORES = torch.tensor([[0.9, 0.2], [0.6, 0.1]], dtype=torch.float64)
HAND_TARGET = torch.tensor([[1, 0], [0, 1]])


class TestBinarisation:
    """Min-max normalisation and the strict mean threshold."""

    def test_normalisation_and_mean_threshold_by_hand(self) -> None:
        prediction, normalized = binarize_saliency(HAND_SCORES)
        assert torch.allclose(normalized, torch.tensor([[1.0, 0.125], [0.625, 0.0]], dtype=torch.float64))
        assert prediction.tolist() == [[True, False], [True, False]]

    def test_threshold_is_strict(self) -> None:
        # Normalised [0, 0.5, 1, 0.5]: mean 0.5, so the two pixels at exactly the mean are background.
        prediction, _ = binarize_saliency(torch.tensor([[0.0, 1.0], [2.0, 1.0]]))
        assert prediction.tolist() == [[False, False], [True, False]]

    def test_fixed_threshold_on_normalised_map(self) -> None:
        prediction, _ = binarize_saliency(torch.tensor([[0.0, 3.0], [6.0, 10.0]]), threshold=0.3)
        assert prediction.tolist() == [[False, False], [True, True]]

    def test_mean_threshold_equals_raw_mean_threshold(self) -> None:
        for scores, _ in random_images(5, seed=3):
            prediction, _ = binarize_saliency(scores * 7.0 - 3.0)
            assert torch.equal(prediction, scores > scores.mean())

    def test_void_pixels_do_not_move_statistics(self) -> None:
        valid = torch.tensor([[True, True, True], [True, False, True]])
        scores = torch.tensor([[0.0, 1.0, 2.0], [3.0, 1000.0, 4.0]])
        prediction, normalized = binarize_saliency(scores, valid)
        assert normalized[valid].max() == 1.0 and normalized[valid].min() == 0.0
        assert prediction[valid].tolist() == [False, False, False, True, True]  # mean over valid = 0.5

    def test_constant_map_becomes_zero(self) -> None:
        prediction, normalized = binarize_saliency(torch.full((3, 4), 2.5))
        assert not prediction.any() and torch.equal(normalized, torch.zeros(3, 4, dtype=torch.float64))

    def test_normalize_rejects_all_invalid(self) -> None:
        with pytest.raises(MetricInputError, match="every label pixel is void"):
            normalize_saliency(torch.rand(2, 2), torch.zeros(2, 2, dtype=torch.bool))


class TestPerImageCounts:
    """Per-image records on hand-counted examples."""

    def test_hand_counted_confusion_and_ap(self) -> None:
        record = per_image_counts(HAND_SCORES, HAND_TARGET, image_id="hand")
        assert (record["tp"], record["fp"], record["tn"], record["fn"], record["void"]) == (1, 1, 1, 1, 0)
        # Pooled vector, by hand: ranks give precisions 1/2, 2/3, 3/5, 1/2 at recalls 1/4, 1/2, 3/4, 1.
        # torchmetrics forms precision and recall in float32, hence the 1e-6 tolerance.
        assert record["average_precision"] == pytest.approx(float(Fraction(17, 30)), abs=1e-6)
        assert record["id"] == "hand"

    def test_hand_counted_dataset_metrics(self) -> None:
        result = aggregate([per_image_counts(HAND_SCORES, HAND_TARGET)])
        assert result["pixel_accuracy"] == 0.5
        assert result["iou_foreground"] == pytest.approx(1 / 3) and result["iou_background"] == pytest.approx(1 / 3)
        assert result["miou"] == pytest.approx(1 / 3)
        assert result["paper_compatible_miou"] == pytest.approx(0.5 / 1.5)

    def test_void_pixels_are_excluded_everywhere(self) -> None:
        scores = torch.tensor([[0.9, 0.2, -50.0], [0.6, 0.1, 50.0]], dtype=torch.float64)
        target = torch.tensor([[1, 0, -1], [0, 1, -1]])
        record = per_image_counts(scores, target)
        reference = per_image_counts(HAND_SCORES, HAND_TARGET)
        assert record["void"] == 2
        assert {key: record[key] for key in ("tp", "fp", "tn", "fn", "average_precision")} == {
            key: reference[key] for key in ("tp", "fp", "tn", "fn", "average_precision")
        }

    def test_all_background_prediction(self) -> None:
        target = torch.tensor([[1, 1, 0], [0, 0, -1]])
        record = per_image_counts(torch.rand(2, 3), target, prediction=torch.zeros(2, 3, dtype=torch.bool))
        assert (record["tp"], record["fp"], record["tn"], record["fn"]) == (0, 0, 3, 2)
        result = aggregate([record])
        assert result["iou_foreground"] == 0.0
        assert result["iou_background"] == pytest.approx(3 / 5)
        assert result["miou"] == pytest.approx(3 / 10)
        assert result["pixel_accuracy"] == pytest.approx(3 / 5)

    def test_constant_map_gives_background_and_ap_one_half(self) -> None:
        target = torch.tensor([[1, 1, 0], [0, 0, 0]])
        record = per_image_counts(torch.full((2, 3), 0.7), target)
        assert (record["tp"], record["fp"], record["tn"], record["fn"]) == (0, 0, 4, 2)
        assert record["average_precision"] == 0.5
        # Zeroing s before forming 1 - s (not what Chefer does) would rank the background channel first.
        assert pooled_average_precision(torch.zeros(2, 3), target) != pytest.approx(0.5)
        result = aggregate([record])
        assert all(np.isfinite(value) for value in result.values() if isinstance(value, float))

    def test_all_foreground_label_has_no_nan(self) -> None:
        scores = torch.tensor([[0.1, 0.4], [0.8, 0.9]])
        result = aggregate([per_image_counts(scores, torch.ones(2, 2, dtype=torch.long))])
        assert result["iou_background"] == 0.0
        assert result["iou_foreground"] == pytest.approx(0.5)  # two of four predicted foreground
        assert 0.0 < result["map"] <= 1.0

    def test_void_only_image_counts_but_has_no_ap(self) -> None:
        void_record = per_image_counts(torch.rand(2, 2), torch.full((2, 2), -1))
        assert void_record["average_precision"] is None and void_record["void"] == 4
        hand_record = per_image_counts(HAND_SCORES, HAND_TARGET)
        result = aggregate([void_record, hand_record])
        assert result["num_images"] == 2 and result["num_images_with_ap"] == 1
        assert result["map"] == hand_record["average_precision"]
        assert result["num_void_pixels"] == 4
        with pytest.raises(MetricInputError, match="Every scored pixel is void"):
            aggregate([void_record])

    def test_precomputed_prediction_replaces_threshold(self) -> None:
        prediction = torch.tensor([[1, 1], [0, 1]])
        record = per_image_counts(HAND_SCORES, HAND_TARGET, prediction=prediction)
        assert (record["tp"], record["fp"], record["tn"], record["fn"]) == (2, 1, 1, 0)

    def test_pooled_ap_matches_definition_on_random_maps(self) -> None:
        for scores, target in random_images(6, seed=11):
            record = per_image_counts(scores, target)
            valid = target >= 0
            normalized = (scores - scores[valid].min()) / (scores[valid].max() - scores[valid].min())
            reference = pooled_reference_ap(normalized.numpy(), target.numpy())
            assert record["average_precision"] == pytest.approx(reference, abs=1e-6)

    def test_raw_ap_scores_with_large_values_keep_their_ranking(self) -> None:
        # Raw scores far outside [0, 1] must not saturate a sigmoid into ties.
        scores = torch.tensor([[40.0, 55.0, 61.0], [70.0, 80.0, 95.0]], dtype=torch.float64)
        target = torch.tensor([[0, 1, 0], [1, 1, 1]])
        raw = per_image_counts(scores, target, ap_scores="raw")["average_precision"]
        assert raw == pytest.approx(pooled_reference_ap(scores.numpy(), target.numpy()), abs=1e-6)
        normalized = per_image_counts(scores, target)["average_precision"]
        assert raw != pytest.approx(normalized)  # the pooled AP is not scale invariant


class TestPaperCompatibility:
    """The labelled legacy columns reproduce the official harnesses' computations."""

    @staticmethod
    def legacy_stacked_metrics(images: list[tuple[torch.Tensor, torch.Tensor]]) -> tuple[float, float]:
        """Chefer's batch_pix_accuracy / batch_intersection_union fed stacked (1 - x, x) without argmax."""
        correct = labelled = 0
        intersection, area_prediction, area_label = np.zeros(2), np.zeros(2), np.zeros(2)
        for scores, target in images:
            prediction = (scores > scores.mean()).long().numpy()
            label = target.numpy()
            stacked_prediction = np.stack([1 - prediction, prediction]) + 1  # [2, H, W] in {1, 2}
            stacked_label = np.stack([1 - label, label]) + 1  # [2, H, W]
            correct += int(((stacked_prediction == stacked_label) & (stacked_label > 0)).sum())
            labelled += int((stacked_label > 0).sum())
            stacked_prediction = stacked_prediction * (stacked_label > 0)
            hits = stacked_prediction * (stacked_prediction == stacked_label)
            intersection += np.histogram(hits, bins=2, range=(1, 2))[0]
            area_prediction += np.histogram(stacked_prediction, bins=2, range=(1, 2))[0]
            area_label += np.histogram(stacked_label, bins=2, range=(1, 2))[0]
        iou = intersection / (area_prediction + area_label - intersection)
        return correct / labelled, float(iou.mean())

    def test_legacy_imagenet_miou_is_acc_over_two_minus_acc(self) -> None:
        images = random_images(8, seed=5, void_fraction=0.0)
        result = aggregate(per_image_counts(scores, target) for scores, target in images)
        legacy_accuracy, legacy_miou = self.legacy_stacked_metrics(images)
        assert result["pixel_accuracy"] == pytest.approx(legacy_accuracy)
        assert result["paper_compatible_miou"] == pytest.approx(legacy_miou)
        assert result["paper_compatible_miou"] >= result["miou"]  # x / (x + E) is concave
        # The paper's ConceptAttention ImageNet row: acc 83.07 -> "mIoU" 71.04.
        assert round(100 * 0.8307 / (2 - 0.8307), 2) == 71.04

    def test_legacy_voc_accuracy_counts_void_as_half_wrong(self) -> None:
        images = random_images(8, seed=6, void_fraction=0.2)
        result = aggregate(per_image_counts(scores, target) for scores, target in images)
        correct = labelled = 0
        for scores, target in images:
            valid = target >= 0
            prediction = (scores > scores[valid].mean()).long().numpy()
            label = target.numpy()
            stacked_prediction = np.stack([1 - prediction, prediction]) + 1  # [2, H, W]
            stacked_label = np.stack([1 - label, label]) + 1  # [2, H, W]; void: 3 in channel 0, 0 in channel 1
            correct += int(((stacked_prediction == stacked_label) & (stacked_label > 0)).sum())
            labelled += int((stacked_label > 0).sum())
        assert result["num_void_pixels"] > 0
        assert result["paper_compatible_voc_pixel_accuracy"] == pytest.approx(correct / labelled)
        assert result["paper_compatible_voc_pixel_accuracy"] < result["pixel_accuracy"]


class TestAgainstTorchmetrics:
    """Dataset-level numbers equal torchmetrics modules updated image by image."""

    def test_accuracy_and_iou(self) -> None:
        images = random_images(10, seed=7)
        metrics = SegmentationMetrics()
        accuracy = BinaryAccuracy(ignore_index=-1)
        jaccard = MulticlassJaccardIndex(num_classes=2, average="none", ignore_index=-1)
        for scores, target in images:
            metrics.update(scores, target)
            prediction, _ = binarize_saliency(scores, target >= 0)
            accuracy.update(prediction.long(), target)
            jaccard.update(prediction.long(), target)
        result = metrics.compute()
        per_class = jaccard.compute()
        assert result["pixel_accuracy"] == pytest.approx(float(accuracy.compute()), abs=1e-6)
        assert result["iou_background"] == pytest.approx(float(per_class[0]), abs=1e-6)
        assert result["iou_foreground"] == pytest.approx(float(per_class[1]), abs=1e-6)
        assert result["miou"] == pytest.approx(float(per_class.mean()), abs=1e-6)

    def test_map_is_mean_of_per_image_aps(self) -> None:
        images = random_images(5, seed=8)
        metrics = SegmentationMetrics()
        for scores, target in images:
            metrics.update(scores, target)
        expected = [
            pooled_reference_ap(normalize_saliency(scores, target >= 0).numpy(), target.numpy())
            for scores, target in images
        ]
        assert metrics.compute()["map"] == pytest.approx(float(np.mean(expected)), abs=1e-6)


class TestStateAndMerging:
    """Records combine exactly across processes and survive JSON."""

    def test_merge_equals_single_pass(self) -> None:
        images = random_images(9, seed=9)
        single, first, second = SegmentationMetrics(), SegmentationMetrics(), SegmentationMetrics()
        for position, (scores, target) in enumerate(images):
            single.update(scores, target, image_id=str(position))
            (first if position % 2 else second).update(scores, target, image_id=str(position))
        first.merge(second)
        assert len(first) == 9
        # Exactly equal, map included: the AP sum is correctly rounded (math.fsum), hence order independent.
        assert first.compute() == single.compute()

    def test_json_round_trip_is_exact(self) -> None:
        metrics = SegmentationMetrics(threshold=0.4)
        for scores, target in random_images(4, seed=10):
            metrics.update(scores, target)
        restored = SegmentationMetrics.from_state_dict(json.loads(json.dumps(metrics.state_dict())))
        assert restored.compute() == metrics.compute()
        assert restored.threshold == 0.4

    def test_aggregate_of_records_equals_compute(self) -> None:
        metrics = SegmentationMetrics()
        for scores, target in random_images(3, seed=12):
            metrics.update(scores, target)
        assert aggregate(metrics.records) == metrics.compute()
        metrics.reset()
        with pytest.raises(MetricInputError, match="No images were scored"):
            metrics.compute()

    def test_merge_rejects_different_settings(self) -> None:
        with pytest.raises(MetricInputError, match="different settings"):
            SegmentationMetrics().merge(SegmentationMetrics(ap_scores="raw"))


class TestBinaryInputErrors:
    """Bad inputs raise MetricInputError with an actionable message."""

    @pytest.mark.parametrize(
        ("scores", "target", "message"),
        [
            (torch.rand(2, 3), torch.zeros(3, 2, dtype=torch.long), "upsample the saliency map"),
            (torch.rand(2, 2), torch.zeros(2, 2), "integer or boolean labels"),
            (torch.rand(2, 2), torch.tensor([[0, 2], [1, 0]]), "Binarise multi-class labels"),
            (torch.tensor([[0.0, float("nan")], [1.0, 0.0]]), torch.zeros(2, 2, dtype=torch.long), "NaN"),
            (torch.rand(2, 2), torch.zeros(1, 2, 2, dtype=torch.long), "2-D"),
            ([[0.1, 0.2]], torch.zeros(1, 2, dtype=torch.long), "torch.Tensor or numpy"),
        ],
    )
    def test_bad_scores_or_target(self, scores: object, target: torch.Tensor, message: str) -> None:
        with pytest.raises(MetricInputError, match=message):
            per_image_counts(scores, target)  # type: ignore[arg-type]

    @pytest.mark.parametrize("threshold", ["median", 1.5, -0.1, True])
    def test_bad_threshold(self, threshold: object) -> None:
        with pytest.raises(MetricInputError, match="threshold"):
            SegmentationMetrics(threshold=threshold)  # type: ignore[arg-type]

    def test_bad_ap_scores(self) -> None:
        with pytest.raises(MetricInputError, match="ap_scores"):
            SegmentationMetrics(ap_scores="softmax")  # type: ignore[arg-type]

    def test_bad_prediction(self) -> None:
        with pytest.raises(MetricInputError, match="foreground mask"):
            per_image_counts(HAND_SCORES, HAND_TARGET, prediction=torch.tensor([[0, 2], [1, 0]]))
        with pytest.raises(MetricInputError, match="resize the mask"):
            per_image_counts(HAND_SCORES, HAND_TARGET, prediction=torch.zeros(3, 3, dtype=torch.bool))

    def test_malformed_record(self) -> None:
        with pytest.raises(MetricInputError, match="has no 'fn'"):
            aggregate([{"tp": 1, "fp": 0, "tn": 0, "void": 0, "average_precision": 1.0}])
        with pytest.raises(MetricInputError, match="negative count"):
            aggregate([{"tp": -1, "fp": 0, "tn": 0, "fn": 0, "void": 0, "average_precision": 1.0}])

    def test_numpy_inputs_are_accepted(self) -> None:
        record = per_image_counts(HAND_SCORES.numpy(), HAND_TARGET.numpy().astype(np.int8))
        assert record == per_image_counts(HAND_SCORES, HAND_TARGET)


class TestMulticlass:
    """Multi-class argmax metrics (ShapesWorld, VOC multi-class)."""

    # Classes 0 (bg), 1, 2, 3; class 3 never appears; one void pixel.
    PREDICTION = torch.tensor([[0, 0, 1], [1, 2, 2], [0, 2, 1]])
    TARGET = torch.tensor([[0, 1, 1], [1, 2, 0], [0, 2, -1]])

    def test_hand_counted(self) -> None:
        record = multiclass_per_image_counts(self.PREDICTION, self.TARGET, 4)
        assert record["intersection"] == [2, 2, 2, 0]
        assert record["predicted"] == [3, 2, 3, 0]  # the void pixel's prediction is not counted
        assert record["labelled"] == [3, 3, 2, 0]
        assert record["void"] == 1
        result = aggregate_multiclass([record], ["bg", "circle", "square", "star"])
        assert result["pixel_accuracy"] == pytest.approx(6 / 8)
        assert result["per_class_iou"] == {"bg": 2 / 4, "circle": 2 / 3, "square": 2 / 3, "star": None}
        assert result["classes_present"] == ["bg", "circle", "square"]
        assert result["miou"] == pytest.approx((1 / 2 + 2 / 3 + 2 / 3) / 3)

    def test_scores_are_argmaxed(self) -> None:
        scores = torch.nn.functional.one_hot(self.PREDICTION, 4).permute(2, 0, 1).double()  # [H, W, C] -> [C, H, W]
        assert multiclass_per_image_counts(scores, self.TARGET, 4) == multiclass_per_image_counts(
            self.PREDICTION, self.TARGET, 4
        )

    def test_against_torchmetrics(self) -> None:
        generator = torch.Generator().manual_seed(13)
        metrics = MulticlassSegmentationMetrics(5)
        jaccard = MulticlassJaccardIndex(num_classes=5, average="none", ignore_index=-1)
        accuracy = MulticlassAccuracy(num_classes=5, average="micro", ignore_index=-1)
        for _ in range(6):
            prediction = torch.randint(0, 5, (7, 9), generator=generator)
            target = torch.randint(-1, 5, (7, 9), generator=generator)
            metrics.update(prediction, target)
            jaccard.update(prediction, target)
            accuracy.update(prediction, target)
        result = metrics.compute()
        per_class = jaccard.compute()
        assert [result["per_class_iou"][str(index)] for index in range(5)] == pytest.approx(per_class.tolist())
        assert result["miou"] == pytest.approx(float(per_class.mean()))
        assert result["pixel_accuracy"] == pytest.approx(float(accuracy.compute()))

    def test_merge_and_json_round_trip(self) -> None:
        first, second = MulticlassSegmentationMetrics(4), MulticlassSegmentationMetrics(4)
        first.update(self.PREDICTION, self.TARGET, image_id="a")
        second.update(self.TARGET.clamp(min=0), self.TARGET, image_id="b")
        first.merge(second)
        restored = MulticlassSegmentationMetrics.from_state_dict(json.loads(json.dumps(first.state_dict())))
        assert restored.compute() == first.compute()
        assert restored.compute()["num_images"] == 2

    def test_errors(self) -> None:
        with pytest.raises(MetricInputError, match="outside"):
            multiclass_per_image_counts(torch.tensor([[0, 4]]), torch.tensor([[0, 1]]), 4)
        with pytest.raises(MetricInputError, match="other than -1"):
            multiclass_per_image_counts(torch.tensor([[0, 1]]), torch.tensor([[0, 7]]), 4)
        with pytest.raises(MetricInputError, match="matching"):
            multiclass_per_image_counts(torch.zeros(2, 2, dtype=torch.long), torch.zeros(2, 3, dtype=torch.long), 4)
        with pytest.raises(MetricInputError, match="class names"):
            MulticlassSegmentationMetrics(3, class_names=["a", "b"])
        with pytest.raises(MetricInputError, match="same `num_classes`"):
            MulticlassSegmentationMetrics(3).merge(MulticlassSegmentationMetrics(4))
