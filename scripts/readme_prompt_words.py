"""The README's prompt-word and per-head figures: one map per word of a prompt drawn at random (fixed seed), and the
same words' maps of each attention head, on the shipped model.

The prompt is the caption of ShapesWorld scene 0 of the ``test`` split under :data:`PROMPT_SEED` (a seed no
measurement uses), in the model's data version. The image is generated with generation seed 0 and the model's
recommended settings, with ``ConceptAttention(pipe, "prompt")`` during the ``FluxPipeline`` call: exactly what
``conceptattention generate --model shapesworld --prompt ... --prompt-words`` does; ``keep_heads=True`` (which does
not change the maps) also keeps each head's maps for the second figure (``--keep-heads``).

Usage (repository root)::

    python scripts/readme_prompt_words.py --out docs/img/prompt_words.png --heads-out docs/img/heads.png
"""

from __future__ import annotations

import argparse
import io
import sys
import textwrap
from collections.abc import Sequence
from typing import TYPE_CHECKING

import torch

from conceptattention.outputs import atomic_write_bytes


if TYPE_CHECKING:
    from matplotlib.figure import Figure
    from PIL import Image

    from conceptattention import ConceptMaps


PROMPT_SEED = 20261205
"""Seed of the ``test`` split stream the prompt comes from (used by nothing else)."""


def generate(pipe: object, prompt: str) -> tuple[Image.Image, ConceptMaps]:
    """The image (generation seed 0, recommended settings) and its prompt-word maps with per-head maps kept."""
    from conceptattention import ConceptAttention
    from conceptattention.shapesworld import recommended_call_kwargs

    with ConceptAttention(pipe, "prompt", keep_heads=True) as attention:
        image = pipe(prompt, generator=torch.Generator().manual_seed(0), **recommended_call_kwargs(pipe)).images[0]
    return image, attention.maps


def png(figure: Figure) -> bytes:
    """The figure as PNG bytes (110 dpi)."""
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=110)
    return buffer.getvalue()


def render(image: Image.Image, maps: ConceptMaps, prompt: str) -> bytes:
    """PNG bytes: the image, then each word's map (shared colour scale), then the argmax over words."""
    from matplotlib.figure import Figure

    values = maps.tensor[:, 0]  # [W, 1, h, w] -> [W, h, w]
    columns = len(maps.concepts) + 2
    figure = Figure(figsize=(1.0 * columns, 1.45), layout="constrained")
    axes = figure.subplots(1, columns)
    axes[0].imshow(image, interpolation="nearest")
    axes[0].set_title("image", fontsize=6)
    for column, word in enumerate(maps.concepts, start=1):
        axes[column].imshow(values[column - 1].numpy(), cmap="inferno", vmin=0.0, vmax=float(values.max()))
        axes[column].set_title(word, fontsize=7)
    axes[-1].imshow(values.argmax(0).numpy(), cmap="tab20", vmin=0, vmax=19, interpolation="nearest")
    axes[-1].set_title("argmax", fontsize=6)
    for axis in axes:
        axis.axis("off")
    title = f'"{prompt}": one map per prompt word (scripts/readme_prompt_words.py, seed {PROMPT_SEED})'
    figure.suptitle(textwrap.fill(title, 120), fontsize=6)
    return png(figure)


def render_heads(maps: ConceptMaps, prompt: str) -> bytes:
    """PNG bytes: one row per attention head (``maps.head(h)``), then the all-heads maps; one column per word."""
    from matplotlib.figure import Figure

    num_heads = maps.head_maps.shape[1]
    rows = [(f"head {head}", maps.head(head).tensor[:, 0]) for head in range(num_heads)]  # [W, h, w] each
    rows.append(("all heads", maps.tensor[:, 0]))
    figure = Figure(figsize=(0.9 * len(maps.concepts) + 0.6, 0.85 * len(rows) + 0.4), layout="constrained")
    axes = figure.subplots(len(rows), len(maps.concepts), squeeze=False)
    for row, (label, values) in enumerate(rows):
        for column, word in enumerate(maps.concepts):
            axis = axes[row][column]
            axis.imshow(values[column].numpy(), cmap="inferno", vmin=0.0, vmax=float(values.max()))
            axis.set_xticks([])
            axis.set_yticks([])
            if row == 0:
                axis.set_title(word, fontsize=7)
            if column == 0:
                axis.set_ylabel(label, fontsize=6)
    title = f'"{prompt}": each word\'s map per attention head (keep_heads=True; the last row is the usual map)'
    figure.suptitle(textwrap.fill(title, 120), fontsize=6)
    return png(figure)


def main(argv: Sequence[str] | None = None) -> int:
    """Draw the prompt, generate, write the figure (see the module docstring)."""
    from conceptattention.shapesworld import load_pipeline
    from conceptattention.shapesworld.dataset import ShapesWorldDataset
    from conceptattention.shapesworld.model import data_version

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="docs/img/prompt_words.png", help="PNG of the prompt-word maps")
    parser.add_argument("--heads-out", default="docs/img/heads.png", help="PNG of the per-head maps")
    args = parser.parse_args(argv)
    _, prompt = ShapesWorldDataset("test", seed=PROMPT_SEED, n=1, version=data_version()).record(0)
    print(f"prompt: {prompt!r}")
    pipe = load_pipeline()
    pipe.set_progress_bar_config(disable=True)
    image, maps = generate(pipe, prompt)
    for out, data in ((args.out, render(image, maps, prompt)), (args.heads_out, render_heads(maps, prompt))):
        atomic_write_bytes(out, data)
        print(f"wrote {out} ({len(data) / 1000:.0f} kB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
