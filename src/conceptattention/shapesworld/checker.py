"""Scene-level generation-fidelity checker that uses the renderer's knowledge.

For every prompted object (name, colour) the checker asks: *is there a placement of this object, drawn by the
ShapesWorld renderer, that the image matches?*

1. **Colour segmentation.** Every pixel is labelled with its nearest reference colour: the nine colour words, the
   fixed part colours (brown, charcoal) and the background textures (sky, grass, sea, sand); pixels far from all of
   them are ``"other"``.
2. **Structure matching.** The object is rasterised with the renderer's own geometry over a grid of positions and
   scales (cached). A placement scores the weighted fraction of its parts whose pixels carry the expected label
   (main part = the prompted colour; trunk = brown; wheels = charcoal; stem = green ...) plus a one-pixel ring around
   the object that must *not* be the main colour (sky objects: must be sky). The object is found when the best
   placement scores at least ``threshold``.

Colour alone is reported separately (``colour_found``: some placement's main-colour parts are mostly the prompted
colour, whatever the other parts).

Example:
    >>> from conceptattention.shapesworld import ShapesWorldDataset
    >>> from conceptattention.shapesworld.checker import FidelityChecker
    >>> sample = ShapesWorldDataset("test", seed=0, n=1)[0]
    >>> checks = FidelityChecker().check(sample.image, [(o.name, o.colour) for o in sample.spec.objects])
    >>> all(c.found for c in checks)
    True
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from conceptattention.errors import ConceptAttentionError
from conceptattention.shapesworld.render import (
    BACKGROUND_COLOURS,
    COLOURS,
    FIXED_PART_COLOURS,
    FRAME,
    IMAGE_SIZE,
    OBJECT_COLOURS,
    OBJECT_EXTENT,
    OBJECT_PARTS,
    OBJECT_PLACE,
    OBJECTS,
    PALETTE,
    object_part_masks,
)


class CheckerError(ConceptAttentionError, ValueError):
    """Invalid checker input."""


def _reference_colours() -> tuple[list[str], torch.Tensor]:
    """Labels and RGB ``[R, 3]`` of the reference colours (several references may share a label)."""
    sky_mid = tuple((a + b) / 2 for a, b in zip(BACKGROUND_COLOURS["sky_top"], BACKGROUND_COLOURS["sky_horizon"]))
    sea_mid = tuple((a + b) / 2 for a, b in zip(BACKGROUND_COLOURS["sea"], BACKGROUND_COLOURS["sea_wave"]))
    entries: list[tuple[str, tuple[float, float, float]]] = [(name, PALETTE[name]) for name in COLOURS]
    entries += [("brown", FIXED_PART_COLOURS["brown"]), ("charcoal", FIXED_PART_COLOURS["charcoal"])]
    entries += [
        ("sky", BACKGROUND_COLOURS["sky_top"]),
        ("sky", sky_mid),
        ("sky", BACKGROUND_COLOURS["sky_horizon"]),
        ("grass", BACKGROUND_COLOURS["grass"]),
        ("grass", tuple(c - 0.06 for c in BACKGROUND_COLOURS["grass"])),
        ("sea", BACKGROUND_COLOURS["sea"]),
        ("sea", sea_mid),
        ("sea", BACKGROUND_COLOURS["sea_wave"]),
        ("sand", BACKGROUND_COLOURS["sand"]),
        ("sand", tuple(c - 0.07 for c in BACKGROUND_COLOURS["sand"])),
    ]
    return [label for label, _ in entries], torch.tensor([rgb for _, rgb in entries], dtype=torch.float32)


LABELS: tuple[str, ...] = tuple(dict.fromkeys(_reference_colours()[0])) + ("other",)
"""Pixel labels of the colour segmentation."""

PART_WEIGHTS: dict[str, dict[str, float]] = {
    "sun": {"disc": 0.4, "rays": 0.3, "ring": 0.3},
    "cloud": {"body": 0.7, "ring": 0.3},
    "tree": {"crown": 0.45, "trunk": 0.3, "ring": 0.25},
    "house": {"body": 0.45, "roof": 0.25, "door": 0.1, "ring": 0.2},
    "car": {"body": 0.5, "wheels": 0.3, "ring": 0.2},
    "flower": {"petals": 0.45, "centre": 0.15, "stem": 0.2, "ring": 0.2},
    "boat": {"hull": 0.4, "sail": 0.25, "mast": 0.1, "ring": 0.25},
}
"""Weight of each part (and of the surrounding ring) in a placement's score; each row sums to 1."""

SCALES: tuple[float, ...] = (0.85, 0.93, 1.01, 1.09, 1.17, 1.25, 1.33)
"""Object scales searched by the checker."""

PHASES: tuple[float, ...] = (0.0, 0.5)
"""Sub-pixel offsets (in pixels, both axes) of the template renders; integer shifts cover the rest."""


@dataclass(frozen=True)
class ObjectCheck:
    """Result for one prompted object.

    Attributes:
        name, colour: The prompted object (``colour`` is ``None`` when the prompt gave none: any allowed colour).
        score: Best placement score in [0, 1].
        colour_found: A blob of the prompted colour with the size and shape of the object's main part exists
            (secondary parts and surroundings ignored).
        found: ``score >= threshold``: the object appears with the prompted colour *and* identity.
        placement: ``(cx, cy, scale)`` of the best placement (frame units).

    Example:
        >>> ObjectCheck("sun", "red", 0.9, True, True, (8.0, 7.0, 1.0)).found
        True
    """

    name: str
    colour: str | None
    score: float
    colour_found: bool
    found: bool
    placement: tuple[float, float, float]


@dataclass
class _Templates:
    """Kernels of one object class: one template per (scale, sub-pixel phase, part) plus the ring, cropped to a
    common box."""

    kernels: torch.Tensor  # float32 [variants, parts + 1, kh, kw]: parts in OBJECT_PARTS order, then the ring
    areas: torch.Tensor  # float32 [variants, parts + 1]
    anchors: torch.Tensor  # float32 [variants, 3]: (cx, cy, scale) of each reference rendering (frame units)
    origin: tuple[int, int]  # (row, col) of the kernel's top-left pixel in the reference rendering


class FidelityChecker:
    """Colour segmentation plus renderer-template matching (see the module docstring).

    Args:
        size: Resolution of the images to check.
        threshold: Minimum placement score for an object to count as present.
        max_colour_distance: Pixels farther than this (RGB, 0..1) from every reference are labelled ``"other"``.
        colour_fraction: ``colour_found`` needs a placement of the object whose main-colour parts (any structure
            ignored) are at least this fraction of the prompted colour: a blob of the right colour and about the
            right size, not scattered pixels.

    Example:
        >>> checker = FidelityChecker()
        >>> checker.pixel_labels(torch.ones(3, 32, 32)).unique().tolist() == [LABELS.index("white")]
        True
    """

    def __init__(
        self,
        size: int = IMAGE_SIZE,
        threshold: float = 0.75,
        max_colour_distance: float = 0.3,
        colour_fraction: float = 0.6,
    ) -> None:
        if size < 16:
            raise CheckerError(f"The checker needs images of at least 16 x 16 pixels, got size={size}.")
        if not 0.0 < threshold <= 1.0:
            raise CheckerError(f"threshold must lie in (0, 1], got {threshold}.")
        self.size, self.threshold, self.max_colour_distance = size, threshold, max_colour_distance
        if not 0.0 < colour_fraction <= 1.0:
            raise CheckerError(f"colour_fraction must lie in (0, 1], got {colour_fraction}.")
        self.colour_fraction = colour_fraction
        labels, self._reference_rgb = _reference_colours()
        self._reference_label = torch.tensor([LABELS.index(label) for label in labels])
        self._templates: dict[str, _Templates] = {}

    # -- colour segmentation ---------------------------------------------------------------------------------------

    def pixel_labels(self, image: torch.Tensor) -> torch.Tensor:
        """Nearest-reference label of every pixel.

        Args:
            image: ``float [3, S, S]`` RGB in [0, 1].

        Returns:
            ``int64 [S, S]`` indices into :data:`LABELS`.
        """
        if image.dim() != 3 or image.shape[0] != 3 or image.shape[1:] != (self.size, self.size):
            raise CheckerError(f"Expected an RGB image [3, {self.size}, {self.size}], got shape {tuple(image.shape)}.")
        pixels = image.detach().float().cpu().reshape(3, -1).T  # [P, 3]
        distances = torch.cdist(pixels, self._reference_rgb)  # [P, R]
        nearest_distance, nearest = distances.min(dim=1)
        labels = self._reference_label[nearest]
        labels = torch.where(nearest_distance > self.max_colour_distance, LABELS.index("other"), labels)
        return labels.view(self.size, self.size)

    # -- templates ---------------------------------------------------------------------------------------------------

    def _templates_for(self, name: str) -> _Templates:
        """Render ``name`` once per (scale, sub-pixel phase) at a reference anchor; integer pixel shifts of these
        renders are exactly the renders at shifted anchors, so matching every placement is one cross-correlation."""
        if name not in self._templates:
            half_width, top, bottom = OBJECT_EXTENT[name]
            base = (FRAME / 2, FRAME / 2 + (top - bottom) / 2 * SCALES[-1] / 2)
            step = FRAME / self.size
            variants = [(scale, dx, dy) for scale in SCALES for dx in PHASES for dy in PHASES]
            cx = torch.tensor([base[0] + dx * step for _, dx, _ in variants])
            cy = torch.tensor([base[1] + dy * step for _, _, dy in variants])
            masks = object_part_masks(name, cx, cy, torch.tensor([v[0] for v in variants]), self.size)
            silhouette = torch.stack(list(masks.values())).any(dim=0)  # [variants, S, S]
            dilated = F.max_pool2d(silhouette.float().unsqueeze(1), 3, stride=1, padding=1).squeeze(1) > 0
            stacks = torch.stack(
                [*masks.values(), dilated & ~silhouette], dim=1
            ).float()  # [variants, parts + 1, S, S]
            rows = stacks.sum(dim=(0, 1, 3)).nonzero().squeeze(1)
            cols = stacks.sum(dim=(0, 1, 2)).nonzero().squeeze(1)
            crop = stacks[:, :, int(rows.min()) : int(rows.max()) + 1, int(cols.min()) : int(cols.max()) + 1]
            self._templates[name] = _Templates(
                kernels=crop.contiguous(),  # [variants, parts + 1, kh, kw]
                areas=stacks.sum(dim=(2, 3)),  # [variants, parts + 1]
                anchors=torch.stack([cx, cy, torch.tensor([v[0] for v in variants])], dim=1),  # [variants, 3]
                origin=(int(rows.min()), int(cols.min())),
            )
        return self._templates[name]

    def _scores(self, name: str, colour: str, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Scores of every placement, the fraction of its main-colour pixels that match, and the placements.

        Returns:
            ``scores [n]``, ``main_fraction [n]`` and ``placements [n, 3]`` (cx, cy, scale) for every template
            variant and kernel position.
        """
        templates = self._templates_for(name)
        parts = OBJECT_PARTS[name]
        expected = [colour if key == "main" else key for _, key in parts]
        match_maps = [labels == LABELS.index(label) for label in expected]
        match_maps.append(
            labels == LABELS.index("sky") if OBJECT_PLACE[name] == "sky" else labels != LABELS.index(colour)
        )
        count, channels = templates.anchors.shape[0], len(match_maps)
        kernel_h, kernel_w = templates.kernels.shape[-2:]
        maps = torch.stack(match_maps).float().unsqueeze(1)  # [channels, 1, S, S]
        patches = F.unfold(maps, (kernel_h, kernel_w), padding=(kernel_h - 1, kernel_w - 1))  # [channels, kh*kw, L]
        out_h, out_w = self.size + kernel_h - 1, self.size + kernel_w - 1
        kernels = templates.kernels.flatten(2).transpose(0, 1)  # [channels, variants, kh*kw]
        hits = torch.bmm(kernels, patches)  # [channels, variants, L]: cross-correlation at every shift
        hits = hits.transpose(0, 1).reshape(count, channels, out_h, out_w)  # [variants, parts + ring, out_h, out_w]
        weights = torch.tensor([PART_WEIGHTS[name][part] for part, _ in parts] + [PART_WEIGHTS[name]["ring"]])
        weights = weights.view(1, channels) * (templates.areas > 0).float()  # [variants, channels]
        fractions = hits / templates.areas.clamp(min=1).view(count, channels, 1, 1)
        scores = (fractions * weights.view(count, channels, 1, 1)).sum(1) / weights.sum(1).view(count, 1, 1)
        main = torch.tensor([key == "main" for _, key in parts] + [False])  # [channels]
        main_fraction = hits[:, main].sum(1) / templates.areas[:, main].sum(1).clamp(min=1).view(count, 1, 1)
        # Output (i, j) puts the kernel's top-left pixel at (i - kh + 1, j - kw + 1): a shift of the reference render.
        step = FRAME / self.size
        shift_rows = (torch.arange(out_h) - (kernel_h - 1) - templates.origin[0]).float() * step  # [out_h]
        shift_cols = (torch.arange(out_w) - (kernel_w - 1) - templates.origin[1]).float() * step  # [out_w]
        anchors = templates.anchors.view(count, 1, 1, 3)
        cx = (anchors[..., 0] + shift_cols.view(1, 1, out_w)).expand(count, out_h, out_w)
        cy = (anchors[..., 1] + shift_rows.view(1, out_h, 1)).expand(count, out_h, out_w)
        scale = anchors[..., 2].expand(count, out_h, out_w)
        placements = torch.stack([cx, cy, scale], dim=-1).reshape(-1, 3)  # [n, 3]
        return scores.reshape(-1), main_fraction.reshape(-1), placements

    # -- public API --------------------------------------------------------------------------------------------------

    def check(self, image: torch.Tensor, objects: Sequence[tuple[str, str | None]]) -> list[ObjectCheck]:
        """Check every prompted object against one image.

        Args:
            image: ``float [3, S, S]`` RGB in [0, 1].
            objects: ``(name, colour)`` pairs (``colour`` may be ``None``: the best allowed colour is used).

        Returns:
            One :class:`ObjectCheck` per prompted object, in order.

        Example:
            >>> FidelityChecker().check(torch.zeros(3, 32, 32), [("sun", "yellow")])[0].found
            False
        """
        labels = self.pixel_labels(image)
        results = []
        for name, colour in objects:
            if name not in OBJECTS:
                raise CheckerError(f"Unknown object {name!r}; ShapesWorld objects are {', '.join(OBJECTS)}.")
            if colour is not None and colour not in COLOURS:
                raise CheckerError(f"Unknown colour {colour!r}; ShapesWorld colours are {', '.join(COLOURS)}.")
            candidates = [colour] if colour is not None else list(OBJECT_COLOURS[name])
            best_score, best_placement, best_main = -1.0, torch.zeros(3), 0.0
            for candidate in candidates:
                scores, main_fraction, placements = self._scores(name, candidate, labels)
                value, index = scores.max(dim=0)
                best_main = max(best_main, float(main_fraction.max()))
                if float(value) > best_score:
                    best_score, best_placement = float(value), placements[int(index)]
            placement = tuple(round(float(v), 2) for v in best_placement)
            results.append(
                ObjectCheck(
                    name=name,
                    colour=colour,
                    score=round(best_score, 4),
                    colour_found=best_main >= self.colour_fraction,
                    found=best_score >= self.threshold,
                    placement=placement,  # type: ignore[arg-type]
                )
            )
        return results


def check_scene(
    image: torch.Tensor, objects: Sequence[tuple[str, str | None]], threshold: float = 0.75
) -> list[ObjectCheck]:
    """Convenience wrapper: ``FidelityChecker(size, threshold).check(image, objects)``.

    Example:
        >>> from conceptattention.shapesworld.render import ObjectSpec, SceneSpec, render_scenes
        >>> scene = SceneSpec(horizon=15.0, ground="grass", objects=(ObjectSpec("car", "red", 16.0, 29.0),))
        >>> check_scene(render_scenes([scene]).images[0], [("car", "red"), ("house", "red")])[1].found
        False
    """
    return FidelityChecker(size=image.shape[-1], threshold=threshold).check(image, objects)
