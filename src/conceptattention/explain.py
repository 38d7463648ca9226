"""The real-image path: concept maps of an existing image (docs/method.md, "The real-image path").

The image is VAE-encoded, noised to one noise level (or several, averaged like the steps of a generation) with
several seeded noise samples (batched into one transformer call per level), and the transformer runs only up to the
last joint block that is needed; single-stream blocks, the final layer and the VAE decoder never run. Maps are
softmax-normalised per sample, level and layer, then averaged.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable, Sequence
from typing import Any, cast

import torch
from PIL import Image

from .capture import ConceptAttention
from .config import ConceptAttentionConfig, ConfigError, check_noise_levels, model_defaults
from .encoding import isolated_text_encoding
from .maps import ConceptMaps
from .session import EarlyExit


def explain(
    pipeline: Any,
    image: Image.Image | str | os.PathLike[str] | Sequence[Image.Image | str | os.PathLike[str]],
    concepts: Sequence[str],
    *,
    caption: str = "",
    noise_level: float | Sequence[float] | None = None,
    num_samples: int = 1,
    seed: int = 0,
    height: int | None = None,
    width: int | None = None,
    guidance_scale: float = 3.5,
    image_pooled: str = "zero",
    samples_per_batch: int | None = None,
    concept_embeds: torch.Tensor | None = None,
    config: ConceptAttentionConfig | None = None,
    on_attention: Callable[[ConceptAttention], None] | None = None,
    **options: Any,
) -> ConceptMaps | list[ConceptMaps]:
    """Concept maps of a real image.

    Args:
        pipeline: A diffusers pipeline of a supported family (its VAE, text encoders and transformer are used).
        image: A PIL image or an image file path (grayscale, RGBA and 16-bit files are converted to RGB); or a list
            of them: a batch, as in diffusers (one :class:`ConceptMaps` each). The frames of a video go to
            :func:`explain_video`. (Deprecated: on a video model a list is still read as the frames of one video,
            with a :class:`DeprecationWarning`; in the next release it will be a batch there too.)
        concepts: Concept strings, e.g. ``["cat", "sofa", "background"]``; ``"prompt"`` maps the caption's words
            (or pass ``prompt_words=True`` with concepts: see :class:`~conceptattention.ConceptAttention`).
        caption: Prompt given to the model alongside the image (``""`` as the official code; ``"a cat"`` helps).
        noise_level: Rectified-flow time ``t`` in (0, 1]: ``x_t = (1 - t)·x_0 + t·ε``; or a list of levels whose maps
            are averaged (each with the same noise samples). ``None``: the model's recommended levels if its
            transformer carries them (:class:`~conceptattention.config.ModelDefaults`), else 0.5 (the official
            default).
        num_samples: Noise samples averaged (sample ``i`` uses seed ``seed + i``).
        seed: Seed of the first noise sample.
        height: Model input height in pixels; default keeps the aspect ratio at the model's default area.
        width: Model input width in pixels.
        guidance_scale: Guidance embedding for guidance-distilled models (FLUX.1-dev); ignored otherwise.
        image_pooled: ``"zero"`` (official: the image stream also gets a zero pooled text vector) or ``"caption"``.
        samples_per_batch: Noise samples per transformer call (default: all in one call).
        concept_embeds: Precomputed ``[C, D_text]`` concept embeddings instead of encoding ``concepts``.
        config: Method options; or pass :class:`ConceptAttentionConfig` fields as keyword options.
        on_attention: Called with the finished :class:`ConceptAttention` block before returning, e.g. to read the
            maps of each noise level or block with ``keep_per_step=True`` and
            :func:`conceptattention.timeline.maps_over`.

    Returns:
        :class:`ConceptMaps` with one frame, on the model's token grid; for a list of images, a list of them (each
        equal to the maps of that image alone).

    Raises:
        ConfigError: invalid noise level, sample count, size, or a ``timesteps`` option (meaningless here); an empty
            list.

    Example:
        >>> from PIL import Image
        >>> from conceptattention import explain
        >>> from conceptattention.testing import tiny_flux_pipeline
        >>> maps = explain(tiny_flux_pipeline(), Image.new("RGB", (32, 32)), ["dog", "sky"], height=32, width=32)
        >>> maps.grid_size  # the tiny VAE keeps 32 x 32, FLUX packs 2 x 2 patches (FLUX.1 at 1024²: (64, 64))
        (16, 16)
        >>> batch = explain(tiny_flux_pipeline(), [Image.new("RGB", (32, 32))] * 2, ["dog", "sky"], height=32, width=32)
        >>> [maps.grid_size for maps in batch]  # a list is a batch, as in diffusers
        [(16, 16), (16, 16)]
    """
    if isinstance(image, list | tuple) and not isinstance(image, _VideoFrames):
        if not image:
            raise ConfigError("The image list is empty; give at least one image.")
        if not _is_video_model(pipeline):  # a batch, as in diffusers: each image on its own
            keywords = {
                "caption": caption,
                "noise_level": noise_level,
                "num_samples": num_samples,
                "seed": seed,
                "height": height,
                "width": width,
                "guidance_scale": guidance_scale,
                "image_pooled": image_pooled,
                "samples_per_batch": samples_per_batch,
                "concept_embeds": concept_embeds,
                "config": config,
                "on_attention": on_attention,
            }
            return [explain(pipeline, one, concepts, **keywords, **options) for one in image]
        warnings.warn(  # the old meaning, for one release
            "explain() reads a list given to a video model as the frames of one video; pass frames with "
            "explain_video(pipeline, frames, concepts). In the next release a list given to explain() is a batch of "
            "images on every model, as in diffusers.",
            DeprecationWarning,
            stacklevel=2,
        )
    from .images import load_image

    frames: list[Image.Image] | None = None
    if isinstance(image, list | tuple):  # a video, as frames
        frames = [frame if isinstance(frame, Image.Image) else load_image(frame) for frame in image]
        image = frames[0]
    elif not isinstance(image, Image.Image):
        image = load_image(image)
    if isinstance(num_samples, bool) or not isinstance(num_samples, int) or num_samples < 1:
        raise ConfigError(f"num_samples must be a positive integer, got {num_samples!r}.")
    samples_per_batch = samples_per_batch or num_samples
    if samples_per_batch < 1:
        raise ConfigError(f"samples_per_batch must be positive, got {samples_per_batch!r}.")
    if (config is not None and config.timesteps is not None) or options.get("timesteps") is not None:
        raise ConfigError("timesteps do not apply to explain(); choose the noise level with noise_level=.")
    attention = ConceptAttention(pipeline, concepts, concept_embeds=concept_embeds, config=config, **options)
    adapter = attention.adapter
    if noise_level is None:
        noise_level = model_defaults(attention.transformer).noise_levels or 0.5
    noise_levels = check_noise_levels(noise_level)
    if frames is not None and adapter.modality != "video":
        raise ConfigError(f"The {adapter.name!r} model takes one image, not a list of frames.")
    if (height is None) != (width is None):
        raise ConfigError("Give both height and width, or neither.")
    if height is None or width is None:
        height, width = adapter.explain_resolution(pipeline, image.size)
    if height <= 0 or width <= 0:
        raise ConfigError(f"height and width must be positive, got {height}x{width}.")

    attention._reduce_batch = True
    attention._stop_after_last_layer = True
    seeds = [seed + index for index in range(num_samples)]
    with attention, torch.no_grad(), isolated_text_encoding(pipeline):  # caption encoding: eval, forked RNG
        batches = [(level, start) for level in noise_levels for start in range(0, num_samples, samples_per_batch)]
        for level, start in batches:  # each level sees the same noise samples
            batch = adapter.prepare_explain(
                pipeline,
                frames if frames is not None else image,
                caption=caption,
                noise_level=level,
                seeds=seeds[start : start + samples_per_batch],
                height=height,
                width=width,
                guidance_scale=guidance_scale,
                image_pooled=image_pooled,
            )
            try:
                attention.transformer(**batch.transformer_kwargs)
            except EarlyExit:
                pass
    maps = attention.maps
    if on_attention is not None:
        on_attention(attention)
    settings = maps.settings
    settings.update(
        {
            "path": "explain",
            "caption": caption,
            "noise_level": noise_levels[0] if len(noise_levels) == 1 else list(noise_levels),
            "num_samples": num_samples,
            "seed": seed,
            "height": height,
            "width": width,
            "image_pooled": image_pooled,
        }
    )
    return ConceptMaps(
        maps.concepts, maps.tensor, maps.logits, settings, head_maps=maps.head_maps, head_logits=maps.head_logits
    )


def explain_video(
    pipeline: Any,
    frames: Sequence[Image.Image | str | os.PathLike[str]],
    concepts: Sequence[str],
    **options: Any,
) -> ConceptMaps:
    """Concept maps of a real video (a video model: CogVideoX, Mochi, HunyuanVideo...), given as its frames.

    Args:
        pipeline: A diffusers pipeline of a supported video family.
        frames: The video's frames, PIL images or image paths, in order (the model's VAE fixes how many it takes,
            e.g. ``1 + 4k`` for CogVideoX).
        concepts: Concept strings, e.g. ``["cat", "sofa", "background"]``.
        **options: The keyword options of :func:`explain` (``caption``, ``noise_level``, ``num_samples``, ...).

    Returns:
        :class:`ConceptMaps` with one frame per token frame of the video.

    Raises:
        ConfigError: An empty frame list, a single image instead of a list, or an image model.

    Example:
        >>> from PIL import Image
        >>> from conceptattention.testing import tiny_cogvideox_pipeline
        >>> frames = [Image.new("RGB", (24, 16), (20 * i, 80, 160)) for i in range(5)]  # 1 + 4k frames
        >>> explain_video(tiny_cogvideox_pipeline(), frames, ["cat", "sky"], height=16, width=24).tensor.shape
        torch.Size([2, 2, 2, 3])
    """
    if isinstance(frames, Image.Image | str | os.PathLike) or not isinstance(frames, Sequence) or not frames:
        raise ConfigError("frames must be a non-empty list of the video's frames (PIL images or image paths).")
    if not _is_video_model(pipeline):
        raise ConfigError("explain_video() is for video models; this model takes images: use explain().")
    return cast(ConceptMaps, explain(pipeline, _VideoFrames(frames), concepts, **options))  # one video: one result


def _is_video_model(pipeline: Any) -> bool:
    from .adapters import get_adapter

    return get_adapter(pipeline).modality == "video"


class _VideoFrames(list):
    """The frames of one video, as :func:`explain_video` hands them to :func:`explain` (not a batch)."""
