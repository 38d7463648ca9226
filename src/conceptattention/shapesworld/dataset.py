"""ShapesWorld scenes and captions: deterministic sampling per (split, seed, index), held-out pairs, dataset API.

Splits:

* ``"train"``: the training distribution. Captions mix full descriptions, short single-concept captions (``"sun"``,
  ``"red"``, ``"a red car"``, ``"grass"``) and empty captions, so that a concept word encoded alone and the empty
  caption of the real-image path are in distribution. No scene holds a held-out colour-object pair.
* ``"test"``: same distribution of scenes as ``"train"`` (different random stream), full captions with every colour.
* ``"heldout"``: scenes with at least two objects among which at least one *held-out pair* of colour-object phrases
  (e.g. ``"red car"`` together with ``"white cloud"``) that never co-occurs in training; every phrase on its own is
  seen in training, only the combination is new. Full captions.

Example:
    >>> from conceptattention.shapesworld import ShapesWorldDataset
    >>> sample = ShapesWorldDataset("test", seed=0, n=4)[0]
    >>> sample.image.shape, sample.object_class.shape
    (torch.Size([3, 32, 32]), torch.Size([32, 32]))
"""

from __future__ import annotations

import random
import zlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from itertools import combinations

import torch

from conceptattention.errors import ConceptAttentionError
from conceptattention.shapesworld.render import (
    BACKGROUNDS,
    COLOURS,
    DATA_VERSIONS,
    FRAME,
    GROUND_TINTS,
    IMAGE_SIZE,
    OBJECT_EXTENT,
    OBJECT_PLACE,
    OBJECTS,
    SCALE_RANGE,
    SKY_STYLES,
    ObjectSpec,
    RenderedBatch,
    SceneSpec,
    TextureSpec,
    allowed_colours,
    check_version,
    render_scenes,
    visible_colours,
)


SPLITS: tuple[str, ...] = ("train", "test", "heldout")
"""Dataset splits (see the module docstring)."""

CAPTION_WORDS: tuple[str, ...] = (
    ("a", "an", "the", "and", "with", "on", "in", "under", "over", "of", "picture", "sky", ",")
    + tuple(ground for ground in BACKGROUNDS if ground != "sky")
    + OBJECTS
    + COLOURS
)
"""Every word a caption can contain (the text encoders' vocabulary)."""

V2_HORIZON_RANGE: tuple[float, float] = (6.0, 26.0)
"""Horizon rows (frame units) of ``v2`` scenes (``v1``: 13 to 20), so that "top half sky" is often wrong."""

HELD_OUT_FRACTION_PERCENT = 12
"""Share (percent) of colour-object phrase pairs held out of training."""


class DatasetError(ConceptAttentionError, ValueError):
    """Invalid dataset arguments."""


def _phrase_pairs(version: str = "v1") -> list[tuple[str, str]]:
    phrases = sorted(f"{colour} {name}" for name in OBJECTS for colour in allowed_colours(name, version))
    return [(a, b) for a, b in combinations(phrases, 2) if a.split()[1] != b.split()[1]]


def _held_out(version: str) -> frozenset[tuple[str, str]]:
    return frozenset(
        pair
        for pair in _phrase_pairs(version)
        if zlib.crc32("|".join(pair).encode()) % 100 < HELD_OUT_FRACTION_PERCENT
    )


HELD_OUT_PAIRS: frozenset[tuple[str, str]] = _held_out("v1")
"""Unordered (sorted) pairs of colour-object phrases that never appear together in a training scene (``v1``)."""

HELD_OUT_PAIRS_V2: frozenset[tuple[str, str]] = _held_out("v2")
"""The same rule over the ``v2`` phrases (every object in every colour)."""


def held_out_pairs_in(objects: Sequence[ObjectSpec], version: str = "v1") -> list[tuple[str, str]]:
    """The held-out phrase pairs present among ``objects`` (of data version ``version``).

    Example:
        >>> held_out_pairs_in([])
        []
    """
    pairs = HELD_OUT_PAIRS if check_version(version) == "v1" else HELD_OUT_PAIRS_V2
    phrases = sorted(obj.phrase for obj in objects)
    return [pair for pair in combinations(phrases, 2) if pair in pairs]


# ---------------------------------------------------------------------------------------------------------------------
# Scene sampling


def _ground_for(rng: random.Random) -> str:
    return rng.choices(("grass", "sea", "sand"), weights=(0.35, 0.35, 0.30))[0]


def _object_names(rng: random.Random, ground: str, count: int) -> list[str]:
    allowed = [
        name
        for name in OBJECTS
        if OBJECT_PLACE[name] == "sky" or OBJECT_PLACE[name] == ("sea" if ground == "sea" else "land")
    ]
    names = []
    if ground == "sea" and rng.random() < 0.7:
        names.append("boat")
    pool = [name for name in allowed if name not in names]
    rng.shuffle(pool)
    names.extend(pool[: max(0, count - len(names))])
    return names[:count]


def _place(rng: random.Random, name: str, horizon: float, taken: list[tuple[float, float, float, float]]):
    """Sample (cx, cy, scale) for ``name`` that fits its region and overlaps no box of ``taken``; None if none."""
    half_width, top, bottom = OBJECT_EXTENT[name]
    for _ in range(12):
        scale = rng.uniform(*SCALE_RANGE)
        if OBJECT_PLACE[name] == "sky":
            scale = min(scale, (horizon - 1.0) / (top + bottom))
            if scale < 0.75:
                return None
            low, high = top * scale + 0.5, horizon - 0.5 - bottom * scale
        else:
            low, high = max(horizon + 3.0, top * scale + 0.5), FRAME - 0.5
        if high < low:
            continue
        cy = rng.uniform(low, high)
        cx = rng.uniform(half_width * scale + 0.5, FRAME - 0.5 - half_width * scale)
        box = (cx - half_width * scale, cy - top * scale, cx + half_width * scale, cy + bottom * scale)
        if all(
            box[2] + 1.0 < o[0] or o[2] + 1.0 < box[0] or box[3] + 1.0 < o[1] or o[3] + 1.0 < box[1] for o in taken
        ):
            return cx, cy, scale, box
    return None


def sample_scene(rng: random.Random, min_objects: int = 1, max_objects: int = 3, version: str = "v1") -> SceneSpec:
    """Draw one random scene.

    Args:
        rng: Source of randomness (the scene is a pure function of its state).
        min_objects, max_objects: Bounds on the number of objects requested (placement may drop one that does not
            fit, never below one object).
        version: Data version (:data:`~conceptattention.shapesworld.render.DATA_VERSIONS`): ``v2`` draws a horizon
            from :data:`V2_HORIZON_RANGE`, a sky style and a ground tint, then object colours from all nine colours
            that stay visible on that background (``v1`` draws are unchanged).

    Returns:
        A :class:`SceneSpec`.

    Example:
        >>> import random
        >>> len(sample_scene(random.Random(0)).objects) >= 1
        True
    """
    ground = _ground_for(rng)
    horizon = rng.uniform(13.0, 20.0) if check_version(version) == "v1" else rng.uniform(*V2_HORIZON_RANGE)
    if version != "v1":  # v2: the background first, then object colours that stay visible on it
        sky, tint = rng.choice(tuple(SKY_STYLES)), rng.randrange(len(GROUND_TINTS[ground]))
    count = rng.choices((1, 2, 3), weights=(0.3, 0.45, 0.25))[0]
    count = min(max(count, min_objects), max_objects)
    objects: list[ObjectSpec] = []
    boxes: list[tuple[float, float, float, float]] = []
    for name in _object_names(rng, ground, count):
        placed = _place(rng, name, horizon, boxes)
        if placed is None:
            continue
        cx, cy, scale, box = placed
        boxes.append(box)
        jitter = (rng.uniform(-0.03, 0.03), rng.uniform(-0.03, 0.03), rng.uniform(-0.03, 0.03))
        colour = rng.choice(allowed_colours(name) if version == "v1" else visible_colours(name, sky, ground, tint))
        objects.append(
            ObjectSpec(name, colour, round(cx, 3), round(cy, 3), round(scale, 3), jitter, any_colour=version != "v1")
        )
    if not objects:  # always keep at least one object: a sun that fits any horizon
        scale = min(1.0, (horizon - 1.0) / 13.6)
        colour = rng.choice(allowed_colours("sun") if version == "v1" else visible_colours("sun", sky, ground, tint))
        objects.append(
            ObjectSpec("sun", colour, rng.uniform(8.0, 24.0), horizon / 2, scale, any_colour=version != "v1")
        )
    texture = TextureSpec(
        tile=rng.randrange(1 << 16),
        shift_x=rng.randrange(32),
        shift_y=rng.randrange(32),
        phase=round(rng.uniform(0.0, 6.28), 3),
    )
    if version == "v1":
        return SceneSpec(horizon=round(horizon, 3), ground=ground, objects=tuple(objects), texture=texture)
    return SceneSpec(
        horizon=round(horizon, 3), ground=ground, objects=tuple(objects), texture=texture, sky=sky, tint=tint
    )


# ---------------------------------------------------------------------------------------------------------------------
# Captions


def _indefinite_article(words: str) -> str:
    return "an" if words[0] in "aeiou" else "a"


def _object_phrase(rng: random.Random, obj: ObjectSpec, with_colour: bool) -> str:
    words = f"{obj.colour} {obj.name}" if with_colour else obj.name
    if obj.name == "sun" and rng.random() < 0.3:
        return f"the {words}"
    return f"{_indefinite_article(words)} {words}"


def _join(rng: random.Random, phrases: list[str]) -> str:
    if len(phrases) == 1:
        return phrases[0]
    if len(phrases) == 2:
        return f"{phrases[0]} {rng.choice(('and', 'with'))} {phrases[1]}"
    return f"{phrases[0]} , {phrases[1]} and {phrases[2]}"


def full_caption(rng: random.Random, scene: SceneSpec, colour_probability: float = 1.0) -> str:
    """A caption that names every object of the scene (with its colour unless dropped) and maybe the backgrounds.

    Example:
        >>> import random
        >>> scene = SceneSpec(horizon=15.0, ground="sea", objects=(ObjectSpec("boat", "red", 16.0, 28.0),))
        >>> "red boat" in full_caption(random.Random(1), scene)
        True
    """
    objects = list(scene.objects)
    rng.shuffle(objects)
    phrases = {id(obj): _object_phrase(rng, obj, rng.random() < colour_probability) for obj in objects}
    sky_objs = [phrases[id(o)] for o in objects if OBJECT_PLACE[o.name] == "sky"]
    ground_objs = [phrases[id(o)] for o in objects if OBJECT_PLACE[o.name] != "sky"]
    everything = [phrases[id(o)] for o in objects]
    ground = scene.ground
    style = rng.random()
    if style < 0.25:
        caption = _join(rng, everything)
    elif style < 0.45:
        caption = f"{_join(rng, everything)} {rng.choice(('on', 'with'))} the {ground}"
    elif style < 0.65 and ground_objs and sky_objs:
        caption = f"{_join(rng, ground_objs)} on the {ground} under {_join(rng, sky_objs)}"
    elif style < 0.8 and sky_objs:
        base = f"{_join(rng, ground_objs)} on the {ground}" if ground_objs else f"the {ground}"
        caption = f"{_join(rng, sky_objs)} over {base}"
    elif style < 0.9:
        caption = f"{_join(rng, everything)} and the sky"
    else:
        caption = f"a picture of {_join(rng, everything)}"
    return caption


def short_caption(rng: random.Random, scene: SceneSpec) -> str:
    """A single-concept caption (``"sun"``, ``"a sun"``, ``"a red sun"``, ``"red"``, ``"grass"``, ``"sky"``).

    Example:
        >>> import random
        >>> scene = SceneSpec(horizon=15.0, ground="sand", objects=(ObjectSpec("car", "blue", 16.0, 28.0),))
        >>> short_caption(random.Random(3), scene) in {"car", "a car", "a blue car", "blue", "sand", "the sand", "sky"}
        True
    """
    obj = rng.choice(scene.objects)
    kind = rng.random()
    if kind < 0.35:
        return obj.name
    if kind < 0.45:
        return f"{_indefinite_article(obj.name)} {obj.name}"
    if kind < 0.6:
        return f"{_indefinite_article(obj.colour)} {obj.colour} {obj.name}"
    if kind < 0.75:
        return obj.colour
    if kind < 0.9:
        return scene.ground if rng.random() < 0.8 else f"the {scene.ground}"
    return "sky"


def training_caption(rng: random.Random, scene: SceneSpec) -> str:
    """The training caption mix: 80 % full captions (colour kept 90 %), 15 % short, 5 % empty.

    Example:
        >>> import random
        >>> isinstance(training_caption(random.Random(0), sample_scene(random.Random(0))), str)
        True
    """
    kind = rng.random()
    if kind < 0.05:
        return ""
    if kind < 0.20:
        return short_caption(rng, scene)
    return full_caption(rng, scene, colour_probability=0.9)


# ---------------------------------------------------------------------------------------------------------------------
# Deterministic per-index sampling


def sample_record(split: str, seed: int, index: int, version: str = "v1") -> tuple[SceneSpec, str]:
    """The scene and caption of sample ``index`` of ``split`` under ``seed`` (a pure function of the four).

    ``version`` is the data version; ``v2`` scenes come from their own random stream.

    Example:
        >>> sample_record("test", 0, 5) == sample_record("test", 0, 5)
        True
    """
    if split not in SPLITS:
        raise DatasetError(f"Unknown split {split!r}; choose one of {', '.join(SPLITS)}.")
    check_version(version)
    stream = "shapesworld" if version == "v1" else f"shapesworld-{version}"
    rng = random.Random(f"{stream}:{split}:{seed}:{index}")
    for _ in range(200):
        if split == "heldout":
            scene = sample_scene(rng, min_objects=2, version=version)
            if len(scene.objects) >= 2 and held_out_pairs_in(scene.objects, version):
                return scene, full_caption(rng, scene)
            continue
        scene = sample_scene(rng, version=version)
        if held_out_pairs_in(scene.objects, version):
            continue
        caption = training_caption(rng, scene) if split == "train" else full_caption(rng, scene)
        return scene, caption
    raise DatasetError(f"Could not sample a {split} scene for seed {seed}, index {index} (200 attempts).")


@dataclass
class ShapesWorldSample:
    """One rendered scene with its caption and exact labels.

    Attributes:
        image: ``float32 [3, S, S]`` RGB in [0, 1].
        background: ``int64 [S, S]`` index into :data:`BACKGROUNDS` (also under objects).
        object_class: ``int64 [S, S]``: 0 background, ``i + 1`` for ``OBJECTS[i]``.
        colour: ``int64 [S, S]``: 0, or ``i + 1`` for ``COLOURS[i]`` on an object's main (named-colour) part.
        instance: ``int64 [S, S]``: 0 background, ``k + 1`` for ``spec.objects[k]``.
        caption: The caption (may be short or empty in the train split).
        spec: The scene specification.
    """

    image: torch.Tensor
    background: torch.Tensor
    object_class: torch.Tensor
    colour: torch.Tensor
    instance: torch.Tensor
    caption: str
    spec: SceneSpec

    @property
    def object_concepts(self) -> tuple[str, ...]:
        """Names of the objects in the scene."""
        return tuple(obj.name for obj in self.spec.objects)

    @property
    def colour_concepts(self) -> tuple[str, ...]:
        """Colour words of the objects (unique, in object order)."""
        return tuple(dict.fromkeys(obj.colour for obj in self.spec.objects))

    @property
    def background_concepts(self) -> tuple[str, ...]:
        """``("sky", ground)``."""
        return self.spec.backgrounds

    @property
    def concepts(self) -> dict[str, tuple[str, ...]]:
        """Present concepts by kind: ``{"object": ..., "colour": ..., "background": ...}``."""
        return {"object": self.object_concepts, "colour": self.colour_concepts, "background": self.background_concepts}

    @property
    def absent_concepts(self) -> dict[str, tuple[str, ...]]:
        """Concepts *not* in the scene, by kind (candidates for distractor concepts).

        Example:
            >>> sample = ShapesWorldDataset("test", 0, 1)[0]
            >>> set(sample.absent_concepts["background"]) | set(sample.background_concepts) == set(BACKGROUNDS)
            True
        """
        present = self.concepts
        return {
            "object": tuple(name for name in OBJECTS if name not in present["object"]),
            "colour": tuple(colour for colour in COLOURS if colour not in present["colour"]),
            "background": tuple(name for name in BACKGROUNDS if name not in present["background"]),
        }

    def concept_mask(self, word: str) -> torch.Tensor:
        """Ground-truth mask ``bool [S, S]`` of a concept word.

        Object names cover every part of the object; colour words cover the main parts painted in that colour;
        background words cover the *visible* pixels of that background. An absent concept gives an empty mask.

        Example:
            >>> sample = ShapesWorldDataset("test", 0, 1)[0]
            >>> bool(sample.concept_mask("sky").any())
            True
        """
        if word in OBJECTS:
            return self.object_class == OBJECTS.index(word) + 1
        if word in COLOURS:
            return self.colour == COLOURS.index(word) + 1
        if word in BACKGROUNDS:
            return (self.background == BACKGROUNDS.index(word)) & (self.object_class == 0)
        raise DatasetError(
            f"{word!r} is not a ShapesWorld concept; use an object ({', '.join(OBJECTS)}), a colour "
            f"({', '.join(COLOURS)}) or a background ({', '.join(BACKGROUNDS)})."
        )

    def pil(self):
        """The image as a ``PIL.Image.Image`` (RGB, S x S)."""
        from PIL import Image

        array = (self.image.clamp(0, 1) * 255).round().byte().permute(1, 2, 0).numpy()  # [S, S, 3]
        return Image.fromarray(array)


class ShapesWorldDataset:
    """A deterministic, indexable and iterable ShapesWorld split.

    Args:
        split: ``"train"``, ``"test"`` or ``"heldout"``.
        seed: Seed of the split's random stream.
        n: Number of samples.
        size: Render resolution (32 = native; any square size renders the same scenes, e.g. 48 or 64).
        version: Data version, ``"v1"`` (the shipped model's) or ``"v2"`` (see
            :data:`~conceptattention.shapesworld.render.DATA_VERSIONS`).

    Example:
        >>> data = ShapesWorldDataset("heldout", seed=0, n=3)
        >>> [len(s.spec.objects) >= 2 for s in data]
        [True, True, True]
    """

    def __init__(
        self, split: str = "train", seed: int = 0, n: int = 1000, size: int = IMAGE_SIZE, version: str = "v1"
    ) -> None:
        if version not in DATA_VERSIONS:
            raise DatasetError(f"Unknown data version {version!r}; choose one of {', '.join(DATA_VERSIONS)}.")
        if split not in SPLITS:
            raise DatasetError(f"Unknown split {split!r}; choose one of {', '.join(SPLITS)}.")
        if n < 1:
            raise DatasetError(f"A dataset needs n >= 1 samples, got {n}.")
        self.split, self.seed, self.n, self.size, self.version = split, seed, n, size, version

    def __len__(self) -> int:
        return self.n

    def record(self, index: int) -> tuple[SceneSpec, str]:
        """Scene specification and caption of sample ``index`` (no rendering)."""
        if not 0 <= index < self.n:
            raise IndexError(f"Index {index} is out of range for a dataset of {self.n} samples.")
        return sample_record(self.split, self.seed, index, self.version)

    def render(self, indices: Sequence[int], device: torch.device | str = "cpu") -> tuple[RenderedBatch, list[str]]:
        """Render several samples at once (vectorised); returns the batch and the captions."""
        records = [self.record(i) for i in indices]
        return render_scenes([spec for spec, _ in records], self.size, device), [caption for _, caption in records]

    def __getitem__(self, index: int) -> ShapesWorldSample:
        spec, caption = self.record(index)
        batch = render_scenes([spec], self.size)
        return ShapesWorldSample(
            image=batch.images[0],
            background=batch.background[0],
            object_class=batch.object_class[0],
            colour=batch.colour[0],
            instance=batch.instance[0],
            caption=caption,
            spec=spec,
        )

    def __iter__(self) -> Iterator[ShapesWorldSample]:
        for index in range(self.n):
            yield self[index]
