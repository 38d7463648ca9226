"""ShapesWorld: a procedural dataset and the project's own small FLUX-architecture text-to-image model.

Public API:

* :class:`ShapesWorldDataset`, :class:`ShapesWorldSample`: deterministic scenes with captions and exact labels.
* :func:`render_scenes`, :class:`SceneSpec`, :class:`ObjectSpec`: the vectorised renderer.
* :func:`load_pipeline`: the shipped (or any saved) ShapesWorld ``FluxPipeline``, offline.
* :func:`recommended_call_kwargs`: ``height``, ``width``, ``max_sequence_length``, ``guidance_scale`` for calls.
* :class:`FidelityChecker`, :func:`evaluate_fidelity`: generation fidelity judged with the renderer's knowledge.

Example:
    >>> from conceptattention.shapesworld import ShapesWorldDataset
    >>> sample = ShapesWorldDataset("test", seed=0, n=1)[0]
    >>> sorted(sample.concepts)
    ['background', 'colour', 'object']
"""

from conceptattention.shapesworld.checker import FidelityChecker, ObjectCheck, check_scene
from conceptattention.shapesworld.dataset import (
    CAPTION_WORDS,
    HELD_OUT_PAIRS,
    SPLITS,
    DatasetError,
    ShapesWorldDataset,
    ShapesWorldSample,
)
from conceptattention.shapesworld.fidelity import FidelityReport, evaluate_fidelity
from conceptattention.shapesworld.model import (
    DEFAULT_MODEL_DIR,
    ModelConfig,
    ModelError,
    apply_position_lever,
    build_pipeline,
    load_pipeline,
    recommended_call_kwargs,
    remove_position_lever,
)
from conceptattention.shapesworld.render import (
    BACKGROUNDS,
    COLOURS,
    DATA_VERSIONS,
    IMAGE_SIZE,
    OBJECT_COLOURS,
    OBJECTS,
    ObjectSpec,
    RenderedBatch,
    SceneError,
    SceneSpec,
    render_scenes,
    typical_colours,
)


__all__ = [
    "BACKGROUNDS",
    "DATA_VERSIONS",
    "typical_colours",
    "CAPTION_WORDS",
    "COLOURS",
    "DEFAULT_MODEL_DIR",
    "HELD_OUT_PAIRS",
    "IMAGE_SIZE",
    "OBJECTS",
    "OBJECT_COLOURS",
    "SPLITS",
    "DatasetError",
    "FidelityChecker",
    "FidelityReport",
    "ModelConfig",
    "ModelError",
    "ObjectCheck",
    "ObjectSpec",
    "RenderedBatch",
    "SceneError",
    "SceneSpec",
    "ShapesWorldDataset",
    "ShapesWorldSample",
    "apply_position_lever",
    "build_pipeline",
    "check_scene",
    "evaluate_fidelity",
    "load_pipeline",
    "recommended_call_kwargs",
    "remove_position_lever",
    "render_scenes",
]
