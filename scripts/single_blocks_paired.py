"""Paired bootstrap of per-kind ShapesWorld runs against a baseline run on the same scenes (issue 15, item 2: does
adding FLUX.1 single blocks to the layer selection help or hurt?).

Each run folder is the ``--out`` of ``conceptattention evaluate --protocol per-kind`` on the same ``--data``; the
script reads the per-scene statistics (``scenes-<method>.jsonl``) and prints, per metric, each run's value and the
difference to the baseline run with a 95 % percentile interval from the same bootstrap resamples of the scenes
(paired: one resample draws the same scenes for both runs).

Usage:
    python scripts/single_blocks_paired.py runs/double45 runs/double45-single67 runs/single67 \
        [--method conceptattention] [--resamples 1000]
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable, Mapping
from pathlib import Path

import numpy as np

from conceptattention.evaluation.bootstrap import bootstrap_metric, resample_weights
from conceptattention.evaluation.shapesworld_protocol import _SUMMARY_KEYS, METRIC_LABELS, _metric_functions


def scene_stats(folder: Path, method: str) -> dict[int, dict[str, float]]:
    """``{scene index: stats}`` of one run."""
    rows = {}
    for line in (folder / f"scenes-{method}.jsonl").read_text(encoding="utf-8").splitlines():
        if line.strip():
            record = json.loads(line)
            rows[int(record["index"])] = record["stats"]
    return rows


Metric = Callable[[Mapping[str, np.ndarray]], np.ndarray]


def run_metric(function: Metric, names: list[str], number: int) -> Metric:
    """The metric of run ``number`` on the combined (resampled) per-scene sums ``{"<run>|<stat>": [R]}``."""
    return lambda s: function({name: s[f"{number}|{name}"] for name in names})


def run_difference(function: Metric, names: list[str], number: int) -> Metric:
    """The metric of run ``number`` minus the baseline run's (run 0), on the same resamples."""
    variant, base = run_metric(function, names, number), run_metric(function, names, 0)
    return lambda s: variant(s) - base(s)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", nargs="+", type=Path, help="run folders; the first is the baseline")
    parser.add_argument("--method", default="conceptattention")
    parser.add_argument("--resamples", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    runs = [scene_stats(folder, args.method) for folder in args.runs]
    scenes = sorted(set.intersection(*(set(run) for run in runs)))
    names = sorted({name for run in runs for index in scenes for name in run[index]})
    stats = {  # "<run>|<stat>" -> [N] per-scene sums, the same scenes in the same order for every run
        f"{number}|{name}": np.array([float(run[index].get(name, 0.0)) for index in scenes])
        for number, run in enumerate(runs)
        for name in names
    }
    weights = resample_weights(len(scenes), args.resamples, args.seed)
    functions = _metric_functions(names)
    print(f"{len(scenes)} scenes common to {len(runs)} runs; baseline {args.runs[0]}")
    header = ["metric", str(args.runs[0].name)] + [f"{folder.name} (Δ vs baseline)" for folder in args.runs[1:]]
    print("| " + " | ".join(header) + " |\n| " + " | ".join(["---"] * len(header)) + " |")
    for key in _SUMMARY_KEYS:
        cells = []
        for number in range(len(runs)):
            value, low, high = bootstrap_metric(stats, run_metric(functions[key], names, number), weights=weights)
            text = f"{100 * value:.1f} [{100 * low:.1f}, {100 * high:.1f}]"
            if number:
                difference = run_difference(functions[key], names, number)
                delta, d_low, d_high = bootstrap_metric(stats, difference, weights=weights)
                text += f" (Δ {100 * delta:+.1f} [{100 * d_low:+.1f}, {100 * d_high:+.1f}])"
            cells.append(text)
        print("| " + " | ".join([METRIC_LABELS.get(key, key)] + cells) + " |")

if __name__ == "__main__":
    main()
