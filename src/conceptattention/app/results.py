"""What one request of the web app gives, and looking at a kept result again: :class:`MapResult`, the maps of one
step or block (:class:`MapView`) and the concepts ranked at a pixel (:class:`ResultExplorer`, a part of
:class:`~conceptattention.app.service.MapService`).
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from PIL import Image

from .. import ConceptMaps
from .inputs import AppInputError, whole_number


__all__ = ["DISPLAY_SIDE", "SHOWN_MAPS", "MapResult", "MapView", "ResultExplorer", "display_copy"]

#: Shown images, heatmaps and overlays are scaled so that their longer side has this many pixels.
DISPLAY_SIDE = 384

#: What the page can show: the result (mean over steps and blocks), or the maps of one step or one block.
SHOWN_MAPS = ("mean", "steps", "blocks")


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


def display_copy(image: Image.Image) -> Image.Image:
    """``image`` scaled (up or down) so that its longer side is :data:`DISPLAY_SIDE` pixels."""
    scale = DISPLAY_SIDE / max(image.size)
    size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
    return image.resize(size, Image.Resampling.LANCZOS)


class ResultExplorer:
    """The part of :class:`~conceptattention.app.service.MapService` that serves kept results: a result by its run id,
    the maps of one of its steps or blocks, and the concepts ranked at a pixel.

    The service sets ``_lock`` (guards ``_results``), ``_results`` (the last ``AppLimits.kept_runs`` results by run
    id, oldest first) and ``cmap`` (the heatmaps' colour map).
    """

    _lock: threading.Lock
    _results: OrderedDict[str, MapResult]
    cmap: str

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
        position = whole_number("The step or block", index, 0, len(parts) - 1)
        chosen = parts[position]
        return chosen, f"{chosen.settings.get('label', over)} ({position + 1} of {len(parts)})"

    def view(self, run_id: Any, over: Any = "mean", index: Any = 0) -> MapView:
        """The heatmaps, overlays and segmentation of :meth:`shown_maps`, at the result's display size.

        Example:
            >>> from conceptattention.app import MapService
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
            >>> from conceptattention.app import MapService
            >>> from conceptattention.models import load_model
            >>> service = MapService(load_model())
            >>> result = service.generate(prompt="a red boat", concepts="boat, sea", steps=2)
            >>> ranking = service.rank_at(result.run_id, x=10, y=300)
            >>> sorted(name for name, _ in ranking), ranking[0][1] >= ranking[1][1]
            (['boat', 'sea'], True)
        """
        maps, _ = self.shown_maps(run_id, over, index)
        display_image = self.result(run_id).display_image
        column = whole_number("The pixel's x", x, 0, display_image.width - 1)
        row = whole_number("The pixel's y", y, 0, display_image.height - 1)
        values = maps.upsample((display_image.height, display_image.width), mode="bilinear")[:, 0, row, column]  # [C]
        order = sorted(range(len(maps.concepts)), key=lambda concept: -float(values[concept]))  # stable: ties keep order
        return [(maps.concepts[concept], float(values[concept])) for concept in order]
