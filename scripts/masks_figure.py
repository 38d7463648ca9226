"""The README pictures of "Masks and datasets", made with the shipped ShapesWorld model.

* ``docs/img/masks_dataset.png``: a 4-item ``conceptattention dataset`` run (template × word lists, argmax masks):
  per item the image, the label PNG drawn with its palette, and the legend.
* ``docs/img/leakage_none.png``: one ShapesWorld test scene with two absent concepts in the list: the exact labels,
  the default argmax labels and the labels with the null concept (``none=-0.5``); absent concepts are marked in
  the legend.

Usage::

    python scripts/masks_figure.py --out docs/img
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch
from PIL import Image


def _legend_handles(legend: list[dict]) -> list:
    from matplotlib.patches import Patch

    return [Patch(color=np.array(entry["color"]) / 255, label=entry["name"] or "none") for entry in legend]


def dataset_figure(out: Path) -> Path:
    from matplotlib.figure import Figure

    from conceptattention.cli.main import main as cli

    with tempfile.TemporaryDirectory() as folder:
        data = Path(folder) / "dataset"
        code = cli([
            "dataset", "--template", "a {colour} {object} on the {ground}", "--words", "colour=red,yellow",
            "object=boat,car", "ground=sea", "--concept-fields", "object", "ground", "--concepts", "sky",
            "--masks", "argmax", "--no-progress", "--out", str(data),
        ])  # fmt: skip
        if code:
            raise SystemExit(code)
        records = [json.loads(line) for line in (data / "manifest.jsonl").read_text().splitlines()]
        figure = Figure(figsize=(2.0 * len(records), 4.6), layout="constrained")
        for column, record in enumerate(records):
            image = Image.open(data / record["files"]["image"]).convert("RGB")
            labels = Image.open(data / record["files"]["labels"]).convert("RGB")
            legend = json.loads((data / record["files"]["legend"]).read_text())
            top = figure.add_subplot(2, len(records), column + 1)
            top.imshow(image, interpolation="nearest")
            top.set_title(record["prompt"].removeprefix("a "), fontsize=8)
            bottom = figure.add_subplot(2, len(records), len(records) + column + 1)
            bottom.imshow(labels, interpolation="nearest")
            bottom.legend(handles=_legend_handles(legend), loc="upper center", bbox_to_anchor=(0.5, 0.0), ncol=2,
                          fontsize=7, frameon=False)  # fmt: skip
            for axes in (top, bottom):
                axes.set_axis_off()
        path = out / "masks_dataset.png"
        figure.savefig(path, dpi=72)
    return path


def leakage_figure(out: Path, scene: int = 3, none: float = -0.5) -> Path:
    from matplotlib.figure import Figure

    from conceptattention import explain
    from conceptattention.evaluation.shapesworld_report import scene_concept_sets
    from conceptattention.masks import label_image, legend
    from conceptattention.shapesworld import ShapesWorldDataset, load_pipeline

    pipe = load_pipeline()
    pipe.set_progress_bar_config(disable=True)
    sample = ShapesWorldDataset("test", seed=0, n=scene + 1)[scene]
    names, _ = scene_concept_sets(sample, num_distractors=1, seed=0)
    maps = explain(pipe, sample.pil(), list(names.concepts), caption=sample.caption, seed=0)
    size = tuple(sample.object_class.shape)
    palette = np.array([entry["color"] for entry in legend(maps)], dtype=np.uint8)  # [C + 1, 3]
    exact = torch.zeros(size, dtype=torch.long)
    for index, concept in enumerate(names.concepts):
        if names.present[index]:
            exact[sample.concept_mask(concept)] = index + 1
    panels = [
        ("image", np.asarray(sample.pil())),
        ("exact labels", palette[exact.numpy()]),
        ("default argmax", np.asarray(label_image(maps, size=size).convert("RGB"))),
        (f"null concept z = {none:g}", np.asarray(label_image(maps, size=size, none=none).convert("RGB"))),
    ]
    figure = Figure(figsize=(8.4, 2.9), layout="constrained")
    absent = {index + 1 for index, present in enumerate(names.present) if not present}
    for position, (title, array) in enumerate(panels, start=1):
        axes = figure.add_subplot(1, 4, position)
        axes.imshow(array, interpolation="nearest")
        axes.set_title(title, fontsize=9)
        axes.set_axis_off()
    handles = _legend_handles(legend(maps))
    for handle, entry in zip(handles, legend(maps)):
        if entry["index"] in absent:
            handle.set_label(f"{entry['name']} (absent)")
    figure.legend(handles=handles, loc="outside lower center", ncol=4, fontsize=8, frameon=False)
    figure.suptitle(f"“{sample.caption}”", fontsize=9)
    path = out / "leakage_none.png"
    figure.savefig(path, dpi=72)
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("docs/img"))
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    args.out.mkdir(parents=True, exist_ok=True)
    for path in (dataset_figure(args.out), leakage_figure(args.out)):
        print(f"wrote {path} ({path.stat().st_size / 1024:.0f} kB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
