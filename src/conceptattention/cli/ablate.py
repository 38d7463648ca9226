"""``conceptattention ablate``: the paper's ablation sweeps (Table 3, Table 4, Figure 7) with tables and plots.

Examples::

    conceptattention ablate --sweep table3 --dataset shapesworld --data test:200 --out runs/table3
    conceptattention ablate --sweep figure7 --dataset shapesworld --noise-levels 0.2 0.5 0.8 --out runs/figure7
    accelerate launch --num_processes 8 -m conceptattention.cli.ablate --sweep table4 --dataset imagenet-seg \\
        --data gtsegs_ijcv.mat --class-names names.json --model flux-schnell --samples 5 --out runs/table4
"""

from __future__ import annotations

import argparse
import sys
import time

from ..evaluation.ablate import DEFAULT_NOISE_LEVELS, SWEEPS, check_sweep_folder, run_sweep
from ..evaluation.methods import get_method
from ..evaluation.report import markdown_table
from .common import run_as_program
from .evaluate import add_dataset_options, add_run_options, load_run_inputs
from .method_options import add_method_arguments, method_overrides


HELP = "run an ablation sweep of the paper (table3: spaces ± softmax, table4: cross/self, figure7: layers, noise)"


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("ablate", help=HELP, description=HELP)
    _add_arguments(parser)
    parser.set_defaults(run=run)


def _add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--sweep", required=True, choices=list(SWEEPS), help="which ablation")
    parser.add_argument(
        "--sweep-layers", type=int, nargs="+", default=None, help="figure7: joint blocks to test (default: all)"
    )
    parser.add_argument(
        "--noise-levels",
        type=float,
        nargs="+",
        default=list(DEFAULT_NOISE_LEVELS),
        help=f"figure7: noise levels to test (default {' '.join(map(str, DEFAULT_NOISE_LEVELS))})",
    )
    add_dataset_options(parser)
    add_method_arguments(parser, with_method=False)
    add_run_options(parser)


def _program_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="conceptattention ablate", description=HELP)
    _add_arguments(parser)
    return parser


def run(args: argparse.Namespace) -> int:
    started = time.perf_counter()
    base = get_method("conceptattention", **method_overrides(args))
    check_sweep_folder(args.out, args.sweep, resume=args.resume, overwrite=args.overwrite)
    dataset, pipeline, options = load_run_inputs(args)
    summary = run_sweep(
        pipeline,
        dataset,
        args.sweep,
        base,
        args.out,
        options,
        layers=args.sweep_layers,
        noise_levels=args.noise_levels,
    )
    if summary is not None:
        for rows in summary["series"].values():
            print(markdown_table(rows, first_column=("name", "configuration")))
        print(f"wrote {args.out}/summary.json, {args.sweep}*.md and plots ({time.perf_counter() - started:.1f} s)")
    return 0


def main(argv: list[str] | None = None) -> int:
    """Run ``ablate`` as a program (``python -m conceptattention.cli.ablate``, e.g. under accelerate launch)."""
    return run_as_program(
        _program_parser, run, "interrupted; finished configurations are kept, continue with --resume.", argv
    )


if __name__ == "__main__":
    sys.exit(main())
