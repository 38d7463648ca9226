"""What the web app does, without any Gradio: validate the inputs, run the model once, draw and package the maps.

:class:`MapService` wraps one loaded pipeline. Its :meth:`~MapService.generate` and :meth:`~MapService.explain`
take the raw values of the page's controls, check every one of them (raising :class:`AppInputError` with a sentence
that says what to change), run ConceptAttention under a lock (so two requests never share the pipeline's hooks), and
return a :class:`MapResult` with display-ready images and the downloadable files. :func:`run_safely` turns any
outcome into the status line shown on the page: user errors verbatim, unexpected errors as a generic sentence (the
traceback goes to the server log only).

Only the public API of :mod:`conceptattention` is used, so this module is also a worked example of it.
"""

from __future__ import annotations

import hashlib
import inspect
import json
import logging
import math
import os
import re
import shutil
import struct
import tempfile
import threading
import time
import warnings
import weakref
import zipfile
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from .. import (
    ConceptAttention,
    ConceptMaps,
    explain,
    get_adapter,
)
from ..config import SPACES
from ..errors import ConceptAttentionError
from ..images import ImageLoadError, load_image
from ..models import LoadedModel, UnknownWordsError, check_vocabulary
from ..outputs import OutputPathError, atomic_output_dir, remove_output_dir
from ..timeline import TimelineError, estimate_timeline_bytes, maps_over


__all__ = [
    "DISPLAY_SIDE",
    "AppInputError",
    "AppLimits",
    "MapResult",
    "MapService",
    "Outcome",
    "SHOWN_MAPS",
    "parse_concepts",
    "run_safely",
]

logger = logging.getLogger("conceptattention.app")

#: Shown images, heatmaps and overlays are scaled so that their longer side has this many pixels.
DISPLAY_SIDE = 384

#: What the page can show: the result (mean over steps and blocks), or the maps of one step or one block.
SHOWN_MAPS = ("mean", "steps", "blocks")

_RUN_NAME = re.compile(r"run-\d{6}")  # the run folders this service writes (pruning touches no other name)

_PNG_COMPRESS_LEVEL = 1  # zlib level of written PNGs: 6x faster than PIL's default 6, files ~20% larger

#: Errors whose message is meant for the user: the package's own (a torch ValueError is a bug, not one of these),
#: and NotImplementedError (an adapter without an explain path).
USER_ERRORS: tuple[type[BaseException], ...] = (ConceptAttentionError, NotImplementedError)

UNEXPECTED_ERROR_MESSAGE = (
    "Something went wrong on the server; the details are in its log. Try again, and if it keeps failing, report it "
    "with the output of `conceptattention env`."
)


class AppInputError(ConceptAttentionError, ValueError):
    """A control of the web app holds a value that cannot be used; the message says which and what to change."""


@dataclass(frozen=True)
class AppLimits:
    """Bounds on what one request may ask for (they protect a shared server's memory and time).

    Attributes:
        max_concepts: Most concepts per request.
        max_concept_chars: Longest concept, in characters.
        max_prompt_chars: Longest prompt or caption, in characters.
        max_side: Largest image height or width, in pixels, for generation and for explain's model input.
        max_steps: Most denoising steps.
        max_samples: Most noise samples of the explain path.
        max_frames: Most frames of a video model's generation.
        max_upload_bytes: Largest uploaded file, in bytes (also given to Gradio as ``max_file_size``).
        max_pixels: Largest uploaded image, in pixels (width x height), checked before decoding.
        kept_runs: How many past runs keep their downloadable files on disk (and their maps in memory, for the
            pixel ranking and the step/block slider).
        max_timeline_bytes: Most bytes of kept per-step scores of one request (steps x layers x batch x concepts x
            image tokens x 4); above it the maps of each step and block are not kept and a note says so.

    Example:
        >>> AppLimits(max_concepts=4).max_concepts
        4
    """

    max_concepts: int = 12
    max_concept_chars: int = 60
    max_prompt_chars: int = 500
    max_side: int = 2048
    max_steps: int = 100
    max_samples: int = 16
    max_frames: int = 129
    max_upload_bytes: int = 20 * 1024 * 1024
    max_pixels: int = 25_000_000
    kept_runs: int = 16
    max_timeline_bytes: int = 2**30

    def __post_init__(self) -> None:
        for name in (
            "max_concepts",
            "max_concept_chars",
            "max_prompt_chars",
            "max_side",
            "max_steps",
            "max_samples",
            "max_frames",
            "max_upload_bytes",
            "max_pixels",
            "kept_runs",
            "max_timeline_bytes",
        ):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise AppInputError(f"AppLimits.{name} must be a positive integer, got {value!r}.")


@dataclass
class MapResult:
    """One run's display-ready outputs and downloadable files.

    Attributes:
        image: The generated image, or the uploaded image as loaded (RGB, original size).
        display_image: ``image`` scaled to :data:`DISPLAY_SIDE` pixels on its longer side.
        maps: The concept maps, ``[C, 1, h, w]`` on the model's token grid.
        heatmaps: ``C`` pairs ``(heatmap, concept)``, heatmaps at the size of ``display_image``.
        overlays: ``C`` pairs ``(overlay on display_image, concept)``.
        segmentation: The argmax segmentation at the size of ``display_image``, coloured as ``legend``.
        legend: ``C`` pairs ``(concept, (r, g, b))``.
        views: PNG files of the shown images, for the page: ``"image"`` and ``"segmentation"`` map to one path,
            ``"heatmaps"`` and ``"overlays"`` to ``C`` paths in concept order.
        files: The downloads: a zip of PNGs (image, heatmaps, overlays, segmentation, grid figure, settings.json)
            and the raw ``maps.safetensors`` (read it back with :meth:`ConceptMaps.load`).
        settings: The request's settings, as written into the zip.
        notes: Sentences to show next to the result (library warnings, vocabulary hints, model notices).
        seconds: Wall time of the run, validation to written files.
        timeline: ``{"steps": [...], "blocks": [...]}``: the maps of each denoising step (explain: noise level) and
            of each selected block (see :func:`conceptattention.timeline.maps_over`); empty when not kept.
        run_id: The name of the run's folder; :meth:`MapService.rank_at` and :meth:`MapService.view` find the run
            by it while it is among the last ``limits.kept_runs``.
    """

    image: Image.Image
    display_image: Image.Image
    maps: ConceptMaps
    heatmaps: list[tuple[Image.Image, str]]
    overlays: list[tuple[Image.Image, str]]
    segmentation: Image.Image
    legend: list[tuple[str, tuple[int, int, int]]]
    views: dict[str, Any]
    files: list[Path]
    settings: dict[str, Any]
    notes: list[str] = field(default_factory=list)
    seconds: float = 0.0
    timeline: dict[str, list[ConceptMaps]] = field(default_factory=dict)
    run_id: str = ""


@dataclass(frozen=True)
class MapView:
    """The maps of one step or block (or the result), drawn like a result.

    Attributes:
        maps: The maps shown.
        heatmaps: ``C`` pairs ``(heatmap, concept)`` at the size of the result's ``display_image``.
        overlays: ``C`` pairs ``(overlay, concept)``.
        segmentation: The argmax segmentation at that size.
        caption: What is shown, in words (``"step 3 of 6"``).
    """

    maps: ConceptMaps
    heatmaps: list[tuple[Image.Image, str]]
    overlays: list[tuple[Image.Image, str]]
    segmentation: Image.Image
    caption: str


@dataclass(frozen=True)
class Outcome:
    """What the page shows after a request: a status line and, on success, the result.

    Attributes:
        status: Markdown for the status line (``"**Error:** ..."`` on failure).
        result: The result, or None on failure.
        error: The user-facing error message, or None on success.
    """

    status: str
    result: MapResult | None = None
    error: str | None = None


def escape_markdown(text: str) -> str:
    """Backslash-escape Markdown punctuation so that user text in a message shows as typed.

    Example:
        >>> escape_markdown("a_b*")
        'a\\\\_b\\\\*'
    """
    return re.sub(r"([\\`*_{}\[\]<>()#+!|~])", r"\\\1", text)


def run_safely(action: Callable[[], MapResult]) -> Outcome:
    """Run one request and turn every possible ending into something the page can show.

    Errors meant for users (:data:`USER_ERRORS`: bad inputs, unsupported set-ups) are shown verbatim; running out of
    accelerator memory gets its own advice; anything else is logged with its traceback on the server and shown as
    :data:`UNEXPECTED_ERROR_MESSAGE`, so internals never reach the page.

    Args:
        action: A call such as ``lambda: service.generate(...)``.

    Returns:
        :class:`Outcome` with a Markdown status line.

    Example:
        >>> run_safely(lambda: parse_concepts("")).error
        'Enter at least one concept, e.g. "dog, grass, sky" (separate concepts with commas).'
    """
    try:
        result = action()
    except torch.cuda.OutOfMemoryError:
        logger.exception("The accelerator ran out of memory.")
        message = (
            "The accelerator ran out of memory. Use a smaller size, fewer concepts or samples, or start the app with "
            "--offload model."
        )
        return Outcome(status=f"**Error:** {escape_markdown(message)}", error=message)
    except USER_ERRORS as error:
        message = str(error) or type(error).__name__
        logger.info("Request refused: %s", message)
        return Outcome(status=f"**Error:** {escape_markdown(message)}", error=message)
    except Exception:
        logger.exception("Unexpected error while serving a request.")
        return Outcome(status=f"**Error:** {escape_markdown(UNEXPECTED_ERROR_MESSAGE)}", error=UNEXPECTED_ERROR_MESSAGE)
    seconds = f"{result.seconds:.1f}"
    grid_height, grid_width = result.maps.grid_size
    status = (
        f"**Done** in {seconds} s: {len(result.maps.concepts)} concepts, maps of {grid_height}x{grid_width} tokens."
    )
    for note in result.notes:
        status += f"\n\n{escape_markdown(note)}"
    return Outcome(status=status, result=result)


def parse_concepts(text: str | Sequence[str] | None, limits: AppLimits | None = None) -> tuple[str, ...]:
    """Split the concept box into concepts and check them.

    Concepts are separated by commas or new lines; runs of whitespace inside a concept become one space and empty
    entries (``"dog, , sky,"``) are dropped. A list of strings is accepted too.

    Args:
        text: E.g. ``"dog, grass, sky"`` or ``["dog", "red car"]``.
        limits: Bounds on the number and length of concepts (default :class:`AppLimits`).

    Returns:
        The concepts, in order.

    Raises:
        AppInputError: No concept, a repeated concept, too many concepts, or a concept that is too long.

    Example:
        >>> parse_concepts("dog,  red   car\\nsky,")
        ('dog', 'red car', 'sky')
    """
    limits = limits or AppLimits()
    if text is None:
        text = ""
    entries = re.split(r"[,\n]", text) if isinstance(text, str) else [str(entry) for entry in text]
    concepts = [" ".join(entry.split()) for entry in entries]
    concepts = [concept for concept in concepts if concept]
    if not concepts:
        raise AppInputError('Enter at least one concept, e.g. "dog, grass, sky" (separate concepts with commas).')
    if len(concepts) > limits.max_concepts:
        raise AppInputError(f"{len(concepts)} concepts were given; this app allows at most {limits.max_concepts}.")
    for concept in concepts:
        if len(concept) > limits.max_concept_chars:
            raise AppInputError(
                f"The concept {concept[:20]!r}... is {len(concept)} characters long; use at most "
                f"{limits.max_concept_chars} (a short phrase such as 'red car')."
            )
    repeated = sorted({concept for concept in concepts if concepts.count(concept) > 1})
    if repeated:
        raise AppInputError(f"Each concept must be different; {', '.join(map(repr, repeated))} appears more than once.")
    return tuple(concepts)


def _whole_number(label: str, value: Any, low: int, high: int) -> int:
    """``value`` as an int in ``[low, high]`` (Gradio's number boxes give None when empty and floats at times)."""
    if value is None or (isinstance(value, str) and not value.strip()):
        raise AppInputError(f"{label} is empty; enter a whole number from {low} to {high}.")
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise AppInputError(f"{label} must be a whole number from {low} to {high}, got {value!r}.") from None
    if isinstance(value, bool) or not math.isfinite(number) or number != int(number) or not low <= number <= high:
        raise AppInputError(f"{label} must be a whole number from {low} to {high}, got {value!r}.")
    return int(number)


def _real_number(label: str, value: Any, low: float, high: float, *, low_open: bool = False) -> float:
    """``value`` as a finite float in ``[low, high]`` (``(low, high]`` with ``low_open``)."""
    interval = f"{'(' if low_open else '['}{low:g}, {high:g}]"
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise AppInputError(f"{label} must be a number in {interval}, got {value!r}.") from None
    too_low = number <= low if low_open else number < low
    if isinstance(value, bool) or not math.isfinite(number) or too_low or number > high:
        raise AppInputError(f"{label} must be a number in {interval}, got {value!r}.")
    return number


def _display_copy(image: Image.Image) -> Image.Image:
    """``image`` scaled (up or down) so that its longer side is :data:`DISPLAY_SIDE` pixels."""
    scale = DISPLAY_SIDE / max(image.size)
    size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
    return image.resize(size, Image.Resampling.LANCZOS)


def _file_stem(index: int, concept: str) -> str:
    """A safe, unique file name for concept number ``index`` (``(1, "red car")`` → ``"01_red_car"``)."""
    slug = re.sub(r"[^A-Za-z0-9._-]+", "_", concept).strip("._")[:40] or "concept"
    return f"{index:02d}_{slug}"


def model_vocabulary(loaded: LoadedModel) -> tuple[str, ...] | None:
    """The words the model knows, when it declares them (:attr:`LoadedModel.vocabulary`: the shipped ShapesWorld
    model), else None.

    Example:
        >>> from conceptattention.models import LoadedModel
        >>> model_vocabulary(LoadedModel(pipeline=None, name="black-forest-labs/FLUX.1-dev", description="")) is None
        True
    """
    return loaded.vocabulary


class MapService:
    """One loaded pipeline behind the web app: validated requests in, display images and files out.

    Requests run one at a time (a lock guards the pipeline, whose attention processors ConceptAttention swaps for
    the duration of a run). Files of the last ``limits.kept_runs`` runs are kept in ``work_dir``; older ones are
    deleted, and a ``work_dir`` the service created itself is removed when the service is garbage-collected or
    :meth:`close` is called.

    Args:
        loaded: A model from :func:`conceptattention.models.load_model`.
        limits: Bounds on requests (default :class:`AppLimits`).
        cmap: Matplotlib colour map of the heatmaps.
        generator_device: Device of the seeded ``torch.Generator`` (``"cpu"`` under CPU offload).
        work_dir: Folder for the downloadable files (default: a new temporary folder).

    Example:
        >>> from conceptattention.models import load_model
        >>> service = MapService(load_model())
        >>> result = service.generate(prompt="a red boat on the sea", concepts="boat, sea, sky", steps=2)
        >>> [concept for _, concept in result.overlays]
        ['boat', 'sea', 'sky']
        >>> sorted(path.suffix for path in result.files)
        ['.safetensors', '.zip']
    """

    def __init__(
        self,
        loaded: LoadedModel,
        *,
        limits: AppLimits | None = None,
        cmap: str = "plasma",
        generator_device: str = "cpu",
        work_dir: str | os.PathLike[str] | None = None,
    ) -> None:
        import matplotlib

        if cmap not in matplotlib.colormaps:
            raise AppInputError(f"Unknown matplotlib colour map {cmap!r}; try 'plasma', 'viridis' or 'inferno'.")
        self.loaded = loaded
        self.pipeline = loaded.pipeline
        self.limits = limits or AppLimits()
        self.cmap = cmap
        self.generator_device = generator_device
        self.adapter = get_adapter(self.pipeline)
        self.layer_count = len(self.adapter.joint_blocks(self.pipeline.transformer))
        self.default_layers = tuple(self.adapter.default_layers(self.layer_count))
        self.size_multiple = int(self.adapter.size_multiple(self.pipeline))
        self.defaults = dict(loaded.defaults)
        self.vocabulary = model_vocabulary(loaded)
        self._lock = threading.Lock()
        self._run_counter = 0
        self._results: OrderedDict[str, MapResult] = OrderedDict()  # the last limits.kept_runs results
        if work_dir is None:
            self.work_dir = Path(tempfile.mkdtemp(prefix="conceptattention-app-"))
            self._cleanup = weakref.finalize(self, shutil.rmtree, self.work_dir, ignore_errors=True)
        else:
            self.work_dir = Path(work_dir)
            self.work_dir.mkdir(parents=True, exist_ok=True)
            self._cleanup = None

    # ----- defaults shown by the page --------------------------------------------------------------------------

    def _pipeline_default(self, name: str) -> Any:
        """The default of ``name`` in the pipeline's ``__call__`` signature, or None."""
        parameter = inspect.signature(self.pipeline.__call__).parameters.get(name)
        if parameter is None or parameter.default is inspect.Parameter.empty:
            return None
        return parameter.default

    @property
    def default_side(self) -> tuple[int, int]:
        """``(height, width)`` the page starts with: the model's defaults, else the pipeline's native size."""
        sample_size = getattr(self.pipeline, "default_sample_size", None)
        scale = getattr(self.pipeline, "vae_scale_factor", None)
        native = int(sample_size * scale) if isinstance(sample_size, int) and isinstance(scale, int) else 1024
        native -= native % self.size_multiple
        return int(self.defaults.get("height") or native), int(self.defaults.get("width") or native)

    @property
    def is_video(self) -> bool:
        """Whether the model makes videos (the page then shows a frame count, and the first frame)."""
        return self.adapter.modality == "video"

    @property
    def default_steps(self) -> int:
        """Denoising steps the page starts with: the model's default, else the pipeline's, else 28."""
        value = self.defaults.get("num_inference_steps") or self._pipeline_default("num_inference_steps")
        return int(value or 28)

    @property
    def default_guidance_scale(self) -> float:
        """Guidance scale the page starts with: the model's default, else the pipeline's, else 3.5."""
        value = self.defaults.get("guidance_scale")
        if value is None:
            value = self._pipeline_default("guidance_scale")
        return float(value) if isinstance(value, int | float) else 3.5

    def close(self) -> None:
        """Delete the downloadable files now (only when the service created its own ``work_dir``)."""
        if self._cleanup is not None:
            self._cleanup()

    # ----- checks ------------------------------------------------------------------------------------------------

    def _text(self, label: str, value: Any, *, required: bool) -> str:
        text = "" if value is None else str(value).strip()
        if required and not text:
            raise AppInputError(f"{label} is empty; describe the image to generate, e.g. 'a red boat on the sea'.")
        if len(text) > self.limits.max_prompt_chars:
            raise AppInputError(
                f"{label} is {len(text)} characters long; use at most {self.limits.max_prompt_chars}."
            )
        return text

    def _side(self, label: str, value: Any) -> int:
        multiple, largest = self.size_multiple, self.limits.max_side - self.limits.max_side % self.size_multiple
        side = _whole_number(label, value, multiple, largest)
        if side % multiple:
            raise AppInputError(
                f"{label} must be a multiple of {multiple} for this model (from {multiple} to {largest}), got {side}."
            )
        return side

    def _method_options(self, layers: Any, space: Any, softmax: Any) -> dict[str, Any]:
        if layers is None or (isinstance(layers, Sequence) and not isinstance(layers, str) and not layers):
            raise AppInputError(
                f"Select at least one layer (joint block); the default for this model is {list(self.default_layers)}."
            )
        if isinstance(layers, str) or not isinstance(layers, Sequence):
            raise AppInputError(f"Layers must be a list of joint block indices, got {layers!r}.")
        chosen = [_whole_number("Each layer", layer, 0, self.layer_count - 1) for layer in layers]
        if space not in SPACES:
            raise AppInputError(f"Space must be one of {', '.join(SPACES)}, got {space!r}.")
        if not isinstance(softmax, bool):
            raise AppInputError(f"Softmax must be on or off, got {softmax!r}.")
        return {"layers": tuple(sorted(set(chosen))), "space": space, "softmax": softmax}

    def _check_vocabulary(self, concepts: Sequence[str], prompt: str) -> list[str]:
        """Refuse concepts with words the model does not know (:func:`conceptattention.models.check_vocabulary`:
        every whitespace-separated word, so punctuation and emoji are refused too); return a note for unknown prompt
        words."""
        if self.vocabulary is None:
            return []
        try:
            check_vocabulary(concepts, self.vocabulary)
        except UnknownWordsError as error:
            raise AppInputError(str(error)) from None
        known = set(self.vocabulary)
        unknown_in_prompt = sorted({word for word in re.findall(r"\w+", prompt.lower()) if word not in known})
        if unknown_in_prompt:
            return [f"Note: the toy model ignores the unknown prompt words {', '.join(unknown_in_prompt)}."]
        return []

    def _image_tokens(self, height: int, width: int, frames: int) -> int:
        """Image tokens of one transformer call (token grid times latent frames of a video model)."""
        temporal = int(getattr(self.pipeline, "vae_scale_factor_temporal", 1) or 1)
        latent_frames = 1 + (int(frames) - 1) // temporal if frames > 1 else 1
        return -(-height // self.size_multiple) * -(-width // self.size_multiple) * latent_frames

    def _keep_timeline(
        self,
        timeline: Any,
        *,
        steps: int,
        options: dict[str, Any],
        concepts: Sequence[str],
        tokens: int,
        batch: int = 1,
    ) -> bool | str:
        """Whether to keep the per-step scores: True, False (not asked for), or the note saying why not."""
        if not isinstance(timeline, bool):
            raise AppInputError(f"Keeping the maps of each step must be on or off, got {timeline!r}.")
        if not timeline:
            return False
        estimate = estimate_timeline_bytes(
            steps=steps, layers=len(options["layers"]), concepts=len(concepts), image_tokens=tokens, batch=batch
        )
        if estimate > self.limits.max_timeline_bytes:
            return (
                f"The maps of each step and block were not kept: they would take {estimate / 2**20:.0f} MiB, more "
                f"than this app's limit of {self.limits.max_timeline_bytes / 2**20:.0f} MiB."
            )
        return True

    def _call_kwargs(self, candidates: dict[str, Any]) -> dict[str, Any]:
        """The subset of ``candidates`` that the pipeline's ``__call__`` accepts (None values dropped)."""
        parameters = inspect.signature(self.pipeline.__call__).parameters
        return {key: value for key, value in candidates.items() if value is not None and key in parameters}

    # ----- requests ----------------------------------------------------------------------------------------------

    def generate(
        self,
        *,
        prompt: Any,
        concepts: Any,
        seed: Any = 0,
        steps: Any = None,
        height: Any = None,
        width: Any = None,
        guidance_scale: Any = None,
        frames: Any = None,
        layers: Any = None,
        space: Any = "output",
        softmax: Any = True,
        timeline: Any = True,
    ) -> MapResult:
        """Generate an image from a prompt and map the concepts in it.

        Args:
            prompt: The text prompt.
            concepts: Concepts as comma-separated text or a list (see :func:`parse_concepts`).
            seed: Seed of the initial noise, an integer in ``[0, 2**32 - 1]``.
            steps: Denoising steps (default: the model's).
            height: Image height in pixels, a multiple of :attr:`size_multiple` (default: the model's).
            width: Image width in pixels (default: the model's).
            guidance_scale: Guidance scale (default: the model's); pipelines without one ignore it.
            frames: Video models: number of frames (default: the model's, else the pipeline's); image models
                ignore it. The first frame and its maps are shown.
            layers: Joint block indices to average (default: :attr:`default_layers`).
            space: ``"output"``, ``"cross_attention"`` or ``"value"``.
            softmax: Softmax over concepts.
            timeline: Also keep the maps of each step and block (:attr:`MapResult.timeline`), within
                ``limits.max_timeline_bytes``.

        Returns:
            :class:`MapResult`.

        Raises:
            AppInputError: A control holds an unusable value (the message names it).
            ValueError: The library refused the request (e.g. a concept too long for the text encoder).
        """
        started = time.perf_counter()
        prompt_text = self._text("The prompt", prompt, required=True)
        concept_list = parse_concepts(concepts, self.limits)
        notes = self._check_vocabulary(concept_list, prompt_text)
        default_height, default_width = self.default_side
        seed_value = _whole_number("Seed", seed, 0, 2**32 - 1)
        step_count = _whole_number("Steps", self.default_steps if steps is None else steps, 1, self.limits.max_steps)
        image_height = self._side("Height", default_height if height is None else height)
        image_width = self._side("Width", default_width if width is None else width)
        guidance = _real_number(
            "Guidance scale", self.default_guidance_scale if guidance_scale is None else guidance_scale, 0.0, 100.0
        )
        options = self._method_options(self.default_layers if layers is None else layers, space, softmax)
        kwargs = self._call_kwargs(
            {
                "height": image_height,
                "width": image_width,
                "num_inference_steps": step_count,
                "guidance_scale": guidance,
                "max_sequence_length": self.defaults.get("max_sequence_length"),
            }
        )
        video = self.is_video
        if video:
            frame_count = frames if frames is not None else self.defaults.get("num_frames")
            if frame_count is not None:
                frame_count = _whole_number("Frames", frame_count, 1, self.limits.max_frames)
            kwargs.update(self._call_kwargs({"num_frames": frame_count, "output_type": "pil"}))
            notes.append("Video model: the first frame and its maps are shown; use the CLI for the whole video.")
        tokens = self._image_tokens(image_height, image_width, kwargs.get("num_frames") or 1)
        keep = self._keep_timeline(timeline, steps=step_count, options=options, concepts=concept_list, tokens=tokens)
        if isinstance(keep, str):
            notes.append(keep)
        options["keep_per_step"] = keep is True
        with self._lock, warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            generator = torch.Generator(self.generator_device).manual_seed(seed_value)
            with ConceptAttention(self.pipeline, concept_list, **options) as attention:
                output = self.pipeline(prompt_text, generator=generator, **kwargs)
            maps = attention.maps
            per_step = _timeline_of(attention) if keep is True else {}
        notes.extend(str(warning.message) for warning in caught if issubclass(warning.category, UserWarning))
        image = output.frames[0][0] if video else output.images[0]
        settings = {
            "tab": "generate",
            "model": self.loaded.description,
            "prompt": prompt_text,
            "concepts": list(maps.concepts),
            "seed": seed_value,
            "pipeline_kwargs": kwargs,
            "method": maps.config,
        }
        return self._finish(image, maps, settings, notes, started, per_step)

    def explain(
        self,
        *,
        image_path: Any,
        concepts: Any,
        caption: Any = "",
        noise_level: Any = 0.5,
        samples: Any = 4,
        seed: Any = 0,
        layers: Any = None,
        space: Any = "output",
        softmax: Any = True,
        timeline: Any = True,
    ) -> MapResult:
        """Map the concepts in an uploaded image (VAE-encode, add noise, one early-exit forward pass).

        Args:
            image_path: The uploaded file.
            concepts: Concepts as comma-separated text or a list (see :func:`parse_concepts`).
            caption: Prompt given to the model with the image (may be empty).
            noise_level: Rectified-flow time in ``(0, 1]``.
            samples: Noise samples averaged, ``1`` to ``limits.max_samples``.
            seed: Seed of the first noise sample.
            layers: Joint block indices to average (default: :attr:`default_layers`).
            space: ``"output"``, ``"cross_attention"`` or ``"value"``.
            softmax: Softmax over concepts.
            timeline: Also keep the maps of each block (and of the one noise level, as its only "step").

        Returns:
            :class:`MapResult` whose ``image`` is the uploaded image.

        Raises:
            AppInputError: No file, a file over the size limit, or an unusable control value.
            ImageLoadError: The file is not a readable image, or has more than ``limits.max_pixels`` pixels.
        """
        started = time.perf_counter()
        if not image_path:
            raise AppInputError("Upload an image first (PNG, JPEG, WebP, TIFF or BMP).")
        path = Path(str(image_path))
        concept_list = parse_concepts(concepts, self.limits)
        caption_text = self._text("The caption", caption, required=False)
        notes = self._check_vocabulary(concept_list, caption_text)
        level = _real_number("Noise level", noise_level, 0.0, 1.0, low_open=True)
        sample_count = _whole_number("Samples", samples, 1, self.limits.max_samples)
        seed_value = _whole_number("Seed", seed, 0, 2**32 - 1)
        options = self._method_options(self.default_layers if layers is None else layers, space, softmax)
        image = self._load_upload(path)
        height, width = self._explain_size(image)
        keep = self._keep_timeline(
            timeline,
            steps=1,
            options=options,
            concepts=concept_list,
            tokens=self._image_tokens(height, width, 1),
            batch=sample_count,
        )
        if isinstance(keep, str):
            notes.append(keep)
        options["keep_per_step"] = keep is True
        attentions: list[Any] = []
        with self._lock, warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            maps = explain(
                self.pipeline,
                image,
                concept_list,
                caption=caption_text,
                noise_level=level,
                num_samples=sample_count,
                seed=seed_value,
                height=height,
                width=width,
                guidance_scale=self.default_guidance_scale,
                on_attention=attentions.append,
                **options,
            )
            per_step = _timeline_of(attentions[0]) if keep is True else {}
        notes.extend(str(warning.message) for warning in caught if issubclass(warning.category, UserWarning))
        settings = {
            "tab": "explain",
            "model": self.loaded.description,
            "image": path.name,  # the name of the user's file (never a server path), and its fingerprint
            "image_sha256": _sha256(path),
            "concepts": list(maps.concepts),
            "method": maps.config,
        }
        return self._finish(image, maps, settings, notes, started, per_step)

    def _load_upload(self, path: Path) -> Image.Image:
        """Load an uploaded image with the size limits; messages name the file, never the server's folders."""
        try:
            size = path.stat().st_size
        except OSError:
            raise AppInputError("The uploaded file is gone from the server; upload it again.") from None
        if size > self.limits.max_upload_bytes:
            raise AppInputError(
                f"The uploaded file is {size / 2**20:.1f} MB; this app accepts at most "
                f"{self.limits.max_upload_bytes / 2**20:.1f} MB."
            )
        limit = self.pixel_limit
        declared = declared_size(path)
        if declared is not None and declared[0] * declared[1] > limit:
            width, height = declared
            raise AppInputError(
                f"The image is too large: {width}x{height} pixels ({width * height / 1e6:.1f} megapixels); this app "
                f"accepts images of at most {limit / 1e6:.1f} megapixels. Resize it and upload it again."
            )
        try:
            return load_image(path, max_pixels=self.limits.max_pixels)
        except ImageLoadError as error:
            bomb = (Image.DecompressionBombError, Image.DecompressionBombWarning)
            if isinstance(error.__cause__, bomb) or "max_pixels" in str(error):  # a header declared_size missed
                raise AppInputError(
                    f"The image is too large; this app accepts images of at most {limit / 1e6:.1f} megapixels. "
                    "Resize it and upload it again."
                ) from None
            raise ImageLoadError(str(error).replace(str(path), path.name)) from None

    @property
    def pixel_limit(self) -> int:
        """Most pixels of an uploaded image: ``limits.max_pixels``, or PIL's decompression-bomb limit if lower."""
        pil_limit = Image.MAX_IMAGE_PIXELS
        return self.limits.max_pixels if not pil_limit else min(self.limits.max_pixels, int(pil_limit))

    def _explain_size(self, image: Image.Image) -> tuple[int, int]:
        """The model input size for ``image``: the adapter's choice, refused beyond ``limits.max_side``."""
        height, width = self.adapter.explain_resolution(self.pipeline, image.size)
        if max(height, width) > self.limits.max_side:
            raise AppInputError(
                f"This model would read the image at {width}x{height} pixels, more than this app's limit of "
                f"{self.limits.max_side}; crop the image to a less extreme aspect ratio."
            )
        return height, width

    # ----- outputs -----------------------------------------------------------------------------------------------

    def _finish(
        self,
        image: Image.Image,
        maps: ConceptMaps,
        settings: dict[str, Any],
        notes: list[str],
        started: float,
        timeline: dict[str, list[ConceptMaps]] | None = None,
    ) -> MapResult:
        if self.loaded.notice:
            notes.append(self.loaded.notice)
        display_image = _display_copy(image)
        display_size = (display_image.height, display_image.width)
        heatmaps = [(maps.heatmap(concept, size=display_size, cmap=self.cmap), concept) for concept in maps.concepts]
        overlays = [(maps.overlay(display_image, concept, cmap=self.cmap), concept) for concept in maps.concepts]
        segmentation = maps.segmentation_image(size=display_size)
        timeline = timeline or {}
        if timeline:
            settings["timeline"] = {over: len(parts) for over, parts in timeline.items()}
        views, files = self._write_files(image, display_image, maps, heatmaps, overlays, segmentation, settings)
        result = MapResult(
            image=image,
            display_image=display_image,
            maps=maps,
            heatmaps=heatmaps,
            overlays=overlays,
            segmentation=segmentation,
            legend=maps.legend(),
            views=views,
            files=files,
            settings=settings,
            notes=notes,
            seconds=time.perf_counter() - started,
            timeline=timeline,
            run_id=files[0].parent.name,
        )
        with self._lock:
            self._results[result.run_id] = result
            while len(self._results) > self.limits.kept_runs:
                self._results.popitem(last=False)
        return result

    # ----- exploring a result: the maps of one step or block, the concepts ranked at a pixel ----------------------

    def result(self, run_id: Any) -> MapResult:
        """The result of a recent run (one of the last ``limits.kept_runs``).

        Raises:
            AppInputError: No such run, or it is no longer kept.
        """
        with self._lock:
            result = self._results.get(run_id) if isinstance(run_id, str) else None
        if result is None:
            raise AppInputError("This result is no longer kept on the server; run the request again.")
        return result

    def shown_maps(self, run_id: Any, over: Any = "mean", index: Any = 0) -> tuple[ConceptMaps, str]:
        """The maps of the result (``over="mean"``), of step ``index`` (``"steps"``) or of block ``index``
        (``"blocks"``), with a caption such as ``"step 3 (4 of 6)"``.

        Raises:
            AppInputError: Unknown run, ``over`` not in :data:`SHOWN_MAPS`, per-step maps not kept, or ``index`` out
                of range.
        """
        result = self.result(run_id)
        if over not in SHOWN_MAPS:
            raise AppInputError(f"The maps shown must be one of {', '.join(SHOWN_MAPS)}, got {over!r}.")
        if over == "mean":
            return result.maps, "the result: the mean over the selected steps and blocks"
        parts = result.timeline.get(over)
        if not parts:
            raise AppInputError("The maps of each step and block were not kept for this result.")
        position = _whole_number("The step or block", index, 0, len(parts) - 1)
        chosen = parts[position]
        return chosen, f"{chosen.config.get('label', over)} ({position + 1} of {len(parts)})"

    def view(self, run_id: Any, over: Any = "mean", index: Any = 0) -> MapView:
        """The heatmaps, overlays and segmentation of :meth:`shown_maps`, at the result's display size.

        Example:
            >>> from conceptattention.models import load_model
            >>> service = MapService(load_model())
            >>> result = service.generate(prompt="a red boat", concepts="boat, sea", steps=3)
            >>> service.view(result.run_id, "steps", 2).caption
            'step 2 (3 of 3)'
        """
        maps, caption = self.shown_maps(run_id, over, index)
        display_image = self.result(run_id).display_image
        size = (display_image.height, display_image.width)
        return MapView(
            maps=maps,
            heatmaps=[(maps.heatmap(concept, size=size, cmap=self.cmap), concept) for concept in maps.concepts],
            overlays=[(maps.overlay(display_image, concept, cmap=self.cmap), concept) for concept in maps.concepts],
            segmentation=maps.segmentation_image(size=size),
            caption=caption,
        )

    def rank_at(self, run_id: Any, x: Any, y: Any, over: Any = "mean", index: Any = 0) -> list[tuple[str, float]]:
        """The concepts ranked by their map's value at pixel ``(x, y)`` of the shown image, highest first.

        The maps are bilinearly upsampled to the display size, as for the segmentation, so the first entry is the
        segmentation's concept at that pixel (ties go to the concept listed first, as there).

        Args:
            run_id: :attr:`MapResult.run_id`.
            x: Column in the displayed image (``display_image``), from 0.
            y: Row, from 0.
            over: ``"mean"``, ``"steps"`` or ``"blocks"`` (see :meth:`shown_maps`).
            index: The step or block.

        Returns:
            ``(concept, value)`` pairs, all concepts, highest value first.

        Raises:
            AppInputError: Unknown run, or a pixel outside the image.

        Example:
            >>> from conceptattention.models import load_model
            >>> service = MapService(load_model())
            >>> result = service.generate(prompt="a red boat", concepts="boat, sea", steps=2)
            >>> ranking = service.rank_at(result.run_id, x=10, y=300)
            >>> sorted(name for name, _ in ranking), ranking[0][1] >= ranking[1][1]
            (['boat', 'sea'], True)
        """
        maps, _ = self.shown_maps(run_id, over, index)
        display_image = self.result(run_id).display_image
        column = _whole_number("The pixel's x", x, 0, display_image.width - 1)
        row = _whole_number("The pixel's y", y, 0, display_image.height - 1)
        values = maps.upsample((display_image.height, display_image.width), mode="bilinear")[:, 0, row, column]  # [C]
        order = sorted(range(len(maps.concepts)), key=lambda concept: -float(values[concept]))  # stable: ties keep order
        return [(maps.concepts[concept], float(values[concept])) for concept in order]

    def _write_files(
        self,
        image: Image.Image,
        display_image: Image.Image,
        maps: ConceptMaps,
        heatmaps: list[tuple[Image.Image, str]],
        overlays: list[tuple[Image.Image, str]],
        segmentation: Image.Image,
        settings: dict[str, Any],
    ) -> tuple[dict[str, Any], list[Path]]:
        """Write the shown PNGs, ``conceptattention-maps.zip`` and ``maps.safetensors`` into a new run folder.

        All or nothing: the folder is written with :func:`conceptattention.outputs.atomic_output_dir` (it appears
        complete, with the marker that lets :meth:`_prune_runs` delete it later, or not at all). PNGs are written
        once, with fast compression, and stored uncompressed in the zip (they are compressed already).

        Returns:
            ``(views, downloads)`` as in :class:`MapResult`.
        """
        with self._lock:
            self._run_counter += 1
            final_dir = self.work_dir / f"run-{self._run_counter:06d}"
        with atomic_output_dir(final_dir) as run_dir:
            (run_dir / "heatmaps").mkdir()
            (run_dir / "overlays").mkdir()
            image.save(run_dir / "image.png", compress_level=_PNG_COMPRESS_LEVEL)
            display_image.save(run_dir / "display.png", compress_level=_PNG_COMPRESS_LEVEL)
            views: dict[str, Any] = {"image": run_dir / "display.png", "heatmaps": [], "overlays": []}
            for index, ((heatmap, concept), (overlay, _)) in enumerate(zip(heatmaps, overlays)):
                for kind, picture in (("heatmaps", heatmap), ("overlays", overlay)):
                    path = run_dir / kind / f"{_file_stem(index, concept)}.png"
                    picture.save(path, compress_level=_PNG_COMPRESS_LEVEL)
                    views[kind].append(path)
            segmentation.save(run_dir / "segmentation.png", compress_level=_PNG_COMPRESS_LEVEL)
            views["segmentation"] = run_dir / "segmentation.png"
            maps.figure(display_image, cmap=self.cmap).savefig(run_dir / "grid.png", dpi=100, bbox_inches="tight")
            (run_dir / "settings.json").write_text(json.dumps(settings, indent=2, default=str))
            tensor_path = maps.save(run_dir / "maps.safetensors")
            zip_path = run_dir / "conceptattention-maps.zip"
            members = ["image.png", *(path.relative_to(run_dir).as_posix() for path in views["heatmaps"])]
            members += [path.relative_to(run_dir).as_posix() for path in views["overlays"]]
            members += ["segmentation.png", "grid.png", "settings.json"]
            with zipfile.ZipFile(zip_path, "w") as archive:
                for member in members:
                    compression = zipfile.ZIP_STORED if member.endswith(".png") else zipfile.ZIP_DEFLATED
                    archive.write(run_dir / member, member, compress_type=compression)

        def moved(path: Path) -> Path:  # the same file in the finished folder
            return final_dir / path.relative_to(run_dir)

        views = {
            key: [moved(path) for path in value] if isinstance(value, list) else moved(value)
            for key, value in views.items()
        }
        self._prune_runs()
        return views, [moved(zip_path), moved(tensor_path)]

    def _prune_runs(self) -> None:
        """Delete the oldest run folders beyond ``limits.kept_runs`` with
        :func:`~conceptattention.outputs.remove_output_dir`, which deletes only folders this program wrote (a folder
        someone else put there, or one holding a foreign file, is left alone and logged)."""
        runs = sorted(path for path in self.work_dir.iterdir() if _RUN_NAME.fullmatch(path.name) and path.is_dir())
        for old_run in runs[: max(0, len(runs) - self.limits.kept_runs)]:
            try:
                remove_output_dir(old_run)
            except (OutputPathError, FileNotFoundError) as error:
                logger.warning("Old run folder not removed: %s", error)


def _timeline_of(attention: ConceptAttention) -> dict[str, list[ConceptMaps]]:
    """The maps of each step and of each block of a finished run with ``keep_per_step=True``."""
    try:
        return {over: maps_over(attention, over) for over in ("steps", "blocks")}
    except TimelineError:
        return {}


def declared_size(path: str | os.PathLike[str]) -> tuple[int, int] | None:
    """``(width, height)`` as the image file's header declares it, without decoding (None: not an image PIL reads).

    Unlike :func:`PIL.Image.open`, this applies no decompression-bomb check, so an oversized upload can be refused
    with its size. Only the header is read, through the same format plugins and order as ``Image.open``.

    Example:
        >>> import tempfile
        >>> path = f"{tempfile.mkdtemp()}/wide.png"
        >>> Image.new("1", (300, 20)).save(path)
        >>> declared_size(path)
        (300, 20)
    """
    Image.init()
    try:
        with open(path, "rb") as handle:
            prefix = handle.read(16)
            for format_id in list(Image.ID):
                factory, accept = Image.OPEN[format_id]
                accepted = accept(prefix) if accept is not None else True
                if not accepted or isinstance(accepted, str):  # a str is PIL's "maybe, with a warning"
                    continue
                handle.seek(0)
                try:
                    return tuple(factory(handle, str(path)).size)  # type: ignore[return-value]
                except (SyntaxError, IndexError, TypeError, ValueError, struct.error, OSError):
                    continue
    except OSError:
        return None
    return None


def _sha256(path: Path) -> str:
    """Hex SHA-256 of a file's bytes (identifies the uploaded image without storing where it was)."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(2**20), b""):
            digest.update(block)
    return digest.hexdigest()
