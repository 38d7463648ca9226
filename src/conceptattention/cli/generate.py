"""``conceptattention generate``: prompt + concepts → image, per-concept maps, overlays, grid, settings."""

from __future__ import annotations

import argparse
import inspect
import time
from typing import Any

from .animate import add_animate_options, animation_writer, check_animation_memory, image_tokens
from .common import (
    CLIError,
    add_map_command_options,
    add_prompt_words_option,
    call_kwargs,
    check_concept_list,
    check_memory_before_loading,
    check_memory_for_model,
    check_model_concepts,
    check_sizes,
    finite_float,
    load_model_from_args,
    map_command_settings,
    method_options,
    nonnegative_int,
    positive_int,
    seed_int,
)
from .mask_options import add_mask_options, check_mask_options, mask_settings, mask_writer
from .run_folder import check_output_folder, combined_writers, finish_map_command, head_writer


HELP = "generate an image from a prompt and write concept maps for it"


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("generate", help=HELP, description=HELP)
    parser.add_argument("--prompt", default=None, help="text prompt (default: the model's example prompt)")
    parser.add_argument(
        "--concepts", nargs="+", default=None, help="concepts to map, e.g. --concepts dragon rock sky 'red car'"
    )
    parser.add_argument("--seed", type=seed_int, default=0, help="seed of the initial noise, 0 to 2**63 - 1")
    parser.add_argument("--steps", type=positive_int, default=None, help="denoising steps (default: the model's)")
    parser.add_argument("--guidance-scale", type=finite_float, default=None)
    parser.add_argument("--height", type=int, default=None)
    parser.add_argument("--width", type=int, default=None)
    parser.add_argument(
        "--timesteps",
        type=nonnegative_int,
        nargs="+",
        default=None,
        help="denoising steps to average, 0 to steps-1 (default: all)",
    )
    parser.add_argument("--frames", type=positive_int, default=None, help="video models: number of frames")
    parser.add_argument(
        "--max-sequence-length", type=positive_int, default=None, help="prompt tokens (default: the model's)"
    )
    add_prompt_words_option(parser)
    add_mask_options(parser)
    add_map_command_options(parser, run)
    add_animate_options(parser, steps_help="denoising step")


def _call_default(pipeline: Any, name: str) -> Any:
    """The default of ``name`` in the pipeline's ``__call__`` (None if it has none)."""
    parameter = inspect.signature(pipeline.__call__).parameters.get(name)
    if parameter is None or parameter.default is inspect.Parameter.empty:
        return None
    return parameter.default


def _default_side(pipeline: Any) -> int:
    """The image side a pipeline uses when none is given (``default_sample_size`` latents), else 1024."""
    sample_size = getattr(pipeline, "default_sample_size", None)
    scale = getattr(pipeline, "vae_scale_factor", None) or getattr(pipeline, "vae_scale_factor_spatial", None) or 8
    return int(sample_size) * int(scale) if isinstance(sample_size, int) else 1024


def _check_timesteps(timesteps: list[int] | None, steps: Any) -> None:
    """``--timesteps`` must name steps that run (0 to steps-1)."""
    if not timesteps or not isinstance(steps, int):
        return
    outside = sorted({step for step in timesteps if step >= steps})
    if outside:
        raise CLIError(
            f"--timesteps {' '.join(map(str, outside))} is out of range: this run has {steps} denoising steps, "
            f"numbered 0 to {steps - 1} (set --steps to run more)."
        )


def run(args: argparse.Namespace) -> int:
    import torch  # torch and diffusers: imported by the command, not by --help

    from .. import ConceptAttention, get_adapter

    started = time.perf_counter()
    check_output_folder(args.out, args.overwrite)
    if args.concepts is not None:
        check_concept_list(args.concepts)
    check_memory_before_loading(args, args.height, args.width, frames=args.frames or 1)
    check_mask_options(args)
    loaded = load_model_from_args(args)
    defaults = loaded.defaults
    pipe = loaded.pipeline
    prompt = args.prompt if args.prompt is not None else defaults.get("prompt")
    concepts = args.concepts if args.concepts is not None else defaults.get("concepts")
    if args.prompt_words and args.concepts is None:
        concepts = []  # the prompt's words only
    if not prompt:
        raise CLIError("--prompt is required for this model.")
    if not concepts and not args.prompt_words:
        raise CLIError("--concepts is required for this model (e.g. --concepts dog grass sky), or --prompt-words.")
    concepts = list(check_concept_list(concepts)) if concepts else []
    if concepts:
        check_model_concepts(loaded, concepts)
    check_sizes(args, pipe)
    video = get_adapter(pipe).modality == "video"
    if args.frames is not None and not video:
        raise CLIError(
            f"--frames is for video models; {loaded.description} makes images. Remove --frames (or choose a video "
            "model such as cogvideox-2b)."
        )
    options = method_options(args)
    options["timesteps"] = tuple(args.timesteps) if args.timesteps else None
    generator_device = "cpu" if args.offload != "none" else args.device
    kwargs = call_kwargs(
        pipe,
        {
            "height": args.height or defaults.get("height"),
            "width": args.width or defaults.get("width"),
            "num_inference_steps": args.steps or defaults.get("num_inference_steps"),
            "guidance_scale": args.guidance_scale if args.guidance_scale is not None else defaults.get("guidance_scale"),
            "max_sequence_length": args.max_sequence_length or defaults.get("max_sequence_length"),
            "generator": torch.Generator(generator_device).manual_seed(args.seed),
        },
    )
    if video:
        kwargs.update(call_kwargs(pipe, {"num_frames": args.frames or defaults.get("num_frames"), "output_type": "pil"}))
    _check_timesteps(args.timesteps, kwargs.get("num_inference_steps", _call_default(pipe, "num_inference_steps")))
    height = kwargs.get("height") or _call_default(pipe, "height")
    width = kwargs.get("width") or _call_default(pipe, "width")
    height = height if isinstance(height, int) else _default_side(pipe)
    width = width if isinstance(width, int) else _default_side(pipe)
    frame_count = (kwargs.get("num_frames") or _call_default(pipe, "num_frames")) if video else 1
    check_memory_for_model(
        args,
        pipe,
        height=height,
        width=width,
        frames=frame_count if isinstance(frame_count, int) else 1,
        concepts=len(concepts) + (len(prompt.split()) if args.prompt_words else 0),
        text_tokens=kwargs.get("max_sequence_length"),
    )
    animate: dict[str, Any] | None = None
    if args.animate:
        options["keep_per_step"] = True
    attention = ConceptAttention(pipe, concepts or None, prompt_words=args.prompt_words, **options)
    if args.animate:  # the kept per-step scores are checked before the run
        steps = kwargs.get("num_inference_steps", _call_default(pipe, "num_inference_steps"))
        animate = check_animation_memory(
            args,
            attention,
            steps=len(args.timesteps) if args.timesteps else int(steps or 1),
            tokens=image_tokens(pipe, height=height, width=width, frames=frame_count if video else 1),
        )
    with attention:
        result = pipe(prompt=prompt, **kwargs)  # by keyword: some pipelines (Flux2Klein) take an image first
    frames = list(result.frames[0]) if video else None
    image = frames[0] if frames else result.images[0]
    maps = attention.maps
    settings = {
        "command": "generate",
        "model": loaded.description,
        "prompt": prompt,
        "concepts": list(maps.concepts),
        "prompt_words": args.prompt_words,
        "seed": args.seed,
        "pipeline_kwargs": {k: v for k, v in kwargs.items() if k != "generator"},
        **map_command_settings(args, loaded, maps),
    }
    settings["masks"] = mask_settings(args)
    extra_files = [mask_writer(args, maps, (image.height, image.width)), head_writer(args, maps, (image.height, image.width))]
    if animate is not None:
        settings["animate"] = animate
        extra_files.append(animation_writer(args, attention, image, settings))
    settings["seconds_total_before_writing"] = round(time.perf_counter() - started, 3)
    return finish_map_command(
        args,
        image=image,
        maps=maps,
        settings=settings,
        started=started,
        frames=frames,
        extra_files=combined_writers(extra_files),
    )
