"""Where this process stands in an evaluation run: one process, or one of several under ``accelerate launch``.

Several processes (``accelerate launch --num_processes N -m conceptattention.cli.evaluate ...``; on CPUs add
``--multi_gpu``, since accelerate's ``--cpu`` starts one process) share the images of a run: see
:mod:`conceptattention.evaluation.loop`. accelerate (the ``eval`` extra) is imported only when several processes
were launched.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field

import torch


__all__ = ["ProcessContext", "process_context"]


def _no_barrier() -> None:
    return None


@dataclass
class ProcessContext:
    """Where this process stands in a (possibly) multi-process run.

    Attributes:
        rank: Index of this process (0 = main).
        world_size: Number of processes.
        device: The device this process should use (``None``: the caller decides).
        barrier: Blocks until every process reached it.

    Example:
        >>> ProcessContext().is_main
        True
    """

    rank: int = 0
    world_size: int = 1
    device: str | None = None
    barrier: Callable[[], None] = field(default=_no_barrier, repr=False)

    @property
    def is_main(self) -> bool:
        """Whether this is the main process (it prepares the folder and writes the report)."""
        return self.rank == 0


def process_context() -> ProcessContext:
    """The context of this process: from accelerate when launched with several processes, else a single process.

    ``accelerate launch`` (and ``torchrun``) set ``WORLD_SIZE``; only then is :class:`accelerate.PartialState`
    created (it initialises the process group and picks this process's device; CPU processes when
    ``ACCELERATE_USE_CPU`` is set, as by ``accelerate launch --cpu``, or when no GPU is available).

    Raises:
        MissingExtraError: Several processes were launched but accelerate (the eval extra) is not installed.

    Example:
        >>> process_context().world_size  # a plain Python process
        1
    """
    world_size = int(os.environ.get("WORLD_SIZE", "1") or 1)
    if world_size <= 1:
        return ProcessContext()
    from conceptattention.extras import require  # accelerate: the eval extra (MissingExtraError names it)

    PartialState = require("accelerate", "eval", purpose="A run launched as several processes").PartialState
    # CPU processes (accelerate launch --cpu, or no GPU) need cpu=True for a gloo process group.
    use_cpu = os.environ.get("ACCELERATE_USE_CPU", "").lower() in ("1", "true", "yes") or not torch.cuda.is_available()
    state = PartialState(cpu=use_cpu)
    return ProcessContext(
        rank=int(state.process_index),
        world_size=int(state.num_processes),
        device=str(state.device),
        barrier=state.wait_for_everyone,
    )
