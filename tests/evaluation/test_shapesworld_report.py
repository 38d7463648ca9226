"""Per-kind ShapesWorld segmentation scoring: concept sets, per-scene records, aggregation, tables."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from conceptattention.evaluation import (
    CONCEPT_KINDS,
    ConceptKindError,
    SceneConceptSet,
    aggregate,
    all_background_record,
    concept_kind,
    kind_table,
    per_image_auroc,
    scene_concept_sets,
    score_scene,
    summarize_by_kind,
)
from conceptattention.shapesworld import BACKGROUNDS, COLOURS, OBJECTS, ShapesWorldDataset


@pytest.fixture(scope="module")
def samples():
    return list(ShapesWorldDataset("heldout", seed=3, n=6))


def _mask_maps(sample, concepts) -> torch.Tensor:
    """Perfect maps: each concept's ground-truth mask, ``[C, 32, 32]``."""
    return torch.stack([sample.concept_mask(concept).float() for concept in concepts])


# ----- concept kinds and sets ------------------------------------------------------------------------------------


def test_concept_kind_covers_the_vocabulary():
    assert {concept_kind(word) for word in OBJECTS} == {"object"}
    assert {concept_kind(word) for word in COLOURS} == {"colour"}
    assert {concept_kind(word) for word in BACKGROUNDS} == {"background"}
    assert CONCEPT_KINDS == ("object", "colour", "background")


def test_concept_kind_rejects_unknown_words():
    with pytest.raises(ConceptKindError, match="'dragon' is not a ShapesWorld concept"):
        concept_kind("dragon")


def test_concept_sets_hold_present_concepts_and_absent_distractors(samples):
    for sample in samples:
        names, colours = scene_concept_sets(sample, num_distractors=2, seed=1)
        present_objects, present_colours = set(sample.object_concepts), set(sample.colour_concepts)
        assert names.scored == tuple(dict.fromkeys(sample.object_concepts)) + sample.background_concepts
        assert colours.scored == tuple(dict.fromkeys(sample.colour_concepts))
        # two absent objects and the two absent backgrounds; two absent colours
        assert len(names.distractors) == 4 and len(colours.distractors) == 2
        assert not set(names.distractors) & (present_objects | set(sample.background_concepts))
        assert not set(colours.distractors) & present_colours
        assert set(names.concepts) >= set(BACKGROUNDS)
        for concept_set in (names, colours):
            for concept, kind, present in zip(concept_set.concepts, concept_set.kinds, concept_set.present):
                assert kind == concept_kind(concept)
                assert present == bool(sample.concept_mask(concept).any()) or concept in sample.background_concepts
        # backgrounds are context in the colour set, not scored there
        assert set(sample.background_concepts) <= set(colours.concepts)


def test_concept_sets_are_deterministic_and_seeded(samples):
    sample = samples[0]
    assert scene_concept_sets(sample, seed=5) == scene_concept_sets(sample, seed=5)
    draws = {scene_concept_sets(sample, num_distractors=1, seed=seed)[1].distractors for seed in range(12)}
    assert len(draws) > 1


def test_concept_sets_cap_distractors_and_reject_negative_counts(samples):
    names, colours = scene_concept_sets(samples[0], num_distractors=50)
    assert set(names.concepts) == set(OBJECTS) | set(BACKGROUNDS)
    assert set(colours.concepts) == set(COLOURS) | set(samples[0].background_concepts)
    names, colours = scene_concept_sets(samples[0], num_distractors=0)
    assert names.distractors == () and colours.distractors == ()
    with pytest.raises(ConceptKindError, match="non-negative integer"):
        scene_concept_sets(samples[0], num_distractors=-1)


def test_concept_set_validation():
    with pytest.raises(ConceptKindError, match="is empty"):
        SceneConceptSet("names", (), (), (), ())
    with pytest.raises(ConceptKindError, match="repeats"):
        SceneConceptSet("names", ("car", "car"), ("object", "object"), (True, True), ())
    with pytest.raises(ConceptKindError, match="presence flags"):
        SceneConceptSet("names", ("car",), ("object",), (), ())
    with pytest.raises(ConceptKindError, match="not in its concept list"):
        SceneConceptSet("names", ("car",), ("object",), (True,), ("sky",))
    with pytest.raises(ConceptKindError, match="absent from the scene"):
        SceneConceptSet("names", ("car",), ("object",), (False,), ("car",))


# ----- per-image scores ------------------------------------------------------------------------------------------


def test_auroc_hand_computed():
    target = torch.tensor([[0, 0], [1, 1]])
    # positives 0.35, 0.8 vs negatives 0.1, 0.4: 3 of 4 pairs ordered correctly
    assert per_image_auroc(torch.tensor([[0.1, 0.4], [0.35, 0.8]]), target) == pytest.approx(0.75)
    assert per_image_auroc(torch.tensor([[0.9, 0.8], [0.1, 0.2]]), target) == pytest.approx(0.0)
    # ties count one half; scores outside [0, 1] are ranked, not squashed
    assert per_image_auroc(torch.tensor([[5.0, -3.0], [5.0, 40.0]]), target) == pytest.approx(0.875)
    assert per_image_auroc(torch.ones(2, 2), target) == pytest.approx(0.5)


def test_auroc_undefined_and_bad_shapes():
    assert per_image_auroc(torch.rand(3, 3), torch.zeros(3, 3, dtype=torch.long)) is None
    assert per_image_auroc(torch.rand(3, 3), torch.ones(3, 3, dtype=torch.long)) is None
    with pytest.raises(ConceptKindError, match="same shape"):
        per_image_auroc(torch.rand(3, 3), torch.zeros(2, 3, dtype=torch.long))


def test_all_background_reference_is_the_background_fraction():
    target = torch.zeros(4, 4, dtype=torch.int8)
    target[:1] = 1  # 4 foreground pixels of 16
    record = all_background_record(target)
    assert (record["tp"], record["fp"], record["tn"], record["fn"]) == (0, 0, 12, 4)
    assert record["average_precision"] == pytest.approx(0.5)
    metrics = aggregate([record])
    assert metrics["pixel_accuracy"] == pytest.approx(0.75)
    assert metrics["miou"] == pytest.approx(0.75 / 2)


def test_perfect_maps_score_perfectly(samples):
    for sample in samples:
        for concept_set in scene_concept_sets(sample):
            records = score_scene(_mask_maps(sample, concept_set.concepts), concept_set, sample, references=True)
            assert [record["concept"] for record in records] == list(concept_set.scored)
            for record in records:
                assert record["auroc"] == pytest.approx(1.0)
                assert record["mean"]["fp"] == 0 and record["mean"]["fn"] == 0
                assert record["mean"]["average_precision"] == pytest.approx(1.0)
                assert record["all_background"]["tp"] == 0
                area = int(sample.concept_mask(record["concept"]).sum())
                assert record["mean"]["tp"] == area == record["all_background"]["fn"]
            if concept_set.name == "names":  # objects and backgrounds tile the image: the argmax is exact
                assert all(record["argmax"]["fp"] == 0 and record["argmax"]["fn"] == 0 for record in records)
                assert records[0]["distractor_share"] == 0.0


def test_inverted_maps_score_below_chance(samples):
    sample = samples[0]
    names, _ = scene_concept_sets(sample)
    records = score_scene(1.0 - _mask_maps(sample, names.concepts), names, sample)
    assert all(record["auroc"] == pytest.approx(0.0) for record in records)
    assert all(record["mean"]["tp"] == 0 for record in records)


def test_token_grid_maps_are_upsampled(samples):
    sample = samples[1]
    names, _ = scene_concept_sets(sample)
    grid = F.avg_pool2d(_mask_maps(sample, names.concepts)[:, None], 2)[:, 0]  # [C, 32, 32] -> [C, 16, 16]
    for upsample in ("bilinear", "nearest"):
        records = score_scene(grid, names, sample, upsample=upsample)
        assert all(record["auroc"] > 0.95 for record in records)


def test_objectness_maps_find_objects_but_not_identity(samples):
    sample = samples[3]  # held-out scenes have at least two objects
    names, colours = scene_concept_sets(sample)
    objectness = (sample.object_class > 0).float()  # [32, 32]: lights every object alike
    maps = torch.stack([objectness if kind != "background" else 1.0 - objectness for kind in names.kinds])
    records = score_scene(maps, names, sample)
    objects = [record for record in records if record["kind"] == "object"]
    assert len(objects) >= 2
    for record in objects:
        assert record["auroc_any_object"] == pytest.approx(1.0)
        # own pixels beat the background and tie with the other objects' pixels (negatives): AUROC = 1 - ties / 2
        own = sample.concept_mask(record["concept"])
        others = int((objectness.bool() & ~own).sum())
        assert record["auroc"] == pytest.approx(1.0 - 0.5 * others / int((~own).sum()))
        assert record["auroc"] < 1.0
    assert all(record["auroc_any_object"] is None for record in records if record["kind"] == "background")
    summary = summarize_by_kind(records)
    assert summary["object"]["auroc_any_object"] == pytest.approx(1.0)
    assert summary["background"]["auroc_any_object"] is None


def test_distractor_share_counts_pixels_won_by_absent_concepts(samples):
    sample = samples[2]
    names, _ = scene_concept_sets(sample)
    maps = torch.zeros(len(names.concepts), 32, 32)
    maps[names.concepts.index(names.distractors[0])] = 1.0  # a distractor wins everywhere
    records = score_scene(maps, names, sample)
    assert records[0]["distractor_share"] == 1.0
    assert all(record["argmax"]["tp"] == 0 for record in records)


def test_score_scene_rejects_bad_inputs(samples):
    sample = samples[0]
    names, _ = scene_concept_sets(sample)
    with pytest.raises(ConceptKindError, match=rf"\[{len(names.concepts)}, h, w\]"):
        score_scene(torch.rand(2, 16, 16), names, sample)
    with pytest.raises(ConceptKindError, match="upsample"):
        score_scene(torch.rand(len(names.concepts), 16, 16), names, sample, upsample="cubic")


# ----- aggregation -----------------------------------------------------------------------------------------------


def _record(kind: str, tp: int, fp: int, tn: int, fn: int, ap: float, auroc: float | None, share: float) -> dict:
    counts = {"tp": tp, "fp": fp, "tn": tn, "fn": fn, "void": 0, "average_precision": ap}
    return {"concept": "x", "kind": kind, "mean": counts, "argmax": dict(counts), "auroc": auroc,
            "distractor_share": share}  # fmt: skip


def test_summarize_by_kind_hand_computed():
    records = [
        _record("object", 2, 1, 5, 0, 0.9, 0.8, 0.1),
        _record("object", 1, 0, 6, 1, 0.7, None, 0.3),
        _record("background", 4, 0, 4, 0, 1.0, 1.0, 0.0),
    ]
    summary = summarize_by_kind(records)
    assert list(summary) == ["object", "background"]
    objects = summary["object"]
    assert objects["pixel_accuracy"] == pytest.approx(14 / 16)
    assert objects["iou_foreground"] == pytest.approx(3 / 5)
    assert objects["iou_background"] == pytest.approx(11 / 13)
    assert objects["miou"] == pytest.approx((3 / 5 + 11 / 13) / 2)
    assert objects["map"] == pytest.approx(0.8)
    assert objects["auroc"] == pytest.approx(0.8)  # the undefined AUROC is left out
    assert objects["num_records"] == 2
    assert objects["distractor_share"] is None  # only reported for the argmax rule
    assert summarize_by_kind(records, rule="argmax")["object"]["distractor_share"] == pytest.approx(0.2)


def test_summarize_by_kind_errors():
    with pytest.raises(ConceptKindError, match="rule must be"):
        summarize_by_kind([], rule="median")
    with pytest.raises(ConceptKindError, match="references=True"):
        summarize_by_kind([_record("object", 1, 0, 1, 0, 1.0, 1.0, 0.0)], rule="all_background")


def test_kind_table_layout():
    summary = summarize_by_kind([_record("colour", 1, 1, 1, 1, 0.5, 0.25, 0.0)])
    table = kind_table([{"name": "ca", "summary": summary}], kinds=("object", "colour"))
    lines = table.splitlines()
    assert lines[0].startswith("| method | object pixel acc. |")
    assert lines[2] == "| ca | — | — | — | — | 50.00 | 33.33 | 50.00 | 25.00 |"
