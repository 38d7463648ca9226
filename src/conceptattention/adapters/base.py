"""The adapter interface: everything ConceptAttention needs to know about one transformer architecture."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from ..config import ConceptPooling


if TYPE_CHECKING:
    from PIL import Image

    from ..session import ConceptSession


class UnsupportedSetupError(RuntimeError):
    """The model is set up in a way that would give silently wrong maps (caching, checkpointing, parallelism...)."""


@dataclass(frozen=True)
class ExplainBatch:
    """Inputs of one transformer forward on the real-image path.

    Attributes:
        transformer_kwargs: Keyword arguments of the transformer call (noised latents included).
        latent_shape: Shape of the clean latents, for reference.
    """

    transformer_kwargs: dict[str, Any]
    latent_shape: tuple[int, ...]


class ConceptAdapter(ABC):
    """Architecture-specific pieces of ConceptAttention. One subclass per family, registered in the registry.

    Subclasses describe the joint blocks, build the attention processor that runs the concept stream, encode
    concept strings with the pipeline's text encoder, and prepare inputs for the real-image path.

    Attributes:
        name: Short family name (``"flux"``).
        transformer_classes: Names of the diffusers transformer classes handled.
        pipeline_classes: Names of the diffusers pipelines that drive them.
        modality: ``"image"`` or ``"video"``.
        official_default_layers: Human-readable description of the default layer choice.
        tested: How the adapter is tested (shown in the README's table of supported models).
    """

    name: str = ""
    transformer_classes: tuple[str, ...] = ()
    pipeline_classes: tuple[str, ...] = ()
    modality: str = "image"
    official_default_layers: str = ""
    tested: str = "adapter battery (tiny random model + tiny offline pipeline), naive float64 reference for every space/mode"

    # ----- structure -------------------------------------------------------------------------------------------

    @abstractmethod
    def joint_blocks(self, transformer: nn.Module) -> list[nn.Module]:
        """The joint (double-stream) blocks in execution order."""

    @abstractmethod
    def block_path(self, index: int) -> str:
        """Module path of joint block ``index`` inside the transformer (``"transformer_blocks.15"``)."""

    @abstractmethod
    def attention_module(self, block: nn.Module) -> nn.Module:
        """The attention module of a joint block whose processor is replaced."""

    def default_layers(self, num_blocks: int) -> tuple[int, ...]:
        """Default layer selection: the last four joint blocks (FLUX.1: 15-18, as the official code)."""
        return tuple(range(max(0, num_blocks - 4), num_blocks))

    @abstractmethod
    def make_processor(
        self, session: ConceptSession, layer: int, block: nn.Module, original_processor: Any, transformer: nn.Module
    ) -> Any:
        """Build the concept-attention processor for joint block ``layer`` (replacing ``original_processor``)."""

    def check_model(self, transformer: nn.Module) -> None:
        """Raise :class:`UnsupportedSetupError` for set-ups that this adapter cannot handle faithfully."""
        return None

    # ----- per call -------------------------------------------------------------------------------------------

    @abstractmethod
    def capture_call(self, transformer: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> dict[str, Any]:
        """Pick from a transformer call's arguments what the processors need (never computes anything)."""

    @abstractmethod
    def token_grid(self, call_inputs: dict[str, Any], num_image_tokens: int) -> tuple[int, int, int]:
        """``(frames, h, w)`` of the image tokens of a call; ``frames·h·w`` must equal ``num_image_tokens``."""

    def size_multiple(self, pipeline: Any) -> int:
        """Image height and width must be multiples of this (VAE downsampling × patch size)."""
        return int(getattr(pipeline, "vae_scale_factor", 8)) * 2

    def cfg_batch_slice(self, batch_size: int, call_inputs: dict[str, Any], pipeline: Any | None) -> slice:
        """Rows of the batch whose maps are reported (default: all).

        Pipelines that batch classifier-free guidance as ``[uncond, cond]`` return ``slice(batch_size // 2, None)``
        while guidance is on (read from the pipeline, e.g. ``pipeline.do_classifier_free_guidance``); ``pipeline``
        is None when a bare transformer is driven.
        """
        return slice(None)

    def is_auxiliary_call(self, call_inputs: dict[str, Any]) -> bool:
        """Whether a transformer call is an auxiliary guidance call to ignore (e.g. SD3 skip-layer guidance)."""
        return False

    def install_hooks(self, transformer: nn.Module, session: ConceptSession) -> list[Any]:
        """Extra capture-only hooks (e.g. block pre-hooks that store a block's ``temb`` in the session).

        Returns:
            Handles with a ``remove()`` method; they are removed when the ``with`` block ends, also after errors.
        """
        return []

    # ----- text ---------------------------------------------------------------------------------------------------

    @abstractmethod
    def encode_concepts(
        self, pipeline: Any, concepts: Sequence[str], pooling: ConceptPooling, device: torch.device | None = None
    ) -> torch.Tensor:
        """Encode all concepts in one batched text-encoder call: ``[C, D_text]``."""

    # ----- real images -------------------------------------------------------------------------------------------

    def prepare_explain(
        self,
        pipeline: Any,
        image: Image.Image,
        *,
        caption: str,
        noise_level: float,
        seeds: Sequence[int],
        height: int,
        width: int,
        guidance_scale: float,
        image_pooled: str,
    ) -> ExplainBatch:
        """Encode an image, noise it once per seed, and build one batched transformer call."""
        raise NotImplementedError(f"The {self.name!r} adapter has no real-image (explain) path yet.")

    def explain_resolution(self, pipeline: Any, image_size: tuple[int, int]) -> tuple[int, int]:
        """Default ``(height, width)`` for the real-image path (aspect ratio kept)."""
        raise NotImplementedError(f"The {self.name!r} adapter has no real-image (explain) path yet.")


def common_checks(transformer: nn.Module) -> None:
    """Checks shared by all adapters: cache accelerators and context parallelism.

    Raises:
        UnsupportedSetupError: with the way out in the message.
    """
    is_cache_enabled = getattr(transformer, "is_cache_enabled", False)
    if is_cache_enabled:
        raise UnsupportedSetupError(
            "A cache accelerator (FirstBlockCache, TaylorSeer, MagCache, FasterCache, ...) is enabled on the "
            "transformer: it skips blocks, so concept maps would be missing or stale. Call "
            "`transformer.disable_cache()` before using ConceptAttention."
        )
    if getattr(transformer, "_parallel_config", None) is not None:
        raise UnsupportedSetupError(
            "Context/tensor parallelism is enabled on the transformer: image tokens are sharded across ranks, but "
            "concept attention needs every image key. Run ConceptAttention without `enable_parallelism`."
        )
