"""``conceptattention train-toy``: train the ShapesWorld toy model (forwards to ``conceptattention.shapesworld.train``)."""

from __future__ import annotations

import argparse


HELP = "train the ShapesWorld toy model (time-budgeted, resumable); see 'train-toy --help'"


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("train-toy", help=HELP, description=HELP, add_help=False)
    parser.add_argument("arguments", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)
    parser.set_defaults(run=run)


def forward(arguments: list[str]) -> int:
    """Run the trainer with its own command-line options."""
    from ..shapesworld.train import main as train_main

    return int(train_main(arguments) or 0)


def run(args: argparse.Namespace) -> int:
    return forward(list(args.arguments))
