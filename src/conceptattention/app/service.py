"""What the web app does, without any Gradio: validate the inputs, run the model once, draw and package the maps.

(About 600 lines on purpose: the request flow of one service; inputs, results and run folders live in
:mod:`~conceptattention.app.inputs`, :mod:`~conceptattention.app.results` and :mod:`~conceptattention.app.run_files`.)

:class:`MapService` wraps one loaded pipeline. Its :meth:`~MapService.generate` and :meth:`~MapService.explain`
take the raw values of the page's controls, check every one of them (raising :class:`AppInputError` with a sentence
that says what to change), run ConceptAttention under a lock (so two requests never share the pipeline's hooks), and
return a :class:`MapResult` with display-ready images and the downloadable files. :func:`run_safely` turns any
outcome into the status line shown on the page: user errors verbatim, unexpected errors as a generic sentence (the
traceback goes to the server log only).

Only the public API of :mod:`conceptattention` is used, so this module is also a worked example of it. Its
neighbours hold the rest of the app's non-Gradio part: :mod:`.inputs` (checks of control values and uploads),
:mod:`.results` (the result types, and exploring a kept result: one step or block, the ranking at a pixel) and
:mod:`.run_files` (the run folders on disk); their public names are re-exported here.
"""

from __future__ import annotations

import inspect
import logging
import os
import re
import shutil
import tempfile
import threading
import time
import warnings
import weakref
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
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
from ..capture import prompt_word_source
from ..config import SPACES
from ..errors import ConceptAttentionError
from ..models import LoadedModel, UnknownWordsError, check_vocabulary
from ..timeline import TimelineError, estimate_timeline_bytes, maps_over
from .inputs import (
    AppInputError,
    AppLimits,
    file_sha256,
    load_upload,
    parse_concepts,
    pixel_limit,
    real_number,
    whole_number,
)
from .results import DISPLAY_SIDE, SHOWN_MAPS, MapResult, MapView, ResultExplorer, display_copy
from .run_files import prune_runs, run_folder, write_run_files


__all__ = [
    "DISPLAY_SIDE",
    "AppInputError",
    "AppLimits",
    "MapResult",
    "MapService",
    "MapView",
    "Outcome",
    "SHOWN_MAPS",
    "parse_concepts",
    "run_safely",
]

logger = logging.getLogger("conceptattention.app")

#: Errors whose message is meant for the user: the package's own (a torch ValueError is a bug, not one of these),
#: and NotImplementedError (an adapter without an explain path).
USER_ERRORS: tuple[type[BaseException], ...] = (ConceptAttentionError, NotImplementedError)

UNEXPECTED_ERROR_MESSAGE = (
    "Something went wrong on the server; the details are in its log. Try again, and if it keeps failing, report it "
    "with the output of `conceptattention env`."
)


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


def model_vocabulary(loaded: LoadedModel) -> tuple[str, ...] | None:
    """The words the model knows, when it declares them (:attr:`LoadedModel.vocabulary`: the shipped ShapesWorld
    model), else None.

    Example:
        >>> from conceptattention.models import LoadedModel
        >>> model_vocabulary(LoadedModel(pipeline=None, name="black-forest-labs/FLUX.1-dev", description="")) is None
        True
    """
    return loaded.vocabulary


class MapService(ResultExplorer):
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
    def offers_prompt_words(self) -> bool:
        """Whether this model's adapter can map the prompt's own words (the page then shows the switch)."""
        return prompt_word_source(self.adapter) is not None

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
        side = whole_number(label, value, multiple, largest)
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
        chosen = [whole_number("Each layer", layer, 0, self.layer_count - 1) for layer in layers]
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
        prompt_words: Any = False,
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
            prompt_words: Also map every word of the prompt (after the concepts; the concept box may then be
                empty), on models that offer it (:attr:`offers_prompt_words`).

        Returns:
            :class:`MapResult`.

        Raises:
            AppInputError: A control holds an unusable value (the message names it).
            ValueError: The library refused the request (e.g. a concept too long for the text encoder).
        """
        started = time.perf_counter()
        prompt_text = self._text("The prompt", prompt, required=True)
        if not isinstance(prompt_words, bool):
            raise AppInputError(f"Mapping the prompt's words must be on or off, got {prompt_words!r}.")
        if prompt_words and not self.offers_prompt_words:
            raise AppInputError(f"This model ({self.loaded.description}) offers no prompt-word maps (FLUX.1 only).")
        blank = concepts is None or (isinstance(concepts, str) and not concepts.strip())
        concept_list = () if prompt_words and blank else parse_concepts(concepts, self.limits)
        notes = self._check_vocabulary(concept_list, prompt_text)
        default_height, default_width = self.default_side
        seed_value = whole_number("Seed", seed, 0, 2**32 - 1)
        step_count = whole_number("Steps", self.default_steps if steps is None else steps, 1, self.limits.max_steps)
        image_height = self._side("Height", default_height if height is None else height)
        image_width = self._side("Width", default_width if width is None else width)
        guidance = real_number(
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
                frame_count = whole_number("Frames", frame_count, 1, self.limits.max_frames)
            kwargs.update(self._call_kwargs({"num_frames": frame_count, "output_type": "pil"}))
            notes.append("Video model: the first frame and its maps are shown; use the CLI for the whole video.")
        tokens = self._image_tokens(image_height, image_width, kwargs.get("num_frames") or 1)
        mapped = [*concept_list, *(prompt_text.split() if prompt_words else [])]  # words: about one per space
        keep = self._keep_timeline(timeline, steps=step_count, options=options, concepts=mapped, tokens=tokens)
        if isinstance(keep, str):
            notes.append(keep)
        options["keep_per_step"] = keep is True
        with self._lock, warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            generator = torch.Generator(self.generator_device).manual_seed(seed_value)
            concept_arg = list(concept_list) or None
            with ConceptAttention(self.pipeline, concept_arg, prompt_words=prompt_words, **options) as attention:
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
            "method": maps.settings,
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
        level = real_number("Noise level", noise_level, 0.0, 1.0, low_open=True)
        sample_count = whole_number("Samples", samples, 1, self.limits.max_samples)
        seed_value = whole_number("Seed", seed, 0, 2**32 - 1)
        options = self._method_options(self.default_layers if layers is None else layers, space, softmax)
        image = load_upload(path, self.limits)
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
            "image_sha256": file_sha256(path),
            "concepts": list(maps.concepts),
            "method": maps.settings,
        }
        return self._finish(image, maps, settings, notes, started, per_step)

    @property
    def pixel_limit(self) -> int:
        """Most pixels of an uploaded image: ``limits.max_pixels``, or PIL's decompression-bomb limit if lower."""
        return pixel_limit(self.limits)

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
        display_image = display_copy(image)
        display_size = (display_image.height, display_image.width)
        heatmaps = [(maps.heatmap(concept, size=display_size, cmap=self.cmap), concept) for concept in maps.concepts]
        overlays = [(maps.overlay(display_image, concept, cmap=self.cmap), concept) for concept in maps.concepts]
        segmentation = maps.segmentation_image(size=display_size)
        timeline = timeline or {}
        if timeline:
            settings["timeline"] = {over: len(parts) for over, parts in timeline.items()}
        with self._lock:
            self._run_counter += 1
            final_dir = run_folder(self.work_dir, self._run_counter)
        views, files = write_run_files(
            final_dir, image, display_image, maps, heatmaps, overlays, segmentation, settings, self.cmap
        )
        prune_runs(self.work_dir, self.limits.kept_runs)
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

def _timeline_of(attention: ConceptAttention) -> dict[str, list[ConceptMaps]]:
    """The maps of each step and of each block of a finished run with ``keep_per_step=True``."""
    try:
        return {over: maps_over(attention, over) for over in ("steps", "blocks")}
    except TimelineError:
        return {}
