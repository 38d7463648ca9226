"""The metrics of ``scripts/measure_leakage.py`` on hand-made scenes (the model run itself is the script's job)."""

from __future__ import annotations

import pytest
import torch

from conceptattention import ConceptMaps

from ..script_modules import load_script


@pytest.fixture(scope="module")
def script():
    return load_script("measure_leakage")


def scene(logits: torch.Tensor, present: tuple[bool, ...], targets: dict[str, torch.Tensor]) -> dict:
    concepts = [f"c{index}" for index in range(logits.shape[0])]
    maps = ConceptMaps(concepts, logits.softmax(dim=0), logits=logits)
    kinds = tuple("object" if index == 0 else "background" for index in range(len(concepts)))
    return {"maps": maps, "present": present, "kinds": kinds, "targets": targets, "size": (2, 2)}


def test_perfect_maps_and_leakage(script) -> None:
    target = torch.tensor([[True, False], [False, False]])
    logits = torch.zeros(3, 1, 2, 2)  # [C, F, h, w]: c0 wins the top-left pixel, the absent c2 the rest
    logits[0, 0, 0, 0] = 5.0
    logits[2, 0] = 1.0
    logits[2, 0, 0, 0] = 0.0
    row = script.score([scene(logits, (True, True, False), {"c0": target, "c1": ~target})], None)
    assert row["absent_pct"] == 75.0 and row["none_pct"] == 0.0
    assert row["iou_object"] == 100.0 and row["iou_background"] == 0.0 and row["iou_present"] == 50.0
    assert row["iou_present_pooled"] == 25.0  # (1 + 0) / (1 + 3)


def test_null_concept_takes_the_absent_pixels(script) -> None:
    target = torch.tensor([[True, False], [False, False]])
    logits = torch.zeros(2, 1, 2, 2)
    logits[1, 0] = 0.5  # the absent c1 wins the other pixels, with a score below the frame's mean + 1 std
    logits[0, 0, 0, 0] = 5.0  # the present c0 is confident on its pixel
    rows = [script.score([scene(logits, (True, False), {"c0": target})], none) for none in (None, 1.0)]
    assert rows[0]["absent_pct"] == 75.0 and rows[1]["absent_pct"] == 0.0
    assert rows[1]["none_pct"] == 75.0 and rows[1]["iou_object"] == 100.0
    assert "null concept z = 1" in script.table(rows) and "default (paper)" in script.table(rows)
