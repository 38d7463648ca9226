"""The ``--masks`` options shared by ``generate``, ``explain`` and ``dataset``: binary masks, labels, COCO JSON."""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .common import CLIError


if TYPE_CHECKING:  # torch: imported by the commands that write masks, not by --help
    from ..maps import ConceptMaps

#: The rules of :func:`conceptattention.masks.concept_masks` (kept equal to ``masks.MASK_RULES`` by a test).
MASK_RULES: tuple[str, ...] = ("mean", "otsu", "threshold", "argmax")


def add_mask_options(parser: argparse.ArgumentParser, *, default: str | None = None) -> None:
    """``--masks RULE``, ``--mask-threshold``, ``--none-logit``."""
    group = parser.add_argument_group("masks")
    group.add_argument(
        "--masks",
        choices=list(MASK_RULES),
        default=default,
        metavar="RULE",
        help=f"also write masks/<concept>.png, labels.png (palette, 0 = none), legend.json and annotations.json "
        f"(COCO, RLE; needs pycocotools) with this rule: {', '.join(MASK_RULES)}"
        + (f" (default: {default})" if default else ""),
    )
    group.add_argument(
        "--mask-threshold",
        type=float,
        default=None,
        help="--masks threshold: pixels whose map is above this value (a probability for softmax maps)",
    )
    group.add_argument(
        "--none-logit",
        type=float,
        default=None,
        help="beyond the paper, off by default: a null concept with this standardised logit takes the pixels where "
        "no concept scores high, so that absent concepts take fewer pixels (see README 'Masks and datasets')",
    )


def check_mask_options(args: argparse.Namespace) -> None:
    """Refuse inconsistent mask options before any work (and a missing pycocotools when masks are asked for)."""
    rule = getattr(args, "masks", None)
    threshold = getattr(args, "mask_threshold", None)
    none = getattr(args, "none_logit", None)
    if rule is None:
        if threshold is not None or none is not None:
            raise CLIError("--mask-threshold and --none-logit only apply with --masks RULE.")
        return
    if rule == "threshold" and threshold is None:
        raise CLIError("--masks threshold needs --mask-threshold VALUE (e.g. 0.5 for softmax maps).")
    if rule != "threshold" and threshold is not None:
        raise CLIError(f"--mask-threshold only applies to --masks threshold, not to --masks {rule}.")
    for name, value in (("--mask-threshold", threshold), ("--none-logit", none)):
        if value is not None and not math.isfinite(value):
            raise CLIError(f"{name} must be a finite number, got {value}.")
    from ..masks import _pycocotools_mask

    try:
        _pycocotools_mask()
    except ImportError as error:  # one error line, before any work
        raise CLIError(str(error)) from error


def mask_settings(args: argparse.Namespace) -> dict[str, Any] | None:
    """The ``masks`` entry of settings.json (None without ``--masks``)."""
    if getattr(args, "masks", None) is None:
        return None
    return {"rule": args.masks, "threshold": args.mask_threshold, "none_logit": args.none_logit}


def mask_writer(
    args: argparse.Namespace, maps: ConceptMaps, size: tuple[int, int], names: Sequence[str] | None = None
) -> Callable[[Path], dict[str, Any]] | None:
    """A function that writes the masks of ``maps`` at ``size`` (``(H, W)``) into a folder, or None without --masks."""
    if getattr(args, "masks", None) is None:
        return None
    from ..masks import write_masks
    from .run_folder import slug

    if names is None:
        taken: set[str] = set()
        names = [slug(concept, taken) for concept in maps.concepts]  # as heatmaps/ and overlays/

    def write(folder: Path) -> dict[str, Any]:
        return write_masks(
            folder, maps, args.masks, size=size, threshold=args.mask_threshold, none=args.none_logit, names=names
        )

    return write
