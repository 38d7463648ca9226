"""Pieces shared by the CLI subcommands: number parsing, model, method and memory options, validation, and error
reporting (the run folder is written by :mod:`conceptattention.cli.run_folder`)."""

from __future__ import annotations

import argparse
import inspect
import math
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import ConceptAttentionError
from ..memory import (
    DEFAULT_MAX_MEMORY_GB,
    ModelDims,
    check_run_memory,
    default_memory_limit_gb,
    estimate_run_memory,
    model_dims,
)


if TYPE_CHECKING:  # torch and diffusers: imported by the commands that load a model, not by --help
    from ..maps import ConceptMaps
    from ..models import LoadedModel


MAX_CONCEPT_CHARS = 200
"""Longest concept the command line accepts, in characters (a concept is a word or a short phrase)."""

MAX_SEED = 2**63 - 1
"""Largest ``--seed`` (seeds are 64-bit; explain adds the sample index)."""

INTERRUPTED_STATUS = 130
"""Exit status after Ctrl+C (128 + SIGINT), the shell convention."""


class CLIError(ConceptAttentionError, ValueError):
    """A usage error reported as one line, without a traceback."""


RUN_ERRORS: tuple[type[Exception], ...] = (ConceptAttentionError, OSError, NotImplementedError)
"""Errors of a subcommand reported as one ``conceptattention: error: ...`` line (exit status 2), without a traceback.

:class:`~conceptattention.errors.ConceptAttentionError` is every error the package raises about the user's input or
setup; ``OSError`` covers missing files (``FileNotFoundError``), existing outputs (``FileExistsError``), permissions
and a full disk; ``NotImplementedError`` a model without an explain path. Anything else (a ``ValueError`` from torch,
say) is a bug and keeps its traceback."""


def finite_float(text: str) -> float:
    """Argparse type: a finite number (``nan`` and ``inf`` are refused).

    Example:
        >>> finite_float("3.5")
        3.5
    """
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"{text!r} is not a finite number")
    return value


def positive_float(text: str) -> float:
    """Argparse type: a finite number above zero."""
    value = finite_float(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be above 0, got {text!r}")
    return value


def _whole_number(text: str) -> int:
    """``text`` as an int, or argparse's error naming it (the parse of the bounded integer types below)."""
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None


def positive_int(text: str) -> int:
    """Argparse type: a whole number of at least 1 (``0`` and ``-5`` are refused, not replaced by a default).

    Example:
        >>> positive_int("32")
        32
    """
    value = _whole_number(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {text!r}")
    return value


def nonnegative_int(text: str) -> int:
    """Argparse type: a whole number of at least 0."""
    value = _whole_number(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, got {text!r}")
    return value


def seed_int(text: str) -> int:
    """Argparse type: a seed from 0 to :data:`MAX_SEED`.

    Example:
        >>> seed_int("42")
        42
    """
    value = nonnegative_int(text)
    if value > MAX_SEED:
        raise argparse.ArgumentTypeError(f"must be at most 2**63 - 1 = {MAX_SEED}, got {text!r}")
    return value


def check_parsed_numbers(args: argparse.Namespace) -> None:
    """Refuse non-finite float options and out-of-range seeds of any subcommand (also options other modules add).

    Raises:
        CLIError: naming the option.
    """
    for name, value in vars(args).items():
        values = value if isinstance(value, list | tuple) else [value]
        option = "--" + name.replace("_", "-")
        for item in values:
            if isinstance(item, float) and not math.isfinite(item):
                raise CLIError(f"{option} must be a finite number, got {item}.")
            if name == "seed" and isinstance(item, int) and not 0 <= item <= MAX_SEED:
                raise CLIError(f"--seed must be from 0 to 2**63 - 1, got {item}.")


def check_concept_list(concepts: Sequence[str]) -> tuple[str, ...]:
    """The library's concept checks (empty, duplicates up to case and spaces) plus a length limit.

    Raises:
        ValueError: With the offending concept named.
    """
    from ..encoding import validate_concepts  # torch: imported by the commands, not by --help

    cleaned = validate_concepts(concepts)
    for concept in cleaned:
        if len(concept) > MAX_CONCEPT_CHARS:
            raise CLIError(
                f"The concept {concept[:30]!r}... is {len(concept)} characters long; use at most {MAX_CONCEPT_CHARS} "
                "(a word or a short phrase such as 'red car')."
            )
    return cleaned


def check_model_concepts(loaded: LoadedModel, concepts: Sequence[str]) -> None:
    """Refuse concepts with words the model does not know, when it declares a vocabulary (the toy model)."""
    from ..models import check_vocabulary

    check_vocabulary(concepts, loaded.vocabulary)


def add_memory_option(parser: argparse.ArgumentParser) -> None:
    """``--max-memory-gb``: refuse runs whose estimated memory is above it (see :mod:`conceptattention.memory`)."""
    parser.add_argument(
        "--max-memory-gb",
        type=positive_float,
        default=None,
        help="refuse runs estimated to need more memory than this, in GB, before they start "
        f"(default: {DEFAULT_MAX_MEMORY_GB:g} on the CPU, the GPU's memory with --device cuda)",
    )


def memory_limit_gb(args: argparse.Namespace) -> float:
    """``--max-memory-gb``, else the default for ``--device``."""
    return args.max_memory_gb if args.max_memory_gb is not None else default_memory_limit_gb(args.device)


def check_memory_before_loading(
    args: argparse.Namespace, height: int | None, width: int | None, *, frames: int = 1, batch: int = 1
) -> None:
    """The size check that needs no model: image tensors and token count with the smallest widths of any model."""
    if height is None or width is None or height < 1 or width < 1:
        return  # no size to check yet (bad sizes are refused with the model's size multiple)
    dims = ModelDims(element_bytes=2)  # a lower bound for every supported model
    concepts = len(getattr(args, "concepts", None) or [])
    estimate = estimate_run_memory(height=height, width=width, frames=frames, batch=batch, concepts=concepts, dims=dims)
    check_run_memory(estimate, memory_limit_gb(args))


def check_memory_for_model(
    args: argparse.Namespace,
    pipeline: Any,
    *,
    height: int,
    width: int,
    frames: int = 1,
    batch: int = 1,
    concepts: int = 1,
    text_tokens: int | None = None,
) -> None:
    """The size check with the loaded model's widths (see :func:`conceptattention.memory.estimate_run_memory`)."""
    dims = model_dims(pipeline, text_tokens=text_tokens)
    estimate = estimate_run_memory(height=height, width=width, frames=frames, batch=batch, concepts=concepts, dims=dims)
    check_run_memory(estimate, memory_limit_gb(args))


def add_model_options(parser: argparse.ArgumentParser) -> None:
    """``--model``, ``--device``, ``--dtype``, ``--offload``, ``--allow-pickle``."""
    group = parser.add_argument_group("model")
    group.add_argument(
        "--model",
        default=None,
        help="'shapesworld' (default: the shipped toy model), an alias (flux-schnell, flux-dev, ...), a local "
        "diffusers folder (works offline) or a hub id",
    )
    group.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, mps (default: cpu)")
    group.add_argument("--dtype", default=None, help="float32, bfloat16, float16 (default: float32 on CPU, else bf16)")
    group.add_argument(
        "--offload",
        choices=["none", "model", "sequential"],
        default="none",
        help="CPU offload through diffusers: 'model' (enable_model_cpu_offload) or 'sequential' (lowest memory)",
    )
    group.add_argument(
        "--allow-pickle", action="store_true", help="allow non-safetensors weights (pickle can execute code)"
    )


def add_method_options(parser: argparse.ArgumentParser) -> None:
    """Options of :class:`~conceptattention.ConceptAttentionConfig`."""
    group = parser.add_argument_group("method")
    group.add_argument(
        "--layers", type=nonnegative_int, nargs="+", default=None, help="joint block indices (default: last 4)"
    )
    group.add_argument("--space", choices=["output", "cross_attention", "value"], default="output")
    group.add_argument("--no-softmax", action="store_true", help="average raw scores instead of softmax over concepts")
    group.add_argument(
        "--concept-attention", choices=["both", "cross", "self", "none"], default="both", help="concept attention mask"
    )
    group.add_argument("--pooling", choices=["mean", "first", "last"], default="mean", help="multi-token concepts")
    group.add_argument("--conditioning", choices=["null_pooled", "prompt"], default="null_pooled")
    group.add_argument(
        "--heads",
        type=nonnegative_int,
        nargs="+",
        default=None,
        help="attention heads whose scores make the maps, same heads in every block (default: all)",
    )
    group.add_argument(
        "--keep-heads",
        action="store_true",
        help="also keep each head's maps (in maps.safetensors, heatmaps under heads/); memory: "
        "(layers + 2) x concepts x heads x image tokens x 4 bytes",
    )


def add_prompt_words_option(parser: argparse.ArgumentParser) -> None:
    """``--prompt-words``: one map per word of the prompt (``generate``) or caption (``explain``)."""
    parser.add_argument(
        "--prompt-words",
        action="store_true",
        help="also map every word of the prompt from its own text tokens (FLUX.1; --concepts then optional)",
    )


def load_model_from_args(args: argparse.Namespace) -> LoadedModel:
    """Load the model of ``--model``, ``--device``, ``--dtype``, ``--offload`` and print its notice, if any."""
    from ..models import load_model

    loaded = load_model(
        args.model, device=args.device, dtype=args.dtype, offload=args.offload, allow_pickle=args.allow_pickle
    )
    if loaded.notice:
        print(loaded.notice)
    return loaded


def check_sizes(args: argparse.Namespace, pipeline: Any) -> None:
    """Check ``--height`` and ``--width`` against the size multiple of the pipeline's adapter."""
    from ..adapters import get_adapter

    multiple = get_adapter(pipeline).size_multiple(pipeline)
    check_size("height", args.height, multiple)
    check_size("width", args.width, multiple)


def method_options(args: argparse.Namespace) -> dict[str, Any]:
    return {
        "layers": tuple(args.layers) if args.layers else None,
        "space": args.space,
        "softmax": not args.no_softmax,
        "concept_attention": args.concept_attention,
        "concept_pooling": args.pooling,
        "concept_conditioning": args.conditioning,
        "heads": tuple(args.heads) if getattr(args, "heads", None) else None,
        "keep_heads": bool(getattr(args, "keep_heads", False)),
    }


def add_output_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", type=Path, required=True, help="output folder (must not exist, unless --overwrite)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing output folder")
    parser.add_argument("--cmap", default="plasma", help="matplotlib colour map of heatmaps (default: plasma)")


def add_map_command_options(parser: argparse.ArgumentParser, run: Callable[[argparse.Namespace], int]) -> None:
    """The model, method and output options of ``generate`` and ``explain``, and their ``run``."""
    add_model_options(parser)
    add_method_options(parser)
    add_output_options(parser)
    add_memory_option(parser)
    parser.set_defaults(run=run)


def map_command_settings(args: argparse.Namespace, loaded: LoadedModel, maps: ConceptMaps) -> dict[str, Any]:
    """The device, dtype, offload, method and notice entries of a ``generate`` / ``explain`` settings.json."""
    return {
        "device": args.device,
        "dtype": str(loaded.pipeline.transformer.dtype).replace("torch.", ""),
        "offload": args.offload,
        "method": maps.settings,
        "notice": loaded.notice,
    }


def check_size(name: str, value: int | None, multiple: int) -> None:
    if value is None:
        return
    if value <= 0 or value % multiple:
        raise CLIError(f"--{name} must be a positive multiple of {multiple} for this model, got {value}.")


def call_kwargs(pipeline: Any, candidates: dict[str, Any]) -> dict[str, Any]:
    """The subset of ``candidates`` that the pipeline's ``__call__`` accepts (None values dropped)."""
    parameters = inspect.signature(pipeline.__call__).parameters
    return {key: value for key, value in candidates.items() if value is not None and key in parameters}


def fail(message: str) -> int:
    print(f"conceptattention: error: {message}", file=sys.stderr)
    return 2


def interrupted(message: str = "interrupted.") -> int:
    """Report Ctrl+C in one line; returns :data:`INTERRUPTED_STATUS` (130)."""
    print(f"conceptattention: {message}", file=sys.stderr)
    return INTERRUPTED_STATUS


def run_reporting_errors(
    run: Callable[[argparse.Namespace], int | None], args: argparse.Namespace, interrupted_message: str
) -> int:
    """Run a subcommand; :data:`RUN_ERRORS` become one error line and exit status 2, Ctrl+C one line and 130.

    Running out of memory (``MemoryError``, torch's ``OutOfMemoryError``) is one line too; any other exception
    propagates with its traceback (it is a bug, not a user error).

    Non-finite float options and out-of-range seeds are refused first (:func:`check_parsed_numbers`).

    Args:
        run: The subcommand's ``run(args)``; ``None`` counts as success.
        args: Its parsed options.
        interrupted_message: What to print on Ctrl+C (what was kept, how to continue).

    Returns:
        The exit status: ``run``'s, else 2 after an error, 130 after Ctrl+C.
    """
    try:
        check_parsed_numbers(args)
        return int(run(args) or 0)
    except KeyboardInterrupt:
        return interrupted(interrupted_message)
    except RUN_ERRORS as error:
        return fail(str(error) or type(error).__name__)
    except (MemoryError, RuntimeError) as error:
        if not isinstance(error, MemoryError) and type(error).__name__ != "OutOfMemoryError":  # torch's, on a GPU
            raise  # a bug: its traceback is what a bug report needs
        return fail(
            "out of memory. Use a smaller size, fewer frames, samples or concepts, or a lower --max-memory-gb so "
            "that such runs are refused before they start."
        )


def run_as_program(
    build_parser: Callable[[], argparse.ArgumentParser],
    run: Callable[[argparse.Namespace], int | None],
    interrupted_message: str,
    argv: Sequence[str] | None = None,
) -> int:
    """Run one subcommand as a program of its own (``python -m conceptattention.cli.evaluate``, accelerate launch).

    Args:
        build_parser: Makes the program's argument parser.
        run: The subcommand's ``run(args)``.
        interrupted_message: What to print on Ctrl+C.
        argv: Command-line arguments (default: ``sys.argv[1:]``).

    Returns:
        The exit status (0 ok, 2 usage or input error, 130 after Ctrl+C).
    """
    try:
        args = build_parser().parse_args(argv)
    except KeyboardInterrupt:
        return interrupted()
    return run_reporting_errors(run, args, interrupted_message)
