"""ShapesWorld vocabulary and scene specifications: what a scene is, before it is drawn.

A scene is a sky above one kind of ground (grass, sea or sand) with one to three *iconic objects* (sun, cloud,
tree, house, car, flower, boat). Every object has one free colour, the colour named in captions, painted on its
*main part* (the sun's disc, the tree's crown, the car's body ...), and fixed-colour secondary parts (a brown trunk,
a charcoal roof, black wheels, a white sail ...). Identity therefore shows in colour composition and coarse structure,
which a tiny diffusion model learns about as fast as colour (see ``docs/shapesworld.md``).

Geometry is defined in a 32 x 32 coordinate frame (:data:`FRAME`); :mod:`conceptattention.shapesworld.render` draws
:class:`SceneSpec` s at any square resolution (and re-exports these names, its old home).

Example:
    >>> from conceptattention.shapesworld.scenes import ObjectSpec, SceneSpec
    >>> scene = SceneSpec(horizon=15.0, ground="grass",
    ...                   objects=(ObjectSpec("sun", "yellow", cx=8.0, cy=7.0, scale=1.0),
    ...                            ObjectSpec("house", "red", cx=22.0, cy=28.0, scale=1.0)))
    >>> scene.backgrounds
    ('sky', 'grass')
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from conceptattention.errors import ConceptAttentionError


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
