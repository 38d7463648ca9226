"""The method options shared by ``evaluate`` and ``ablate``: ``--method`` and overrides of its settings.

The evaluation package knows no command line: these options become :func:`~conceptattention.evaluation.methods.get_method`
overrides here.
"""

from __future__ import annotations

import argparse
from typing import Any

from ..evaluation.methods import CAPTION_MODES, METHODS, PREDICTIONS, UPSAMPLINGS, Method, get_method


def add_method_arguments(parser: argparse.ArgumentParser, *, with_method: bool = True) -> None:
    """Add ``--method`` and the option overrides (all default to the method's own values).

    Args:
        parser: The (sub)parser.
        with_method: Also add ``--method`` (the ablation command sets the method itself).

    Example:
        >>> parser = argparse.ArgumentParser()
        >>> add_method_arguments(parser)
        >>> method_from_args(parser.parse_args(["--method", "value", "--samples", "3"])).num_samples
        3
    """
    group = parser.add_argument_group("method")
    if with_method:
        group.add_argument(
            "--method",
            default="conceptattention",
            help=f"evaluated method: {', '.join(METHODS)} (default: conceptattention)",
        )
    group.add_argument("--layers", type=int, nargs="+", default=None, help="joint blocks (DAAM: cross-attn layers)")
    group.add_argument("--noise-level", type=float, default=None, help="noise level in (0, 1] (default 0.5)")
    group.add_argument("--samples", type=int, default=None, help="noise samples per image (default 1)")
    group.add_argument("--seed", type=int, default=None, help="seed of the first noise sample (default 0)")
    group.add_argument("--space", choices=["output", "cross_attention", "value"], default=None)
    softmax = group.add_mutually_exclusive_group()
    softmax.add_argument("--softmax", dest="softmax", action="store_true", default=None, help="softmax over concepts")
    softmax.add_argument("--no-softmax", dest="softmax", action="store_false", help="raw scores, no softmax")
    group.add_argument("--concept-attention", choices=["both", "cross", "self", "none"], default=None)
    group.add_argument("--pooling", choices=["mean", "first", "last"], default=None, help="multi-token concepts")
    group.add_argument("--conditioning", choices=["null_pooled", "prompt"], default=None)
    group.add_argument("--caption", choices=list(CAPTION_MODES), default=None, help="dataset caption or empty")
    group.add_argument("--prediction", choices=list(PREDICTIONS), default=None, help="mean threshold or argmax")
    group.add_argument("--resolution", type=int, default=None, help="square model input side (default: model's)")
    group.add_argument("--upsample", choices=list(UPSAMPLINGS), default=None, help="maps to label resolution")
    group.add_argument("--blur", type=float, default=None, metavar="SIGMA", help="Gaussian blur sigma (0 = off)")


def method_overrides(args: argparse.Namespace) -> dict[str, Any]:
    """The overrides given on the command line (options left at ``None`` are not overrides).

    Example:
        >>> parser = argparse.ArgumentParser()
        >>> add_method_arguments(parser)
        >>> method_overrides(parser.parse_args(["--no-softmax", "--layers", "2", "3"]))
        {'layers': (2, 3), 'softmax': False}
    """
    candidates = {
        "layers": tuple(args.layers) if args.layers else None,
        "noise_level": args.noise_level,
        "num_samples": args.samples,
        "seed": args.seed,
        "space": args.space,
        "softmax": args.softmax,
        "concept_attention": args.concept_attention,
        "concept_pooling": args.pooling,
        "concept_conditioning": args.conditioning,
        "caption": args.caption,
        "prediction": args.prediction,
        "resolution": args.resolution,
        "upsample": args.upsample,
        "blur_sigma": args.blur,
    }
    return {key: value for key, value in candidates.items() if value is not None}


def method_from_args(args: argparse.Namespace) -> Method:
    """The method named by ``--method`` with the command line's overrides applied.

    Raises:
        UnknownMethodError: For an unknown method name.
        MethodError: For invalid overrides.

    Example:
        >>> parser = argparse.ArgumentParser()
        >>> add_method_arguments(parser)
        >>> method_from_args(parser.parse_args(["--method", "cross-only"])).config.concept_attention
        'cross'
    """
    return get_method(args.method, **method_overrides(args))
