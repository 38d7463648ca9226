"""The fidelity checker: passes on rendered scenes, fails on wrong identities, wrong colours and shuffled captions."""

from __future__ import annotations

import random

import pytest
import torch

from conceptattention.shapesworld import OBJECT_COLOURS, OBJECTS, FidelityChecker, ShapesWorldDataset
from conceptattention.shapesworld.checker import LABELS, CheckerError
from conceptattention.shapesworld.fidelity import evaluation_samples


@pytest.fixture(scope="module")
def checker() -> FidelityChecker:
    return FidelityChecker()


@pytest.fixture(scope="module")
def samples():
    return list(ShapesWorldDataset("test", seed=7, n=40))


def test_rendered_scenes_pass(checker, samples) -> None:
    results = [c for s in samples for c in checker.check(s.image, [(o.name, o.colour) for o in s.spec.objects])]
    assert sum(c.found for c in results) / len(results) >= 0.98
    assert all(c.colour_found for c in results)


def test_wrong_identity_or_colour_fails(checker, samples) -> None:
    rng = random.Random(0)
    swapped, recoloured = [], []
    for sample in samples:
        for obj in sample.spec.objects:
            other = rng.choice([n for n in OBJECTS if n not in sample.object_concepts])
            colour = obj.colour if obj.colour in OBJECT_COLOURS[other] else rng.choice(OBJECT_COLOURS[other])
            swapped.append(checker.check(sample.image, [(other, colour)])[0].found)
            wrong = rng.choice([c for c in OBJECT_COLOURS[obj.name] if c != obj.colour])
            recoloured.append(checker.check(sample.image, [(obj.name, wrong)])[0].found)
    assert sum(swapped) / len(swapped) <= 0.05
    assert sum(recoloured) / len(recoloured) <= 0.05


def test_shuffled_captions_control_is_low(checker, samples) -> None:
    found = []
    for index, sample in enumerate(samples):
        other = samples[(index + 13) % len(samples)]
        found += [c.found for c in checker.check(sample.image, [(o.name, o.colour) for o in other.spec.objects])]
    assert sum(found) / len(found) <= 0.25


def test_uncoloured_prompt_and_degenerate_images(checker, samples) -> None:
    sample = samples[0]
    name = sample.spec.objects[0].name
    assert checker.check(sample.image, [(name, None)])[0].found
    cyan = torch.tensor([0.3, 0.9, 0.9]).view(3, 1, 1).expand(3, 32, 32)
    for image in (torch.zeros(3, 32, 32), torch.rand(3, 32, 32), cyan):
        checks = checker.check(image, [(n, colour) for n in OBJECTS for colour in OBJECT_COLOURS[n]])
        assert not any(c.found or c.colour_found for c in checks)
    grey = checker.check(torch.full((3, 32, 32), 0.58), [(n, c) for n in OBJECTS for c in OBJECT_COLOURS[n]])
    assert not any(c.found for c in grey)  # a grey blob is not a grey cloud without the sky around it
    assert {c.colour for c in grey if c.colour_found} == {"grey"}
    assert checker.pixel_labels(torch.ones(3, 32, 32)).unique().tolist() == [LABELS.index("white")]


def test_evaluation_samples_alternate_splits() -> None:
    samples = evaluation_samples(6, seed=0)
    assert [split for _, _, split in samples] == ["test", "heldout"] * 3
    assert len({caption for caption, _, _ in samples}) == 6


def test_checker_rejects_bad_input(checker) -> None:
    with pytest.raises(CheckerError, match="RGB image"):
        checker.check(torch.zeros(32, 32), [("sun", "yellow")])
    with pytest.raises(CheckerError, match="Unknown object"):
        checker.check(torch.zeros(3, 32, 32), [("dragon", "red")])
    with pytest.raises(CheckerError, match="Unknown colour"):
        checker.check(torch.zeros(3, 32, 32), [("sun", "gold")])


def test_training_sample_captions_are_valid_scenes() -> None:
    from conceptattention.shapesworld import CAPTION_WORDS
    from conceptattention.shapesworld.train import SAMPLE_CAPTIONS

    for caption in SAMPLE_CAPTIONS:
        words = caption.split()
        assert set(words) <= set(CAPTION_WORDS)
        for colour, name in zip(words, words[1:]):
            if name in OBJECTS and colour in {c for cs in OBJECT_COLOURS.values() for c in cs}:
                assert colour in OBJECT_COLOURS[name], caption
