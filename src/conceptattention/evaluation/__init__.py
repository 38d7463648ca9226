"""Evaluation of concept saliency maps: segmentation metrics and dataset loaders.

Metrics follow the Chefer et al. (2021) standard used by ImageNet-Segmentation papers; the numbers produced by the
official ConceptAttention harness are available only under explicitly named ``paper_compatible_*`` keys. Loaders read
user-supplied files (nothing is downloaded).
"""

from conceptattention.evaluation.datasets import (
    IMAGENET_BACKGROUND_CONCEPTS,
    VOC_BACKGROUND_CONCEPTS,
    VOC_CLASS_NAMES,
    VOC_CLASS_RENAMES,
    DatasetFormatError,
    DatasetNotFoundError,
    ImageNetSegmentation,
    PascalVOCSingleClass,
    SegmentationSample,
)
from conceptattention.evaluation.metrics import (
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


__all__ = [
    "IMAGENET_BACKGROUND_CONCEPTS",
    "VOC_BACKGROUND_CONCEPTS",
    "VOC_CLASS_NAMES",
    "VOC_CLASS_RENAMES",
    "DatasetFormatError",
    "DatasetNotFoundError",
    "ImageNetSegmentation",
    "MetricInputError",
    "MulticlassSegmentationMetrics",
    "PascalVOCSingleClass",
    "SegmentationMetrics",
    "SegmentationSample",
    "aggregate",
    "aggregate_multiclass",
    "binarize_saliency",
    "multiclass_per_image_counts",
    "normalize_saliency",
    "per_image_counts",
    "pooled_average_precision",
]
