"""Checks of the web app's raw control values and uploads: each bad value raises :class:`AppInputError` with a
sentence that says what to change.

:class:`AppLimits` bounds one request; :func:`parse_concepts`, :func:`whole_number` and :func:`real_number` read the
page's boxes; :func:`load_upload` reads an uploaded image within the limits (:func:`declared_size`: its size
without decoding it) and :func:`file_sha256` fingerprints it. Used by
:class:`~conceptattention.app.service.MapService`.
"""

from __future__ import annotations

import hashlib
import math
import os
import re
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from PIL import Image

from ..errors import ConceptAttentionError
from ..images import ImageLoadError, load_image


__all__ = [
    "AppInputError",
    "AppLimits",
    "declared_size",
    "file_sha256",
    "load_upload",
    "parse_concepts",
    "pixel_limit",
    "real_number",
    "whole_number",
]


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


def whole_number(label: str, value: Any, low: int, high: int) -> int:
    """``value`` as an int in ``[low, high]`` (Gradio's number boxes give None when empty and floats at times).

    Example:
        >>> whole_number("Steps", 4.0, 1, 100)
        4
    """
    if value is None or (isinstance(value, str) and not value.strip()):
        raise AppInputError(f"{label} is empty; enter a whole number from {low} to {high}.")
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise AppInputError(f"{label} must be a whole number from {low} to {high}, got {value!r}.") from None
    if isinstance(value, bool) or not math.isfinite(number) or number != int(number) or not low <= number <= high:
        raise AppInputError(f"{label} must be a whole number from {low} to {high}, got {value!r}.")
    return int(number)


def real_number(label: str, value: Any, low: float, high: float, *, low_open: bool = False) -> float:
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


def file_sha256(path: Path) -> str:
    """Hex SHA-256 of a file's bytes (identifies the uploaded image without storing where it was)."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(2**20), b""):
            digest.update(block)
    return digest.hexdigest()


def pixel_limit(limits: AppLimits) -> int:
    """Most pixels of an uploaded image: ``limits.max_pixels``, or PIL's decompression-bomb limit if lower.

    Example:
        >>> pixel_limit(AppLimits(max_pixels=1000))
        1000
    """
    pil_limit = Image.MAX_IMAGE_PIXELS
    return limits.max_pixels if not pil_limit else min(limits.max_pixels, int(pil_limit))


def load_upload(path: Path, limits: AppLimits) -> Image.Image:
    """Load an uploaded image within ``limits`` (file size, then pixels from the header, then decoded); messages
    name the file, never the server's folders.

    Raises:
        AppInputError: The file is gone, too large, or has too many pixels.
        ImageLoadError: The file is not a readable image.
    """
    try:
        size = path.stat().st_size
    except OSError:
        raise AppInputError("The uploaded file is gone from the server; upload it again.") from None
    if size > limits.max_upload_bytes:
        raise AppInputError(
            f"The uploaded file is {size / 2**20:.1f} MB; this app accepts at most "
            f"{limits.max_upload_bytes / 2**20:.1f} MB."
        )
    limit = pixel_limit(limits)
    declared = declared_size(path)
    if declared is not None and declared[0] * declared[1] > limit:
        width, height = declared
        raise AppInputError(
            f"The image is too large: {width}x{height} pixels ({width * height / 1e6:.1f} megapixels); this app "
            f"accepts images of at most {limit / 1e6:.1f} megapixels. Resize it and upload it again."
        )
    try:
        return load_image(path, max_pixels=limits.max_pixels)
    except ImageLoadError as error:
        bomb = (Image.DecompressionBombError, Image.DecompressionBombWarning)
        if isinstance(error.__cause__, bomb) or "max_pixels" in str(error):  # a header declared_size missed
            raise AppInputError(
                f"The image is too large; this app accepts images of at most {limit / 1e6:.1f} megapixels. "
                "Resize it and upload it again."
            ) from None
        raise ImageLoadError(str(error).replace(str(path), path.name)) from None
