"""``conceptattention evaluate``: zero-shot segmentation of a benchmark with one method, resumable, multi-process.

Examples::

    conceptattention evaluate --dataset shapesworld --data test:200 --method conceptattention --out runs/sw-ca
    conceptattention evaluate --dataset shapesworld --data test:150 --protocol per-kind --method conceptattention \
        --also cross-attention colour-prior layout-prior all-background --out runs/sw-per-kind
    conceptattention evaluate --dataset voc --data ~/data/VOCdevkit --model flux-schnell --device cuda \\
        --method conceptattention --layers 14 15 16 17 18 --out runs/voc-ca --resume
    accelerate launch --num_processes 8 -m conceptattention.cli.evaluate --dataset imagenet-seg \\
        --data gtsegs_ijcv.mat --class-names imagenet_names.json --model flux-schnell --samples 5 --out runs/in-ca

Several processes: ``accelerate launch --num_processes N -m conceptattention.cli.evaluate ...`` (or
``accelerate launch --num_processes N $(which conceptattention) evaluate ...``) starts one process per GPU; each
evaluates a disjoint shard and the main process merges the results. On CPUs, add ``--multi_gpu`` (accelerate's
``--cpu`` flag starts a single process); each process then uses the CPU with a gloo process group.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from typing import Any

from ..evaluation.distributed import ProcessContext, process_context
from ..evaluation.loop import RunOptions, evaluate
from ..evaluation.methods import get_method
from ..evaluation.report import markdown_table, metrics_row
from ..evaluation.results import check_output_folder
from ..evaluation.tasks import DATASETS, build_dataset, parse_shapesworld_spec
from .common import CLIError, run_as_program
from .method_options import add_method_arguments, method_from_args, method_overrides


HELP = "evaluate a method on a zero-shot segmentation benchmark (ImageNet-Segmentation, PascalVOC, ShapesWorld)"


def add_dataset_options(parser: argparse.ArgumentParser) -> None:
    """``--dataset``, ``--data`` and the dataset settings."""
    group = parser.add_argument_group("dataset")
    group.add_argument("--dataset", required=True, choices=list(DATASETS), help="benchmark")
    group.add_argument(
        "--data",
        default=None,
        help="imagenet-seg: gtsegs_ijcv.mat; voc: the VOCdevkit folder; shapesworld: SPLIT[:N[:SEED]] "
        "(default test:200)",
    )
    group.add_argument("--class-names", default=None, help="imagenet-seg: wnid -> name table (JSON object or TSV)")
    group.add_argument(
        "--background-concepts", nargs="*", default=None, help="background words added to the class (default: paper's)"
    )
    group.add_argument("--voc-split", default="val", help="voc: id list in ImageSets/Segmentation (default val)")
    group.add_argument(
        "--label-size", type=int, default=None, help="square label side (default 224; shapesworld native; 0 = native)"
    )
    group.add_argument("--ap-scores", choices=["normalized", "raw"], default="normalized", help="AP on which maps")
    group.add_argument("--limit", type=int, default=None, help="evaluate only the first N images")
    group.add_argument(
        "--data-version",
        choices=["v1", "v2"],
        default=None,
        help="shapesworld: scene distribution (default: the one the model was trained on, from its shapesworld.json)",
    )


def add_protocol_options(parser: argparse.ArgumentParser) -> None:
    """``--protocol`` and the options of the ShapesWorld per-kind protocol."""
    group = parser.add_argument_group("ShapesWorld per-kind protocol (--protocol per-kind)")
    group.add_argument(
        "--protocol",
        choices=["standard", "per-kind"],
        default="standard",
        help="standard: the dataset's benchmark protocol; per-kind (shapesworld): object / colour / background "
        "scored separately with absent concepts in the list and 95%% bootstrap intervals, several methods at once",
    )
    group.add_argument(
        "--also",
        nargs="+",
        default=[],
        metavar="METHOD",
        help="per-kind: more methods on the same scenes, e.g. cross-attention colour-prior layout-prior all-background",
    )
    group.add_argument("--distractors", type=int, default=2, help="per-kind: absent objects / colours per scene (2)")
    group.add_argument("--bootstrap", type=int, default=1000, help="per-kind: bootstrap resamples (default 1000)")
    group.add_argument("--bootstrap-seed", type=int, default=0, help="per-kind: bootstrap seed (default 0)")


def add_run_options(parser: argparse.ArgumentParser) -> None:
    """Model, output and run options shared by ``evaluate`` and ``ablate``."""
    model = parser.add_argument_group("model")
    model.add_argument(
        "--model", default=None, help="'shapesworld' (default), an alias (flux-schnell, ...), a local folder or hub id"
    )
    model.add_argument(
        "--device", default="auto", help="auto (accelerate's device per process, else cuda if available), cpu, cuda"
    )
    model.add_argument("--dtype", default=None, help="float32, bfloat16, float16 (default: float32 on CPU, else bf16)")
    model.add_argument("--offload", choices=["none", "model", "sequential"], default="none", help="CPU offload")
    model.add_argument("--allow-pickle", action="store_true", help="allow non-safetensors weights")
    run = parser.add_argument_group("run")
    run.add_argument("--out", required=True, help="output folder")
    existing = run.add_mutually_exclusive_group()
    existing.add_argument("--resume", action="store_true", help="continue the run in --out, skipping images done")
    existing.add_argument("--overwrite", action="store_true", help="delete the results in --out first")
    run.add_argument(
        "--batch-size",
        type=int,
        default=1,
        help="images per forward for methods that batch images (daam); ConceptAttention methods run one forward "
        "per image with its noise samples batched",
    )
    run.add_argument("--no-progress", action="store_true", help="no progress bar")


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("evaluate", help=HELP, description=HELP)
    _add_arguments(parser)
    parser.set_defaults(run=run)


def _add_arguments(parser: argparse.ArgumentParser) -> None:
    add_dataset_options(parser)
    add_method_arguments(parser)
    add_protocol_options(parser)
    add_run_options(parser)


def _program_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="conceptattention evaluate", description=HELP)
    _add_arguments(parser)
    return parser


def resolve_device(requested: str, context: ProcessContext) -> str:
    """The device of this process: ``auto`` picks accelerate's (multi-process) or cuda/cpu; ``cuda`` gets an index."""
    import torch

    if requested == "auto":
        if context.device is not None:
            return context.device
        return "cuda" if torch.cuda.is_available() else "cpu"
    if requested == "cuda" and context.world_size > 1:
        return f"cuda:{int(os.environ.get('LOCAL_RANK', context.rank))}"
    return requested


def shapesworld_data_version(args: argparse.Namespace) -> str:
    """``--data-version``, else the data version recorded by the model (``shapesworld.json``), else ``"v1"``.

    Read from the model folder without loading the model: the shipped model for ``--model`` unset or
    ``shapesworld``, a local folder that has a ``shapesworld.json``; any other model gets ``"v1"``.
    """
    requested = getattr(args, "data_version", None)
    if requested:
        return requested
    from pathlib import Path

    from ..models import shipped_model_dir
    from ..shapesworld.model import SETTINGS_FILE, data_version

    model = getattr(args, "model", None)
    folder = shipped_model_dir() if model in (None, "shapesworld") else Path(os.path.expanduser(model))
    if not (folder / SETTINGS_FILE).is_file():
        return "v1"
    return data_version(folder)


def dataset_from_args(args: argparse.Namespace) -> Any:
    """The dataset named on the command line (fails before any model is loaded)."""
    label_size: int | str | None = "default" if args.label_size is None else args.label_size
    concepts = "default" if args.background_concepts is None else list(args.background_concepts)
    return build_dataset(
        args.dataset,
        args.data,
        label_size=label_size,
        concepts=concepts,
        class_names=args.class_names,
        split=args.voc_split,
        version=shapesworld_data_version(args) if args.dataset == "shapesworld" else "v1",
    )


def load_pipeline(args: argparse.Namespace, context: ProcessContext) -> tuple[Any, str]:
    """Load the model on this process's device; returns the pipeline and its description (with dtype)."""
    from ..models import load_model

    device = resolve_device(args.device, context)
    loaded = load_model(
        args.model, device=device, dtype=args.dtype, offload=args.offload, allow_pickle=args.allow_pickle
    )
    if loaded.notice and context.is_main:
        print(loaded.notice, file=sys.stderr)
    pipeline = loaded.pipeline
    pipeline.set_progress_bar_config(disable=True)
    component = getattr(pipeline, "transformer", None) or getattr(pipeline, "unet", None)
    dtype = str(getattr(component, "dtype", "")).replace("torch.", "")
    return pipeline, f"{loaded.description} [{dtype}]"


def load_run_inputs(args: argparse.Namespace) -> tuple[Any, Any, RunOptions]:
    """The dataset, the pipeline and the run options of ``evaluate`` and ``ablate`` (after their cheap checks).

    The dataset is built first, so that a missing dataset fails before the model loads.

    Returns:
        ``(dataset, pipeline, options)``; ``options`` (:class:`~conceptattention.evaluation.loop.RunOptions`) are
        shared by :func:`~conceptattention.evaluation.loop.evaluate` and
        :func:`~conceptattention.evaluation.ablate.run_sweep`.
    """
    dataset = dataset_from_args(args)
    context = process_context()
    pipeline, model_name = load_pipeline(args, context)
    same_names = {name: getattr(args, name) for name in ("limit", "batch_size", "resume", "overwrite", "ap_scores")}
    options = RunOptions(**same_names, model_name=model_name, progress=not args.no_progress, context=context)
    return dataset, pipeline, options


def per_kind_methods(args: argparse.Namespace) -> list[Any]:
    """``--method`` and ``--also`` with the command line's overrides; the model's noise levels unless given."""
    overrides = method_overrides(args)
    methods = []
    for name in [args.method, *args.also]:
        method = get_method(name, **overrides)
        if "noise_level" not in overrides and method.kind == "conceptattention":
            method = method.replace(noise_level=None)  # the model's recommended levels (explain's default)
        methods.append(method)
    return methods


def run_per_kind_protocol(args: argparse.Namespace, started: float) -> int:
    """``--protocol per-kind``: every method on the same ShapesWorld scenes, one report with intervals."""
    from ..evaluation.shapesworld_protocol import metrics_table, run_per_kind
    from ..shapesworld import ShapesWorldDataset

    if args.dataset != "shapesworld":
        raise CLIError(f"--protocol per-kind is for --dataset shapesworld, got --dataset {args.dataset}.")
    methods = per_kind_methods(args)  # unknown methods and bad overrides fail first
    if args.distractors < 0 or args.bootstrap < 1:
        raise CLIError("--distractors must be >= 0 and --bootstrap >= 1.")
    split, count, seed = parse_shapesworld_spec(args.data)
    if args.limit is not None:
        if args.limit < 1:
            raise CLIError(f"--limit must be >= 1, got {args.limit}.")
        count = min(count, args.limit)
    size = None if args.label_size in (None, 0) else args.label_size
    version = shapesworld_data_version(args)
    dataset = ShapesWorldDataset(split, seed=seed, n=count, version=version, **({"size": size} if size else {}))
    check_output_folder(args.out, resume=args.resume, overwrite=args.overwrite)
    pipeline, model_name = None, None
    if any(method.needs_model for method in methods):
        pipeline, model_name = load_pipeline(args, process_context())
    report = run_per_kind(
        pipeline,
        dataset,
        methods,
        args.out,
        num_distractors=args.distractors,
        resamples=args.bootstrap,
        bootstrap_seed=args.bootstrap_seed,
        resume=args.resume,
        overwrite=args.overwrite,
        model_name=model_name,
        progress=not args.no_progress,
    )
    print(metrics_table(report["metrics"]), end="")
    print(
        f"wrote {args.out}/report.md and report.json ({report['num_scenes']} {version} scenes, "
        f"{time.perf_counter() - started:.1f} s)"
    )
    return 0


def run(args: argparse.Namespace) -> int:
    started = time.perf_counter()
    if getattr(args, "protocol", "standard") == "per-kind":
        return run_per_kind_protocol(args, started)
    if getattr(args, "also", None):
        raise CLIError("--also compares methods in the per-kind protocol only; add --protocol per-kind.")
    method = method_from_args(args)  # unknown methods and bad overrides fail first
    check_output_folder(args.out, resume=args.resume, overwrite=args.overwrite)
    dataset, pipeline, options = load_run_inputs(args)
    report = evaluate(pipeline, dataset, method, args.out, options)
    if report is not None:
        row = {"name": method.name, **metrics_row(report["metrics"])}
        print(markdown_table([row]), end="")
        overhead = 100.0 * report["timing"]["runner_overhead_fraction"]
        print(
            f"wrote {args.out}/report.md and report.json ({report['metrics']['num_images']} images, "
            f"{time.perf_counter() - started:.1f} s, runner overhead {overhead:.1f}%)"
        )
    return 0


def main(argv: list[str] | None = None) -> int:
    """Run ``evaluate`` as a program (``python -m conceptattention.cli.evaluate``, e.g. under accelerate launch)."""
    return run_as_program(
        _program_parser, run, "interrupted; the results so far are kept, continue with --resume.", argv
    )


if __name__ == "__main__":
    sys.exit(main())
