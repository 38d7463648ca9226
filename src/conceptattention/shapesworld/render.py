"""The vectorised ShapesWorld renderer: scene specifications (:mod:`conceptattention.shapesworld.scenes`) to images
with exact per-pixel ground truth.

Geometry is defined in a 32 x 32 coordinate frame and rasterised at pixel centres, so any square resolution can be
rendered (the model is trained at 32 x 32). Ground truth is exact: the same masks paint the image and the labels.
The vocabulary and scene specifications are re-exported here (their old import path).

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
from dataclasses import dataclass

import torch

from conceptattention.shapesworld.scenes import (
    BACKGROUND_COLOURS,
    BACKGROUNDS,
    COLOURS,
    DATA_VERSIONS,
    FIXED_PART_COLOURS,
    FRAME,
    GROUND_TINTS,
    GROUNDS,
    IMAGE_SIZE,
    MIN_CONTRAST,
    OBJECT_COLOURS,
    OBJECT_EXTENT,
    OBJECT_PARTS,
    OBJECT_PLACE,
    OBJECTS,
    PALETTE,
    SCALE_RANGE,
    SKY_STYLES,
    ObjectSpec,
    SceneError,
    SceneSpec,
    TextureSpec,
    allowed_colours,
    check_version,
    typical_colours,
    visible_colours,
)


__all__ = [  # the drawing, and the scene vocabulary and specifications of scenes.py (their old import path)
    "BACKGROUNDS",
    "BACKGROUND_COLOURS",
    "COLOURS",
    "DATA_VERSIONS",
    "FIXED_PART_COLOURS",
    "FRAME",
    "GEOMETRY",
    "GROUNDS",
    "GROUND_TINTS",
    "GeometryFn",
    "IMAGE_SIZE",
    "MIN_CONTRAST",
    "OBJECTS",
    "OBJECT_COLOURS",
    "OBJECT_EXTENT",
    "OBJECT_PARTS",
    "OBJECT_PLACE",
    "ObjectSpec",
    "PALETTE",
    "RenderedBatch",
    "SCALE_RANGE",
    "SKY_STYLES",
    "SceneError",
    "SceneSpec",
    "TextureSpec",
    "allowed_colours",
    "check_version",
    "noise_tiles",
    "object_part_masks",
    "render_scenes",
    "typical_colours",
    "visible_colours",
]


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
