"""Options of a ShapesWorld training run: :class:`TrainConfig` (stored in ``train_log.json`` and the checkpoint),
the command line of ``python -m conceptattention.shapesworld.train`` and its validation (nothing is written when
:class:`TrainingError` is raised). The loop itself is in :mod:`conceptattention.shapesworld.train`.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from conceptattention.errors import ConceptAttentionError
from conceptattention.shapesworld.model import SETTINGS_FILE


__all__ = ["CHECKPOINT_NAME", "PIPELINE_DIR", "TrainConfig", "TrainingError", "parse_arguments", "validate_arguments"]


CHECKPOINT_NAME = "checkpoint.pt"
PIPELINE_DIR = "pipeline"


class TrainingError(ConceptAttentionError, ValueError):
    """Invalid training arguments (nothing is written when this is raised)."""


@dataclass
class TrainConfig:
    """Training hyper-parameters (all stored in ``train_log.json``).

    Example:
        >>> TrainConfig.for_device("cpu").batch_size
        32
    """

    preset: str = "default"
    seed: int = 0
    batch_size: int = 256
    lr: float = 5e-4
    weight_decay: float = 0.01
    warmup_steps: int = 200
    decay_fraction: float = 0.2
    grad_clip: float = 1.0
    ema_decay: float = 0.999
    pooled_drop: float = 0.25
    long_pad_fraction: float = 0.2
    long_pad_max: int = 512
    bank_size: int = 100_000
    checkpoint_minutes: float = 1.0
    log_every: int = 25
    eval_captions: int = 200
    sample_steps: int = 20
    position_lever: bool = True
    model_overrides: dict[str, Any] = field(default_factory=dict)
    data_version: str = "v1"
    precision: str = "fp32"
    compile: bool = False
    compile_backend: str = "inductor"
    lr_scaling: str = "none"
    base_batch_size: int = 256
    checkpoint_eval_scenes: int = 0
    init_from: str | None = None

    @property
    def effective_lr(self) -> float:
        """``lr`` scaled by the batch-size rule: ``lr * (batch_size / base_batch_size) ** k`` with k = 0 (``none``),
        1/2 (``sqrt``, the usual rule for Adam) or 1 (``linear``).

        Example:
            >>> TrainConfig(lr=1e-3, batch_size=1024, base_batch_size=256, lr_scaling="sqrt").effective_lr
            0.002
        """
        exponent = {"none": 0.0, "sqrt": 0.5, "linear": 1.0}[self.lr_scaling]
        return self.lr * (self.batch_size / self.base_batch_size) ** exponent

    @classmethod
    def for_device(cls, device: str, **overrides: Any) -> TrainConfig:
        """Defaults for a device: large batches and bank on CUDA, small ones on CPU."""
        if device == "cpu":
            base = {"batch_size": 32, "bank_size": 2000, "eval_captions": 0, "warmup_steps": 50, "log_every": 5}
        else:
            base = {"log_every": 50}
        return cls(**{**base, **{key: value for key, value in overrides.items() if value is not None}})


def parse_arguments(argv: Sequence[str] | None) -> argparse.Namespace:
    """The parsed command line (see the module docstring of :mod:`conceptattention.shapesworld.train`)."""
    parser = argparse.ArgumentParser(
        prog="python -m conceptattention.shapesworld.train",
        description="Train the ShapesWorld FLUX-architecture model within a wall-time budget.",
    )
    parser.add_argument("--device", choices=("cuda", "cpu"), required=True, help="Where to train.")
    parser.add_argument("--minutes", type=float, required=True, help="Wall-time budget of this invocation.")
    parser.add_argument("--out", type=Path, required=True, help="Run folder (checkpoint, pipeline/).")
    parser.add_argument("--resume", action="store_true", help="Continue from OUT/checkpoint.pt.")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--batch-size", type=int, default=None)
    parser.add_argument("--lr", type=float, default=None)
    parser.add_argument("--preset", choices=("default", "small", "tiny"), default="default", help="Model size.")
    parser.add_argument("--bank-size", type=int, default=None, help="Training scenes rendered per invocation.")
    parser.add_argument("--eval-captions", type=int, default=None, help="Fidelity check at the end (0 = skip).")
    parser.add_argument("--no-position-lever", action="store_true", help="Keep diffusers' RoPE (theta 10000, ids x1).")
    parser.add_argument("--long-pad-fraction", type=float, default=None)
    parser.add_argument("--threads", type=int, default=None, help="CPU threads for torch (default: torch's choice).")
    parser.add_argument("--checkpoint-minutes", type=float, default=None)
    parser.add_argument("--max-steps", type=int, default=None, help="Also stop after this many steps (smoke tests).")
    parser.add_argument("--sample-steps", type=int, default=None, help="Euler steps for samples.png and fidelity.")
    fast = parser.add_argument_group("fast path and data (see the module docstring)")
    fast.add_argument("--data-version", choices=("v1", "v2"), default=None, help="ShapesWorld scene distribution.")
    fast.add_argument("--precision", choices=("fp32", "bf16"), default=None, help="bf16: autocast, fp32 norms/loss.")
    fast.add_argument("--compile", action="store_true", default=None, help="torch.compile the transformer.")
    fast.add_argument("--compile-backend", default=None, help="torch.compile backend (default inductor).")
    fast.add_argument("--lr-scaling", choices=("none", "sqrt", "linear"), default=None, help="LR vs batch-size rule.")
    fast.add_argument("--base-batch-size", type=int, default=None, help="Batch size at which --lr applies (256).")
    fast.add_argument("--checkpoint-eval-scenes", type=int, default=None, help="AUROC on N test scenes per checkpoint.")
    fast.add_argument("--init-from", type=Path, default=None, help="Start from a saved model folder (fp16 EMA).")
    return parser.parse_args(argv)


def validate_arguments(args: argparse.Namespace) -> None:
    """Refuse unusable arguments with :class:`TrainingError` before anything is written."""
    if args.minutes <= 0:
        raise TrainingError(f"--minutes must be positive, got {args.minutes}.")
    if args.max_steps is not None and args.max_steps < 1:
        raise TrainingError(f"--max-steps must be >= 1, got {args.max_steps}.")
    if args.batch_size is not None and args.batch_size < 1:
        raise TrainingError(f"--batch-size must be >= 1, got {args.batch_size}.")
    checkpoint = args.out / CHECKPOINT_NAME
    if args.resume and not checkpoint.is_file():
        raise TrainingError(f"--resume given but {checkpoint} does not exist; drop --resume to start a new run.")
    if not args.resume and args.out.exists() and any(args.out.iterdir()):
        raise TrainingError(
            f"{args.out} is not empty; pass --resume to continue that run or choose a new --out folder."
        )
    if args.init_from is not None:
        if args.resume:
            raise TrainingError("--init-from starts a new run from a model folder; it cannot be combined with --resume.")
        if not (args.init_from / SETTINGS_FILE).is_file():
            raise TrainingError(f"--init-from {args.init_from} is not a ShapesWorld model folder (no {SETTINGS_FILE}).")
    if args.checkpoint_eval_scenes is not None and args.checkpoint_eval_scenes < 0:
        raise TrainingError(f"--checkpoint-eval-scenes must be >= 0, got {args.checkpoint_eval_scenes}.")
    if args.base_batch_size is not None and args.base_batch_size < 1:
        raise TrainingError(f"--base-batch-size must be >= 1, got {args.base_batch_size}.")
    if args.device == "cuda" and not torch.cuda.is_available():
        raise TrainingError("--device cuda requested but torch sees no CUDA device; use --device cpu.")
