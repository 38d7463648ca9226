"""ShapesWorld vocabulary, scene specifications and the vectorised renderer.

A scene is a sky above one kind of ground (grass, sea or sand) with one to three *iconic objects* (sun, cloud,
tree, house, car, flower, boat). Every object has one free colour, the colour named in captions, painted on its
*main part* (the sun's disc, the tree's crown, the car's body ...), and fixed-colour secondary parts (a brown trunk,
a charcoal roof, black wheels, a white sail ...). Identity therefore shows in colour composition and coarse structure,
which a tiny diffusion model learns about as fast as colour (see ``docs/shapesworld.md``).

Geometry is defined in a 32 x 32 coordinate frame and rasterised at pixel centres, so any square resolution can be
rendered (the model is trained at 32 x 32). Ground truth is exact: the same masks paint the image and the labels.

Example:
    >>> from conceptattention.shapesworld.render import ObjectSpec, SceneSpec, render_scenes
    >>> scene = SceneSpec(horizon=15.0, ground="grass",
    ...                   objects=(ObjectSpec("sun", "yellow", cx=8.0, cy=7.0, scale=1.0),
    ...                            ObjectSpec("house", "red", cx=22.0, cy=28.0, scale=1.0)))
    >>> batch = render_scenes([scene])
    >>> batch.images.shape
    torch.Size([1, 3, 32, 32])
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch

from ..errors import ConceptAttentionError


FRAME = 32.0
"""Side of the coordinate frame in which all geometry is defined (pixels at the native resolution)."""

IMAGE_SIZE = 32
"""Native (training) resolution of ShapesWorld images."""

BACKGROUNDS: tuple[str, ...] = ("sky", "grass", "sea", "sand")
"""Background classes; index ``i`` in the ``background`` label map."""

GROUNDS: tuple[str, ...] = ("grass", "sea", "sand")
"""Backgrounds that can fill the lower part of a scene."""

OBJECTS: tuple[str, ...] = ("sun", "cloud", "tree", "house", "car", "flower", "boat")
"""Object classes; class ``i`` is stored as ``i + 1`` in the ``object_class`` label map (0 = background)."""

COLOURS: tuple[str, ...] = ("red", "orange", "yellow", "green", "blue", "purple", "pink", "white", "grey")
"""Colour words; colour ``i`` is stored as ``i + 1`` in the ``colour`` label map (0 = no named colour)."""

PALETTE: dict[str, tuple[float, float, float]] = {
    "red": (0.86, 0.13, 0.13),
    "orange": (0.97, 0.55, 0.10),
    "yellow": (0.98, 0.86, 0.16),
    "green": (0.13, 0.55, 0.20),
    "blue": (0.16, 0.30, 0.86),
    "purple": (0.56, 0.24, 0.76),
    "pink": (0.98, 0.55, 0.76),
    "white": (0.97, 0.97, 0.97),
    "grey": (0.58, 0.58, 0.62),
}
"""RGB (0..1) of every colour word."""

FIXED_PART_COLOURS: dict[str, tuple[float, float, float]] = {
    "brown": (0.45, 0.27, 0.11),
    "charcoal": (0.16, 0.16, 0.18),
    "green": PALETTE["green"],
    "yellow": PALETTE["yellow"],
    "white": PALETTE["white"],
}
"""RGB of the fixed-colour secondary parts (trunks, roofs, wheels, stems, sails ...)."""

BACKGROUND_COLOURS: dict[str, tuple[float, float, float]] = {
    "sky_top": (0.40, 0.64, 0.92),
    "sky_horizon": (0.70, 0.85, 0.97),
    "grass": (0.50, 0.76, 0.30),
    "sea": (0.12, 0.36, 0.62),
    "sea_wave": (0.30, 0.54, 0.78),
    "sand": (0.90, 0.80, 0.56),
}
"""Reference RGB of the textured backgrounds."""

OBJECT_COLOURS: dict[str, tuple[str, ...]] = {
    "sun": ("yellow", "orange", "red"),
    "cloud": ("white", "grey", "pink"),
    "tree": ("green", "orange", "yellow"),
    "house": ("red", "blue", "yellow", "white", "purple", "orange"),
    "car": ("red", "blue", "yellow", "green", "purple", "white", "orange"),
    "flower": ("red", "pink", "purple", "white", "blue", "orange"),
    "boat": ("red", "yellow", "orange", "purple", "green", "pink"),
}
"""Colours each object may take (chosen for contrast with its usual background)."""

OBJECT_PLACE: dict[str, str] = {
    "sun": "sky",
    "cloud": "sky",
    "tree": "land",
    "house": "land",
    "car": "land",
    "flower": "land",
    "boat": "sea",
}
"""Where an object stands: ``sky`` objects float above the horizon, ``land`` objects stand on grass or sand and
``sea`` objects float on the sea."""

OBJECT_PARTS: dict[str, tuple[tuple[str, str], ...]] = {
    "sun": (("disc", "main"), ("rays", "main")),
    "cloud": (("body", "main"),),
    "tree": (("trunk", "brown"), ("crown", "main")),
    "house": (("body", "main"), ("roof", "charcoal"), ("door", "brown")),
    "car": (("body", "main"), ("wheels", "charcoal")),
    "flower": (("stem", "green"), ("petals", "main"), ("centre", "yellow")),
    "boat": (("mast", "brown"), ("sail", "white"), ("hull", "main")),
}
"""Parts of each object in painting order, with their colour: ``"main"`` (the object's named colour) or a key of
:data:`FIXED_PART_COLOURS`."""

# Extent of each object around its anchor, in units of its scale: (half width, top offset, bottom offset) with
# top = cy - top_offset * scale and bottom = cy + bottom_offset * scale. Sky objects are anchored at their centre,
# land and sea objects at the middle of their base.
OBJECT_EXTENT: dict[str, tuple[float, float, float]] = {
    "sun": (6.8, 6.8, 6.8),
    "cloud": (6.6, 4.6, 3.5),
    "tree": (4.8, 14.9, 0.0),
    "house": (6.4, 13.0, 0.0),
    "car": (6.6, 8.4, 0.0),
    "flower": (3.9, 14.4, 0.0),
    "boat": (6.6, 12.5, 0.0),
}

SCALE_RANGE: tuple[float, float] = (0.95, 1.2)
"""Range of object scales sampled by the scene sampler."""

DATA_VERSIONS: tuple[str, ...] = ("v1", "v2")
"""ShapesWorld scene distributions. ``v1``: every object takes only the colours of :data:`OBJECT_COLOURS` and the
backgrounds have one look each (a day sky, one tint per ground), so every class is decidable from colour alone (the
shipped model was trained on it). ``v2``: every object may take any of the nine colours (except those too close to the
background it stands on, so that it stays visible), the sky is a day, sunset, night or overcast gradient
(:data:`SKY_STYLES`) and each ground comes in several tints (:data:`GROUND_TINTS`); most sky styles and tints are
made of the object colours themselves (purple to orange, grey to white, a green or yellow field, a blue or grey sea,
orange or white sand), so that neither colour nor position identifies a concept: identity must be learned from
shape."""

SKY_STYLES: dict[str, tuple[tuple[float, float, float], tuple[float, float, float]]] = {
    "day": (BACKGROUND_COLOURS["sky_top"], BACKGROUND_COLOURS["sky_horizon"]),
    "sunset": (PALETTE["purple"], PALETTE["orange"]),
    "night": ((0.04, 0.06, 0.18), PALETTE["blue"]),
    "overcast": (PALETTE["grey"], PALETTE["white"]),
}
"""``(top, horizon)`` RGB of each sky gradient (``v1`` uses ``"day"`` only)."""

GROUND_TINTS: dict[str, tuple[tuple[tuple[float, float, float], tuple[float, float, float]], ...]] = {
    "grass": (
        (BACKGROUND_COLOURS["grass"], BACKGROUND_COLOURS["grass"]),
        (PALETTE["green"], PALETTE["green"]),
        (PALETTE["yellow"], PALETTE["yellow"]),
    ),
    "sea": (
        (BACKGROUND_COLOURS["sea"], BACKGROUND_COLOURS["sea_wave"]),
        (PALETTE["blue"], (0.36, 0.50, 0.94)),
        (PALETTE["grey"], (0.78, 0.78, 0.80)),
    ),
    "sand": (
        (BACKGROUND_COLOURS["sand"], BACKGROUND_COLOURS["sand"]),
        (PALETTE["orange"], PALETTE["orange"]),
        (PALETTE["white"], PALETTE["white"]),
    ),
}
"""``(base, wave)`` RGB of each tint of each ground (the wave colour is used by the sea only); tint 0 is the ``v1``
look."""


def check_version(version: str) -> str:
    """Return ``version`` if it is a known data version, else raise :class:`SceneError`.

    Example:
        >>> check_version("v2")
        'v2'
    """
    if version not in DATA_VERSIONS:
        raise SceneError(f"Unknown ShapesWorld data version {version!r}; choose one of {', '.join(DATA_VERSIONS)}.")
    return version


def allowed_colours(name: str, version: str = "v1") -> tuple[str, ...]:
    """The colours object ``name`` may take in a data version (``v1``: :data:`OBJECT_COLOURS`; ``v2``: all).

    Example:
        >>> allowed_colours("sun"), len(allowed_colours("sun", "v2"))
        (('yellow', 'orange', 'red'), 9)
    """
    check_version(version)
    if name not in OBJECT_COLOURS:
        raise SceneError(f"Unknown object {name!r}; ShapesWorld objects are {', '.join(OBJECTS)}.")
    return OBJECT_COLOURS[name] if version == "v1" else COLOURS


MIN_CONTRAST = 0.3
"""Smallest RGB distance (Euclidean, 0..1 channels) between a ``v2`` object's colour and the background colours it
stands on (:func:`visible_colours`)."""


def visible_colours(name: str, sky: str = "day", ground: str = "grass", tint: int = 0) -> tuple[str, ...]:
    """The ``v2`` colours of object ``name`` that stay visible on its background.

    Sky objects avoid the two ends of the sky gradient, land and sea objects the ground tint's base and wave colours
    (a colour closer than :data:`MIN_CONTRAST` to any of them is left out).

    Example:
        >>> "grey" in visible_colours("cloud", sky="overcast"), "grey" in visible_colours("cloud", sky="day")
        (False, True)
    """
    if name not in OBJECT_PLACE:
        raise SceneError(f"Unknown object {name!r}; ShapesWorld objects are {', '.join(OBJECTS)}.")
    behind = SKY_STYLES[sky] if OBJECT_PLACE[name] == "sky" else GROUND_TINTS[ground][tint]
    return tuple(
        colour
        for colour in COLOURS
        if all(math.dist(PALETTE[colour], background) >= MIN_CONTRAST for background in behind)
    )


def typical_colours(version: str = "v1") -> dict[str, tuple[tuple[float, float, float], ...]]:
    """Typical RGB values of every concept word in a data version, from the renderer's palette (no scene is used).

    Colour words: their palette colour. Objects: every colour their main part may take plus their fixed parts'
    colours. Backgrounds: the sky gradients (five points from top to horizon of every style of the version), the
    base and wave colours of every ground tint. This is what the model-free colour prior of the evaluation harness
    compares pixels with.

    Example:
        >>> typical_colours()["red"]
        ((0.86, 0.13, 0.13),)
        >>> len(typical_colours("v1")["sky"]), len(typical_colours("v2")["sky"])
        (5, 20)
    """
    check_version(version)
    table: dict[str, tuple[tuple[float, float, float], ...]] = {}
    for colour in COLOURS:
        table[colour] = (PALETTE[colour],)
    for name in OBJECTS:
        values = [PALETTE[colour] for colour in allowed_colours(name, version)]
        values += [FIXED_PART_COLOURS[key] for _, key in OBJECT_PARTS[name] if key != "main"]
        table[name] = tuple(dict.fromkeys(values))
    styles = ("day",) if version == "v1" else tuple(SKY_STYLES)
    sky = []
    for style in styles:
        top, horizon = SKY_STYLES[style]
        for step in range(5):
            mix = step / 4
            sky.append(tuple(round(a * (1 - mix) + b * mix, 6) for a, b in zip(top, horizon)))
    table["sky"] = tuple(sky)
    for ground in GROUNDS:
        tints = GROUND_TINTS[ground][:1] if version == "v1" else GROUND_TINTS[ground]
        table[ground] = tuple(dict.fromkeys(colour for tint in tints for colour in tint))
    return table


class SceneError(ConceptAttentionError, ValueError):
    """An invalid scene specification (unknown word, colour not allowed for an object, ...)."""


@dataclass(frozen=True)
class ObjectSpec:
    """One object of a scene.

    Args:
        name: Object class, one of :data:`OBJECTS`.
        colour: Colour word of its main part, one of :data:`OBJECT_COLOURS` ``[name]``.
        cx: Horizontal anchor (frame units, 0..32): the object's vertical axis.
        cy: Vertical anchor: the centre for sky objects, the base line for land and sea objects.
        scale: Size multiplier (1.0 is about 14 frame units tall).
        jitter: Small RGB offset added to the main colour (keeps renders from being perfectly flat).
        any_colour: Allow any colour word (data version ``v2``) instead of :data:`OBJECT_COLOURS` ``[name]``.

    Example:
        >>> ObjectSpec("tree", "green", cx=10.0, cy=30.0, scale=1.0).bbox()
        (5.2, 15.1, 14.8, 30.0)
    """

    name: str
    colour: str
    cx: float
    cy: float
    scale: float = 1.0
    jitter: tuple[float, float, float] = (0.0, 0.0, 0.0)
    any_colour: bool = False

    def __post_init__(self) -> None:
        if self.name not in OBJECTS:
            raise SceneError(f"Unknown object {self.name!r}; ShapesWorld objects are {', '.join(OBJECTS)}.")
        if self.any_colour and self.colour not in COLOURS:
            raise SceneError(f"Unknown colour {self.colour!r}; ShapesWorld colours are {', '.join(COLOURS)}.")
        if not self.any_colour and self.colour not in OBJECT_COLOURS[self.name]:
            raise SceneError(
                f"A {self.name} cannot be {self.colour!r}; allowed colours are {', '.join(OBJECT_COLOURS[self.name])}."
            )
        if not 0.3 <= self.scale <= 3.0:
            raise SceneError(f"Object scale must lie in [0.3, 3.0], got {self.scale}.")

    def bbox(self) -> tuple[float, float, float, float]:
        """Bounding box ``(left, top, right, bottom)`` in frame units."""
        half_width, top, bottom = OBJECT_EXTENT[self.name]
        return (
            round(self.cx - half_width * self.scale, 4),
            round(self.cy - top * self.scale, 4),
            round(self.cx + half_width * self.scale, 4),
            round(self.cy + bottom * self.scale, 4),
        )

    @property
    def phrase(self) -> str:
        """``"<colour> <name>"``, e.g. ``"red car"``."""
        return f"{self.colour} {self.name}"


@dataclass(frozen=True)
class TextureSpec:
    """Which pre-computed noise tiles texture a scene, and how they are shifted.

    Example:
        >>> TextureSpec(tile=3, shift_x=5, shift_y=1, phase=0.4).tile
        3
    """

    tile: int = 0
    shift_x: int = 0
    shift_y: int = 0
    phase: float = 0.0


@dataclass(frozen=True)
class SceneSpec:
    """A complete, renderable description of one scene.

    Args:
        horizon: Row (frame units) where the ground starts; the sky is above it.
        ground: One of :data:`GROUNDS`.
        objects: Objects, painted in order (the sampler never lets them overlap).
        texture: Noise tiles of the backgrounds.
        sky: Sky gradient, a key of :data:`SKY_STYLES` (``"day"`` in data version ``v1``).
        tint: Index of the ground's tint in :data:`GROUND_TINTS` (0 in data version ``v1``).

    Example:
        >>> SceneSpec(horizon=16.0, ground="sea").backgrounds
        ('sky', 'sea')
    """

    horizon: float
    ground: str
    objects: tuple[ObjectSpec, ...] = ()
    texture: TextureSpec = field(default_factory=TextureSpec)
    sky: str = "day"
    tint: int = 0

    def __post_init__(self) -> None:
        if self.ground not in GROUNDS:
            raise SceneError(f"Unknown ground {self.ground!r}; choose one of {', '.join(GROUNDS)}.")
        if self.sky not in SKY_STYLES:
            raise SceneError(f"Unknown sky {self.sky!r}; choose one of {', '.join(SKY_STYLES)}.")
        if not 0 <= self.tint < len(GROUND_TINTS[self.ground]):
            raise SceneError(
                f"Tint {self.tint} does not exist for {self.ground}; choose 0..{len(GROUND_TINTS[self.ground]) - 1}."
            )
        if not 0.0 < self.horizon < FRAME:
            raise SceneError(f"The horizon must lie strictly inside the frame (0, {FRAME:g}), got {self.horizon}.")
        names = [obj.name for obj in self.objects]
        if len(set(names)) != len(names):
            raise SceneError(f"A scene holds each object class at most once, got {names}.")

    @property
    def backgrounds(self) -> tuple[str, str]:
        """The two background classes of the scene: ``("sky", ground)``."""
        return ("sky", self.ground)


@dataclass
class RenderedBatch:
    """Rendered images with exact per-pixel ground truth.

    Attributes:
        images: ``float32 [B, 3, S, S]`` RGB in [0, 1].
        background: ``int64 [B, S, S]`` index into :data:`BACKGROUNDS` of the background at every pixel (also under
            objects).
        object_class: ``int64 [B, S, S]``: 0 for background, ``i + 1`` for :data:`OBJECTS` ``[i]`` (all parts).
        colour: ``int64 [B, S, S]``: 0, or ``i + 1`` for :data:`COLOURS` ``[i]`` on the *main part* of an object
            whose named colour is ``COLOURS[i]`` (secondary parts such as a trunk keep 0).
        instance: ``int64 [B, S, S]``: 0 for background, ``k + 1`` for ``spec.objects[k]``.
    """

    images: torch.Tensor
    background: torch.Tensor
    object_class: torch.Tensor
    colour: torch.Tensor
    instance: torch.Tensor


_TILE_COUNT = 48
_TILE_SEED = 20250301
_tile_cache: dict[str, torch.Tensor] = {}


def noise_tiles(device: torch.device | str = "cpu") -> torch.Tensor:
    """The fixed bank of noise tiles that textures every scene.

    Returns:
        ``float32 [K, 2, 32, 32]``: channel 0 is white Gaussian noise, channel 1 the same noise smoothed vertically
        (grass blades). Identical on every machine (seeded CPU generator).

    Example:
        >>> noise_tiles().shape
        torch.Size([48, 2, 32, 32])
    """
    key = str(torch.device(device))
    if key not in _tile_cache:
        generator = torch.Generator().manual_seed(_TILE_SEED)
        white = torch.randn(_TILE_COUNT, 32, 32, generator=generator)  # [K, 32, 32]
        streaks = (white + white.roll(1, dims=1) + white.roll(2, dims=1) + white.roll(-1, dims=1)) / 2.0
        _tile_cache[key] = torch.stack([white, streaks], dim=1).to(device)  # [K, 2, 32, 32]
    return _tile_cache[key]


def _pixel_grid(size: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Frame coordinates of pixel centres: ``x, y`` each ``[1, S, S]``."""
    coords = (torch.arange(size, device=device, dtype=torch.float32) + 0.5) * (FRAME / size)
    ys, xs = torch.meshgrid(coords, coords, indexing="ij")  # each [S, S]
    return xs.unsqueeze(0), ys.unsqueeze(0)


GeometryFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor], dict[str, torch.Tensor]]


def _disc(x: torch.Tensor, y: torch.Tensor, cx: torch.Tensor, cy: torch.Tensor, r: torch.Tensor) -> torch.Tensor:
    return (x - cx) ** 2 + (y - cy) ** 2 <= r**2


def _box(x: torch.Tensor, y: torch.Tensor, x0: torch.Tensor, x1: torch.Tensor, y0: torch.Tensor, y1: torch.Tensor):
    return (x >= x0) & (x <= x1) & (y >= y0) & (y <= y1)


def _sun(x, y, cx, cy, s) -> dict[str, torch.Tensor]:
    radius = 4.2 * s
    dist2 = (x - cx) ** 2 + (y - cy) ** 2
    angle = torch.atan2(y - cy, x - cx)
    rays = (dist2 > (radius + 0.7) ** 2) & (dist2 <= (6.8 * s) ** 2) & (torch.cos(8.0 * angle) > 0.35)
    return {"disc": dist2 <= radius**2, "rays": rays}


def _cloud(x, y, cx, cy, s) -> dict[str, torch.Tensor]:
    body = (
        _disc(x, y, cx - 3.6 * s, cy + 0.6 * s, 2.9 * s)
        | _disc(x, y, cx, cy - 0.8 * s, 3.7 * s)
        | _disc(x, y, cx + 3.6 * s, cy + 0.6 * s, 2.9 * s)
        | _box(x, y, cx - 3.6 * s, cx + 3.6 * s, cy - 0.8 * s, cy + 3.5 * s)
    ) & (y <= cy + 3.5 * s)
    return {"body": body}


def _tree(x, y, cx, cy, s) -> dict[str, torch.Tensor]:
    trunk = _box(x, y, cx - 1.1 * s, cx + 1.1 * s, cy - 6.5 * s, cy)
    crown = _disc(x, y, cx, cy - 10.1 * s, 4.8 * s)
    return {"trunk": trunk, "crown": crown}


def _house(x, y, cx, cy, s) -> dict[str, torch.Tensor]:
    body = _box(x, y, cx - 5.2 * s, cx + 5.2 * s, cy - 8.0 * s, cy)
    apex = cy - 13.0 * s
    roof = (y >= apex) & (y < cy - 8.0 * s) & ((x - cx).abs() <= 6.4 * (y - apex) / 5.0)
    door = _box(x, y, cx - 1.3 * s, cx + 1.3 * s, cy - 4.2 * s, cy)
    return {"body": body, "roof": roof, "door": door}


def _car(x, y, cx, cy, s) -> dict[str, torch.Tensor]:
    body = _box(x, y, cx - 6.6 * s, cx + 6.6 * s, cy - 5.4 * s, cy - 1.5 * s) | _box(
        x, y, cx - 4.2 * s, cx + 3.0 * s, cy - 8.4 * s, cy - 5.4 * s
    )
    wheels = _disc(x, y, cx - 3.9 * s, cy - 1.7 * s, 1.7 * s) | _disc(x, y, cx + 3.9 * s, cy - 1.7 * s, 1.7 * s)
    return {"body": body, "wheels": wheels}


def _flower(x, y, cx, cy, s) -> dict[str, torch.Tensor]:
    stem = _box(x, y, cx - 0.75 * s, cx + 0.75 * s, cy - 7.5 * s, cy)
    head_y = cy - 10.5 * s
    dist = torch.sqrt((x - cx) ** 2 + (y - head_y) ** 2)
    angle = torch.atan2(y - head_y, x - cx)
    petals = dist <= 3.9 * s * (0.78 + 0.22 * torch.cos(5.0 * angle + math.pi / 2))
    centre = dist <= 1.4 * s
    return {"stem": stem, "petals": petals, "centre": centre}


def _boat(x, y, cx, cy, s) -> dict[str, torch.Tensor]:
    top = cy - 3.4 * s
    half_width = 4.2 * s + 2.4 * s * (cy - y) / (3.4 * s)
    hull = (y >= top) & (y <= cy) & ((x - cx).abs() <= half_width)
    mast = _box(x, y, cx - 1.3 * s, cx - 0.3 * s, cy - 12.5 * s, top)
    sail_top = cy - 12.0 * s
    sail = (
        (y >= sail_top) & (y <= cy - 4.2 * s) & (x >= cx - 0.3 * s) & (x <= cx - 0.3 * s + 5.6 * (y - sail_top) / 7.8)
    )
    return {"mast": mast, "sail": sail, "hull": hull}


GEOMETRY: dict[str, GeometryFn] = {
    "sun": _sun,
    "cloud": _cloud,
    "tree": _tree,
    "house": _house,
    "car": _car,
    "flower": _flower,
    "boat": _boat,
}
"""Part masks of every object: ``fn(x, y, cx, cy, scale) -> {part: bool [n, S, S]}`` with ``x, y`` of shape
``[1, S, S]`` and ``cx, cy, scale`` of shape ``[n, 1, 1]``."""


def object_part_masks(
    name: str, cx: torch.Tensor, cy: torch.Tensor, scale: torch.Tensor, size: int = IMAGE_SIZE
) -> dict[str, torch.Tensor]:
    """Rasterise ``n`` placements of one object class.

    Args:
        name: Object class.
        cx, cy, scale: ``float32 [n]`` anchors and scales (frame units).
        size: Output resolution.

    Returns:
        ``{part: bool [n, size, size]}`` for every part of :data:`OBJECT_PARTS` ``[name]``; parts painted later
        win where they overlap, as in :func:`render_scenes`.

    Example:
        >>> masks = object_part_masks("car", torch.tensor([16.0]), torch.tensor([28.0]), torch.tensor([1.0]))
        >>> sorted(masks)
        ['body', 'wheels']
    """
    if name not in GEOMETRY:
        raise SceneError(f"Unknown object {name!r}; ShapesWorld objects are {', '.join(OBJECTS)}.")
    x, y = _pixel_grid(size, cx.device)
    raw = GEOMETRY[name](x, y, cx.view(-1, 1, 1), cy.view(-1, 1, 1), scale.view(-1, 1, 1))
    # Resolve overlaps in painting order so that the parts partition the object.
    resolved: dict[str, torch.Tensor] = {}
    taken = torch.zeros_like(next(iter(raw.values())))
    for part, _ in reversed(OBJECT_PARTS[name]):
        resolved[part] = raw[part] & ~taken
        taken = taken | raw[part]
    return {part: resolved[part] for part, _ in OBJECT_PARTS[name]}


def _rgb(colour: tuple[float, float, float], device: torch.device) -> torch.Tensor:
    return torch.tensor(colour, dtype=torch.float32, device=device)


def _render_backgrounds(specs: Sequence[SceneSpec], size: int, device: torch.device):
    """Background image ``[B, 3, S, S]`` and class map ``[B, S, S]``."""
    batch = len(specs)
    x, y = _pixel_grid(size, device)  # [1, S, S]
    horizon = torch.tensor([spec.horizon for spec in specs], device=device).view(batch, 1, 1)
    ground_index = torch.tensor([BACKGROUNDS.index(spec.ground) for spec in specs], device=device)
    tiles = noise_tiles(device)
    tile_index = torch.tensor([spec.texture.tile % _TILE_COUNT for spec in specs], device=device)
    shift_x = torch.tensor([spec.texture.shift_x for spec in specs], device=device).view(batch, 1, 1)
    shift_y = torch.tensor([spec.texture.shift_y for spec in specs], device=device).view(batch, 1, 1)
    phase = torch.tensor([spec.texture.phase for spec in specs], device=device).view(batch, 1, 1)
    # Texture lookup: nearest tile pixel of each output pixel, shifted per scene (wraps around).
    rows = (y.floor().long() + shift_y) % 32  # [B, S, S]
    cols = (x.floor().long() + shift_x) % 32  # [B, S, S]
    batch_index = tile_index.view(batch, 1, 1)
    white = tiles[batch_index, 0, rows, cols]  # [B, S, S]
    streaks = tiles[batch_index, 1, rows, cols]  # [B, S, S]

    is_sky = y < horizon  # [B, S, S]
    classes = torch.where(is_sky, torch.zeros_like(ground_index).view(batch, 1, 1), ground_index.view(batch, 1, 1))

    # Per-scene colours (the v1 values for a day sky and tint 0: the same float operations, the same bytes).
    sky_top = torch.tensor([SKY_STYLES[spec.sky][0] for spec in specs], device=device).view(batch, 3, 1, 1)
    sky_horizon = torch.tensor([SKY_STYLES[spec.sky][1] for spec in specs], device=device).view(batch, 3, 1, 1)
    ground_base = torch.tensor([GROUND_TINTS[spec.ground][spec.tint][0] for spec in specs], device=device)  # [B, 3]
    ground_wave = torch.tensor([GROUND_TINTS[spec.ground][spec.tint][1] for spec in specs], device=device)  # [B, 3]
    ground_base, ground_wave = ground_base.view(batch, 3, 1, 1), ground_wave.view(batch, 3, 1, 1)
    sky_mix = (y / horizon).clamp(0.0, 1.0).unsqueeze(1)  # [B, 1, S, S]
    image = sky_top * (1 - sky_mix) + sky_horizon * sky_mix + 0.012 * white.unsqueeze(1)
    ground_image = torch.empty_like(image)  # [B, 3, S, S]
    for ground in GROUNDS:
        members = (ground_index == BACKGROUNDS.index(ground)).nonzero().squeeze(1)
        if members.numel() == 0:
            continue
        noise = white[members].unsqueeze(1)  # [n, 1, S, S]
        base, wave_colour = ground_base[members], ground_wave[members]  # [n, 3, 1, 1] each
        if ground == "grass":
            layer = base + 0.035 * noise - 0.05 * streaks[members].clamp(min=0.0).unsqueeze(1)
        elif ground == "sea":
            ripple = torch.sin(0.45 * x + phase[members])  # [n, S, S]
            wave = torch.sin(2 * math.pi * y / 3.2 + 0.9 * ripple + phase[members]).clamp(min=0.0) ** 2
            layer = base + (wave_colour - base) * wave.unsqueeze(1) + 0.015 * noise
        else:
            layer = base + 0.03 * noise - 0.07 * (noise > 1.5).float()
        ground_image[members] = layer
    image = torch.where(is_sky.unsqueeze(1), image, ground_image)
    return image, classes, white  # [B, 3, S, S], [B, S, S], [B, S, S]


def render_scenes(
    specs: Sequence[SceneSpec], size: int = IMAGE_SIZE, device: torch.device | str = "cpu"
) -> RenderedBatch:
    """Render scenes and their exact labels, vectorised over the batch.

    The output of a scene does not depend on the other scenes of the batch.

    Args:
        specs: Scene specifications.
        size: Square output resolution (32 = native; larger sizes give crisp renders of the same scenes).
        device: Where to render (``"cuda"`` is much faster for large banks).

    Returns:
        A :class:`RenderedBatch` with images ``[B, 3, size, size]`` and label maps ``[B, size, size]``.

    Example:
        >>> from conceptattention.shapesworld.render import SceneSpec, render_scenes
        >>> render_scenes([SceneSpec(horizon=12.0, ground="sand")]).background.unique().tolist()
        [0, 3]
    """
    if len(specs) == 0:
        raise SceneError("render_scenes needs at least one scene specification.")
    if size < 8:
        raise SceneError(f"Render size must be at least 8 pixels, got {size}.")
    device = torch.device(device)
    batch = len(specs)
    image, background, white = _render_backgrounds(specs, size, device)
    object_class = torch.zeros(batch, size, size, dtype=torch.long, device=device)
    colour_map = torch.zeros_like(object_class)
    instance = torch.zeros_like(object_class)

    for name in OBJECTS:
        entries = [
            (b, k, obj) for b, spec in enumerate(specs) for k, obj in enumerate(spec.objects) if obj.name == name
        ]
        if not entries:
            continue
        scene_index = torch.tensor([b for b, _, _ in entries], device=device)
        cx = torch.tensor([obj.cx for _, _, obj in entries], device=device)
        cy = torch.tensor([obj.cy for _, _, obj in entries], device=device)
        scale = torch.tensor([obj.scale for _, _, obj in entries], device=device)
        main_rgb = torch.tensor(
            [[c + j for c, j in zip(PALETTE[obj.colour], obj.jitter)] for _, _, obj in entries], device=device
        )  # [n, 3]
        colour_id = torch.tensor([COLOURS.index(obj.colour) + 1 for _, _, obj in entries], device=device)
        instance_id = torch.tensor([k + 1 for _, k, _ in entries], device=device)
        masks = object_part_masks(name, cx, cy, scale, size)
        grain = 0.015 * white[scene_index].roll(7, dims=-1).unsqueeze(1)  # [n, 1, S, S]
        sub_image = image[scene_index]  # [n, 3, S, S]
        sub_class = object_class[scene_index]
        sub_colour = colour_map[scene_index]
        sub_instance = instance[scene_index]
        for part, colour_key in OBJECT_PARTS[name]:
            mask = masks[part]  # [n, S, S]
            rgb = (
                main_rgb
                if colour_key == "main"
                else _rgb(FIXED_PART_COLOURS[colour_key], device).expand(len(entries), 3)
            )
            paint = rgb.view(-1, 3, 1, 1) + grain  # [n, 3, S, S]
            sub_image = torch.where(mask.unsqueeze(1), paint, sub_image)
            sub_class = torch.where(mask, OBJECTS.index(name) + 1, sub_class)
            sub_instance = torch.where(mask, instance_id.view(-1, 1, 1), sub_instance)
            part_colour = (
                colour_id.view(-1, 1, 1) if colour_key == "main" else torch.zeros_like(colour_id).view(-1, 1, 1)
            )
            sub_colour = torch.where(mask, part_colour, sub_colour)
        image[scene_index] = sub_image
        object_class[scene_index] = sub_class
        colour_map[scene_index] = sub_colour
        instance[scene_index] = sub_instance

    return RenderedBatch(
        images=image.clamp(0.0, 1.0),
        background=background,
        object_class=object_class,
        colour=colour_map,
        instance=instance,
    )
