"""Entry point of the ``conceptattention`` command."""

from __future__ import annotations

import argparse
import importlib
import os
import sys

from .common import run_reporting_errors


# subcommand modules, in the order --help lists them
SUBCOMMANDS = ("generate", "explain", "evaluate", "ablate", "dataset", "app", "train-toy", "env")


def build_parser() -> argparse.ArgumentParser:
    from .. import __version__

    parser = argparse.ArgumentParser(
        prog="conceptattention",
        description="Concept saliency maps from multi-modal diffusion transformers (ConceptAttention, ICML 2025).",
        epilog="Run 'conceptattention <command> --help' for the options of each command.",
    )
    parser.add_argument("--version", action="version", version=f"conceptattention {__version__}")
    subparsers = parser.add_subparsers(title="commands", dest="command", metavar="<command>")
    for name in SUBCOMMANDS:
        importlib.import_module(f"{__package__}.{name.replace('-', '_')}").register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the command line; returns the exit status (0 ok, 2 usage or input error)."""
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv and argv[0] == "train-toy":  # the trainer parses its own options (argparse cannot forward "--x" args)
        from .train_toy import forward

        return forward(argv[1:])
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "run", None) is None:
        parser.print_help()
        return 2
    return run_reporting_errors(
        args.run,
        args,
        "interrupted. generate/explain wrote nothing; evaluate/ablate keep the results scored so far "
        "(continue with --resume).",
    )


if __name__ == "__main__":
    sys.exit(main())
