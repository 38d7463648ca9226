"""``conceptattention train-toy``: train the ShapesWorld toy model (forwards to ``conceptattention.shapesworld.train``)."""

from __future__ import annotations

import argparse
import os

from ..outputs import OutputPathError, check_writable_location


HELP = "train the ShapesWorld toy model (time-budgeted, resumable); see 'train-toy --help'"


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("train-toy", help=HELP, description=HELP, add_help=False)
    parser.add_argument("arguments", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)
    parser.set_defaults(run=run)


def _out_argument(arguments: list[str]) -> str | None:
    """The value of ``--out`` among the trainer's arguments (``--out DIR`` or ``--out=DIR``), if any."""
    for index, argument in enumerate(arguments):
        if argument == "--out" and index + 1 < len(arguments):
            return arguments[index + 1]
        if argument.startswith("--out="):
            return argument.split("=", 1)[1]
    return None


def forward(arguments: list[str]) -> int:
    """Run the trainer with its own command-line options; errors become one line (status 2), Ctrl+C status 130.

    The trainer never deletes anything: it refuses a non-empty ``--out`` unless ``--resume`` continues the run there.
    """
    from .common import RUN_ERRORS, fail, interrupted

    try:
        out = _out_argument(arguments)
        if out is not None:
            check_writable_location(out)
            if os.path.lexists(out) and not os.path.isdir(out):
                raise OutputPathError(f"--out {out!r} is a file, not a folder; choose a folder for the run.")
        from ..shapesworld.train import main as train_main

        return int(train_main(arguments) or 0)
    except KeyboardInterrupt:
        return interrupted("interrupted; checkpoints already written are kept, continue with --resume.")
    except RUN_ERRORS as error:
        return fail(str(error))


def run(args: argparse.Namespace) -> int:
    return forward(list(args.arguments))
