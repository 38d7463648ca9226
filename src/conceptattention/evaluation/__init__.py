"""Evaluation of concept saliency maps: segmentation metrics and dataset loaders.

Metrics follow the Chefer et al. (2021) standard used by ImageNet-Segmentation papers; the numbers produced by the
official ConceptAttention harness are available only under explicitly named ``paper_compatible_*`` keys. Loaders read
user-supplied files (nothing is downloaded).

``__all__`` gathers the public names of the submodules (all of them for datasets, metrics, multiclass_metrics, tasks, daam, daam_images and the
ShapesWorld report; the library entry points of the loop, results, distributed, report, ablate and methods).
The evaluation of one method on one dataset is :func:`evaluate` (:mod:`~conceptattention.evaluation.loop`) over a
dataset of :mod:`~conceptattention.evaluation.tasks`, writing a folder of :mod:`~conceptattention.evaluation.results`
and a report of :mod:`~conceptattention.evaluation.report`, on one or several processes
(:mod:`~conceptattention.evaluation.distributed`).
"""

from conceptattention.evaluation import daam, datasets, metrics, multiclass_metrics, shapesworld_report, tasks
from conceptattention.evaluation.ablate import DEFAULT_NOISE_LEVELS, SWEEPS, SweepPoint, run_sweep, sweep_points
from conceptattention.evaluation.daam import (
    DAAMError,
    DAAMRecorder,
    concept_token_positions,
    daam_prompt,
)
from conceptattention.evaluation.daam_images import daam_explain
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
from conceptattention.evaluation.distributed import ProcessContext, process_context
from conceptattention.evaluation.loop import RunOptions, evaluate
from conceptattention.evaluation.methods import (
    METHODS,
    MapRequest,
    Method,
    MethodError,
    UnknownMethodError,
    get_method,
)
from conceptattention.evaluation.metrics import (
    MetricInputError,
    SegmentationMetrics,
    aggregate,
    binarize_saliency,
    normalize_saliency,
    per_image_counts,
    pooled_average_precision,
)
from conceptattention.evaluation.multiclass_metrics import (
    MulticlassSegmentationMetrics,
    aggregate_multiclass,
    multiclass_per_image_counts,
)
from conceptattention.evaluation.report import build_report
from conceptattention.evaluation.results import (
    ResultsFileError,
    RunMismatchError,
    check_output_folder,
    load_results,
)
from conceptattention.evaluation.shapesworld_report import (
    CONCEPT_KINDS,
    ConceptKindError,
    SceneConceptSet,
    all_background_record,
    concept_kind,
    kind_table,
    per_image_auroc,
    scene_concept_sets,
    score_scene,
    summarize_by_kind,
)
from conceptattention.evaluation.tasks import (
    DATASETS,
    EvaluationDataset,
    EvaluationItem,
    ImageNetSegEvaluation,
    ShapesWorldEvaluation,
    VOCEvaluation,
    build_dataset,
    parse_shapesworld_spec,
    read_class_names,
    score_item,
)


__all__: list[str] = []
__all__ += datasets.__all__
__all__ += metrics.__all__
__all__ += multiclass_metrics.__all__
__all__ += ["DEFAULT_NOISE_LEVELS", "SWEEPS", "SweepPoint", "run_sweep", "sweep_points"]
__all__ += ["METHODS", "MapRequest", "Method", "MethodError", "UnknownMethodError", "get_method"]
__all__ += daam.__all__
__all__ += ["daam_explain"]
__all__ += tasks.__all__
__all__ += ["ProcessContext", "process_context", "RunOptions", "evaluate", "build_report"]
__all__ += ["ResultsFileError", "RunMismatchError", "check_output_folder", "load_results"]
__all__ += shapesworld_report.__all__
