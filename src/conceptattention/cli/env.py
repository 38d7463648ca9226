"""``conceptattention env``: versions and devices, for bug reports."""

from __future__ import annotations

import argparse

from .run_folder import environment


HELP = "print versions, devices and supported models (paste it into bug reports)"


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("env", help=HELP, description=HELP)
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    import torch

    from ..adapters import supported_models

    for key, value in environment().items():
        print(f"{key:18s} {value}")
    print(f"{'cuda available':18s} {torch.cuda.is_available()}")
    if torch.cuda.is_available():
        for index in range(torch.cuda.device_count()):
            print(f"{'cuda:' + str(index):18s} {torch.cuda.get_device_name(index)}")
    mps = getattr(torch.backends, "mps", None)
    print(f"{'mps available':18s} {bool(mps and mps.is_available())}")
    print("supported transformers:")
    for row in supported_models():
        print(f"  {row['transformer']:34s} {row['family']:10s} {row['modality']:6s} {row['pipelines']}")
    return 0
