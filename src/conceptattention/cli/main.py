"""Entry point of the ``conceptattention`` command.

Only the chosen subcommand's module is imported (``conceptattention --help`` imports none, and no module imports
torch or diffusers before its command runs), so the help is quick; a subcommand that needs an optional extra
(``evaluate``/``ablate``: eval, ``app``: app) says which one to install when it is missing.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys


#: The subcommands, in the order --help lists them, with their one-line help (each module's ``HELP``).
SUBCOMMANDS: dict[str, str] = {
    "generate": "generate an image from a prompt and write concept maps for it",
    "explain": "write concept maps for an existing image (VAE-encode, add noise, one early-exit forward pass)",
    "evaluate": "evaluate a method on a zero-shot segmentation benchmark (ImageNet-Segmentation, PascalVOC, ShapesWorld)",
    "ablate": "run an ablation sweep of the paper (table3: spaces ± softmax, table4: cross/self, figure7: layers, noise)",
    "dataset": "generate a labelled dataset: images + concept maps + masks + COCO annotations + a JSONL manifest",
    "app": "serve the web app: prompt or image + concepts -> maps in the browser (needs the 'app' extra)",
    "train-toy": "train the ShapesWorld toy model (time-budgeted, resumable); see 'train-toy --help'",
    "env": "print versions, devices and supported models (paste it into bug reports)",
}

#: The optional extra each subcommand needs (checked before it runs; its --help works without).
REQUIRED_EXTRAS: dict[str, str] = {"evaluate": "eval", "ablate": "eval", "dataset": "dataset", "app": "app"}

INTERRUPTED = (
    "interrupted. generate/explain wrote nothing; evaluate/ablate keep the results scored so far (continue with --resume);"
    " dataset keeps the finished items (rerun the same command to resume)."
)


def subcommand_module(name: str) -> str:
    """The module of a subcommand (``"train-toy"`` → ``"conceptattention.cli.train_toy"``)."""
    return f"{__package__}.{name.replace('-', '_')}"


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The ``conceptattention`` parser.

    Args:
        command: The subcommand to register fully (importing its module); the others are listed with their help
            only. ``None`` registers every subcommand (imports them all, and so torch).

    Returns:
        The parser.
    """
    from .. import __version__

    parser = argparse.ArgumentParser(
        prog="conceptattention",
        description="Concept saliency maps from multi-modal diffusion transformers (ConceptAttention, ICML 2025).",
        epilog="Run 'conceptattention <command> --help' for the options of each command.",
    )
    parser.add_argument("--version", action="version", version=f"conceptattention {__version__}")
    subparsers = parser.add_subparsers(title="commands", dest="command", metavar="<command>")
    for name, help_text in SUBCOMMANDS.items():
        if command is None or name == command:
            importlib.import_module(subcommand_module(name)).register(subparsers)
        else:
            subparsers.add_parser(name, help=help_text, add_help=False)
    return parser


def _chosen_command(argv: list[str]) -> str:
    """The subcommand named on the command line ('' if none; the top-level options take no values)."""
    name = next((argument for argument in argv if not argument.startswith("-")), "")
    return name if name in SUBCOMMANDS else ""


def _run_command(args: argparse.Namespace) -> int | None:
    from ..extras import require_extra
    from .console import quiet_console

    extra = REQUIRED_EXTRAS.get(args.command)
    if extra is not None:
        require_extra(extra, f"conceptattention {args.command}")  # MissingExtraError: one error line, exit 2
    with quiet_console():
        return args.run(args)


def main(argv: list[str] | None = None) -> int:
    """Run the command line; returns the exit status (0 ok, 2 usage or input error, 130 after Ctrl+C)."""
    try:
        return _main(argv)
    except KeyboardInterrupt:  # while starting up (imports, parsing, loading): one line, the shell's status
        print("conceptattention: interrupted.", file=sys.stderr)
        return 130


def _main(argv: list[str] | None) -> int:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv and argv[0] == "train-toy":  # the trainer parses its own options (argparse cannot forward "--x" args)
        from .train_toy import forward

        return forward(argv[1:])
    parser = build_parser(_chosen_command(argv))
    args = parser.parse_args(argv)
    if getattr(args, "run", None) is None:
        parser.print_help()
        return 2
    from .common import run_reporting_errors

    return run_reporting_errors(_run_command, args, INTERRUPTED)


if __name__ == "__main__":
    sys.exit(main())
