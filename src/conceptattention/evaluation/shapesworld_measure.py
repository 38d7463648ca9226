"""Measure ConceptAttention on the shipped ShapesWorld model: per-kind segmentation, probes, unprompted concepts.

Research measurements behind ``docs/results.md`` §2-§5, as functions; their command line is
``python -m conceptattention.cli.measure_shapesworld`` (or the thin ``scripts/measure_shapesworld.py``), with the
subcommands below. The per-kind protocol with the model-free baselines and bootstrap
intervals is a ``conceptattention evaluate`` option (``--protocol per-kind``,
:mod:`conceptattention.evaluation.shapesworld_protocol`); this module keeps what that option does not do: the call
variants (concept encodings, caption lengths, legacy settings), the block x noise-level grid that chose the
model's recommended settings, and two figures (:mod:`conceptattention.evaluation.shapesworld_figures`). Scenes
come from the model's data version (``shapesworld.json``). Data specs, resumable JSONL records, the run-identity check
and the AUROC are those of the evaluation package (:func:`~conceptattention.evaluation.tasks.parse_shapesworld_spec`,
:mod:`conceptattention.evaluation.results`, :func:`~conceptattention.evaluation.shapesworld_report.per_image_auroc`).

Subcommands:

* ``segment`` (:func:`measure_segment`): zero-shot segmentation through the real-image explain path, scored separately for object names,
  colour words and backgrounds (:mod:`conceptattention.evaluation.shapesworld_report`), for one or more named
  *variants* (method configurations and concept/caption encodings, :data:`VARIANTS`), next to the trivial
  all-background prediction. Per-scene records are appended to ``OUT/<variant>.jsonl`` as they are computed (a
  killed run resumes with the same command); ``OUT/summary.json`` and ``OUT/summary.md`` hold the tables.
* ``grid`` (:func:`measure_grid`): per-kind AUROC of every contiguous range of joint blocks x contiguous range of noise levels (maps
  averaged over both), from one explain call per scene, concept set, block and level; how the shipped model's
  recommended settings (``shapesworld.json``: ``recommended.concept_attention``) were chosen.
* ``plot`` (:func:`~conceptattention.evaluation.shapesworld_figures.plot_segment_run`): line plots of a ``segment`` run's per-layer and per-noise-level variants, one line per concept kind.
* ``unprompted`` (:func:`~conceptattention.evaluation.shapesworld_figures.plot_unprompted`): a figure of maps for concepts that are not in the prompt: images generated from short captions,
  maps of other concepts from the generation path and from the explain path.

Examples::

    python -m conceptattention.cli.measure_shapesworld segment --data heldout:500 --variants ca cross-attention --out runs/seg
    python -m conceptattention.cli.measure_shapesworld segment --data test:100 --variants ca ca-empty-caption --out runs/probe
    python -m conceptattention.cli.measure_shapesworld grid --data test:100 --caption-length 512 --out runs/grid
    python -m conceptattention.cli.measure_shapesworld plot --run runs/probe --out docs/img/shapesworld_probe.png
    python -m conceptattention.cli.measure_shapesworld unprompted --out docs/img/shapesworld_unprompted.png

Variants change how the model is *called*, never the method's definition in the library: ``t5len32`` pads the
caption to the 32 tokens the model was trained with (the adapter pads to the tokenizer's 512) by setting
``tokenizer_2.model_max_length`` for the duration of the call; ``padded32`` passes concept embeddings computed the
way the model saw single-word captions in training (the word padded to 32 tokens, no attention mask: FluxPipeline's
own T5 call) through ``explain(..., concept_embeds=)``, instead of the library's masked encoding of the word alone;
``caption-states`` passes the contextual T5 state of each concept word *in the scene's caption* (the tokens the
image actually attended to in training), falling back to ``padded32`` for words the caption does not contain.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import torch

from conceptattention.errors import ConceptAttentionError
from conceptattention.evaluation.results import check_same_run, read_records, resume_records
from conceptattention.evaluation.tasks import parse_shapesworld_spec
from conceptattention.outputs import atomic_write_json, atomic_write_text


__all__ = [
    "GRID_LEVELS",
    "LEGACY_LAYERS",
    "VARIANTS",
    "MeasureError",
    "PaddedConceptEncoder",
    "Variant",
    "caption_length_of",
    "load_measurement_pipeline",
    "measure_grid",
    "measure_segment",
    "variant_maps",
    "write_summary",
]


class MeasureError(ConceptAttentionError, ValueError):
    """Bad arguments for a measurement."""


@dataclasses.dataclass(frozen=True)
class Variant:
    """How the explain path is called for one measured configuration.

    Attributes:
        name: Label (file names, tables).
        options: :class:`~conceptattention.ConceptAttentionConfig` fields (``space``, ``softmax``, ``layers`` ...).
        noise_level: Rectified-flow time of the real-image path (``None``: the model's recommended levels).
        num_samples: Noise samples averaged per image.
        caption: ``"dataset"`` (the scene's caption, as the evaluation harness) or ``"empty"``.
        caption_length: T5 length of the caption (``None``: the adapter's default, the tokenizer's maximum, which
            the ShapesWorld loader sets to the trained 32).
        concept_encoding: ``"library"`` (masked encoding of the word alone), ``"padded32"`` (see the module doc) or
            ``"caption"`` (the word's contextual T5 state in the caption; ``"padded32"`` for words not in it).
    """

    name: str
    options: tuple[tuple[str, Any], ...] = ()
    noise_level: float | None = 0.5
    num_samples: int = 1
    caption: str = "dataset"
    caption_length: int | None = None
    concept_encoding: str = "library"

    def describe(self) -> dict[str, Any]:
        """JSON description."""
        out = dataclasses.asdict(self)
        out["options"] = {key: list(value) if isinstance(value, tuple) else value for key, value in self.options}
        return out


LEGACY_LAYERS = (2, 3, 4, 5)
"""Joint blocks of the variants measured before the model's recommended settings (the FLUX default: the last four)."""


def _variants() -> dict[str, Variant]:
    base = Variant("ca")
    table: list[Variant] = [
        base,
        Variant("cross-attention", options=(("space", "cross_attention"),)),
        Variant("ca-empty-caption", caption="empty"),
        Variant("ca-t5len32", caption_length=32),
        Variant("ca-padded32", concept_encoding="padded32"),
        Variant("ca-indist", caption_length=32, concept_encoding="padded32"),
        Variant(
            "cross-attention-indist",
            options=(("space", "cross_attention"),),
            caption_length=32,
            concept_encoding="padded32",
        ),  # fmt: skip
        Variant("ca-indist-empty-caption", caption="empty", caption_length=32, concept_encoding="padded32"),
        Variant("ca-caption-states", caption_length=32, concept_encoding="caption"),
        Variant(
            "cross-attention-caption-states",
            options=(("space", "cross_attention"),),
            caption_length=32,
            concept_encoding="caption",
        ),
        Variant("value", options=(("space", "value"),)),
        Variant("value-indist", options=(("space", "value"),), caption_length=32, concept_encoding="padded32"),
        Variant("ca-samples4", num_samples=4),
        Variant("ca-no-softmax", options=(("softmax", False),)),
        Variant("ca-all-layers", options=(("layers", (0, 1, 2, 3, 4, 5)),)),
    ]
    for layer in range(6):
        table.append(Variant(f"ca-layer{layer}", options=(("layers", (layer,)),)))
        table.append(Variant(f"ca-indist-layer{layer}", options=(("layers", (layer,)),), caption_length=32,
                             concept_encoding="padded32"))  # fmt: skip
    for level in (0.1, 0.3, 0.5, 0.7, 0.9):
        table.append(Variant(f"ca-noise{level:.1f}", noise_level=level))
        table.append(Variant(f"ca-indist-noise{level:.1f}", noise_level=level, caption_length=32,
                             concept_encoding="padded32"))  # fmt: skip
    # The variants above were measured before the shipped model carried recommended settings: pin what they used
    # then (the FLUX default of the last four joint blocks, the caption padded to the tokenizer's 512) so that their
    # numbers in docs/results.md reproduce.
    pinned = []
    for variant in table:
        options = dict(variant.options)
        options.setdefault("layers", LEGACY_LAYERS)
        length = variant.caption_length if variant.caption_length is not None else 512
        pinned.append(dataclasses.replace(variant, options=tuple(options.items()), caption_length=length))
    # The model's recommended settings (shapesworld.json: joint blocks 4-5, noise levels 0.1-0.9 averaged, caption at
    # the trained T5 length), chosen on 100 `test` scenes by `grid`; the cross-attention space with the same ones.
    pinned.append(Variant("ca-recommended", noise_level=None))
    pinned.append(Variant("cross-attention-recommended", options=(("space", "cross_attention"),), noise_level=None))
    return {variant.name: variant for variant in pinned}


VARIANTS: dict[str, Variant] = _variants()
"""The measurable variants, by name."""


# ----------------------------------------------------------------------------------------------------------------
# Model calls
# ----------------------------------------------------------------------------------------------------------------


@contextlib.contextmanager
def caption_length_of(pipe: Any, length: int | None) -> Iterator[None]:
    """Temporarily set ``tokenizer_2.model_max_length`` (the caption's T5 padding length in the explain path)."""
    if length is None:
        yield
        return
    saved = pipe.tokenizer_2.model_max_length
    pipe.tokenizer_2.model_max_length = length
    try:
        yield
    finally:
        pipe.tokenizer_2.model_max_length = saved


class PaddedConceptEncoder:
    """Concept embeddings as the model saw single words in training: the word padded to 32 tokens, no mask.

    The embedding of a word is the T5 output at the word's position (0: the caption is the word alone) of
    ``FluxPipeline._get_t5_prompt_embeds([word], max_sequence_length=32)``.
    """

    def __init__(self, pipe: Any, length: int = 32) -> None:
        self.pipe, self.length = pipe, length
        self._cache: dict[str, torch.Tensor] = {}

    def __call__(self, concepts: Sequence[str]) -> torch.Tensor:
        """``[C, D_text]`` embeddings."""
        missing = [concept for concept in concepts if concept not in self._cache]
        if missing:
            for concept in missing:
                if len(self.pipe.tokenizer_2(concept)["input_ids"]) != 2:  # the word and </s>
                    raise MeasureError(f"{concept!r} is not a single token of the ShapesWorld vocabulary.")
            with torch.no_grad():
                states = self.pipe._get_t5_prompt_embeds(prompt=missing, max_sequence_length=self.length)  # [M, L, D]
            for concept, state in zip(missing, states[:, 0]):
                self._cache[concept] = state.float()
        return torch.stack([self._cache[concept] for concept in concepts])  # [C, D_text]

    def from_caption(self, concepts: Sequence[str], caption: str) -> torch.Tensor:
        """``[C, D_text]``: the T5 state of each concept word in the caption (padded to 32, as in training).

        A word's state is taken at its first occurrence in the caption; words that the caption does not contain
        (absent distractors, an unnamed ground) get the single-word encoding of :meth:`__call__`.
        """
        ids = self.pipe.tokenizer_2(caption)["input_ids"]
        with torch.no_grad():
            states = self.pipe._get_t5_prompt_embeds(prompt=[caption], max_sequence_length=self.length)[0]  # [L, D]
        fallback = self(concepts)  # [C, D_text]
        rows = []
        for position, concept in enumerate(concepts):
            token = self.pipe.tokenizer_2.convert_tokens_to_ids(concept)
            rows.append(states[ids.index(token)].float() if token in ids else fallback[position])
        return torch.stack(rows)  # [C, D_text]


def variant_maps(
    pipe: Any, variant: Variant, image: Any, concepts: Sequence[str], caption: str, encoder: PaddedConceptEncoder
) -> torch.Tensor:
    """Maps ``[C, h, w]`` of one image for one variant."""
    from conceptattention import ConceptAttentionConfig, explain

    embeds = None
    if variant.concept_encoding == "padded32":
        embeds = encoder(concepts)
    elif variant.concept_encoding == "caption":
        embeds = encoder.from_caption(concepts, caption)
    with caption_length_of(pipe, variant.caption_length):
        maps = explain(
            pipe,
            image,
            list(concepts),
            caption=caption if variant.caption == "dataset" else "",
            noise_level=variant.noise_level,
            num_samples=variant.num_samples,
            seed=0,
            concept_embeds=embeds,
            config=ConceptAttentionConfig(**dict(variant.options)),
        )
    return maps.tensor[:, 0]  # [C, 1, h, w] -> [C, h, w]


def load_measurement_pipeline() -> Any:
    """The shipped ShapesWorld pipeline, progress bars off."""
    from conceptattention.shapesworld import load_pipeline

    pipe = load_pipeline()
    pipe.set_progress_bar_config(disable=True)
    return pipe


# ----------------------------------------------------------------------------------------------------------------
# segment
# ----------------------------------------------------------------------------------------------------------------


def _parse_data(spec: str) -> tuple[str, int, int]:
    """``SPLIT[:N[:SEED]]`` with 100 scenes by default (the shared parser; an unknown split fails on the dataset)."""
    return parse_shapesworld_spec(spec, default_images=100)


def _segment_lines(path: Path) -> list[dict[str, Any]]:
    """The complete per-scene lines of a ``segment`` variant file (a torn last line is left out)."""
    return read_records(path, key="records", what="shapesworld_measure segment")[0]


def measure_segment(
    data: str,
    variants: Sequence[str],
    out: str | os.PathLike[str],
    *,
    distractors: int = 2,
    threads: int = 1,
) -> dict[str, Any]:
    """The ``segment`` subcommand: per-kind segmentation of each variant, resumable; writes the summary.

    Args:
        data: Scenes, ``SPLIT[:N[:SEED]]`` (100 scenes unless ``N``).
        variants: Names of :data:`VARIANTS`.
        out: Folder: ``run.json``, ``<variant>.jsonl`` (one line per scene), ``<variant>.timing.json``,
            ``summary.json``, ``summary.md``. A folder of the same data and distractors is continued.
        distractors: Absent concepts per kind in every concept set.
        threads: Torch CPU threads.

    Returns:
        The summary (:func:`write_summary`).

    Raises:
        MeasureError: Unknown variants, or ``out`` is a file.
        RunMismatchError: ``out`` holds a run on other data or distractors.
        DatasetFormatError: A malformed ``data`` spec.

    Example:
        >>> measure_segment("test:2", ["no-such-variant"], "runs/x")
        Traceback (most recent call last):
        ...
        conceptattention.evaluation.shapesworld_measure.MeasureError: Unknown variant(s) ['no-such-variant']; choose from: ...
    """
    from conceptattention.evaluation.shapesworld_report import scene_concept_sets, score_scene
    from conceptattention.shapesworld import ShapesWorldDataset
    from conceptattention.shapesworld.model import data_version

    unknown = [name for name in variants if name not in VARIANTS]
    if unknown:
        raise MeasureError(f"Unknown variant(s) {unknown}; choose from: {', '.join(VARIANTS)}.")
    split, count, seed = _parse_data(data)
    torch.set_num_threads(threads)
    out = Path(out)
    run_file = out / "run.json"
    identity = {"data": [split, count, seed], "distractors": distractors}
    if out.exists() and not out.is_dir():
        raise MeasureError(f"--out {out} exists and is not a folder; choose another --out.")
    if run_file.is_file():
        check_same_run(run_file, identity, what="a segment run", remedy="Choose another --out.")
    dataset = ShapesWorldDataset(split, seed=seed, n=count, version=data_version())
    pipe = load_measurement_pipeline()  # before anything is written: a failed load leaves no folder behind
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(run_file, identity)
    encoder = PaddedConceptEncoder(pipe)
    for name in variants:
        variant = VARIANTS[name]
        path = out / f"{name}.jsonl"
        done = resume_records(path, key="records", what="shapesworld_measure segment")
        started, new = time.perf_counter(), 0
        with open(path, "a", encoding="utf-8") as handle:
            for index in range(count):
                if index in done:
                    continue
                sample = dataset[index]
                image = sample.pil()
                records = []
                for concept_set in scene_concept_sets(sample, num_distractors=distractors, seed=seed):
                    maps = variant_maps(pipe, variant, image, concept_set.concepts, sample.caption, encoder)
                    records += score_scene(maps, concept_set, sample, references=True)
                handle.write(json.dumps({"index": index, "records": records}) + "\n")
                handle.flush()
                new += 1
        seconds = time.perf_counter() - started
        timing_path = out / f"{name}.timing.json"
        if new:
            atomic_write_json(timing_path, {"new_scenes": new, "seconds": seconds})
        print(f"{name}: {new} new scenes in {seconds:.1f} s", file=sys.stderr)
    return write_summary(out, variants)


def write_summary(out: Path, names: Sequence[str]) -> dict[str, Any]:
    """``summary.json`` and ``summary.md`` of every variant file in ``out`` (the ones named first); returns the summary."""
    from conceptattention.evaluation.shapesworld_report import kind_table, summarize_by_kind

    files = [out / f"{name}.jsonl" for name in names]
    files += sorted(path for path in out.glob("*.jsonl") if path not in files)
    summary: dict[str, Any] = {"run": json.loads((out / "run.json").read_text(encoding="utf-8")), "variants": {}}
    mean_rows, argmax_rows = [], []
    reference = None
    for path in files:
        name = path.stem
        lines = _segment_lines(path)
        records = [record for line in lines for record in line["records"]]
        if not records:
            continue
        timing_path = out / f"{name}.timing.json"
        entry = {
            "variant": VARIANTS[name].describe() if name in VARIANTS else None,
            "num_scenes": len(lines),
            "mean": summarize_by_kind(records, rule="mean"),
            "argmax": summarize_by_kind(records, rule="argmax"),
            "timing": json.loads(timing_path.read_text(encoding="utf-8")) if timing_path.is_file() else None,
        }
        summary["variants"][name] = entry
        if reference is None:
            reference = summarize_by_kind(records, rule="all_background")
            summary["all_background"] = reference
            summary["all_background_scenes"] = len(lines)
        mean_rows.append({"name": f"{name} ({len(lines)})", "summary": entry["mean"]})
        argmax_rows.append({"name": f"{name} ({len(lines)})", "summary": entry["argmax"]})
    if reference is not None:
        mean_rows.append({"name": f"all-background ({summary['all_background_scenes']})", "summary": reference})
    atomic_write_json(out / "summary.json", summary)
    text = [
        "# Per-kind segmentation (mean threshold, Chefer standard)",
        "",
        kind_table(mean_rows),
        "# Per-kind segmentation (argmax over the concept set)",
        "",
        kind_table(argmax_rows),
        "Distractor pixel share (argmax): "
        + "; ".join(
            f"{name}: {entry['argmax'][kind]['distractor_share']:.3f} ({kind})"
            for name, entry in summary["variants"].items()
            for kind in entry["argmax"]
        ),
        "",
    ]
    atomic_write_text(out / "summary.md", "\n".join(text))
    print("\n".join(text))
    return summary


# ----------------------------------------------------------------------------------------------------------------
# grid: choose the model's recommended layers and noise levels
# ----------------------------------------------------------------------------------------------------------------


GRID_LEVELS = (0.1, 0.3, 0.5, 0.7, 0.9)
"""Noise levels of the ``grid`` subcommand."""


def _contiguous(count: int) -> list[tuple[int, ...]]:
    """Every contiguous run of ``range(count)``, e.g. ``(0,), (0, 1), ... (5,)``."""
    return [tuple(range(start, stop)) for start in range(count) for stop in range(start + 1, count + 1)]


def measure_grid(
    data: str,
    out: str | os.PathLike[str],
    *,
    distractors: int = 2,
    threads: int = 1,
    top: int = 15,
    caption_length: int | None = None,
) -> dict[str, Any]:
    """The ``grid`` subcommand: per-(noise level, joint block) maps of N scenes, then the per-kind AUROC of every
    contiguous block range x contiguous noise-level range (maps averaged over both, as the library averages).

    Args:
        data: Scenes, ``SPLIT[:N[:SEED]]`` (100 scenes unless ``N``).
        out: New folder: ``grid.json`` (every combination, best mean AUROC first) and ``grid.md`` (the ``top`` rows).
        distractors: Absent concepts per kind in every concept set.
        threads: Torch CPU threads.
        top: Rows of the markdown table.
        caption_length: T5 length of the caption (``None``: the model's, 32).

    Returns:
        The content of ``grid.json``.

    Raises:
        MeasureError: ``out`` exists.
        DatasetFormatError: A malformed ``data`` spec.

    Example:
        >>> result = measure_grid("test:1", "runs/grid", top=3)  # doctest: +SKIP
        >>> len(result["combinations"])  # doctest: +SKIP
        315
    """
    from conceptattention import explain
    from conceptattention.evaluation.shapesworld_report import per_image_auroc, scene_concept_sets
    from conceptattention.shapesworld import ShapesWorldDataset
    from conceptattention.shapesworld.model import data_version

    split, count, seed = _parse_data(data)
    torch.set_num_threads(threads)
    out = Path(out)
    if out.exists():
        raise MeasureError(f"--out {out} exists; choose a new folder.")
    dataset = ShapesWorldDataset(split, seed=seed, n=count, version=data_version())
    pipe = load_measurement_pipeline()
    num_blocks = len(pipe.transformer.transformer_blocks)
    kinds = ("object", "colour", "background")
    combos = [(blocks, levels) for blocks in _contiguous(num_blocks) for levels in _contiguous(len(GRID_LEVELS))]
    totals = {kind: torch.zeros(len(combos), dtype=torch.float64) for kind in kinds}
    counts = dict.fromkeys(kinds, 0)
    started = time.perf_counter()
    for index in range(count):
        sample = dataset[index]
        image = sample.pil()
        for concept_set in scene_concept_sets(sample, num_distractors=distractors, seed=seed):
            per_slice = []  # [A][L] maps [C, h, w]
            for level in GRID_LEVELS:
                with caption_length_of(pipe, caption_length):
                    per_slice.append(
                        [
                            explain(pipe, image, list(concept_set.concepts), caption=sample.caption,
                                    noise_level=level, seed=0, layers=(block,)).tensor[:, 0]  # [C, 1, h, w] -> [C, h, w]
                            for block in range(num_blocks)
                        ]  # fmt: skip
                    )
            grid = torch.stack([torch.stack(row) for row in per_slice])  # [A, L, C, h, w]
            levels_count, blocks_count, concepts_count, height, width = grid.shape
            flat = grid.reshape(-1, 1, height, width)  # [A * L * C, 1, h, w]
            upsampled = torch.nn.functional.interpolate(
                flat, size=tuple(sample.object_class.shape), mode="bilinear", align_corners=False
            )  # [A * L * C, 1, H, W]; linear, so it commutes with the averages below
            upsampled = upsampled.reshape(levels_count, blocks_count, concepts_count, -1)  # [A, L, C, H * W]
            label_shape = tuple(sample.object_class.shape)  # (H, W)
            for concept in concept_set.scored:
                position = concept_set.concepts.index(concept)
                mask = sample.concept_mask(concept)  # [H, W]
                if mask.all() or not mask.any():
                    continue
                kind = concept_set.kinds[position]
                scores = [
                    upsampled[list(levels)][:, list(blocks), position].mean((0, 1)).reshape(label_shape)  # [H, W]
                    for blocks, levels in combos
                ]
                totals[kind] += torch.tensor([per_image_auroc(score, mask) for score in scores], dtype=torch.float64)
                counts[kind] += 1
        print(f"grid: {index + 1}/{count} scenes, {time.perf_counter() - started:.0f} s", file=sys.stderr, flush=True)
    rows = []
    for position, (blocks, levels) in enumerate(combos):
        row = {"blocks": list(blocks), "noise_levels": [GRID_LEVELS[i] for i in levels]}
        row.update({kind: float(totals[kind][position] / max(1, counts[kind])) for kind in kinds})
        row["mean"] = sum(row[kind] for kind in kinds) / len(kinds)
        rows.append(row)
    rows.sort(key=lambda row: -row["mean"])
    out.mkdir(parents=True)
    result = {"data": [split, count, seed], "caption_length": caption_length, "records": counts, "combinations": rows}
    atomic_write_json(out / "grid.json", result)
    lines = ["| joint blocks | noise levels | object AUROC | colour AUROC | background AUROC | mean |", "|" + " --- |" * 6]
    for row in rows[:top]:
        lines.append(
            f"| {row['blocks']} | {row['noise_levels']} | {100 * row['object']:.1f} | {100 * row['colour']:.1f} | "
            f"{100 * row['background']:.1f} | {100 * row['mean']:.1f} |"
        )
    atomic_write_text(out / "grid.md", "\n".join(lines) + "\n")
    print("\n".join(lines))
    return result
