"""``conceptattention dataset``: prompts (a file, or a template × word lists) → images, maps, masks, COCO, manifest.

Examples::

    conceptattention dataset --template "a {colour} {object} on the {ground}" \\
        --words colour=red,blue object=boat,car ground=sea,grass --concept-fields object ground --concepts sky \\
        --masks argmax --out runs/sw-dataset
    conceptattention dataset --prompts prompts.txt --concepts object background --model flux-schnell \\
        --device cuda --out runs/salient
    accelerate launch --num_processes 8 -m conceptattention.cli.dataset --prompts prompts.txt ... --out runs/salient

Run the same command again to resume a killed run (the items done are kept). Several processes through
``accelerate launch`` (on CPUs add ``--multi_gpu``: accelerate's ``--cpu`` starts a single process) split the items
and give the same files as one process. See :mod:`conceptattention.dataset` for the folder layout.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

from .common import (
    CLIError,
    add_method_options,
    call_kwargs,
    check_sizes,
    finite_float,
    method_options,
    positive_int,
    run_as_program,
    seed_int,
)
from .mask_options import add_mask_options, check_mask_options


HELP = "generate a labelled dataset: images + concept maps + masks + COCO annotations + a JSONL manifest"


def _add_arguments(parser: argparse.ArgumentParser) -> None:
    source = parser.add_argument_group("prompts (one of --prompts or --template)")
    given = source.add_mutually_exclusive_group(required=True)
    given.add_argument(
        "--prompts", type=Path, help="text file, one prompt per line ('prompt<TAB>c1,c2' adds concepts)"
    )
    given.add_argument("--template", help="prompt template with {fields}, e.g. 'a {colour} {object} on the {ground}'")
    source.add_argument(
        "--words", nargs="+", default=[], metavar="FIELD=W1,W2", help="word list of every template field"
    )
    source.add_argument("--concepts", nargs="+", default=[], help="concepts mapped for every item")
    source.add_argument(
        "--concept-fields", nargs="+", default=[], metavar="FIELD", help="template fields whose word is a concept"
    )
    source.add_argument("--per-prompt", type=positive_int, default=1, help="images per prompt (different seeds; default 1)")
    source.add_argument("--limit", type=positive_int, default=None, help="only the first N items")
    generation = parser.add_argument_group("generation")
    generation.add_argument("--seed", type=seed_int, default=0, help="base seed; item i uses item_seed(seed, i)")
    generation.add_argument("--steps", type=positive_int, default=None, help="denoising steps (default: the model's)")
    generation.add_argument("--guidance-scale", type=finite_float, default=None)
    generation.add_argument("--height", type=int, default=None)
    generation.add_argument("--width", type=int, default=None)
    generation.add_argument("--max-sequence-length", type=positive_int, default=None)
    model = parser.add_argument_group("model")
    model.add_argument("--model", default=None, help="'shapesworld' (default), an alias, a local folder or hub id")
    model.add_argument(
        "--device", default="auto", help="auto (accelerate's device per process, else cuda if available), cpu, cuda"
    )
    model.add_argument("--dtype", default=None, help="float32, bfloat16, float16 (default: float32 on CPU, else bf16)")
    model.add_argument("--offload", choices=["none", "model", "sequential"], default="none", help="CPU offload")
    model.add_argument("--allow-pickle", action="store_true", help="allow non-safetensors weights")
    add_method_options(parser)
    add_mask_options(parser, default="argmax")
    parser.add_argument(
        "--out", type=Path, required=True, help="dataset folder (new, empty, or a previous run of this command)"
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.set_defaults(run=run)


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("dataset", help=HELP, description=HELP)
    _add_arguments(parser)


def _program_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="conceptattention dataset", description=HELP)
    _add_arguments(parser)
    return parser


def parse_words(entries: list[str]) -> dict[str, list[str]]:
    """``["colour=red,blue", "object=boat"]`` → ``{"colour": ["red", "blue"], "object": ["boat"]}``."""
    words: dict[str, list[str]] = {}
    for entry in entries:
        name, sep, values = entry.partition("=")
        if not sep or not name.strip():
            raise CLIError(f"--words takes FIELD=WORD1,WORD2,...; got {entry!r}.")
        if name.strip() in words:
            raise CLIError(f"--words gives the field {name.strip()!r} twice.")
        words[name.strip()] = [word.strip() for word in values.split(",") if word.strip()]
    return words


def items_from_args(args: argparse.Namespace) -> list[Any]:
    """The dataset's items (fails on bad prompt options before the model loads)."""
    from ..dataset import items_from_prompts, items_from_template

    if args.per_prompt < 1:
        raise CLIError(f"--per-prompt must be at least 1, got {args.per_prompt}.")
    if args.limit is not None and args.limit < 1:
        raise CLIError(f"--limit must be at least 1, got {args.limit}.")
    if args.prompts is not None:
        if args.words or args.concept_fields:
            raise CLIError("--words and --concept-fields go with --template, not with --prompts.")
        if not args.prompts.is_file():
            raise FileNotFoundError(f"Prompt file '{args.prompts}' does not exist.")
        lines = args.prompts.read_text(encoding="utf-8").splitlines()
        items = items_from_prompts(lines, args.concepts, per_prompt=args.per_prompt, base_seed=args.seed)
    else:
        items = items_from_template(
            args.template,
            parse_words(args.words),
            concepts=args.concepts,
            concept_fields=args.concept_fields,
            per_prompt=args.per_prompt,
            base_seed=args.seed,
        )
    return items[: args.limit] if args.limit is not None else items


def items_digest(items: list[Any]) -> dict[str, Any]:
    """``{"count", "sha256"}`` of the items' prompts, concepts and seeds (a changed prompt file is not resumed)."""
    import hashlib
    import json

    listing = [[item.prompt, list(item.concepts), item.seed] for item in items]
    return {"count": len(items), "sha256": hashlib.sha256(json.dumps(listing).encode()).hexdigest()}


def run(args: argparse.Namespace) -> int:
    from ..dataset import ItemOutputs, build_dataset, check_folder
    from ..evaluation.distributed import process_context
    from ..models import load_model, parse_dtype
    from .evaluate import resolve_device

    started = time.perf_counter()
    if args.seed < 0:
        raise CLIError(f"--seed must be non-negative, got {args.seed}.")
    if args.steps is not None and args.steps < 1:
        raise CLIError(f"--steps must be at least 1, got {args.steps}.")
    check_mask_options(args)
    items = items_from_args(args)
    options = method_options(args)
    mask_options = {"rule": args.masks, "threshold": args.mask_threshold, "none_logit": args.none_logit}
    context = process_context()
    device = resolve_device(args.device, context)
    dtype = parse_dtype(args.dtype, device.split(":")[0])  # as load_model resolves it
    # What decides the files. The device and the process count are left out, so that a run can resume on another
    # machine or with more processes (the dtype, which follows the device by default, is kept).
    settings = {
        "model": args.model or "shapesworld",
        "dtype": str(dtype).replace("torch.", ""),
        "source": {"prompts": str(args.prompts)} if args.prompts else {"template": args.template, "words": args.words},
        "items": items_digest(items),
        "generation": {
            "steps": args.steps,
            "guidance_scale": args.guidance_scale,
            "height": args.height,
            "width": args.width,
            "max_sequence_length": args.max_sequence_length,
            "base_seed": args.seed,
        },
        "method": {key: list(value) if isinstance(value, tuple) else value for key, value in options.items()},
        "masks": mask_options,
    }
    check_folder(args.out, settings)  # a foreign folder or other settings fail before the model loads
    loaded = load_model(
        args.model,
        device=device,
        dtype=dtype,
        offload=args.offload,
        allow_pickle=args.allow_pickle,
    )
    if loaded.notice and context.is_main:
        print(loaded.notice, file=sys.stderr)
    pipe, defaults = loaded.pipeline, loaded.defaults
    pipe.set_progress_bar_config(disable=True)
    check_sizes(args, pipe)
    from ..adapters import get_adapter

    if get_adapter(pipe).modality != "image":
        raise CLIError("conceptattention dataset supports image models; this model makes videos.")
    call = call_kwargs(
        pipe,
        {
            "height": args.height or defaults.get("height"),
            "width": args.width or defaults.get("width"),
            "num_inference_steps": args.steps or defaults.get("num_inference_steps"),
            "guidance_scale": args.guidance_scale
            if args.guidance_scale is not None
            else defaults.get("guidance_scale"),
            "max_sequence_length": args.max_sequence_length or defaults.get("max_sequence_length"),
        },
    )

    def generate_item(item: Any) -> ItemOutputs:
        import torch

        from .. import ConceptAttention

        generator = torch.Generator("cpu").manual_seed(item.seed)  # CPU: the same noise on any device / process
        with ConceptAttention(pipe, list(item.concepts), **options) as attention:
            result = pipe(prompt=item.prompt, generator=generator, **call)
        return ItemOutputs(image=result.images[0], maps=attention.maps)

    try:
        summary = build_dataset(
            args.out,
            items,
            generate_item,
            settings=settings,
            mask_options=mask_options,
            rank=context.rank,
            world_size=context.world_size,
            barrier=context.barrier,
            progress=not args.no_progress,
        )
    except KeyboardInterrupt:
        print(f"interrupted; the finished items in {args.out} are kept: run the same command to resume.")
        raise
    if context.is_main:
        rate = summary["items_per_second_all_processes"]
        print(
            f"wrote {args.out}/ ({summary['items']} items: {summary['done_before']} done before, "
            f"{summary['generated_all_processes']} generated"
            + (f" at {rate:.3f} items/s" if rate else "")
            + f" by {context.world_size} process(es); {time.perf_counter() - started:.1f} s in all)"
        )
    return 0


def main(argv: list[str] | None = None) -> int:
    """Run ``dataset`` as a program (``python -m conceptattention.cli.dataset``, e.g. under accelerate launch)."""
    return run_as_program(
        _program_parser, run, "interrupted; the finished items are kept: run the same command to resume.", argv
    )


if __name__ == "__main__":
    sys.exit(main())
