"""Leakage to absent concepts on ShapesWorld, and what a "none of these" null concept does about it.

For every scene of a ShapesWorld split, the concept list holds the scene's objects and backgrounds plus absent
*distractors* (``scene_concept_sets(..., num_distractors=k)`` "names" set: ``k`` absent object names and ``k``
absent backgrounds, so 2 absent concepts with the default ``k = 1``). The maps come from
``conceptattention.explain`` with the model's recommended settings and the scene's caption (as the evaluation
harness). For the argmax labelling (``ConceptMaps.masks("argmax", size=32x32, none=z)``) this script reports:

* ``absent``: the share of pixels given to absent concepts (lower is better; the default gives every pixel to some
  concept);
* ``none``: the share of pixels given to no concept;
* ``iou_present``: the IoU of each present concept's argmax mask with its exact mask, mean over (scene, concept),
  and per kind (object names, backgrounds); ``iou_present_pooled``: intersections and unions summed over the scenes.

Rows: the default (no null concept) and the null concept with each standardised logit ``z`` of ``--none``.

Usage::

    python scripts/measure_leakage.py --scenes 200 --out runs/leakage.json
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

import torch


def explain_scenes(
    split: str, scenes: int, seed: int, distractors: int, space: str = "output"
) -> list[dict[str, Any]]:
    """Maps (with logits) of every scene, with presence flags, kinds and exact masks."""
    from conceptattention import ConceptAttentionConfig, explain
    from conceptattention.evaluation.shapesworld_report import scene_concept_sets
    from conceptattention.shapesworld import ShapesWorldDataset, load_pipeline

    pipe = load_pipeline()
    pipe.set_progress_bar_config(disable=True)
    dataset = ShapesWorldDataset(split, seed=seed, n=scenes)
    results = []
    for index in range(len(dataset)):
        sample = dataset[index]
        names, _ = scene_concept_sets(sample, num_distractors=distractors, seed=seed)
        config = ConceptAttentionConfig(space=space)
        maps = explain(pipe, sample.pil(), list(names.concepts), caption=sample.caption, seed=0, config=config)
        results.append(
            {
                "maps": maps,
                "present": names.present,
                "kinds": names.kinds,
                "targets": {c: sample.concept_mask(c) for c, p in zip(names.concepts, names.present) if p},
                "size": tuple(sample.object_class.shape),
            }
        )
    return results


def score(scenes: list[dict[str, Any]], none: float | None) -> dict[str, Any]:
    """The metrics of one row (see the module docstring)."""
    absent_shares, none_shares = [], []
    ious: dict[str, list[float]] = {"all": [], "object": [], "background": []}
    pooled = {kind: [0, 0] for kind in ious}  # [intersection, union]
    for scene in scenes:
        masks = scene["maps"].masks("argmax", size=scene["size"], none=none)[:, 0]  # [C, H, W]
        pixels = masks[0].numel()
        absent = torch.tensor([not present for present in scene["present"]])  # [C]
        absent_shares.append(float(masks[absent].any(dim=0).sum()) / pixels)
        none_shares.append(float((~masks.any(dim=0)).sum()) / pixels)
        for index, (concept, kind) in enumerate(zip(scene["maps"].concepts, scene["kinds"])):
            if not scene["present"][index]:
                continue
            target = scene["targets"][concept]
            intersection = int((masks[index] & target).sum())
            union = int((masks[index] | target).sum())
            for key in ("all", kind):
                ious[key].append(intersection / union if union else 1.0)
                pooled[key][0] += intersection
                pooled[key][1] += union

    def mean(values: list[float]) -> float:
        return round(100 * sum(values) / len(values), 2) if values else float("nan")

    return {
        "none": none,
        "absent_pct": mean(absent_shares),
        "none_pct": mean(none_shares),
        "iou_present": mean(ious["all"]),
        "iou_object": mean(ious["object"]),
        "iou_background": mean(ious["background"]),
        "iou_present_pooled": round(100 * pooled["all"][0] / max(1, pooled["all"][1]), 2),
    }


def presence_auroc(scenes: list[dict[str, Any]]) -> dict[str, float]:
    """How well an image-level score tells present from absent concepts (0.5 = not at all): AUROC over every
    (scene, concept) of the concept's mean raw score and of its mean map value."""
    from torchmetrics.functional.classification import binary_auroc

    labels, raw, probability = [], [], []
    for scene in scenes:
        maps = scene["maps"]
        labels += [int(present) for present in scene["present"]]
        raw += maps.logits[:, 0].mean(dim=(1, 2)).tolist()  # [C, h, w] -> [C]
        probability += maps.tensor[:, 0].mean(dim=(1, 2)).tolist()
    target = torch.tensor(labels)

    def auroc(values: list[float]) -> float:
        scores = torch.tensor(values, dtype=torch.float64)
        scores = (scores - scores.min()) / (scores.max() - scores.min())  # torchmetrics wants [0, 1]
        return round(float(binary_auroc(scores, target, thresholds=None)), 3)

    return {"mean_raw_score": auroc(raw), "mean_map": auroc(probability)}


def table(rows: list[dict[str, Any]]) -> str:
    header = (
        "| variant | pixels to absent concepts % | pixels to none % | IoU present (mean) | IoU objects | "
        "IoU backgrounds | IoU present (pooled) |"
    )
    lines = [header, "| --- | --- | --- | --- | --- | --- | --- |"]
    for row in rows:
        name = "default (paper)" if row["none"] is None else f"null concept z = {row['none']:g}"
        lines.append(
            f"| {name} | {row['absent_pct']:.1f} | {row['none_pct']:.1f} | {row['iou_present']:.1f} | "
            f"{row['iou_object']:.1f} | {row['iou_background']:.1f} | {row['iou_present_pooled']:.1f} |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--split", default="test", help="ShapesWorld split (default test)")
    parser.add_argument("--scenes", type=int, default=200, help="number of scenes (default 200)")
    parser.add_argument("--seed", type=int, default=0, help="dataset and distractor seed (default 0)")
    parser.add_argument("--distractors", type=int, default=1, help="absent concepts per kind (default 1: 2 absent)")
    parser.add_argument(
        "--none", type=float, nargs="+", default=[-1.0, -0.75, -0.5, -0.25, 0.0, 0.5, 1.0],
        help="standardised logits of the null concept to measure",
    )  # fmt: skip
    parser.add_argument(
        "--space", choices=["output", "cross_attention", "value"], default="output", help="map space (default output)"
    )
    parser.add_argument("--out", type=Path, default=None, help="write the rows as JSON here")
    args = parser.parse_args(argv)
    if args.scenes < 1:
        parser.error("--scenes must be at least 1")
    torch.set_num_threads(1)
    started = time.perf_counter()
    scenes = explain_scenes(args.split, args.scenes, args.seed, args.distractors, args.space)
    explained = time.perf_counter() - started
    rows = [score(scenes, None)] + [score(scenes, value) for value in args.none]
    presence = presence_auroc(scenes)
    print(table(rows), end="")
    print(f"presence AUROC (present vs absent concepts): mean raw score {presence['mean_raw_score']}, "
          f"mean map {presence['mean_map']}")  # fmt: skip
    print(
        f"{len(scenes)} scenes of {args.split!r} (seed {args.seed}), {args.space} space, {explained:.1f} s explaining"
    )
    if args.out is not None:
        from conceptattention.outputs import atomic_write_json

        atomic_write_json(
            args.out,
            {
                "split": args.split,
                "scenes": len(scenes),
                "seed": args.seed,
                "distractors": args.distractors,
                "space": args.space,
                "presence_auroc": presence,
                "rows": rows,
            },
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
