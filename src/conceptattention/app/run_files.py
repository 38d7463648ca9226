"""The run folders of the web app: each request's shown PNGs and downloads written all-or-nothing into a new
``run-NNNNNN`` folder, and the oldest folders pruned (only folders this program wrote).

Used by :class:`~conceptattention.app.service.MapService`, which numbers the folders and keeps the last
``AppLimits.kept_runs`` of them.
"""

from __future__ import annotations

import json
import logging
import re
import zipfile
from pathlib import Path
from typing import Any

from PIL import Image

from .. import ConceptMaps
from ..outputs import OutputPathError, atomic_output_dir, remove_output_dir


__all__ = ["PNG_COMPRESS_LEVEL", "RUN_NAME", "file_stem", "prune_runs", "run_folder", "write_run_files"]

logger = logging.getLogger("conceptattention.app")

RUN_NAME = re.compile(r"run-\d{6}")  # the run folders this service writes (pruning touches no other name)

PNG_COMPRESS_LEVEL = 1  # zlib level of written PNGs: 6x faster than PIL's default 6, files ~20% larger


def run_folder(work_dir: Path, number: int) -> Path:
    """The folder of run ``number`` in ``work_dir`` (a name :data:`RUN_NAME` matches).

    Example:
        >>> run_folder(Path("work"), 7).name
        'run-000007'
    """
    return work_dir / f"run-{number:06d}"


def file_stem(index: int, concept: str) -> str:
    """A safe, unique file name for concept number ``index``.

    Example:
        >>> file_stem(1, "red car")
        '01_red_car'
    """
    slug = re.sub(r"[^A-Za-z0-9._-]+", "_", concept).strip("._")[:40] or "concept"
    return f"{index:02d}_{slug}"


def write_run_files(
    final_dir: Path,
    image: Image.Image,
    display_image: Image.Image,
    maps: ConceptMaps,
    heatmaps: list[tuple[Image.Image, str]],
    overlays: list[tuple[Image.Image, str]],
    segmentation: Image.Image,
    settings: dict[str, Any],
    cmap: str,
) -> tuple[dict[str, Any], list[Path]]:
    """Write the shown PNGs, ``conceptattention-maps.zip`` and ``maps.safetensors`` into the new folder ``final_dir``.

    All or nothing: the folder is written with :func:`conceptattention.outputs.atomic_output_dir` (it appears
    complete, with the marker that lets :func:`prune_runs` delete it later, or not at all). PNGs are written once,
    with fast compression, and stored uncompressed in the zip (they are compressed already).

    Returns:
        ``(views, downloads)`` as in :class:`~conceptattention.app.results.MapResult`.
    """
    with atomic_output_dir(final_dir) as run_dir:
        (run_dir / "heatmaps").mkdir()
        (run_dir / "overlays").mkdir()
        image.save(run_dir / "image.png", compress_level=PNG_COMPRESS_LEVEL)
        display_image.save(run_dir / "display.png", compress_level=PNG_COMPRESS_LEVEL)
        views: dict[str, Any] = {"image": run_dir / "display.png", "heatmaps": [], "overlays": []}
        for index, ((heatmap, concept), (overlay, _)) in enumerate(zip(heatmaps, overlays)):
            for kind, picture in (("heatmaps", heatmap), ("overlays", overlay)):
                path = run_dir / kind / f"{file_stem(index, concept)}.png"
                picture.save(path, compress_level=PNG_COMPRESS_LEVEL)
                views[kind].append(path)
        segmentation.save(run_dir / "segmentation.png", compress_level=PNG_COMPRESS_LEVEL)
        views["segmentation"] = run_dir / "segmentation.png"
        maps.figure(display_image, cmap=cmap).savefig(run_dir / "grid.png", dpi=100, bbox_inches="tight")
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
    return views, [moved(zip_path), moved(tensor_path)]


def prune_runs(work_dir: Path, kept_runs: int) -> None:
    """Delete the oldest run folders beyond ``kept_runs`` with :func:`~conceptattention.outputs.remove_output_dir`,
    which deletes only folders this program wrote (a folder someone else put there, or one holding a foreign file,
    is left alone and logged)."""
    runs = sorted(path for path in work_dir.iterdir() if RUN_NAME.fullmatch(path.name) and path.is_dir())
    for old_run in runs[: max(0, len(runs) - kept_runs)]:
        try:
            remove_output_dir(old_run)
        except (OutputPathError, FileNotFoundError) as error:
            logger.warning("Old run folder not removed: %s", error)
