"""Does a subset of attention heads beat all heads on the shipped ShapesWorld model? Choose on one split, report on
another.

1. **Choose** (``--select``, default ``train:20``: ShapesWorld has no ``val`` split): every scene of the selection split goes through the per-kind
   protocol (``conceptattention.evaluation.shapesworld_protocol``: a names set and a colours set per scene, the
   model's recommended blocks 4-5 and noise levels, the caption, one noise sample, seed 0: the ``conceptattention``
   method of ``conceptattention evaluate --protocol per-kind``) with ``keep_heads=True``. Each head's own maps
   (``ConceptMaps.head_maps``: that head's scores through the same softmax and mean) are scored with the protocol;
   a head's **score is the mean of its object, colour and sky+ground AUROC** on the selection scenes. Heads are
   ranked by score; the top-k heads for k = 1..H-1 are run as ``heads=top-k`` on the same scenes and scored the
   same way (k = H is all heads). The k with the best score is chosen (all heads on a tie); the best *proper*
   subset (k < H) is kept too.
2. **Report** (``--test``, default ``test:150``): the per-kind protocol (``run_per_kind``, 95 % bootstrap intervals)
   on scenes the choice never saw, for all heads, the best proper subset chosen on the selection split (whether or
   not it beat all heads there), and the colour and layout priors.

``--selection FILE`` reuses the ``selection.json`` of an earlier run (skips step 1).

Head indices are the same in every selected block (``ConceptAttentionConfig.heads``).

Usage::

    python scripts/select_heads.py --select train:20 --test test:150 --out runs/heads
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any


def _spec(text: str) -> tuple[str, int]:
    split, _, count = text.partition(":")
    return split, int(count or 20)


def _score(metrics: dict[str, dict[str, Any]]) -> float:
    """Mean of the object, colour and sky+ground AUROC (the selection score)."""
    values = [metrics[key]["value"] for key in ("object.auroc", "colour.auroc", "background.auroc")]
    return sum(float(value) for value in values if value is not None) / len(values)


def scene_rows(pipe: Any, dataset: Any, heads: tuple[int, ...] | None, keep_heads: bool) -> tuple[list, list]:
    """Per-scene protocol stats of the maps (heads ``heads``), and with ``keep_heads`` those of every single head."""
    from conceptattention import ConceptAttentionConfig, explain
    from conceptattention.evaluation.shapesworld_protocol import protocol_concept_sets, scene_stats

    rows, head_rows = [], []
    config = ConceptAttentionConfig(heads=heads, keep_heads=keep_heads)
    for index in range(len(dataset)):
        sample = dataset[index]
        sets = protocol_concept_sets(sample)
        results = {
            s.name: explain(pipe, sample.pil(), list(s.concepts), caption=sample.caption, seed=0, config=config)
            for s in sets
        }
        rows.append(scene_stats({name: maps.tensor[:, 0] for name, maps in results.items()}, sets, sample))
        if keep_heads:
            num_heads = next(iter(results.values())).head_maps.shape[1]
            head_rows.append(
                [
                    scene_stats({name: maps.head_maps[:, h, 0] for name, maps in results.items()}, sets, sample)
                    for h in range(num_heads)
                ]
            )
    return rows, head_rows


def choose_heads(pipe: Any, dataset: Any, resamples: int) -> dict[str, Any]:
    """Rank heads on ``dataset`` by their own maps, then pick the best top-k (see the module docstring)."""
    from conceptattention.evaluation.shapesworld_protocol import compute_metrics

    rows, head_rows = scene_rows(pipe, dataset, None, keep_heads=True)
    num_heads = len(head_rows[0])
    head_scores = [
        _score(compute_metrics([scene[h] for scene in head_rows], resamples=resamples)) for h in range(num_heads)
    ]
    ranking = sorted(range(num_heads), key=lambda h: -head_scores[h])
    subset_scores = {num_heads: _score(compute_metrics(rows, resamples=resamples))}
    for k in range(1, num_heads):
        subset_rows, _ = scene_rows(pipe, dataset, tuple(sorted(ranking[:k])), keep_heads=False)
        subset_scores[k] = _score(compute_metrics(subset_rows, resamples=resamples))
    best = max(subset_scores.values())
    chosen_k = max(k for k, score in subset_scores.items() if score == best)  # all heads on a tie
    proper_k = max(range(1, num_heads), key=lambda k: (subset_scores[k], k))
    return {
        "best_subset": sorted(ranking[:proper_k]),
        "head_scores": head_scores,
        "ranking": ranking,
        "top_k_scores": {str(k): subset_scores[k] for k in sorted(subset_scores)},
        "chosen_k": chosen_k,
        "chosen_heads": sorted(ranking[:chosen_k]),
        "num_heads": num_heads,
    }


#: Paired differences reported for a head subset against all heads: ``{label: (numerator stat, denominator stat)}``.
DIFFERENCES = {
    "object AUROC": ("object.auroc_sum", "object.auroc_n"),
    "sky+ground AUROC": ("background.auroc_sum", "background.auroc_n"),
    "colour AUROC": ("colour.auroc_sum", "colour.auroc_n"),
    "object argmax IoU": ("object.inter", "object.union"),
    "pixels named right (names list)": ("names.correct", "names.pixels"),
}


def paired_differences(folder: Path, subset: str, resamples: int, seed: int = 0) -> dict[str, list[float | None]]:
    """Subset minus all heads on the same test scenes, in points, with 95 % paired bootstrap intervals (the scenes
    are resampled once for both methods), for :data:`DIFFERENCES` and the selection score (mean of three AUROCs)."""
    import numpy as np

    from conceptattention.evaluation.bootstrap import bootstrap_metric, resample_weights

    def read(name: str) -> list[dict[str, float]]:
        lines = (folder / f"scenes-{name}.jsonl").read_text().splitlines()
        return [row["stats"] for row in sorted((json.loads(line) for line in lines), key=lambda row: row["index"])]

    rows = {"all": read("conceptattention"), "subset": read(subset)}
    names = {f"{side}:{name}" for side, side_rows in rows.items() for row in side_rows for name in row}
    count = len(rows["all"])
    stats = {name: np.array([rows[name.split(":")[0]][i].get(name.split(":", 1)[1], 0.0) for i in range(count)]) for name in names}
    weights = resample_weights(count, resamples, seed)
    ratio = lambda s, side, pair: s[f"{side}:{pair[0]}"] / s[f"{side}:{pair[1]}"]  # noqa: E731
    metrics = {label: (lambda s, pair=pair: 100 * (ratio(s, "subset", pair) - ratio(s, "all", pair))) for label, pair in DIFFERENCES.items()}
    aurocs = [DIFFERENCES[label] for label in ("object AUROC", "sky+ground AUROC", "colour AUROC")]
    metrics["selection score (mean of the 3 AUROCs)"] = lambda s: 100 * sum(
        ratio(s, "subset", pair) - ratio(s, "all", pair) for pair in aurocs
    ) / 3
    return {label: list(bootstrap_metric(stats, metric, weights=weights)) for label, metric in metrics.items()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--select", default="train:20", help="split:count of the scenes that choose the heads")
    parser.add_argument("--test", default="test:150", help="split:count of the scenes that report")
    parser.add_argument("--seed", type=int, default=0, help="dataset seed of both splits")
    parser.add_argument("--bootstrap", type=int, default=1000, help="bootstrap resamples of the test report")
    parser.add_argument("--selection", type=Path, default=None, help="selection.json of an earlier run (skip step 1)")
    parser.add_argument("--out", type=Path, required=True, help="output folder (selection.json, test/report.md)")
    args = parser.parse_args(argv)

    from conceptattention.evaluation.methods import get_method
    from conceptattention.evaluation.shapesworld_protocol import metrics_table, run_per_kind
    from conceptattention.shapesworld import ShapesWorldDataset, load_pipeline

    started = time.perf_counter()
    pipe = load_pipeline()
    pipe.set_progress_bar_config(disable=True)
    if args.selection is not None:
        selection = json.loads(args.selection.read_text())
    else:
        select_split, select_n = _spec(args.select)
        selection = choose_heads(pipe, ShapesWorldDataset(select_split, seed=args.seed, n=select_n), resamples=100)
        selection.update({"select": args.select, "seconds": round(time.perf_counter() - started, 1)})
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "selection.json").write_text(json.dumps(selection, indent=2))
    print(json.dumps(selection), file=sys.stderr, flush=True)

    methods = [get_method("conceptattention", noise_level=None)]
    for heads in {tuple(selection["chosen_heads"]), tuple(selection["best_subset"])}:
        if len(heads) < selection["num_heads"]:
            methods.append(
                get_method("conceptattention", noise_level=None, heads=heads).replace(
                    name=f"conceptattention-heads-{'-'.join(map(str, heads))}",
                    description=f"ConceptAttention with heads {list(heads)} only (chosen on {selection['select']})",
                )
            )
    methods += [get_method("colour-prior"), get_method("layout-prior")]
    test_split, test_n = _spec(args.test)
    report = run_per_kind(
        pipe,
        ShapesWorldDataset(test_split, seed=args.seed, n=test_n),
        methods,
        args.out / "test",
        resamples=args.bootstrap,
        overwrite=True,
        model_name="shapesworld (shipped)",
    )
    print(metrics_table(report["metrics"]), end="")
    for method in methods[1:]:
        if method.name.startswith("conceptattention-heads-"):
            differences = paired_differences(args.out / "test", method.name, args.bootstrap)
            (args.out / f"differences-{method.name}.json").write_text(json.dumps(differences, indent=2))
            for label, (value, low, high) in differences.items():
                print(f"{method.name} - all heads, {label}: {value:+.1f} [{low:+.1f}, {high:+.1f}]")
    print(f"chosen heads {selection['chosen_heads']} on {selection['select']}; {time.perf_counter() - started:.0f} s in all")
    return 0


if __name__ == "__main__":
    sys.exit(main())
