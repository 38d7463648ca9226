"""The README gallery: 6 prompts drawn at random (fixed seed), not hand-picked, with the shipped model's maps.

The prompts are the captions of ShapesWorld scenes 0-5 of the ``test`` split under :data:`GALLERY_SEED` (a seed no
measurement uses), in the model's data version; the concepts of each are the objects the caption names, the ground
and ``"sky"`` plus one absent object drawn with the same seed (marked ``*``), the per-kind protocol's kind of list. Concepts that the prompt does not name (the absent object, and the ground or
the sky when the caption leaves them out) are marked ``*`` in the figure.
Each image is generated with generation seed = its row number (0-5), 20 steps, ConceptAttention during the
``FluxPipeline`` call with the model's recommended settings, exactly what ``conceptattention generate`` does.

Usage (repository root)::

    python scripts/readme_gallery.py --out docs/img/gallery.png

The figure is written atomically; the script prints its size (kept under 200 kB).
"""

from __future__ import annotations

import argparse
import io
import random
import sys
import textwrap
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from conceptattention.outputs import atomic_write_bytes


GALLERY_SEED = 20260505
"""Seed of the ``test`` split stream the gallery's prompts come from (used by nothing else)."""

NUM_PROMPTS = 6


def gallery_prompts(seed: int = GALLERY_SEED, count: int = NUM_PROMPTS, version: str = "v1") -> list[dict[str, Any]]:
    """``[{"prompt", "concepts", "absent"}]``: the captions of ``count`` ``test`` scenes and their concept lists.

    Example:
        >>> prompts = gallery_prompts()
        >>> len(prompts), all(p["absent"] in p["concepts"] for p in prompts)
        (6, True)
    """
    from conceptattention.shapesworld.dataset import ShapesWorldDataset
    from conceptattention.shapesworld.render import OBJECTS

    data = ShapesWorldDataset("test", seed=seed, n=count, version=version)
    rows = []
    for index in range(count):
        spec, caption = data.record(index)
        objects = [obj.name for obj in spec.objects]
        absent = random.Random(f"{seed}:{index}").choice([name for name in OBJECTS if name not in objects])
        rows.append({"prompt": caption, "concepts": [*objects, absent, "sky", spec.ground], "absent": absent})
    return rows


def render_gallery(pipe: Any, prompts: Sequence[dict[str, Any]]) -> bytes:
    """PNG bytes of the gallery figure: per prompt, the image, every concept's map and the argmax segmentation."""
    from matplotlib.colors import ListedColormap
    from matplotlib.figure import Figure

    from conceptattention import ConceptAttention
    from conceptattention.shapesworld import recommended_call_kwargs

    kwargs = recommended_call_kwargs(pipe)
    columns = 2 + max(len(row["concepts"]) for row in prompts)
    figure = Figure(figsize=(1.15 * columns, 1.3 * len(prompts)), layout="constrained")
    grid = figure.add_gridspec(len(prompts), columns)
    colours = ["#e41a1c", "#377eb8", "#4daf4a", "#984ea3", "#ff7f00", "#a65628", "#f781bf"]
    palette = ListedColormap(colours)
    for row, entry in enumerate(prompts):
        generator = torch.Generator().manual_seed(row)
        with ConceptAttention(pipe, list(entry["concepts"])) as session:
            image = pipe(entry["prompt"], generator=generator, **kwargs).images[0]
        maps = session.maps.tensor[:, 0]  # [C, 1, h, w] -> [C, h, w]
        axes = figure.add_subplot(grid[row, 0])
        axes.imshow(image, interpolation="nearest")
        axes.set_title(textwrap.fill(f'"{entry["prompt"]}"', 34), fontsize=5, loc="left")
        axes.axis("off")
        top = float(maps.max())
        for column, concept in enumerate(entry["concepts"]):
            axes = figure.add_subplot(grid[row, column + 1])
            axes.imshow(maps[column].numpy(), cmap="inferno", vmin=0.0, vmax=top, interpolation="nearest")
            named = concept in entry["prompt"].split()
            axes.set_title(concept + ("" if named else " *"), fontsize=6, color=colours[column])
            axes.axis("off")
        axes = figure.add_subplot(grid[row, len(entry["concepts"]) + 1])
        axes.imshow(maps.argmax(0).numpy(), cmap=palette, vmin=0, vmax=6, interpolation="nearest")
        axes.set_title("argmax (title colours)", fontsize=5)
        axes.axis("off")
    figure.suptitle(
        f"6 random test-split prompts (scripts/readme_gallery.py, seed {GALLERY_SEED}); maps during generation, "
        "colour scale 0 to the row's maximum; * = not in the prompt",
        fontsize=6,
    )
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=110)
    return buffer.getvalue()


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point (see the module docstring)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="docs/img/gallery.png", help="PNG to write")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--print-prompts", action="store_true", help="only print the drawn prompts")
    args = parser.parse_args(argv)
    from conceptattention.shapesworld import load_pipeline
    from conceptattention.shapesworld.model import data_version

    prompts = gallery_prompts(version=data_version())
    for number, entry in enumerate(prompts):
        print(f"{number}: {entry['prompt']!r} concepts={entry['concepts']}")
    if args.print_prompts:
        return 0
    torch.set_num_threads(args.threads)
    pipe = load_pipeline()
    pipe.set_progress_bar_config(disable=True)
    data = render_gallery(pipe, prompts)
    if len(data) > 200_000:
        print(f"error: the figure is {len(data) // 1024} kB, over the 200 kB limit", file=sys.stderr)
        return 2
    atomic_write_bytes(Path(args.out), data)
    print(f"wrote {args.out} ({len(data) // 1024} kB)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
