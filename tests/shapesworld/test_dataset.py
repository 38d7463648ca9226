"""ShapesWorld scenes, captions and labels: determinism, label/caption agreement, held-out combinations."""

from __future__ import annotations

import random

import pytest
import torch

from conceptattention.shapesworld import (
    BACKGROUNDS,
    CAPTION_WORDS,
    COLOURS,
    OBJECTS,
    DatasetError,
    ObjectSpec,
    SceneError,
    SceneSpec,
    ShapesWorldDataset,
    render_scenes,
)
from conceptattention.shapesworld.dataset import held_out_pairs_in, sample_record, sample_scene


def test_samples_are_deterministic_per_split_seed_and_index() -> None:
    first = ShapesWorldDataset("train", seed=3, n=5)
    again = ShapesWorldDataset("train", seed=3, n=5)
    other = ShapesWorldDataset("train", seed=4, n=5)
    for index in range(5):
        a, b = first[index], again[index]
        assert a.caption == b.caption and a.spec == b.spec
        assert torch.equal(a.image, b.image) and torch.equal(a.instance, b.instance)
    assert [first.record(i) for i in range(5)] != [other.record(i) for i in range(5)]
    assert sample_record("test", 0, 0) != sample_record("heldout", 0, 0)


def test_rendering_does_not_depend_on_the_rest_of_the_batch() -> None:
    specs = [sample_record("test", 1, i)[0] for i in range(6)]
    batch = render_scenes(specs)
    for index, spec in enumerate(specs):
        alone = render_scenes([spec])
        assert torch.allclose(alone.images[0], batch.images[index], atol=1e-6)
        assert torch.equal(alone.object_class[0], batch.object_class[0 + index])


def test_labels_agree_with_captions_and_specs() -> None:
    data = ShapesWorldDataset("test", seed=0, n=40)
    for sample in data:
        words = sample.caption.split()
        assert set(words) <= set(CAPTION_WORDS)
        for k, obj in enumerate(sample.spec.objects):
            assert obj.name in words and obj.colour in words  # full captions name every object and its colour
            instance = sample.instance == k + 1
            assert instance.sum() >= 20, "objects are kept large"
            assert torch.all(sample.object_class[instance] == OBJECTS.index(obj.name) + 1)
            coloured = instance & (sample.colour > 0)
            assert coloured.any() and torch.all(sample.colour[coloured] == COLOURS.index(obj.colour) + 1)
            assert sample.concept_mask(obj.name).sum() == instance.sum()
        absent = [name for name in OBJECTS if name not in sample.object_concepts]
        assert all(not sample.concept_mask(name).any() for name in absent)
        assert int(sample.instance.max()) == len(sample.spec.objects)
        for background in sample.background_concepts:
            assert sample.concept_mask(background).any()
        assert set(sample.background.unique().tolist()) == {0, BACKGROUNDS.index(sample.spec.ground)}
        # Every pixel belongs to exactly one visible concept among objects and backgrounds.
        cover = sum(sample.concept_mask(w).int() for w in sample.object_concepts + sample.background_concepts)
        assert torch.all(cover == 1)


def test_held_out_combinations_never_appear_in_training() -> None:
    train = ShapesWorldDataset("train", seed=0, n=300)
    assert all(not held_out_pairs_in(train.record(i)[0].objects) for i in range(len(train)))
    heldout = ShapesWorldDataset("heldout", seed=0, n=30)
    assert all(held_out_pairs_in(heldout.record(i)[0].objects) for i in range(len(heldout)))


def test_training_captions_mix_short_empty_and_full_captions() -> None:
    captions = [sample_record("train", 0, i)[1] for i in range(400)]
    single_words = [c for c in captions if len(c.split()) == 1]
    assert 0.01 < captions.count("") / len(captions) < 0.12
    assert 0.05 < len(single_words) / len(captions) < 0.25
    assert {w for c in single_words for w in c.split()} & set(OBJECTS)
    assert {w for c in single_words for w in c.split()} & set(COLOURS)
    assert sum(len(c.split()) >= 4 for c in captions) / len(captions) > 0.6


def test_scene_sampler_keeps_objects_apart_and_inside_the_frame() -> None:
    rng = random.Random(0)
    for _ in range(100):
        scene = sample_scene(rng)
        boxes = [obj.bbox() for obj in scene.objects]
        for left, top, right, bottom in boxes:
            assert 0 <= left and right <= 32 and 0 <= top and bottom <= 32
        for i in range(len(boxes)):
            for j in range(i + 1, len(boxes)):
                a, b = boxes[i], boxes[j]
                assert a[2] < b[0] or b[2] < a[0] or a[3] < b[1] or b[3] < a[1]


def test_bad_inputs_raise_clear_errors() -> None:
    with pytest.raises(SceneError, match="cannot be"):
        ObjectSpec("sun", "blue", 10.0, 10.0)
    with pytest.raises(SceneError, match="Unknown ground"):
        SceneSpec(horizon=10.0, ground="lava")
    with pytest.raises(DatasetError, match="Unknown split"):
        ShapesWorldDataset("validation", 0, 3)
    with pytest.raises(DatasetError, match="not a ShapesWorld concept"):
        ShapesWorldDataset("test", 0, 1)[0].concept_mask("dragon")
    with pytest.raises(IndexError):
        ShapesWorldDataset("test", 0, 2)[5]


def test_absent_concepts_complement_present_ones() -> None:
    sample = ShapesWorldDataset("test", seed=2, n=1)[0]
    for kind, vocabulary in (("object", OBJECTS), ("colour", COLOURS), ("background", BACKGROUNDS)):
        present, absent = set(sample.concepts[kind]), set(sample.absent_concepts[kind])
        assert present.isdisjoint(absent) and present | absent == set(vocabulary)
        assert all(not sample.concept_mask(word).any() for word in absent)
