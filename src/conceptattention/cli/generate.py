"""``conceptattention generate``: prompt + concepts → image, per-concept maps, overlays, grid, settings."""

from __future__ import annotations

import argparse
import time

import torch

from .. import ConceptAttention, get_adapter
from .common import (
    add_map_command_options,
    call_kwargs,
    check_output_folder,
    check_sizes,
    finish_map_command,
    load_model_from_args,
    map_command_settings,
    method_options,
)
from .mask_options import add_mask_options, check_mask_options, mask_settings, mask_writer


HELP = "generate an image from a prompt and write concept maps for it"


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("generate", help=HELP, description=HELP)
    parser.add_argument("--prompt", default=None, help="text prompt (default: the model's example prompt)")
    parser.add_argument(
        "--concepts", nargs="+", default=None, help="concepts to map, e.g. --concepts dragon rock sky 'red car'"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--steps", type=int, default=None, help="denoising steps (default: the model's)")
    parser.add_argument("--guidance-scale", type=float, default=None)
    parser.add_argument("--height", type=int, default=None)
    parser.add_argument("--width", type=int, default=None)
    parser.add_argument("--timesteps", type=int, nargs="+", default=None, help="steps to average (default: all)")
    parser.add_argument("--frames", type=int, default=None, help="video models: number of frames")
    parser.add_argument("--max-sequence-length", type=int, default=None, help="prompt tokens (default: the model's)")
    add_mask_options(parser)
    add_map_command_options(parser, run)


def run(args: argparse.Namespace) -> int:
    started = time.perf_counter()
    check_output_folder(args.out, args.overwrite)
    check_mask_options(args)
    loaded = load_model_from_args(args)
    defaults = loaded.defaults
    pipe = loaded.pipeline
    prompt = args.prompt if args.prompt is not None else defaults.get("prompt")
    concepts = args.concepts if args.concepts is not None else defaults.get("concepts")
    if not prompt:
        raise ValueError("--prompt is required for this model.")
    if not concepts:
        raise ValueError("--concepts is required for this model (e.g. --concepts dog grass sky).")
    check_sizes(args, pipe)
    if args.frames is not None and args.frames < 1:
        raise ValueError(f"--frames must be at least 1, got {args.frames}.")
    if args.steps is not None and args.steps < 1:
        raise ValueError(f"--steps must be at least 1, got {args.steps}.")
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
    video = get_adapter(pipe).modality == "video"
    if video:
        kwargs.update(call_kwargs(pipe, {"num_frames": args.frames or defaults.get("num_frames"), "output_type": "pil"}))
    with ConceptAttention(pipe, concepts, **options) as attention:
        result = pipe(prompt=prompt, **kwargs)  # by keyword: some pipelines (Flux2Klein) take an image first
    frames = list(result.frames[0]) if video else None
    image = frames[0] if frames else result.images[0]
    maps = attention.maps
    settings = {
        "command": "generate",
        "model": loaded.description,
        "prompt": prompt,
        "concepts": list(maps.concepts),
        "seed": args.seed,
        "pipeline_kwargs": {k: v for k, v in kwargs.items() if k != "generator"},
        **map_command_settings(args, loaded, maps),
    }
    settings["masks"] = mask_settings(args)
    settings["seconds_total_before_writing"] = round(time.perf_counter() - started, 3)
    extra = mask_writer(args, maps, (image.height, image.width))
    return finish_map_command(
        args, image=image, maps=maps, settings=settings, started=started, frames=frames, extra=extra
    )
