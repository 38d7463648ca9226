"""Video outputs of ConceptAttention: per-frame overlays as GIF or MP4, and a frames × concepts grid figure.

Video models give maps per **token frame** (:class:`~conceptattention.maps.ConceptMaps` with ``F > 1`` frames),
while the decoded video has more frames: CogVideoX's VAE compresses time 4× causally (latent frame 0 is video frame 0
alone, latent frame ``l ≥ 1`` covers video frames ``4l-3 .. 4l``), and CogVideoX 1.5 further groups 2 latent frames per
token frame after padding the latent frames at the front to an even count. :func:`video_frame_to_map_frame` computes
which map frame belongs to each video frame; the writers use it.

GIF and MP4 files are encoded with ``imageio`` (MP4 through ``imageio-ffmpeg``; install the ``video`` extra:
``pip install conceptattention[video]``) and written atomically: an error leaves no partial file.

Example:
    >>> import torch
    >>> from PIL import Image
    >>> from conceptattention import ConceptMaps
    >>> maps = ConceptMaps(["dog", "sky"], torch.rand(2, 3, 2, 3).softmax(0))  # [C, F_lat, h, w]
    >>> frames = [Image.new("RGB", (48, 32)) for _ in range(9)]  # 9 decoded frames
    >>> video_frame_to_map_frame(9, 3)
    [0, 1, 1, 1, 1, 2, 2, 2, 2]
    >>> len(overlay_frames(frames, maps, "dog"))
    9
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from .errors import ConceptAttentionError
from .maps import ConceptMaps
from .outputs import atomic_write_bytes


if TYPE_CHECKING:
    from matplotlib.figure import Figure

__all__ = [
    "VideoOutputError",
    "frames_grid_figure",
    "overlay_frames",
    "save_overlay_video",
    "to_pil_frames",
    "video_frame_to_map_frame",
]

VideoScope = Literal["concept", "frame", "all"]
_FORMATS = {".gif": "GIF", ".mp4": "MP4"}
_SCOPES = ("concept", "frame", "all")


class VideoOutputError(ConceptAttentionError, ValueError):
    """Invalid input to a video output function (frames, maps, concept, path or option)."""


# ----------------------------------------------------------------------------------------------------------------
# frame bookkeeping
# ----------------------------------------------------------------------------------------------------------------


def video_frame_to_map_frame(
    num_video_frames: int,
    num_map_frames: int,
    temporal_compression: int = 4,
    patch_size_t: int | None = None,
) -> list[int]:
    """The map frame that belongs to each decoded video frame.

    With equal counts the mapping is the identity. Otherwise the video is taken to come from a causal video VAE
    with ``temporal_compression`` ``r`` (CogVideoX: 4): video frame ``v`` belongs to latent frame ``ceil(v / r)``, so
    latent frame 0 covers video frame 0 alone and latent frame ``l ≥ 1`` covers ``r·l - r + 1 .. r·l``. With
    ``patch_size_t`` ``p`` (CogVideoX 1.5: 2) the pipeline padded the ``L`` latent frames at the front to a multiple of
    ``p`` and each map frame covers ``p`` padded latent frames, so latent frame ``l`` is map frame
    ``(l + pad) // p``. ``patch_size_t=None`` infers the smallest ``p`` with ``ceil(L / p)`` map frames.

    Args:
        num_video_frames: Frames of the decoded video ``V``.
        num_map_frames: Frames of the maps ``M``.
        temporal_compression: Video frames per latent frame (after the first).
        patch_size_t: Latent frames per map frame, or None to infer it.

    Returns:
        ``V`` map-frame indices in ``[0, M)``.

    Raises:
        VideoOutputError: if the counts do not fit together.

    Example:
        >>> video_frame_to_map_frame(9, 3)
        [0, 1, 1, 1, 1, 2, 2, 2, 2]
        >>> video_frame_to_map_frame(9, 2)  # CogVideoX 1.5: 3 latent frames padded to 4, 2 per map frame
        [0, 1, 1, 1, 1, 1, 1, 1, 1]
    """
    for name, value in (("num_video_frames", num_video_frames), ("num_map_frames", num_map_frames)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise VideoOutputError(f"{name} must be a positive integer, got {value!r}.")
    if isinstance(temporal_compression, bool) or not isinstance(temporal_compression, int) or temporal_compression < 1:
        raise VideoOutputError(f"temporal_compression must be a positive integer, got {temporal_compression!r}.")
    if num_video_frames == num_map_frames:
        return list(range(num_video_frames))
    latent_of_frame = [math.ceil(frame / temporal_compression) for frame in range(num_video_frames)]
    num_latent = latent_of_frame[-1] + 1
    if patch_size_t is None:
        candidates = [p for p in range(1, num_latent + 1) if math.ceil(num_latent / p) == num_map_frames]
        if not candidates:
            raise VideoOutputError(
                f"{num_map_frames} map frames do not fit a {num_video_frames}-frame video: with temporal compression "
                f"{temporal_compression} it has {num_latent} latent frames. Pass the maps of this video, or the "
                "right temporal_compression/patch_size_t."
            )
        patch_size_t = candidates[0]
    if isinstance(patch_size_t, bool) or not isinstance(patch_size_t, int) or patch_size_t < 1:
        raise VideoOutputError(f"patch_size_t must be a positive integer or None, got {patch_size_t!r}.")
    padding = (-num_latent) % patch_size_t
    if (num_latent + padding) // patch_size_t != num_map_frames:
        raise VideoOutputError(
            f"{num_map_frames} map frames do not fit a {num_video_frames}-frame video with temporal compression "
            f"{temporal_compression} and patch_size_t {patch_size_t} ({num_latent} latent frames → "
            f"{(num_latent + padding) // patch_size_t} map frames)."
        )
    return [(latent + padding) // patch_size_t for latent in latent_of_frame]


def to_pil_frames(video: Any) -> list[Image.Image]:
    """Turn a decoded video into a list of RGB PIL frames.

    Args:
        video: A list of PIL images; or a tensor/array of one video, ``[F, 3, H, W]`` (torch layout) or
            ``[F, H, W, 3]`` (numpy layout), float in ``[0, 1]`` or uint8 (e.g. ``pipe(..., output_type="pt").frames[0]``
            or ``output_type="np"``).

    Returns:
        ``F`` RGB images.

    Raises:
        VideoOutputError: for other shapes, value ranges or types.

    Example:
        >>> len(to_pil_frames(torch.rand(9, 3, 16, 24)))
        9
    """
    if isinstance(video, Sequence) and not isinstance(video, str | bytes) and video and all(
        isinstance(frame, Image.Image) for frame in video
    ):
        return [frame.convert("RGB") for frame in video]
    if isinstance(video, torch.Tensor):
        array = video.detach().cpu()
        array = array.float().numpy() if array.is_floating_point() else array.numpy()
    elif isinstance(video, np.ndarray):
        array = video
    else:
        raise VideoOutputError(
            f"video must be a list of PIL images, a tensor or a numpy array, got {type(video).__name__}."
        )
    if array.ndim != 4 or (array.shape[1] != 3 and array.shape[-1] != 3):
        raise VideoOutputError(
            f"video must have shape [F, 3, H, W] or [F, H, W, 3] (one video, RGB), got {list(array.shape)}; "
            "take one video of a batch, e.g. frames[0]."
        )
    if array.shape[-1] != 3:
        array = array.transpose(0, 2, 3, 1)  # [F, 3, H, W] -> [F, H, W, 3]
    if array.dtype != np.uint8:
        if not np.issubdtype(array.dtype, np.floating):
            raise VideoOutputError(f"video values must be uint8 or float in [0, 1], got dtype {array.dtype}.")
        if not np.isfinite(array).all() or array.min() < -1e-3 or array.max() > 1 + 1e-3:
            raise VideoOutputError("Float video values must lie in [0, 1] (use output_type='pt' or 'np').")
        array = np.round(np.clip(array, 0.0, 1.0) * 255.0).astype(np.uint8)
    return [Image.fromarray(np.ascontiguousarray(frame)) for frame in array]


# ----------------------------------------------------------------------------------------------------------------
# overlays
# ----------------------------------------------------------------------------------------------------------------


def _check_frames(frames: Any) -> list[Image.Image]:
    if isinstance(frames, Image.Image) or not isinstance(frames, Sequence) or not frames:
        raise VideoOutputError("frames must be a non-empty list of PIL images (the decoded video frames).")
    for index, frame in enumerate(frames):
        if not isinstance(frame, Image.Image):
            raise VideoOutputError(
                f"frames[{index}] is {type(frame).__name__}, not a PIL image; convert tensors with to_pil_frames()."
            )
    size = frames[0].size
    if any(frame.size != size for frame in frames):
        raise VideoOutputError("All frames must have the same size.")
    return list(frames)


def _check_maps_and_concept(maps: Any, concept: str) -> int:
    if not isinstance(maps, ConceptMaps):
        raise VideoOutputError(f"maps must be ConceptMaps, got {type(maps).__name__}.")
    if concept not in maps:
        raise VideoOutputError(f"Unknown concept {concept!r}; the maps have {list(maps.concepts)}.")
    return maps.concept_index(concept)


def _normalized_concept_maps(maps: ConceptMaps, index: int, scope: str) -> torch.Tensor:
    """Min-max normalised ``[F, h, w]`` maps of one concept (constant maps become zeros)."""
    if scope not in _SCOPES:
        raise VideoOutputError(f"scope must be one of {list(_SCOPES)}, got {scope!r}.")
    values = maps.tensor.to(torch.float64)  # [C, F, h, w]
    concept = values[index]  # [F, h, w]
    if scope == "concept":  # one range over all frames of this concept: no flicker, strength comparable in time
        low, high = concept.min(), concept.max()
    elif scope == "frame":
        low = concept.amin(dim=(1, 2), keepdim=True)  # [F, 1, 1]
        high = concept.amax(dim=(1, 2), keepdim=True)  # [F, 1, 1]
    else:
        low, high = values.min(), values.max()
    value_range = high - low
    safe_range = torch.where(value_range > 0, value_range, torch.ones_like(value_range))
    return ((concept - low) / safe_range).clamp(0.0, 1.0).to(torch.float32)


def overlay_frames(
    frames: Sequence[Image.Image],
    maps: ConceptMaps,
    concept: str,
    *,
    alpha: float = 0.5,
    cmap: str = "plasma",
    scope: VideoScope = "concept",
    temporal_compression: int = 4,
    patch_size_t: int | None = None,
) -> list[Image.Image]:
    """Blend one concept's map over every frame of a video.

    Each video frame gets the map frame of :func:`video_frame_to_map_frame`, bilinearly upsampled to the frame size,
    coloured with ``cmap`` and blended as ``(1 - alpha)·frame + alpha·heatmap``.

    Args:
        frames: The decoded video frames (PIL images of one size).
        maps: The video's maps, ``[C, F_map, h, w]``.
        concept: The concept to draw.
        alpha: Weight of the heatmap, in ``[0, 1]``.
        cmap: A matplotlib colormap name.
        scope: Min-max normalisation: ``"concept"`` (one range over all frames of the concept; default, no flicker),
            ``"frame"`` (each frame on its own) or ``"all"`` (one range over all concepts and frames).
        temporal_compression: Video frames per latent frame (CogVideoX: 4).
        patch_size_t: Latent frames per map frame (CogVideoX 1.5: 2), or None to infer it.

    Returns:
        One RGB image per video frame, with the frames' size.

    Raises:
        VideoOutputError: for bad frames, an unknown concept, an unknown colormap or scope, ``alpha`` outside
            ``[0, 1]``, or frame counts that do not fit.

    Example:
        >>> maps = ConceptMaps(["dog"], torch.rand(1, 1, 2, 3))
        >>> overlay_frames([Image.new("RGB", (30, 20))] * 2, maps, "dog")[1].size
        (30, 20)
    """
    frames = _check_frames(frames)
    index = _check_maps_and_concept(maps, concept)
    mapping = video_frame_to_map_frame(len(frames), maps.num_frames, temporal_compression, patch_size_t)
    return _render(frames, maps, index, mapping, alpha=alpha, cmap=cmap, scope=scope)


def _render(
    frames: list[Image.Image],
    maps: ConceptMaps,
    index: int,
    mapping: list[int],
    *,
    alpha: float,
    cmap: str,
    scope: str,
) -> list[Image.Image]:
    """Overlay concept ``index`` on ``frames``; ``mapping[i]`` is the map frame of ``frames[i]``."""
    import matplotlib

    if isinstance(alpha, bool) or not isinstance(alpha, int | float) or not 0.0 <= alpha <= 1.0:
        raise VideoOutputError(f"alpha must be a number in [0, 1], got {alpha!r}.")
    try:
        colormap = matplotlib.colormaps[cmap]
    except (KeyError, TypeError) as error:
        raise VideoOutputError(f"Unknown matplotlib colormap {cmap!r}.") from error
    normalized = _normalized_concept_maps(maps, index, scope)  # [F_map, h, w], range over the whole video
    used = sorted(set(mapping))
    width, height = frames[0].size
    # [K, h, w] -> [K, 1, h, w] -> [K, 1, H, W] -> [K, H, W]
    upsampled = F.interpolate(normalized[used][:, None], size=(height, width), mode="bilinear", align_corners=False)
    colored = colormap(upsampled[:, 0].clamp(0.0, 1.0).numpy(), bytes=True)[..., :3]  # [K, H, W, 3] uint8
    heatmaps = {map_frame: Image.fromarray(np.ascontiguousarray(rgb)) for map_frame, rgb in zip(used, colored)}
    return [Image.blend(frame.convert("RGB"), heatmaps[map_frame], float(alpha)) for frame, map_frame in zip(frames, mapping)]


def _encode(frames: list[Image.Image], suffix: str, fps: float) -> bytes:
    from .extras import require

    iio = require("imageio.v3", "video", purpose="Writing GIF/MP4")
    if suffix == ".mp4":
        require("imageio_ffmpeg", "video", purpose="Writing MP4")
        width, height = frames[0].size
        even = (width + width % 2, height + height % 2)  # H.264 with yuv420p needs even sides
        if even != (width, height):
            frames = [frame.resize(even, resample=Image.Resampling.BILINEAR) for frame in frames]
        array = np.stack([np.asarray(frame) for frame in frames])  # [F, H, W, 3]
        return iio.imwrite(
            "<bytes>", array, extension=".mp4", fps=fps, codec="libx264", macro_block_size=1, pixelformat="yuv420p"
        )
    array = np.stack([np.asarray(frame) for frame in frames])  # [F, H, W, 3]
    return iio.imwrite("<bytes>", array, extension=".gif", duration=1000.0 / fps, loop=0)


def save_video(frames: Sequence[Image.Image], path: str | os.PathLike[str], fps: float = 8) -> Path:
    """Write frames as an animated GIF or an MP4 (by suffix), atomically.

    Args:
        frames: PIL images of one size.
        path: Destination ending in ``.gif`` or ``.mp4``.
        fps: Frames per second.

    Returns:
        The written path.

    Example:
        >>> from PIL import Image
        >>> import tempfile, pathlib
        >>> out = pathlib.Path(tempfile.mkdtemp()) / "clip.gif"
        >>> save_video([Image.new("RGB", (8, 8))] * 2, out).name
        'clip.gif'
    """
    from .outputs import atomic_write_bytes

    frames = _check_frames(frames)
    suffix = Path(path).suffix.lower()
    if suffix not in (".gif", ".mp4"):
        raise VideoOutputError(f"Video path must end in .gif or .mp4, got {str(path)!r}.")
    return atomic_write_bytes(path, _encode(frames, suffix, fps))


def save_overlay_video(
    frames: Sequence[Image.Image],
    maps: ConceptMaps,
    concept: str,
    path: str | os.PathLike[str],
    fps: float = 8,
    *,
    alpha: float = 0.5,
    cmap: str = "plasma",
    scope: VideoScope = "concept",
    temporal_compression: int = 4,
    patch_size_t: int | None = None,
) -> Path:
    """Write one concept's per-frame overlays as an animated GIF or an MP4 (H.264), chosen by the file suffix.

    The file is encoded in memory and written atomically (no partial file on error); missing parent folders are
    created. GIF loops forever; MP4 frames are resized to even sides if needed (H.264 requirement).

    Args:
        frames: The decoded video frames (PIL images of one size), e.g. ``pipe(..., output_type="pil").frames[0]``.
        maps: The video's maps ``[C, F_map, h, w]`` (e.g. ``ca.maps`` after a ``CogVideoXPipeline`` call).
        concept: The concept to draw.
        path: Destination ending in ``.gif`` or ``.mp4``.
        fps: Frames per second (CogVideoX videos are usually shown at 8).
        alpha: Weight of the heatmap, in ``[0, 1]``.
        cmap: A matplotlib colormap name.
        scope: Normalisation scope (see :func:`overlay_frames`).
        temporal_compression: Video frames per latent frame (CogVideoX: 4).
        patch_size_t: Latent frames per map frame (CogVideoX 1.5: 2), or None to infer it.

    Returns:
        The written path.

    Raises:
        VideoOutputError: for a bad suffix or ``fps``, or any invalid input of :func:`overlay_frames`.
        ImportError: if imageio (or imageio-ffmpeg for MP4) is not installed.

    Example:
        >>> import tempfile
        >>> maps = ConceptMaps(["dog", "sky"], torch.rand(2, 3, 2, 3).softmax(0))
        >>> frames = [Image.new("RGB", (48, 32)) for _ in range(9)]
        >>> save_overlay_video(frames, maps, "dog", f"{tempfile.mkdtemp()}/dog.gif").suffix
        '.gif'
    """
    destination = Path(path)
    suffix = destination.suffix.lower()
    if suffix not in _FORMATS:
        raise VideoOutputError(f"The video path must end in .gif or .mp4, got {str(destination)!r}.")
    if isinstance(fps, bool) or not isinstance(fps, int | float) or not math.isfinite(fps) or not fps > 0:
        raise VideoOutputError(f"fps must be a positive number, got {fps!r}.")
    overlays = overlay_frames(
        frames,
        maps,
        concept,
        alpha=alpha,
        cmap=cmap,
        scope=scope,
        temporal_compression=temporal_compression,
        patch_size_t=patch_size_t,
    )
    return atomic_write_bytes(destination, _encode(overlays, suffix, float(fps)))


# ----------------------------------------------------------------------------------------------------------------
# figure
# ----------------------------------------------------------------------------------------------------------------


def frames_grid_figure(
    frames: Sequence[Image.Image],
    maps: ConceptMaps,
    concepts: Sequence[str] | None = None,
    *,
    max_columns: int = 8,
    alpha: float = 0.5,
    cmap: str = "plasma",
    scope: VideoScope = "concept",
    temporal_compression: int = 4,
    patch_size_t: int | None = None,
) -> Figure:
    """A matplotlib grid: the video frames in the first row, one row of overlays per concept below.

    At most ``max_columns`` video frames are shown, evenly spaced from the first to the last; each column is titled
    with the video frame and the map frame it uses. Built with the object-oriented API (no pyplot state); save with
    ``fig.savefig(path)``.

    Args:
        frames: The decoded video frames.
        maps: The video's maps ``[C, F_map, h, w]``.
        concepts: Concepts to show (rows), default all.
        max_columns: Most frames shown.
        alpha: Weight of the heatmaps.
        cmap: A matplotlib colormap name.
        scope: Normalisation scope (see :func:`overlay_frames`).
        temporal_compression: Video frames per latent frame.
        patch_size_t: Latent frames per map frame, or None to infer it.

    Returns:
        The figure, with ``(1 + concepts) × columns`` axes.

    Raises:
        VideoOutputError: for invalid inputs (see :func:`overlay_frames`), an empty concept list or ``max_columns < 1``.

    Example:
        >>> maps = ConceptMaps(["dog", "sky"], torch.rand(2, 3, 2, 3).softmax(0))
        >>> figure = frames_grid_figure([Image.new("RGB", (48, 32))] * 9, maps, max_columns=3)
        >>> len(figure.axes)
        9
    """
    from matplotlib.figure import Figure

    frames = _check_frames(frames)
    if not isinstance(maps, ConceptMaps):
        raise VideoOutputError(f"maps must be ConceptMaps, got {type(maps).__name__}.")
    selected = list(maps.concepts) if concepts is None else list(concepts)
    if isinstance(concepts, str) or not selected:
        raise VideoOutputError("concepts must be a non-empty list of concept names (or None for all).")
    if isinstance(max_columns, bool) or not isinstance(max_columns, int) or max_columns < 1:
        raise VideoOutputError(f"max_columns must be a positive integer, got {max_columns!r}.")
    mapping = video_frame_to_map_frame(len(frames), maps.num_frames, temporal_compression, patch_size_t)
    count = min(max_columns, len(frames))
    shown = sorted({round(i * (len(frames) - 1) / max(count - 1, 1)) for i in range(count)})
    indices = [_check_maps_and_concept(maps, concept) for concept in selected]
    shown_frames = [frames[i] for i in shown]
    shown_mapping = [mapping[i] for i in shown]
    overlays = [
        _render(shown_frames, maps, index, shown_mapping, alpha=alpha, cmap=cmap, scope=scope) for index in indices
    ]
    width, height = frames[0].size
    panel = 2.0
    figure = Figure(figsize=(panel * len(shown), panel * (len(selected) + 1) * height / width + 0.3 * len(selected)))
    axes = figure.subplots(len(selected) + 1, len(shown), squeeze=False)
    for column, frame_index in enumerate(shown):
        axes[0, column].imshow(frames[frame_index])
        axes[0, column].set_title(f"frame {frame_index} (map {mapping[frame_index]})", fontsize=8)
        for row, concept in enumerate(selected, start=1):
            axes[row, column].imshow(overlays[row - 1][column])
            if column == 0:
                axes[row, column].set_ylabel(concept, fontsize=9)
    for axis in axes.flat:
        axis.set_xticks([])
        axis.set_yticks([])
    figure.tight_layout()
    return figure

