"""conceptattention: interpretable concept saliency maps from multi-modal diffusion transformers.

Implements ConceptAttention (Helbling et al., ICML 2025, arXiv:2502.04320) on unmodified diffusers pipelines.

Example:
    >>> from conceptattention import ConceptAttention
    >>> from conceptattention.testing import tiny_flux_pipeline
    >>> pipe = tiny_flux_pipeline()
    >>> with ConceptAttention(pipe, ["dragon", "rock", "sky"]) as ca:
    ...     image = pipe("a dragon on a rock", height=32, width=32, num_inference_steps=2,
    ...                  max_sequence_length=32).images[0]
    >>> ca.maps.concepts
    ('dragon', 'rock', 'sky')
"""

from .adapters import (
    ConceptAdapter,
    UnsupportedModelError,
    UnsupportedSetupError,
    get_adapter,
    register_adapter,
    supported_models,
)
from .capture import ConceptAttention, NoMapsError
from .config import ConceptAttentionConfig, ConfigError
from .encoding import ConceptError
from .explain import explain
from .maps import ConceptMaps


__version__ = "0.1.0"

__all__ = [
    "ConceptAdapter",
    "ConceptAttention",
    "ConceptAttentionConfig",
    "ConceptError",
    "ConceptMaps",
    "ConfigError",
    "NoMapsError",
    "UnsupportedModelError",
    "UnsupportedSetupError",
    "__version__",
    "explain",
    "get_adapter",
    "register_adapter",
    "supported_models",
]
