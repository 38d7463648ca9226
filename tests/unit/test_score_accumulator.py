"""ScoreAccumulator.add_layers (one fold per transformer call for all selected layers) gives what one ``add`` per
layer gave: the same count, per-step records and means, up to float rounding of the summation order."""

from __future__ import annotations

import pytest
import torch

from conceptattention.core import ScoreAccumulator


def _scores():
    return torch.randn(3, 2, 4, 5, generator=torch.Generator().manual_seed(0)) * 3  # [L, B, C, I]


@pytest.mark.parametrize("order", ["per_layer", "after_mean"])
@pytest.mark.parametrize("reduce_batch", [False, True])
@pytest.mark.parametrize("temperature", [1.0, 0.5])
def test_add_layers_matches_one_add_per_layer(order, reduce_batch, temperature):
    options = {"order": order, "reduce_batch": reduce_batch, "temperature": temperature, "keep_per_step": True}
    folded, one_by_one = ScoreAccumulator(**options), ScoreAccumulator(**options)
    for step in range(2):
        scores = _scores() + step
        folded.add_layers(scores, step=step, layers=(4, 5, 6))
        for layer, layer_scores in zip((4, 5, 6), scores, strict=True):
            one_by_one.add(layer_scores, step=step, layer=layer)
    assert folded.count == one_by_one.count
    assert folded.per_step.keys() == one_by_one.per_step.keys()
    for (maps, logits), (expected_maps, expected_logits) in [(folded.result(), one_by_one.result())]:
        torch.testing.assert_close(maps, expected_maps)
        torch.testing.assert_close(logits, expected_logits)
    expected = _scores().mean(0, keepdim=True) + 0.5
    if reduce_batch:
        expected = expected.mean(1)
    torch.testing.assert_close(folded.result()[1], expected[0] if not reduce_batch else expected)


def test_add_layers_leaves_the_callers_buffer_alone():
    buffer = _scores()
    copy = buffer.clone()
    accumulator = ScoreAccumulator()
    accumulator.add_layers(buffer, step=0, layers=(0, 1, 2))
    accumulator.add_layers(buffer, step=1, layers=(0, 1, 2))  # the running sums are not views of the buffer
    assert torch.equal(buffer, copy)


def test_shape_change_is_refused():
    accumulator = ScoreAccumulator()
    accumulator.add_layers(_scores(), step=0, layers=(0, 1, 2))
    with pytest.raises(ValueError, match="cannot be averaged"):
        accumulator.add_layers(_scores()[:, :1], step=1, layers=(0, 1, 2))
