"""Evaluation methods: named configurations of one runner.

A :class:`Method` says how to turn an image and its concept list into maps (ConceptAttention through
:func:`conceptattention.explain` with a :class:`~conceptattention.ConceptAttentionConfig`, or the DAAM baseline for
UNet pipelines) and how maps become a prediction:

* ``"mean"``: the target concept's map thresholded at its mean (the Chefer standard for fg/bg benchmarks);
* ``"argmax"``: a pixel is foreground when the target concept has the largest map there (the official PascalVOC
  protocol, and the multi-class ShapesWorld protocol);
* ``"auto"``: the dataset's protocol (``mean`` on ImageNet-Segmentation, ``argmax`` on PascalVOC and ShapesWorld),
  except for DAAM, whose baseline protocol is always ``mean``.

Built-in methods (:data:`METHODS`) differ only in their options; every option can be overridden
(:func:`get_method`, or ``--layers``, ``--noise-level``, ``--samples`` ... on the command line). Three of them use
no model (ShapesWorld only, :mod:`conceptattention.evaluation.baselines`): ``colour-prior``, ``layout-prior`` and
``all-background``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
import torch.nn.functional as F
from PIL import Image

from conceptattention import ConceptAttention, ConceptAttentionConfig, ConceptMaps, ConfigError, explain
from conceptattention.errors import ConceptAttentionError
from conceptattention.evaluation.baselines import BASELINES, BaselineError, baseline_maps


__all__ = [
    "METHODS",
    "MapRequest",
    "Method",
    "MethodError",
    "UnknownMethodError",
    "get_method",
]

MethodKind = Literal["conceptattention", "daam", "colour-prior", "layout-prior", "all-background"]
METHOD_KINDS: tuple[str, ...] = ("conceptattention", "daam", *BASELINES)
Prediction = Literal["auto", "mean", "argmax"]
CaptionMode = Literal["dataset", "empty"]
Upsampling = Literal["bilinear", "nearest"]

PREDICTIONS: tuple[str, ...] = ("auto", "mean", "argmax")
CAPTION_MODES: tuple[str, ...] = ("dataset", "empty")
UPSAMPLINGS: tuple[str, ...] = ("bilinear", "nearest")


class MethodError(ConceptAttentionError, ValueError):
    """An evaluation method is misconfigured or does not fit the pipeline."""


class UnknownMethodError(MethodError):
    """No built-in method has the requested name."""


@dataclass(frozen=True)
class MapRequest:
    """What a method needs for one image.

    Attributes:
        image: The RGB image.
        concepts: The concept list (the target class among them).
        caption: The dataset's caption for the image (e.g. ``"a dog"``); used when the method's ``caption`` is
            ``"dataset"``.
        data_version: ShapesWorld data version of the image (the colour prior's palette); ignored otherwise.

    Example:
        >>> MapRequest(Image.new("RGB", (8, 8)), ("dog", "sky"), "a dog").concepts
        ('dog', 'sky')
    """

    image: Image.Image
    concepts: tuple[str, ...]
    caption: str = ""
    data_version: str = "v1"


@dataclass(frozen=True)
class Method:
    """One evaluated configuration.

    Args:
        name: Label used in reports and folder names.
        kind: ``"conceptattention"`` (an MM-DiT pipeline through :func:`conceptattention.explain`), ``"daam"``
            (a UNet pipeline through :func:`conceptattention.evaluation.daam_images.daam_explain`), or one of the model-free
            ShapesWorld baselines ``"colour-prior"``, ``"layout-prior"``, ``"all-background"``
            (:mod:`conceptattention.evaluation.baselines`; no pipeline is needed).
        config: ConceptAttention options (space, softmax, concept attention mask, layers, pooling ...); ignored by
            DAAM except ``layers`` (indices of cross-attention layers).
        noise_level: Noise level of the real-image path (rectified-flow time for MM-DiTs; fraction of the DDPM
            schedule for DAAM); ``None`` for ConceptAttention methods: the model's recommended levels (as
            :func:`conceptattention.explain`), 0.5 when the model records none.
        num_samples: Noise samples averaged per image (batched into one forward).
        seed: Seed of the first noise sample (the same for every image).
        caption: ``"dataset"`` (the dataset's caption, e.g. ``"a dog"``, as the paper) or ``"empty"``.
        prediction: ``"auto"``, ``"mean"`` or ``"argmax"`` (see the module docstring).
        resolution: Square model input side in pixels; ``None`` keeps the image's aspect ratio at the model's
            default area.
        upsample: How maps on the token grid are resized to the label resolution (``"bilinear"`` or ``"nearest"``).
        blur_sigma: Gaussian blur of the maps on the token grid (the paper's ImageNet script: 1.0 with a 3 x 3
            kernel); 0 disables it.
        blur_kernel: Odd kernel side of that blur.
        description: One line for reports.

    Example:
        >>> method = get_method("no-softmax", layers=(2, 3), noise_level=0.3)
        >>> method.config.softmax, method.config.layers, method.noise_level
        (False, (2, 3), 0.3)
    """

    name: str
    kind: MethodKind = "conceptattention"
    config: ConceptAttentionConfig = field(default_factory=ConceptAttentionConfig)
    noise_level: float | None = 0.5
    num_samples: int = 1
    seed: int = 0
    caption: CaptionMode = "dataset"
    prediction: Prediction = "auto"
    resolution: int | None = None
    upsample: Upsampling = "bilinear"
    blur_sigma: float = 0.0
    blur_kernel: int = 3
    description: str = ""

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name.strip() or "/" in self.name:
            raise MethodError(f"A method name must be a non-empty string without '/', got {self.name!r}.")
        _check_choice("kind", self.kind, METHOD_KINDS)
        _check_choice("prediction", self.prediction, PREDICTIONS)
        _check_choice("caption", self.caption, CAPTION_MODES)
        _check_choice("upsample", self.upsample, UPSAMPLINGS)
        if not isinstance(self.config, ConceptAttentionConfig):
            raise MethodError(f"config must be a ConceptAttentionConfig, got {type(self.config).__name__}.")
        if self.config.timesteps is not None:
            raise MethodError("timesteps do not apply to real-image evaluation; choose the noise level instead.")
        if self.noise_level is None and self.kind == "daam":
            raise MethodError("DAAM needs a noise_level in (0, 1]; None (the model's levels) is for MM-DiT models.")
        if self.noise_level is not None:
            if isinstance(self.noise_level, bool) or not isinstance(self.noise_level, int | float):
                raise MethodError(f"noise_level must be a number in (0, 1] or None, got {self.noise_level!r}.")
            if not 0.0 < float(self.noise_level) <= 1.0:
                raise MethodError(f"noise_level must be in (0, 1], got {self.noise_level!r}.")
        if isinstance(self.num_samples, bool) or not isinstance(self.num_samples, int) or self.num_samples < 1:
            raise MethodError(f"num_samples must be a positive integer, got {self.num_samples!r}.")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int):
            raise MethodError(f"seed must be an integer, got {self.seed!r}.")
        if self.resolution is not None and (
            isinstance(self.resolution, bool) or not isinstance(self.resolution, int) or self.resolution <= 0
        ):
            raise MethodError(f"resolution must be a positive integer (pixels) or None, got {self.resolution!r}.")
        if isinstance(self.blur_sigma, bool) or not isinstance(self.blur_sigma, int | float) or self.blur_sigma < 0:
            raise MethodError(f"blur_sigma must be a non-negative number, got {self.blur_sigma!r}.")
        if isinstance(self.blur_kernel, bool) or not isinstance(self.blur_kernel, int) or self.blur_kernel < 1:
            raise MethodError(f"blur_kernel must be a positive odd integer, got {self.blur_kernel!r}.")
        if self.blur_kernel % 2 == 0:
            raise MethodError(f"blur_kernel must be odd, got {self.blur_kernel}.")
        if self.noise_level is not None:
            object.__setattr__(self, "noise_level", float(self.noise_level))
        object.__setattr__(self, "blur_sigma", float(self.blur_sigma))

    # ----- description --------------------------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serialisable description (used to check that a resumed run has the same configuration).

        Example:
            >>> get_method("value").to_dict()["config"]["space"]
            'value'
        """
        out = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "config"}
        out["config"] = self.config.to_dict()
        return out

    def replace(self, **changes: Any) -> Method:
        """A copy with some options changed; :class:`ConceptAttentionConfig` fields may be given directly.

        Example:
            >>> get_method("conceptattention").replace(space="value", num_samples=2).config.space
            'value'
        """
        config_fields = {f.name for f in dataclasses.fields(ConceptAttentionConfig)}
        config_changes = {key: changes.pop(key) for key in list(changes) if key in config_fields}
        method_fields = {f.name for f in dataclasses.fields(Method)}
        unknown = sorted(set(changes) - method_fields)
        if unknown:
            raise MethodError(
                f"Unknown method option(s) {unknown}; method options are {sorted(method_fields)} and the fields of "
                "ConceptAttentionConfig."
            )
        try:
            config = self.config.replace(**config_changes) if config_changes else self.config
        except ConfigError as error:
            raise MethodError(str(error)) from error
        return dataclasses.replace(self, config=config, **changes)

    def prediction_rule(self, dataset_protocol: str) -> str:
        """The effective prediction rule (``"mean"`` or ``"argmax"``) on a dataset with the given protocol."""
        if self.prediction != "auto":
            return self.prediction
        if self.kind == "daam":
            return "mean"
        return dataset_protocol

    @property
    def needs_model(self) -> bool:
        """Whether the method runs a model (the ShapesWorld baselines do not)."""
        return self.kind not in BASELINES

    # ----- running ----------------------------------------------------------------------------------------------

    @property
    def batches_images(self) -> bool:
        """Whether several images share one model forward (DAAM); ConceptAttention batches noise samples."""
        return self.kind == "daam"

    def check_pipeline(self, pipeline: Any) -> None:
        """Fail early (before any output is written) if the pipeline cannot run this method.

        Raises:
            MethodError: A UNet pipeline for a ConceptAttention method, an MM-DiT for DAAM, layers out of range,
                an unsupported model.
        """
        if not self.needs_model:
            return
        is_unet = getattr(pipeline, "unet", None) is not None
        if self.kind == "daam":
            from conceptattention.evaluation.daam import DAAMError, DAAMRecorder

            if not is_unet:
                raise MethodError(
                    f"Method {self.name!r} is the DAAM baseline for UNet pipelines (Stable Diffusion 1.x/2.x/XL); "
                    f"{type(pipeline).__name__} has no UNet. Use 'cross-attention' for MM-DiT pipelines."
                )
            layers = self.config.layers
            if layers is not None and not all(isinstance(layer, int) for layer in layers):
                raise MethodError("DAAM layers must be integer indices of cross-attention layers.")
            try:
                DAAMRecorder(pipeline, layers=layers)  # validates the layer indices; installs nothing
            except DAAMError as error:
                raise MethodError(str(error)) from error
            return
        if is_unet:
            raise MethodError(
                f"Method {self.name!r} needs a multi-modal diffusion transformer pipeline (FLUX.1, ...); "
                f"{type(pipeline).__name__} is a UNet pipeline: use --method daam."
            )
        try:
            ConceptAttention(pipeline, ["concept a", "concept b"], config=self.config)  # validates; installs nothing
        except (ConfigError, TypeError) as error:
            raise MethodError(str(error)) from error

    def compute_maps(self, pipeline: Any, requests: Sequence[MapRequest]) -> list[torch.Tensor]:
        """Run the model: one float32 ``[C, h, w]`` map tensor per request (blurred if configured).

        Args:
            pipeline: The diffusers pipeline.
            requests: Images with their concepts and captions.

        Returns:
            Maps on the model's token (or latent) grid, concepts in request order.
        """
        if not self.needs_model:
            return [self._baseline(request) for request in requests]
        if self.kind == "daam":
            from conceptattention.evaluation.daam_images import daam_explain

            side = self.resolution
            layers = self.config.layers
            concept_maps = daam_explain(
                pipeline,
                [request.image for request in requests],
                [request.concepts for request in requests],
                captions=[self._caption(request) for request in requests],
                noise_level=self.noise_level,
                num_samples=self.num_samples,
                seed=self.seed,
                height=side,
                width=side,
                layers=None if layers is None else [int(layer) for layer in layers],
            )
        else:
            concept_maps = [self._explain(pipeline, request) for request in requests]
        return [self._blur(maps.tensor[:, 0]) for maps in concept_maps]  # [C, 1, h, w] -> [C, h, w]

    def _baseline(self, request: MapRequest) -> torch.Tensor:
        """Baseline maps ``[C, H, W]`` at the image's resolution (blurred if configured)."""
        import numpy as np

        array = np.asarray(request.image.convert("RGB"), dtype=np.float32) / 255.0  # [H, W, 3]
        image = torch.from_numpy(array).permute(2, 0, 1)  # [H, W, 3] -> [3, H, W]
        try:
            maps = baseline_maps(self.kind, image, request.concepts, request.data_version)
        except BaselineError as error:
            raise MethodError(str(error)) from error
        return self._blur(maps)

    def _caption(self, request: MapRequest) -> str:
        return request.caption if self.caption == "dataset" else ""

    def _explain(self, pipeline: Any, request: MapRequest) -> ConceptMaps:
        return explain(
            pipeline,
            request.image,
            list(request.concepts),
            caption=self._caption(request),
            noise_level=self.noise_level,
            num_samples=self.num_samples,
            seed=self.seed,
            height=self.resolution,
            width=self.resolution,
            config=self.config,
        )

    def _blur(self, maps: torch.Tensor) -> torch.Tensor:
        """Gaussian blur of ``[C, h, w]`` maps with reflect padding (identity when ``blur_sigma`` is 0)."""
        if self.blur_sigma == 0 or self.blur_kernel == 1:
            return maps
        radius = self.blur_kernel // 2
        if min(maps.shape[-2:]) <= radius:
            raise MethodError(
                f"The maps ({maps.shape[-2]}x{maps.shape[-1]}) are too small for a {self.blur_kernel}x"
                f"{self.blur_kernel} blur; use a smaller blur_kernel."
            )
        offsets = torch.arange(-radius, radius + 1, dtype=torch.float32)
        weights = torch.exp(-(offsets**2) / (2.0 * self.blur_sigma**2))
        weights = weights / weights.sum()
        kernel = torch.outer(weights, weights)[None, None]  # [1, 1, k, k]
        padded = F.pad(maps[:, None], (radius, radius, radius, radius), mode="reflect")  # [C, 1, h + 2r, w + 2r]
        return F.conv2d(padded, kernel)[:, 0]  # [C, 1, h, w] -> [C, h, w]


def _check_choice(name: str, value: Any, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise MethodError(f"{name}={value!r} is not supported; choose one of {', '.join(map(repr, choices))}.")


METHODS: dict[str, Method] = {
    method.name: method
    for method in (
        Method(
            "conceptattention",
            description="ConceptAttention: output space, softmax over concepts, concepts attend to image and concepts",
        ),
        Method(
            "no-softmax",
            config=ConceptAttentionConfig(softmax=False),
            description="ConceptAttention output space without the softmax over concepts (raw dot products)",
        ),
        Method(
            "cross-attention",
            config=ConceptAttentionConfig(space="cross_attention"),
            description="cross-attention space: image queries against concept keys, mean over heads, softmax",
        ),
        Method(
            "value",
            config=ConceptAttentionConfig(space="value"),
            description="value space: image values against concept values, softmax",
        ),
        Method(
            "cross-only",
            config=ConceptAttentionConfig(concept_attention="cross"),
            description="concept tokens attend to the image tokens only (Table 4 ablation)",
        ),
        Method(
            "self-only",
            config=ConceptAttentionConfig(concept_attention="self"),
            description="concept tokens attend to each other only (Table 4 ablation)",
        ),
        Method(
            "none",
            config=ConceptAttentionConfig(concept_attention="none"),
            description="no concept attention: concept outputs are their values (Table 4 ablation)",
        ),
        Method(
            "daam",
            kind="daam",
            description="DAAM-style baseline for UNet pipelines: summed cross-attention of the concept's prompt tokens",
        ),
        Method(
            "colour-prior",
            kind="colour-prior",
            description="no model, no caption (ShapesWorld): each pixel to the concept whose typical RGB is nearest",
        ),
        Method(
            "layout-prior",
            kind="layout-prior",
            description="no model, no caption (ShapesWorld): top half sky, bottom half ground, objects nothing",
        ),
        Method(
            "all-background",
            kind="all-background",
            description="no model (ShapesWorld): every map 0 (no foreground; argmax ties give no concept)",
        ),
    )
}
"""The built-in methods, by name."""


def get_method(name: str, **overrides: Any) -> Method:
    """A built-in method, optionally with options changed.

    Args:
        name: A key of :data:`METHODS`.
        **overrides: :class:`Method` fields or :class:`~conceptattention.ConceptAttentionConfig` fields.

    Returns:
        The method.

    Raises:
        UnknownMethodError: For an unknown name (the message lists the known ones).
        MethodError: For an invalid override.

    Example:
        >>> get_method("cross-attention", num_samples=4).num_samples
        4
    """
    if name not in METHODS:
        known = ", ".join(sorted(METHODS))
        raise UnknownMethodError(f"Unknown method {name!r}; choose one of: {known}.")
    method = METHODS[name]
    return method.replace(**overrides) if overrides else method
