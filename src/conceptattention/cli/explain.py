"""``conceptattention explain``: an image file + concepts → concept maps, overlays, grid, settings."""

from __future__ import annotations

import argparse
import re
import time

from ..config import check_noise_levels
from .animate import add_animate_options, animation_writer, check_animation_memory, check_explain_steps, image_tokens
from .common import (
    CLIError,
    add_map_command_options,
    add_prompt_words_option,
    check_concept_list,
    check_memory_before_loading,
    check_memory_for_model,
    check_model_concepts,
    check_sizes,
    finite_float,
    load_model_from_args,
    map_command_settings,
    method_options,
    positive_int,
    seed_int,
)
from .mask_options import add_mask_options, check_mask_options, mask_settings, mask_writer
from .run_folder import check_output_folder, combined_writers, finish_map_command, head_writer


HELP = "write concept maps for an existing image (VAE-encode, add noise, one early-exit forward pass)"


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("explain", help=HELP, description=HELP)
    parser.add_argument("--image", required=True, help="image file (PNG/JPEG/...; grayscale, RGBA, 16-bit accepted)")
    parser.add_argument(
        "--concepts", nargs="+", default=None, help="concepts to map, e.g. --concepts cat sofa floor (or --prompt-words)"
    )
    parser.add_argument("--caption", default="", help="prompt given with the image (default: empty)")
    parser.add_argument(
        "--noise-level",
        type=finite_float,
        nargs="+",
        default=None,
        help="rectified-flow time t in (0, 1]; several are averaged (default: the model's recommended levels, else 0.5)",
    )
    parser.add_argument("--samples", type=positive_int, default=4, help="noise samples to average (default 4)")
    parser.add_argument("--seed", type=seed_int, default=0, help="seed of the first noise sample, 0 to 2**63 - 1")
    parser.add_argument("--height", type=int, default=None, help="model input height (default: keep aspect ratio)")
    parser.add_argument("--width", type=int, default=None)
    parser.add_argument("--guidance-scale", type=finite_float, default=3.5, help="guidance embedding (FLUX.1-dev only)")
    add_prompt_words_option(parser)
    add_mask_options(parser)
    add_map_command_options(parser, run)
    add_animate_options(parser, steps_help="noise level (--noise-level with several values)")


def run(args: argparse.Namespace) -> int:
    from .. import ConceptAttention, explain, get_adapter  # torch and diffusers: imported by the command, not --help
    from ..config import model_defaults
    from ..images import load_image

    started = time.perf_counter()
    check_output_folder(args.out, args.overwrite)
    if re.match(r"^[A-Za-z][A-Za-z0-9+.-]*://", args.image):
        raise CLIError(f"--image {args.image!r}: URLs are not supported; download the file first and give its path.")
    if args.concepts is None and not args.prompt_words:
        raise CLIError("Give --concepts (e.g. --concepts cat sofa floor), or --prompt-words with a --caption.")
    if args.prompt_words and not args.caption.strip():
        raise CLIError("--prompt-words maps the words of the caption: give --caption.")
    concepts = list(check_concept_list(args.concepts)) if args.concepts is not None else []
    if (args.height is None) != (args.width is None):
        raise CLIError("Give both --height and --width, or neither (the image's aspect ratio is kept).")
    check_memory_before_loading(args, args.height, args.width, batch=args.samples)
    check_mask_options(args)
    image = load_image(args.image)  # bad files fail before the model loads
    if args.noise_level is not None:
        check_noise_levels(args.noise_level)  # so do bad noise levels
    loaded = load_model_from_args(args)
    pipe = loaded.pipeline
    if concepts:
        check_model_concepts(loaded, concepts)
    check_sizes(args, pipe)
    if args.height is None or args.width is None:
        height, width = get_adapter(pipe).explain_resolution(pipe, image.size)
    else:
        height, width = args.height, args.width
    check_memory_for_model(
        args,
        pipe,
        height=height,
        width=width,
        batch=args.samples,
        concepts=len(concepts) + (len(args.caption.split()) if args.prompt_words else 0),
    )
    options = method_options(args)
    options["prompt_words"] = args.prompt_words
    animate, labels = None, None
    attentions: list = []
    if args.animate:  # the kept per-step scores are checked before the run
        options["keep_per_step"] = True
        levels = check_noise_levels(args.noise_level or model_defaults(pipe.transformer).noise_levels or 0.5)
        check_explain_steps(args, levels)
        labels = [f"noise {level:g}" for level in levels] if args.animate == "steps" else None
        animate = check_animation_memory(
            args,
            ConceptAttention(pipe, concepts or None, **options),
            steps=len(levels),
            tokens=image_tokens(pipe, height=height, width=width),
            batch=args.samples,
        )
    maps = explain(
        pipe,
        image,
        concepts or None,
        caption=args.caption,
        noise_level=args.noise_level,
        num_samples=args.samples,
        seed=args.seed,
        height=args.height,
        width=args.width,
        guidance_scale=args.guidance_scale,
        on_attention=attentions.append,
        **options,
    )
    settings = {
        "command": "explain",
        "model": loaded.description,
        "image": str(args.image),
        "concepts": list(maps.concepts),
        **map_command_settings(args, loaded, maps),
        "masks": mask_settings(args),
    }
    extra_files = [mask_writer(args, maps, (image.height, image.width)), head_writer(args, maps, (image.height, image.width))]
    if animate is not None:
        settings["animate"] = animate
        extra_files.append(animation_writer(args, attentions[0], image, settings, labels=labels))
    return finish_map_command(
        args, image=image, maps=maps, settings=settings, started=started, extra_files=combined_writers(extra_files)
    )
