"""``python -m conceptattention.cli.measure_shapesworld``: the ShapesWorld research measurements of ``docs/results.md``.

Subcommands (functions of :mod:`conceptattention.evaluation.shapesworld_measure` and
:mod:`conceptattention.evaluation.shapesworld_figures`): ``segment`` (per-kind segmentation of call variants,
resumable), ``grid`` (per-kind AUROC of block ranges x noise-level ranges: the model's recommended settings),
``plot`` (per-layer / per-noise plot of a ``segment`` run) and ``unprompted`` (maps of concepts not in the prompt).
``scripts/measure_shapesworld.py`` is a thin wrapper of :func:`main`.

Examples::

    python -m conceptattention.cli.measure_shapesworld segment --data heldout:500 --variants ca cross-attention --out runs/seg
    python -m conceptattention.cli.measure_shapesworld grid --data test:100 --caption-length 512 --out runs/grid
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from .common import run_as_program


HELP = "measure ConceptAttention on the shipped ShapesWorld model: per-kind segmentation, probes, unprompted concepts"


def build_parser() -> argparse.ArgumentParser:
    """The program's parser, with the ``segment``, ``grid``, ``plot`` and ``unprompted`` subcommands.

    Example:
        >>> build_parser().parse_args(["grid", "--out", "runs/grid"]).data
        'test:100'
    """
    from ..evaluation.shapesworld_measure import VARIANTS

    parser = argparse.ArgumentParser(prog="measure_shapesworld", description=HELP)
    commands = parser.add_subparsers(dest="command", required=True)
    segment = commands.add_parser("segment", help="per-kind zero-shot segmentation of one or more variants")
    segment.add_argument("--data", default="heldout:500", help="SPLIT[:N[:SEED]] (default heldout:500)")
    segment.add_argument("--variants", nargs="+", default=["ca", "cross-attention"], help=", ".join(VARIANTS))
    segment.add_argument("--distractors", type=int, default=2, help="absent concepts per kind (default 2)")
    segment.add_argument("--threads", type=int, default=1)
    segment.add_argument("--out", required=True)
    grid = commands.add_parser("grid", help="per-kind AUROC of block ranges x noise-level ranges (model defaults)")
    grid.add_argument("--data", default="test:100", help="SPLIT[:N[:SEED]] (default test:100)")
    grid.add_argument("--distractors", type=int, default=2, help="absent concepts per kind (default 2)")
    grid.add_argument("--threads", type=int, default=1)
    grid.add_argument("--top", type=int, default=15, help="rows of the printed table")
    grid.add_argument(
        "--caption-length", type=int, default=None, help="T5 length of the caption (default: the model's, 32)"
    )
    grid.add_argument("--out", required=True)
    plot = commands.add_parser("plot", help="per-layer / per-noise plot of a segment run")
    plot.add_argument("--run", required=True)
    plot.add_argument("--prefix", default="ca")
    plot.add_argument("--prefix-b", default="ca-indist")
    plot.add_argument("--metric", default="auroc", choices=["auroc", "miou", "map"])
    plot.add_argument("--title", default="ShapesWorld: ConceptAttention per layer and noise level")
    plot.add_argument("--out", required=True)
    unprompted = commands.add_parser("unprompted", help="figure: maps of concepts that are not in the prompt")
    unprompted.add_argument("--seed", type=int, default=0)
    unprompted.add_argument("--threads", type=int, default=1)
    unprompted.add_argument("--out", required=True)
    return parser


def run(args: argparse.Namespace) -> int:
    """Run the parsed subcommand."""
    from ..evaluation.shapesworld_figures import plot_segment_run, plot_unprompted
    from ..evaluation.shapesworld_measure import measure_grid, measure_segment

    if args.command == "segment":
        measure_segment(args.data, args.variants, args.out, distractors=args.distractors, threads=args.threads)
    elif args.command == "grid":
        measure_grid(
            args.data,
            args.out,
            distractors=args.distractors,
            threads=args.threads,
            top=args.top,
            caption_length=args.caption_length,
        )
    elif args.command == "plot":
        plot_segment_run(
            args.run, args.out, prefix=args.prefix, prefix_b=args.prefix_b, metric=args.metric, title=args.title
        )
    else:
        plot_unprompted(args.out, seed=args.seed, threads=args.threads)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Run the measurements as a program; returns the exit status (2 after an input error)."""
    return run_as_program(build_parser, run, "interrupted; segment runs continue with the same command.", argv)


if __name__ == "__main__":
    sys.exit(main())
