"""Per-kind zero-shot segmentation on ShapesWorld: object names, colour words and backgrounds, scored separately.

The runner's ShapesWorld benchmark (``conceptattention evaluate --dataset shapesworld``) scores object names only,
with the scene's objects and backgrounds as concepts. ShapesWorld has three kinds of concept with exact masks, and
they behave differently, so this module measures each kind on its own:

* **Concept sets** (:func:`scene_concept_sets`): two sets per scene, each with a few absent *distractors*:

  - ``"names"``: the objects present + ``k`` absent object names, and the backgrounds present (``sky`` and the
    ground) + ``k`` absent backgrounds. Object names and backgrounds are scored.
  - ``"colours"``: the colour words present + ``k`` absent colour words, plus the backgrounds present as context
    (without them, the argmax must give the sky to a colour). Colour words are scored.

  Colour words and object names are kept in separate sets because both are true on the same pixels (the body of a
  red car is "red" and "car"): in one set they would compete in the softmax and the argmax.
* **Scores** (:func:`score_scene`): for every present concept of a scored kind, the standard fg/bg record of
  :func:`~conceptattention.evaluation.metrics.per_image_counts` (mean threshold, Chefer), the same counts for the
  argmax over the set (the PascalVOC / ShapesWorld protocol), and the per-image AUROC of the map against its mask
  (1 = perfect ranking, 0.5 = chance, below 0.5 = the map is *inverted*). Per image, the share of pixels the argmax
  gives to absent distractors is recorded too.
* **Trivial reference** (:func:`all_background_record`): the all-background prediction (a constant map: predicts no
  foreground, AP 0.5 by the Chefer convention).
* **Aggregation** (:func:`summarize_by_kind`, :func:`kind_table`): dataset metrics per kind from the records, by the
  standard definitions (counts summed over the dataset, mAP = mean of per-image pooled APs); the mean AUROC is the
  mean over (image, concept) records.

Example:
    >>> from conceptattention.shapesworld import ShapesWorldDataset
    >>> sample = ShapesWorldDataset("test", seed=0, n=1)[0]
    >>> names, colours = scene_concept_sets(sample, num_distractors=2, seed=0)
    >>> names.scored == sample.object_concepts + sample.background_concepts
    True
"""

from __future__ import annotations

import math
import random
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from conceptattention.errors import ConceptAttentionError
from conceptattention.evaluation.metrics import aggregate, per_image_counts
from conceptattention.evaluation.report import format_metric
from conceptattention.extras import lazy_function


# torchmetrics (the eval extra) is imported on first use, so this module imports without it
binary_auroc = lazy_function("torchmetrics.functional.classification", "binary_auroc", "eval")


__all__ = [
    "CONCEPT_KINDS",
    "ConceptKindError",
    "SceneConceptSet",
    "all_background_record",
    "concept_kind",
    "kind_table",
    "per_image_auroc",
    "scene_concept_sets",
    "score_scene",
    "summarize_by_kind",
]

CONCEPT_KINDS: tuple[str, ...] = ("object", "colour", "background")
"""The kinds of ShapesWorld concept, in table order."""

_RULES: tuple[str, ...] = ("mean", "argmax")


class ConceptKindError(ConceptAttentionError, ValueError):
    """A word is not a ShapesWorld concept, or a concept set / record is malformed."""


def _vocabulary() -> dict[str, tuple[str, ...]]:
    """``{kind: words}`` from the ShapesWorld renderer (imported lazily: it is an optional part of the package)."""
    from conceptattention.shapesworld.render import BACKGROUNDS, COLOURS, OBJECTS

    return {"object": tuple(OBJECTS), "colour": tuple(COLOURS), "background": tuple(BACKGROUNDS)}


def concept_kind(word: str) -> str:
    """The kind of a ShapesWorld concept word.

    Args:
        word: A concept word, e.g. ``"car"``, ``"red"`` or ``"sky"``.

    Returns:
        ``"object"``, ``"colour"`` or ``"background"``.

    Raises:
        ConceptKindError: If the word is not in the ShapesWorld vocabulary.

    Example:
        >>> concept_kind("car"), concept_kind("red"), concept_kind("sky")
        ('object', 'colour', 'background')
    """
    for kind, words in _vocabulary().items():
        if word in words:
            return kind
    vocabulary = ", ".join(word for words in _vocabulary().values() for word in words)
    raise ConceptKindError(f"{word!r} is not a ShapesWorld concept word; use one of: {vocabulary}.")


@dataclass(frozen=True)
class SceneConceptSet:
    """One concept list given to a method for a scene, and which of its concepts are scored.

    Attributes:
        name: ``"names"`` or ``"colours"`` (see the module docstring).
        concepts: The concept list, in the order given to the method.
        kinds: The kind of every concept (same order).
        present: Whether every concept is present in the scene (same order).
        scored: The present concepts whose masks are scored (a subset of ``concepts``).

    Example:
        >>> concept_set = SceneConceptSet("names", ("car", "boat", "sky"), ("object", "object", "background"),
        ...                               (True, False, True), ("car", "sky"))
        >>> concept_set.distractors
        ('boat',)
    """

    name: str
    concepts: tuple[str, ...]
    kinds: tuple[str, ...]
    present: tuple[bool, ...]
    scored: tuple[str, ...]

    def __post_init__(self) -> None:
        if not self.concepts:
            raise ConceptKindError(f"Concept set {self.name!r} is empty; give at least one concept.")
        if len(set(self.concepts)) != len(self.concepts):
            raise ConceptKindError(f"Concept set {self.name!r} repeats a concept: {self.concepts}.")
        if not len(self.kinds) == len(self.present) == len(self.concepts):
            raise ConceptKindError(
                f"Concept set {self.name!r}: {len(self.concepts)} concepts but {len(self.kinds)} kinds and "
                f"{len(self.present)} presence flags; give one of each per concept."
            )
        absent = [concept for concept in self.scored if concept not in self.concepts]
        if absent:
            raise ConceptKindError(f"Concept set {self.name!r}: scored concepts {absent} are not in its concept list.")
        not_present = [c for c in self.scored if not self.present[self.concepts.index(c)]]
        if not_present:
            raise ConceptKindError(
                f"Concept set {self.name!r}: scored concepts {not_present} are absent from the scene; only present "
                "concepts have a mask to score."
            )

    @property
    def distractors(self) -> tuple[str, ...]:
        """The concepts that are absent from the scene."""
        return tuple(concept for concept, present in zip(self.concepts, self.present) if not present)


def _check_distractors(num_distractors: int) -> None:
    if isinstance(num_distractors, bool) or not isinstance(num_distractors, int) or num_distractors < 0:
        raise ConceptKindError(f"num_distractors must be a non-negative integer, got {num_distractors!r}.")


def scene_concept_sets(
    sample: Any, *, num_distractors: int = 2, seed: int = 0, background_distractors: int | None = None
) -> tuple[SceneConceptSet, SceneConceptSet]:
    """The ``"names"`` and ``"colours"`` concept sets of a scene (see the module docstring).

    Distractors are drawn without replacement from the absent concepts of each kind by a generator seeded with
    ``seed`` and the scene's caption, so a scene always gets the same distractors. Concepts come in a fixed order:
    present objects (scene order), object distractors, present backgrounds, background distractors (``"names"``);
    present colours, colour distractors, present backgrounds (``"colours"``).

    Args:
        sample: A :class:`~conceptattention.shapesworld.ShapesWorldSample`.
        num_distractors: Absent concepts added per scored kind (fewer when fewer are absent).
        seed: Seed of the distractor draw.
        background_distractors: Absent backgrounds added to the names set (``None``: ``num_distractors``; the
            per-kind protocol of :mod:`~conceptattention.evaluation.shapesworld_protocol` uses 0).

    Returns:
        ``(names, colours)``.

    Raises:
        ConceptKindError: For a negative ``num_distractors``.

    Example:
        >>> from conceptattention.shapesworld import ShapesWorldDataset
        >>> sample = ShapesWorldDataset("test", seed=0, n=1)[0]
        >>> names, colours = scene_concept_sets(sample, num_distractors=1)
        >>> len(colours.distractors), colours.scored == sample.colour_concepts
        (1, True)
    """
    _check_distractors(num_distractors)
    if background_distractors is None:
        background_distractors = num_distractors
    _check_distractors(background_distractors)
    rng = random.Random(f"{seed}|{sample.caption}|{sample.spec}")
    absent = sample.absent_concepts

    def draw(kind: str, count: int = num_distractors) -> tuple[str, ...]:
        pool = list(absent[kind])
        return tuple(rng.sample(pool, min(count, len(pool))))

    objects = tuple(dict.fromkeys(sample.object_concepts))
    backgrounds = tuple(dict.fromkeys(sample.background_concepts))
    colours = tuple(dict.fromkeys(sample.colour_concepts))
    object_distractors, background_distractors, colour_distractors = draw("object"), draw("background", background_distractors), draw("colour")
    names_concepts = objects + object_distractors + backgrounds + background_distractors
    names = SceneConceptSet(
        name="names",
        concepts=names_concepts,
        kinds=tuple(concept_kind(concept) for concept in names_concepts),
        present=tuple(concept in objects or concept in backgrounds for concept in names_concepts),
        scored=objects + backgrounds,
    )
    colour_concepts = colours + colour_distractors + backgrounds
    colour_set = SceneConceptSet(
        name="colours",
        concepts=colour_concepts,
        kinds=tuple(concept_kind(concept) for concept in colour_concepts),
        present=tuple(concept in colours or concept in backgrounds for concept in colour_concepts),
        scored=colours,
    )
    return names, colour_set


def per_image_auroc(scores: torch.Tensor, target: torch.Tensor) -> float | None:
    """Area under the ROC curve of one map against one mask (torchmetrics, exact thresholds).

    Args:
        scores: Float ``[H, W]`` map.
        target: Bool or {0, 1} ``[H, W]`` mask.

    Returns:
        The AUROC in [0, 1], or ``None`` when the mask is empty or full (AUROC undefined).

    Raises:
        ConceptKindError: For mismatched shapes.

    Example:
        >>> per_image_auroc(torch.tensor([[0.1, 0.9]]), torch.tensor([[0, 1]]))
        1.0
    """
    if tuple(scores.shape) != tuple(target.shape) or scores.ndim != 2:
        raise ConceptKindError(
            f"scores {tuple(scores.shape)} and target {tuple(target.shape)} must be [H, W] maps of the same shape."
        )
    labels = target.reshape(-1).long()  # [H * W]
    positives = int(labels.sum())
    if positives == 0 or positives == labels.numel():
        return None
    values = scores.reshape(-1).double()  # [H * W]
    low, high = values.min(), values.max()
    # torchmetrics applies a sigmoid to scores outside [0, 1]; an increasing affine map keeps the ranking.
    values = (values - low) / (high - low) if high > low else torch.zeros_like(values)
    return float(binary_auroc(values, labels, thresholds=None))


def all_background_record(target: torch.Tensor | np.ndarray) -> dict[str, Any]:
    """The record of the trivial all-background prediction for one mask (no foreground, AP 0.5).

    Args:
        target: Labels ``[H, W]`` (1 foreground, 0 background, -1 void).

    Returns:
        A :func:`~conceptattention.evaluation.metrics.per_image_counts` record.

    Example:
        >>> record = all_background_record(torch.tensor([[0, 1], [0, 0]]))
        >>> record["tp"], record["fn"], record["tn"], record["average_precision"]
        (0, 1, 3, 0.5)
    """
    target = torch.as_tensor(target)
    return per_image_counts(torch.zeros(target.shape, dtype=torch.float64), target)


def score_scene(
    maps: torch.Tensor,
    concept_set: SceneConceptSet,
    sample: Any,
    *,
    upsample: str = "bilinear",
    references: bool = False,
) -> list[dict[str, Any]]:
    """Score one scene's maps for the scored concepts of one concept set.

    Maps are resized to the label resolution as the runner does (bilinear, ``align_corners=False``, or nearest).

    Args:
        maps: Float ``[C, h, w]`` maps, concepts in ``concept_set.concepts`` order (e.g. ``ConceptMaps.tensor[:, 0]``).
        concept_set: The concept set the maps were computed with.
        sample: The :class:`~conceptattention.shapesworld.ShapesWorldSample` (masks via ``concept_mask``).
        upsample: ``"bilinear"`` or ``"nearest"``.
        references: Also add, under ``"all_background"``, the trivial all-background record of every concept.

    Returns:
        One record per scored concept: ``{"concept", "kind", "set", "mean": counts, "argmax": counts, "auroc",
        "auroc_any_object", "distractor_share"}`` where the counts are
        :func:`~conceptattention.evaluation.metrics.per_image_counts` records (``"argmax"`` scores the argmax over
        the whole set, with the map's AP), ``auroc_any_object`` is the AUROC of an object-name or colour map against
        the union of *all* objects of the scene (high when the map finds objects but not which one; ``None`` for
        backgrounds) and ``distractor_share`` is the fraction of the image's pixels the argmax gives to absent
        concepts (the same for every record of the scene).

    Raises:
        ConceptKindError: If the maps do not have one channel per concept, or ``upsample`` is unknown.

    Example:
        >>> from conceptattention.shapesworld import ShapesWorldDataset
        >>> sample = ShapesWorldDataset("test", seed=0, n=1)[0]
        >>> names, _ = scene_concept_sets(sample)
        >>> masks = torch.stack([sample.concept_mask(c).float() for c in names.concepts])  # [C, 32, 32]
        >>> records = score_scene(masks, names, sample)
        >>> [round(record["auroc"], 3) for record in records if record["kind"] == "object"]
        [1.0, 1.0]
    """
    if maps.ndim != 3 or maps.shape[0] != len(concept_set.concepts):
        raise ConceptKindError(
            f"Expected maps of shape [{len(concept_set.concepts)}, h, w] for concept set {concept_set.name!r}, got "
            f"{list(maps.shape)}."
        )
    if upsample not in ("bilinear", "nearest"):
        raise ConceptKindError(f"upsample must be 'bilinear' or 'nearest', got {upsample!r}.")
    label_size = tuple(sample.object_class.shape)
    align = False if upsample == "bilinear" else None
    stacked = F.interpolate(maps[:, None].float(), size=label_size, mode=upsample, align_corners=align)  # [C, 1, H, W]
    resized = stacked[:, 0]  # [C, 1, H, W] -> [C, H, W]
    segmentation = resized.argmax(dim=0)  # [H, W] concept indices
    absent_indices = torch.tensor([not present for present in concept_set.present])  # [C] bool
    distractor_share = float(absent_indices[segmentation].float().mean())
    any_object = sample.object_class > 0  # [H, W] bool: every object of the scene
    records = []
    for concept in concept_set.scored:
        index = concept_set.concepts.index(concept)
        target = sample.concept_mask(concept).to(torch.int8)  # [H, W] in {0, 1}
        kind = concept_set.kinds[index]
        record: dict[str, Any] = {
            "concept": concept,
            "kind": kind,
            "set": concept_set.name,
            "mean": per_image_counts(resized[index], target),
            "argmax": per_image_counts(resized[index], target, prediction=segmentation == index),
            "auroc": per_image_auroc(resized[index], target),
            "auroc_any_object": per_image_auroc(resized[index], any_object) if kind != "background" else None,
            "distractor_share": distractor_share,
        }
        if references:
            record["all_background"] = all_background_record(target)
        records.append(record)
    return records


def summarize_by_kind(records: Iterable[Mapping[str, Any]], *, rule: str = "mean") -> dict[str, dict[str, Any]]:
    """Dataset metrics per concept kind from :func:`score_scene` records.

    Args:
        records: Records of :func:`score_scene` (any number of scenes and concept sets).
        rule: Which counts to aggregate: ``"mean"`` (threshold at the mean, Chefer), ``"argmax"``, or
            ``"all_background"`` (the trivial reference; needs records made with ``references=True``).

    Returns:
        ``{kind: metrics}`` for the kinds present, in :data:`CONCEPT_KINDS` order; ``metrics`` is the dict of
        :func:`~conceptattention.evaluation.metrics.aggregate` plus ``auroc`` (mean per-record AUROC, ``None`` for the
        trivial reference or when undefined everywhere), ``auroc_any_object`` (the same for the AUROC against all
        objects), ``num_records`` and ``distractor_share`` (mean over records, argmax rule only).

    Raises:
        ConceptKindError: For an unknown rule, or records without the requested counts.

    Example:
        >>> counts = {"tp": 1, "fp": 0, "tn": 1, "fn": 0, "void": 0, "average_precision": 1.0}
        >>> record = {"concept": "car", "kind": "object", "mean": counts, "argmax": counts, "auroc": 1.0,
        ...           "distractor_share": 0.0}
        >>> summarize_by_kind([record])["object"]["miou"]
        1.0
    """
    if rule not in (*_RULES, "all_background"):
        raise ConceptKindError(f"rule must be 'mean', 'argmax' or 'all_background', got {rule!r}.")
    by_kind: dict[str, list[Mapping[str, Any]]] = {}
    for position, record in enumerate(records):
        if rule not in record:
            raise ConceptKindError(
                f"Record {position} has no {rule!r} counts"
                + (" (score the scenes with references=True)." if rule == "all_background" else ".")
            )
        by_kind.setdefault(str(record["kind"]), []).append(record)
    summary = {}
    for kind in [*CONCEPT_KINDS, *sorted(set(by_kind) - set(CONCEPT_KINDS))]:
        if kind not in by_kind:
            continue
        kind_records = by_kind[kind]
        metrics = aggregate(record[rule] for record in kind_records)
        aurocs = [float(r["auroc"]) for r in kind_records if rule != "all_background" and r.get("auroc") is not None]
        objectness = [
            float(r["auroc_any_object"])
            for r in kind_records
            if rule != "all_background" and r.get("auroc_any_object") is not None
        ]
        shares = [float(r["distractor_share"]) for r in kind_records if r.get("distractor_share") is not None]
        metrics["auroc"] = math.fsum(aurocs) / len(aurocs) if aurocs else None
        metrics["auroc_any_object"] = math.fsum(objectness) / len(objectness) if objectness else None
        metrics["num_records"] = len(kind_records)
        metrics["distractor_share"] = math.fsum(shares) / len(shares) if shares and rule == "argmax" else None
        summary[kind] = metrics
    return summary


_TABLE_COLUMNS: tuple[tuple[str, str], ...] = (
    ("pixel_accuracy", "pixel acc."),
    ("miou", "mIoU"),
    ("map", "mAP"),
    ("auroc", "AUROC"),
)


def kind_table(rows: Sequence[Mapping[str, Any]], *, kinds: Sequence[str] = CONCEPT_KINDS) -> str:
    """A markdown table: one row per method, pixel accuracy / mIoU / mAP / AUROC per concept kind.

    Args:
        rows: ``{"name": label, "summary": summarize_by_kind(...)}`` dicts.
        kinds: Kinds (column groups) to show.

    Returns:
        The table (percentages with two decimals; ``—`` where a value is missing), ending with a newline.

    Example:
        >>> summary = {"object": {"pixel_accuracy": 0.9, "miou": 0.8, "map": 0.85, "auroc": 0.9}}
        >>> print(kind_table([{"name": "ca", "summary": summary}], kinds=["object"]), end="")
        | method | object pixel acc. | object mIoU | object mAP | object AUROC |
        | --- | --- | --- | --- | --- |
        | ca | 90.00 | 80.00 | 85.00 | 90.00 |
    """
    header = ["method"] + [f"{kind} {title}" for kind in kinds for _, title in _TABLE_COLUMNS]
    lines = ["| " + " | ".join(header) + " |", "| " + " | ".join(["---"] * len(header)) + " |"]
    for row in rows:
        summary = row["summary"]
        cells = [str(row["name"])]
        for kind in kinds:
            metrics = summary.get(kind) or {}
            cells += [format_metric(metrics.get(key)) for key, _ in _TABLE_COLUMNS]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"
