"""``conceptattention explain``: an image file + concepts → concept maps, overlays, grid, settings."""

from __future__ import annotations

import argparse
import time

from .. import explain
from ..config import check_noise_levels
from ..images import load_image
from .common import (
    add_map_command_options,
    check_output_folder,
    check_sizes,
    finish_map_command,
    load_model_from_args,
    map_command_settings,
    method_options,
)
from .mask_options import add_mask_options, check_mask_options, mask_settings, mask_writer


HELP = "write concept maps for an existing image (VAE-encode, add noise, one early-exit forward pass)"


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("explain", help=HELP, description=HELP)
    parser.add_argument("--image", required=True, help="image file (PNG/JPEG/...; grayscale, RGBA, 16-bit accepted)")
    parser.add_argument("--concepts", nargs="+", required=True, help="concepts to map, e.g. --concepts cat sofa floor")
    parser.add_argument("--caption", default="", help="prompt given with the image (default: empty)")
    parser.add_argument(
        "--noise-level",
        type=float,
        nargs="+",
        default=None,
        help="rectified-flow time t in (0, 1]; several are averaged (default: the model's recommended levels, else 0.5)",
    )
    parser.add_argument("--samples", type=int, default=4, help="noise samples to average (default 4)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--height", type=int, default=None, help="model input height (default: keep aspect ratio)")
    parser.add_argument("--width", type=int, default=None)
    parser.add_argument("--guidance-scale", type=float, default=3.5, help="guidance embedding (FLUX.1-dev only)")
    add_mask_options(parser)
    add_map_command_options(parser, run)


def run(args: argparse.Namespace) -> int:
    started = time.perf_counter()
    check_output_folder(args.out, args.overwrite)
    check_mask_options(args)
    image = load_image(args.image)  # bad files fail before the model loads
    if args.noise_level is not None:
        check_noise_levels(args.noise_level)  # so do bad noise levels
    loaded = load_model_from_args(args)
    pipe = loaded.pipeline
    check_sizes(args, pipe)
    maps = explain(
        pipe,
        image,
        args.concepts,
        caption=args.caption,
        noise_level=args.noise_level,
        num_samples=args.samples,
        seed=args.seed,
        height=args.height,
        width=args.width,
        guidance_scale=args.guidance_scale,
        **method_options(args),
    )
    settings = {
        "command": "explain",
        "model": loaded.description,
        "image": str(args.image),
        "concepts": list(maps.concepts),
        **map_command_settings(args, loaded, maps),
        "masks": mask_settings(args),
    }
    extra = mask_writer(args, maps, (image.height, image.width))
    return finish_map_command(args, image=image, maps=maps, settings=settings, started=started, extra=extra)
