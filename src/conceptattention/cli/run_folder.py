"""Writing the run folder of ``generate`` / ``explain``: image, maps, heatmaps, overlays, segmentation, grid figure,
per-head heatmaps, videos and settings.json, atomically, into a folder only this program replaces."""

from __future__ import annotations

import argparse
import json
import platform
import re
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from PIL import Image

from ..outputs import atomic_output_dir, check_output_dir


if TYPE_CHECKING:  # torch and diffusers: imported by the commands that load a model, not by --help
    from ..maps import ConceptMaps


DISPLAY_SIDE = 384  # overlays and heatmaps are written at least this large on the longer side

def head_writer(args: argparse.Namespace, maps: ConceptMaps, size: tuple[int, int]) -> Callable[[Path], dict[str, Any]]:
    """With ``--keep-heads``: write ``heads/head<h>/<concept>.png`` heatmaps (else nothing) into the run folder."""

    def write(folder: Path) -> dict[str, Any]:
        if not getattr(args, "keep_heads", False) or maps.head_maps is None:
            return {}
        listing: dict[str, dict[str, str]] = {}
        for head in range(maps.head_maps.shape[1]):
            head_maps = maps.head(head)
            (folder / "heads" / f"head{head}").mkdir(parents=True)
            taken: set[str] = set()
            listing[str(head)] = {}
            for concept in head_maps.concepts:
                name = f"heads/head{head}/{slug(concept, taken)}.png"
                head_maps.heatmap(concept, size=display_size((size[1], size[0]))[::-1], cmap=args.cmap).save(folder / name)
                listing[str(head)][concept] = name
        return {"heads": listing}

    return write


def check_output_folder(path: Path, overwrite: bool) -> None:
    """Fail before any work if the output folder cannot be used (see :func:`conceptattention.outputs.check_output_dir`):
    it exists and --overwrite is not given, it is a file, it cannot be written, or it is not a folder this program
    wrote (--overwrite never replaces those, nor the home folder, the root or the current directory and its parents).
    """
    check_output_dir(path, overwrite=overwrite, recognise=legacy_run_files)


def _listed_files(value: Any) -> set[str]:
    """Every string in a settings.json ``files`` entry (nested dicts and lists)."""
    if isinstance(value, str):
        return {value}
    if isinstance(value, dict):
        value = list(value.values())
    if isinstance(value, list):
        return {name for item in value for name in _listed_files(item)}
    return set()


def legacy_run_files(folder: Path) -> set[str] | None:
    """The files of a ``generate``/``explain`` run folder written before output markers existed, from its
    settings.json (``command``, ``environment.conceptattention`` and ``files``), or None if it is not one."""
    settings = json.loads((folder / "settings.json").read_text(encoding="utf-8"))
    if not isinstance(settings, dict) or settings.get("command") not in ("generate", "explain"):
        return None
    environment_info = settings.get("environment")
    if not isinstance(environment_info, dict) or "conceptattention" not in environment_info:
        return None
    return _listed_files(settings.get("files")) | {"settings.json"}


def slug(concept: str, taken: set[str]) -> str:
    """A file-name-safe, unique name for a concept (``"red car"`` → ``"red_car"``)."""
    base = re.sub(r"[^A-Za-z0-9._-]+", "_", concept).strip("._") or "concept"
    name, suffix = base[:60], 2
    while name in taken:
        name = f"{base[:56]}_{suffix}"
        suffix += 1
    taken.add(name)
    return name


def display_size(size: tuple[int, int]) -> tuple[int, int]:
    """(width, height) scaled up so that the longer side is at least DISPLAY_SIDE."""
    width, height = size
    scale = max(1.0, DISPLAY_SIDE / max(width, height))
    return round(width * scale), round(height * scale)


def environment() -> dict[str, str]:
    import diffusers
    import torch
    import transformers

    from .. import __version__

    return {
        "conceptattention": __version__,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "diffusers": diffusers.__version__,
        "transformers": transformers.__version__,
        "platform": platform.platform(),
    }


def combined_writers(
    writers: Sequence[Callable[[Path], dict[str, Any]] | None],
) -> Callable[[Path], dict[str, Any]] | None:
    """One ``extra_files`` writer that runs each given writer in turn (None when none is given).

    Example:
        >>> combined_writers([None, None]) is None
        True
        >>> sorted(combined_writers([lambda folder: {"a": "a.png"}, None, lambda folder: {"b": "b.png"}])(Path(".")))
        ['a', 'b']
    """
    given = [writer for writer in writers if writer is not None]
    if not given:
        return None

    def write_all(folder: Path) -> dict[str, Any]:
        files: dict[str, Any] = {}
        for writer in given:
            files.update(writer(folder))
        return files

    return write_all


def write_run_folder(
    out: Path,
    *,
    overwrite: bool,
    image: Image.Image,
    maps: ConceptMaps,
    settings: dict[str, Any],
    cmap: str = "plasma",
    frames: list[Image.Image] | None = None,
    fps: float = 8,
    extra_files: Callable[[Path], dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """Write image, maps, heatmaps, overlays, segmentation, grid figure and settings.json atomically.

    For videos (``frames`` given), ``image`` is the first frame and the folder also holds ``video.gif``,
    ``video.mp4``, one overlay GIF and MP4 per concept, and ``frames_grid.png``. ``extra_files(folder)`` writes
    more files into the (temporary) folder and returns their listing for settings.json (e.g. ``--animate``).

    Returns:
        The file listing written into settings.json.
    """
    started = time.perf_counter()
    files: dict[str, Any] = {"image": "image.png", "maps": "maps.safetensors", "heatmaps": {}, "overlays": {}}
    shown = image.resize(display_size(image.size), Image.Resampling.LANCZOS)
    with atomic_output_dir(out, overwrite=overwrite, recognise=legacy_run_files) as folder:
        image.save(folder / "image.png")
        maps.save(folder / "maps.safetensors")
        (folder / "heatmaps").mkdir()
        (folder / "overlays").mkdir()
        taken: set[str] = set()
        for concept in maps.concepts:
            name = slug(concept, taken)
            heatmap = maps.heatmap(concept, size=(shown.height, shown.width), cmap=cmap)
            heatmap.save(folder / "heatmaps" / f"{name}.png")
            maps.overlay(shown, concept, cmap=cmap).save(folder / "overlays" / f"{name}.png")
            files["heatmaps"][concept] = f"heatmaps/{name}.png"
            files["overlays"][concept] = f"overlays/{name}.png"
        maps.segmentation_image(size=(shown.height, shown.width)).save(folder / "segmentation.png")
        files["segmentation"] = "segmentation.png"
        figure = maps.figure(shown, cmap=cmap)
        figure.savefig(folder / "grid.png", dpi=100, bbox_inches="tight")
        files["grid"] = "grid.png"
        if frames is not None:
            files.update(_write_video_files(folder, frames, maps, cmap, fps))
        if extra_files is not None:
            files.update(extra_files(folder))
        settings = dict(settings)
        settings["files"] = files
        settings["environment"] = environment()
        settings["seconds_writing"] = round(time.perf_counter() - started, 3)
        (folder / "settings.json").write_text(json.dumps(settings, indent=2, default=str))
    return files


def _write_video_files(
    folder: Path, frames: list[Image.Image], maps: ConceptMaps, cmap: str, fps: float
) -> dict[str, Any]:
    from ..video import frames_grid_figure, save_overlay_video, save_video

    files: dict[str, Any] = {"video": ["video.gif", "video.mp4"], "overlay_videos": {}}
    for suffix in ("gif", "mp4"):
        save_video(frames, folder / f"video.{suffix}", fps=fps)
    taken: set[str] = set()
    for concept in maps.concepts:
        name = slug(concept, taken)
        paths = []
        for suffix in ("gif", "mp4"):
            save_overlay_video(frames, maps, concept, folder / "overlays" / f"{name}.{suffix}", fps=fps, cmap=cmap)
            paths.append(f"overlays/{name}.{suffix}")
        files["overlay_videos"][concept] = paths
    frames_grid_figure(frames, maps).savefig(folder / "frames_grid.png", dpi=100, bbox_inches="tight")
    files["frames_grid"] = "frames_grid.png"
    return files


def print_summary(out: Path, maps: ConceptMaps, seconds: float) -> None:
    print(f"wrote {out}/ ({len(maps.concepts)} concepts, maps {maps.grid_size[0]}x{maps.grid_size[1]}, {seconds:.1f} s)")
    print(f"  grid figure: {out / 'grid.png'}")


def finish_map_command(
    args: argparse.Namespace,
    *,
    image: Image.Image,
    maps: ConceptMaps,
    settings: dict[str, Any],
    started: float,
    frames: list[Image.Image] | None = None,
    extra_files: Callable[[Path], dict[str, Any]] | None = None,
) -> int:
    """Write the run folder of ``generate`` / ``explain`` (``--out``, ``--overwrite``, ``--cmap``), print the summary.

    Args:
        args: The parsed options.
        image: The image (the first frame of a video).
        maps: Its concept maps.
        settings: The settings.json entries.
        started: ``time.perf_counter()`` at the start of the command.
        frames: Video frames, if any.
        extra_files: Writes more files into the run folder (see :func:`write_run_folder`).

    Returns:
        The exit status, 0.
    """
    write_run_folder(
        args.out,
        overwrite=args.overwrite,
        image=image,
        maps=maps,
        settings=settings,
        cmap=args.cmap,
        frames=frames,
        extra_files=extra_files,
    )
    print_summary(args.out, maps, time.perf_counter() - started)
    return 0
