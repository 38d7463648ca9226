"""``conceptattention explain``: an image file + concepts → concept maps, overlays, grid, settings."""

from __future__ import annotations

import argparse
import time

from .. import explain
from ..config import check_noise_levels
from ..images import load_image
from ..models import load_model
from .common import (
    add_method_options,
    add_model_options,
    add_output_options,
    check_output_folder,
    check_size,
    method_options,
    print_summary,
    write_run_folder,
)


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
    add_model_options(parser)
    add_method_options(parser)
    add_output_options(parser)
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    started = time.perf_counter()
    check_output_folder(args.out, args.overwrite)
    image = load_image(args.image)  # bad files fail before the model loads
    if args.noise_level is not None:
        check_noise_levels(args.noise_level)  # so do bad noise levels
    loaded = load_model(args.model, device=args.device, dtype=args.dtype, offload=args.offload, allow_pickle=args.allow_pickle)
    if loaded.notice:
        print(loaded.notice)
    pipe = loaded.pipeline
    from ..adapters import get_adapter

    multiple = get_adapter(pipe).size_multiple(pipe)
    check_size("height", args.height, multiple)
    check_size("width", args.width, multiple)
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
        "device": args.device,
        "dtype": str(pipe.transformer.dtype).replace("torch.", ""),
        "offload": args.offload,
        "method": maps.config,
        "notice": loaded.notice,
    }
    write_run_folder(args.out, overwrite=args.overwrite, image=image, maps=maps, settings=settings, cmap=args.cmap)
    print_summary(args.out, maps, time.perf_counter() - started)
    return 0
