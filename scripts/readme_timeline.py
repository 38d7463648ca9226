"""Make the README's "maps through time and depth" picture from the shipped ShapesWorld model.

The grid figure of :func:`conceptattention.timeline.timeline_figure` (rows = concepts, columns = denoising steps),
saved at a small size and with a 128-colour palette so that the PNG stays under 200 kB.

Example::

    python scripts/readme_timeline.py --out docs/img/timeline_steps.png
"""

from __future__ import annotations

import argparse
import io
from pathlib import Path

import torch
from PIL import Image

from conceptattention import ConceptAttention
from conceptattention.models import SHAPESWORLD_EXAMPLE, load_model
from conceptattention.timeline import maps_over, timeline_figure


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("docs/img/timeline_steps.png"))
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    pipe = load_model().pipeline
    generator = torch.Generator("cpu").manual_seed(args.seed)
    with ConceptAttention(pipe, SHAPESWORLD_EXAMPLE["concepts"], keep_per_step=True) as attention:
        image = pipe(
            SHAPESWORLD_EXAMPLE["prompt"], num_inference_steps=args.steps, generator=generator, height=32, width=32
        ).images[0]
    figure = timeline_figure(maps_over(attention, "steps"), image)
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=72, bbox_inches="tight")
    picture = Image.open(buffer).convert("RGB").quantize(colors=128, method=Image.Quantize.MEDIANCUT)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    picture.save(args.out, optimize=True)
    print(f"wrote {args.out} ({args.out.stat().st_size / 1000:.0f} kB)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
