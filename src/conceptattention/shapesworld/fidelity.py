"""Generation fidelity of a ShapesWorld pipeline on held-out captions, judged by :mod:`.checker`.

Half of the captions come from the ``"test"`` split (seen colour-object combinations, unseen scenes) and half from
the ``"heldout"`` split (combinations never seen in training). For every prompted object the checker decides whether
it appears with the prompted colour *and* identity. Two controls keep the number honest:

* ``rendered``: the checker on the renderer's own images of the same scenes (should be close to 1);
* ``shuffled``: each generated image judged against the objects of *another* caption (should be low).

Example:
    python -m conceptattention.shapesworld.fidelity --model src/conceptattention/assets/shapesworld --n 200
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from conceptattention.errors import ConceptAttentionError
from conceptattention.shapesworld.checker import FidelityChecker, ObjectCheck
from conceptattention.shapesworld.dataset import ShapesWorldDataset
from conceptattention.shapesworld.model import recommended_call_kwargs
from conceptattention.shapesworld.render import render_scenes


EVAL_SEED_OFFSET = 10_000
"""Evaluation datasets use ``seed + EVAL_SEED_OFFSET`` so that they never share a stream with anything else."""


class FidelityError(ConceptAttentionError, ValueError):
    """Invalid fidelity-evaluation arguments."""


@dataclass
class FidelityReport:
    """Per-caption results of :func:`evaluate_fidelity`.

    Attributes:
        captions: The prompts.
        splits: ``"test"`` or ``"heldout"`` per caption.
        generated: Checks of the generated images against their own captions.
        rendered: Checks of the rendered reference images.
        shuffled: Checks of the generated images against another caption's objects.
        images: ``float32 [N, 3, S, S]`` generated images in [0, 1].
    """

    captions: list[str]
    splits: list[str]
    generated: list[list[ObjectCheck]]
    rendered: list[list[ObjectCheck]]
    shuffled: list[list[ObjectCheck]]
    images: torch.Tensor = field(repr=False)

    @staticmethod
    def _rate(checks: Sequence[Sequence[ObjectCheck]], attribute: str = "found", mask: Sequence[bool] | None = None):
        values = [
            getattr(check, attribute) for i, row in enumerate(checks) if mask is None or mask[i] for check in row
        ]
        return round(sum(values) / len(values), 4) if values else None

    def summary(self) -> dict[str, Any]:
        """Fractions of prompted objects found (colour and identity), overall, per split and for the controls.

        Example:
            >>> report.summary()["fidelity"]  # doctest: +SKIP
            0.85
        """
        heldout = [split == "heldout" for split in self.splits]
        seen = [not flag for flag in heldout]
        return {
            "n_captions": len(self.captions),
            "n_objects": sum(len(row) for row in self.generated),
            "fidelity": self._rate(self.generated),
            "colour_fidelity": self._rate(self.generated, "colour_found"),
            "fidelity_test_split": self._rate(self.generated, mask=seen),
            "fidelity_heldout_split": self._rate(self.generated, mask=heldout),
            "all_objects_found_per_caption": round(
                sum(all(c.found for c in row) for row in self.generated) / max(1, len(self.generated)), 4
            ),
            "rendered_reference_fidelity": self._rate(self.rendered),
            "shuffled_caption_control": self._rate(self.shuffled),
        }


def evaluation_samples(n: int, seed: int = 0) -> list[tuple[str, Any, str]]:
    """The ``n`` evaluation captions: ``(caption, scene spec, split)``, half test and half held-out combinations.

    Example:
        >>> [split for _, _, split in evaluation_samples(4)]
        ['test', 'heldout', 'test', 'heldout']
    """
    if n < 2:
        raise FidelityError(f"Fidelity needs at least 2 captions (one per split), got n={n}.")
    test = ShapesWorldDataset("test", seed + EVAL_SEED_OFFSET, (n + 1) // 2)
    heldout = ShapesWorldDataset("heldout", seed + EVAL_SEED_OFFSET, n // 2)
    samples = []
    for index in range(n):
        data = test if index % 2 == 0 else heldout
        spec, caption = data.record(index // 2)
        samples.append((caption, spec, data.split))
    return samples


@torch.no_grad()
def generate(
    pipe: Any,
    captions: Sequence[str],
    *,
    seed: int = 0,
    num_inference_steps: int = 20,
    batch_size: int = 50,
    call_overrides: dict[str, Any] | None = None,
) -> torch.Tensor:
    """Generate one image per caption (caption ``i`` uses generator seed ``seed + i``).

    ``call_overrides`` replaces entries of :func:`recommended_call_kwargs` (e.g. ``{"max_sequence_length": 512}``).

    Returns:
        ``float32 [N, 3, S, S]`` in [0, 1], on the CPU.

    Example:
        >>> images = generate(load_pipeline(), ["a red car", "a yellow sun"])  # doctest: +SKIP
    """
    kwargs = {**recommended_call_kwargs(pipe), **(call_overrides or {})}
    images = []
    for start in range(0, len(captions), batch_size):
        chunk = list(captions[start : start + batch_size])
        generators = [torch.Generator(device="cpu").manual_seed(seed + start + i) for i in range(len(chunk))]
        output = pipe(chunk, num_inference_steps=num_inference_steps, generator=generators, output_type="pt", **kwargs)
        images.append(output.images.float().cpu())
    return torch.cat(images)


def evaluate_fidelity(
    pipe: Any,
    n: int = 200,
    *,
    seed: int = 0,
    num_inference_steps: int = 20,
    batch_size: int = 50,
    threshold: float = 0.75,
    call_overrides: dict[str, Any] | None = None,
) -> FidelityReport:
    """Generate ``n`` held-out captions and check every prompted object (see the module docstring).

    Args:
        pipe: A ShapesWorld ``FluxPipeline`` (from :func:`~conceptattention.shapesworld.load_pipeline`).
        n: Number of captions (half test split, half held-out combinations).
        seed: Seed of the captions and of the generation noise.
        num_inference_steps: Euler steps per image.
        batch_size: Captions per pipeline call.
        threshold: Checker threshold.
        call_overrides: Pipeline call arguments that replace the recommended ones (e.g. ``max_sequence_length``).

    Returns:
        A :class:`FidelityReport`; ``report.summary()`` gives the numbers.

    Example:
        >>> evaluate_fidelity(load_pipeline(), n=200).summary()["fidelity"]  # doctest: +SKIP
    """
    samples = evaluation_samples(n, seed)
    captions = [caption for caption, _, _ in samples]
    images = generate(
        pipe,
        captions,
        seed=seed,
        num_inference_steps=num_inference_steps,
        batch_size=batch_size,
        call_overrides=call_overrides,
    )
    checker = FidelityChecker(size=images.shape[-1], threshold=threshold)
    rendered_images = render_scenes([spec for _, spec, _ in samples], images.shape[-1]).images
    prompted = [[(obj.name, obj.colour) for obj in spec.objects] for _, spec, _ in samples]
    generated = [checker.check(image, objects) for image, objects in zip(images, prompted)]
    rendered = [checker.check(image, objects) for image, objects in zip(rendered_images, prompted)]
    shift = max(1, n // 3)
    shuffled = [checker.check(image, prompted[(i + shift) % n]) for i, image in enumerate(images)]
    return FidelityReport(
        captions=captions,
        splits=[split for _, _, split in samples],
        generated=generated,
        rendered=rendered,
        shuffled=shuffled,
        images=images,
    )


def main(argv: Sequence[str] | None = None) -> int:
    """Command line: ``python -m conceptattention.shapesworld.fidelity --model DIR --n 200 [--out report.json]``.

    Example:
        >>> main(["--n", "200", "--out", "fidelity.json"])  # doctest: +SKIP
        0
    """
    from conceptattention.shapesworld.model import load_pipeline

    parser = argparse.ArgumentParser(
        prog="python -m conceptattention.shapesworld.fidelity",
        description="Generation fidelity of a ShapesWorld model on held-out captions.",
    )
    parser.add_argument("--model", type=Path, default=None, help="Model folder (default: the shipped model).")
    parser.add_argument("--n", type=int, default=200)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--max-sequence-length", type=int, default=None, help="T5 length (default: the model's).")
    parser.add_argument("--out", type=Path, default=None, help="Write the summary and per-caption results as JSON.")
    args = parser.parse_args(argv)
    if args.n < 2:
        raise FidelityError(f"--n must be at least 2, got {args.n}.")
    pipe = load_pipeline(args.model, device=args.device)
    pipe.set_progress_bar_config(disable=True)
    overrides = None if args.max_sequence_length is None else {"max_sequence_length": args.max_sequence_length}
    report = evaluate_fidelity(pipe, args.n, seed=args.seed, num_inference_steps=args.steps, call_overrides=overrides)
    summary = report.summary()
    print(json.dumps(summary, indent=2))
    if args.out is not None:
        rows = [
            {"caption": caption, "split": split, "checks": [check.__dict__ for check in checks]}
            for caption, split, checks in zip(report.captions, report.splits, report.generated)
        ]
        args.out.write_text(json.dumps({"summary": summary, "captions": rows}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
