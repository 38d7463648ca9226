"""Concept encoding never touches the caller's random state (issue 11, item 4).

The text encoders are left in train mode with dropout > 0, as diffusers' own tests build them: unguarded, encoding
the concepts would draw dropout masks from the global generator and change every later draw.
"""

from __future__ import annotations

from typing import Any

import pytest
import torch
from torch import nn

from conceptattention import ConceptAttention
from conceptattention.adapters import get_adapter
from conceptattention.encoding import encode_concepts_isolated, isolated_text_encoding, pipeline_text_encoders

from ..pipelines.cases import CASES, CONCEPTS, PipelineCase, generate


def with_dropout(pipe: Any, rate: float = 0.1) -> Any:
    """Put every text encoder in train mode with dropout ``rate`` (modules and functional attention dropout)."""
    for encoder in pipeline_text_encoders(pipe):
        encoder.train()
        for module in encoder.modules():
            if isinstance(module, nn.Dropout):
                module.p = rate
            for name in ("attention_dropout", "dropout"):
                if isinstance(getattr(module, name, None), float):
                    setattr(module, name, rate)
    return pipe


def training_flags(pipe: Any) -> list[bool]:
    return [module.training for encoder in pipeline_text_encoders(pipe) for module in encoder.modules()]


@pytest.fixture(scope="module", params=list(CASES))
def case(request: pytest.FixtureRequest) -> PipelineCase:
    return CASES[request.param]


@pytest.fixture(scope="module")
def pipe(case: PipelineCase) -> Any:
    pipe = with_dropout(case.build())
    list(pipe.text_encoder.modules())[-1].eval()  # mixed modes must come back exactly as they were, not all-train
    return pipe


def test_setup_draws_from_the_global_generator(pipe: Any) -> None:
    """Without the guard, encoding concepts in this setup does change the global random state (so the tests below
    can fail)."""
    state = torch.get_rng_state()
    get_adapter(pipe).encode_concepts(pipe, list(CONCEPTS), "mean")
    assert not torch.equal(torch.get_rng_state(), state)


def test_enter_leaves_random_state_and_modes_untouched(pipe: Any) -> None:
    flags = training_flags(pipe)
    torch.manual_seed(7)
    state = torch.get_rng_state()
    attention = ConceptAttention(pipe, list(CONCEPTS))
    attention.__enter__()
    try:
        assert torch.equal(torch.get_rng_state(), state)
        assert training_flags(pipe) == flags
    finally:
        attention.__exit__(None, None, None)
    assert training_flags(pipe) == flags


def test_isolated_encoding_is_deterministic_and_in_eval_mode(pipe: Any) -> None:
    adapter = get_adapter(pipe)
    first = encode_concepts_isolated(adapter, pipe, list(CONCEPTS), "mean")
    torch.rand(3)  # a different global state must not matter
    assert torch.equal(encode_concepts_isolated(adapter, pipe, list(CONCEPTS), "mean"), first)
    with isolated_text_encoding(pipe):
        assert not any(training_flags(pipe))
        expected = adapter.encode_concepts(pipe, list(CONCEPTS), "mean")
    assert torch.equal(first, expected)


def test_modes_restored_after_an_error(pipe: Any) -> None:
    flags = training_flags(pipe)
    state = torch.get_rng_state()
    with pytest.raises(RuntimeError, match="boom"), isolated_text_encoding(pipe):
        torch.rand(5)
        raise RuntimeError("boom")
    assert training_flags(pipe) == flags and torch.equal(torch.get_rng_state(), state)


@pytest.mark.parametrize("seeding", ["global_seed_no_generator", "manual_seed_generator"])
def test_outputs_identical_with_maps_on_and_off(case: PipelineCase, pipe: Any, seeding: str) -> None:
    """``torch.manual_seed`` then a generator-free call (latents from the global generator), or a seeded generator:
    the pipeline's own prompt encoding (dropout on) draws from the global generator in both, so any draw made by
    concept encoding would change the output."""
    kwargs: dict[str, Any] = {"generator": None} if seeding == "global_seed_no_generator" else {}

    def run(seed: int) -> torch.Tensor:
        torch.manual_seed(seed)
        return generate(case, pipe, reseed=False, **kwargs)

    reference = run(0)
    assert not torch.equal(run(1), reference)  # the output does depend on the global generator's state
    torch.manual_seed(0)
    with ConceptAttention(pipe, list(CONCEPTS)) as attention:  # concepts are encoded here, after the seeding
        ours = generate(case, pipe, reseed=False, **kwargs)
    assert torch.equal(ours, reference)
    assert len(attention.batch_maps) == 1


@pytest.mark.parametrize("name", ["flux", "sd3", "chroma", "qwenimage", "auraflow"])
def test_explain_leaves_random_state_untouched(name: str) -> None:
    """explain() encodes concepts and the caption; with dropout-mode encoders neither may draw from the caller's
    generator, and the maps equal those of eval-mode encoders."""
    from PIL import Image

    from conceptattention import explain

    image = Image.new("RGB", (32, 32), (200, 40, 40))
    pipe = CASES[name].build()
    expected = explain(pipe, image, list(CONCEPTS), caption="a cat", height=32, width=32)
    with_dropout(pipe)
    state = torch.get_rng_state()
    maps = explain(pipe, image, list(CONCEPTS), caption="a cat", height=32, width=32)
    assert torch.equal(torch.get_rng_state(), state)
    assert torch.equal(maps.tensor, expected.tensor)
    assert all(module.training for encoder in pipeline_text_encoders(pipe) for module in encoder.modules())


def test_forks_the_generator_of_every_device_the_encoders_use(monkeypatch: pytest.MonkeyPatch) -> None:
    """CPU always; plus each accelerator holding encoder weights or running the pipeline (offloaded encoders sit on
    the CPU or ``meta`` and run on the execution device). No accelerator is needed: fork_rng is recorded."""
    import contextlib

    calls: list[tuple[str, list[int]]] = []

    @contextlib.contextmanager
    def record(devices: Any, device_type: str = "cuda") -> Any:
        calls.append((device_type, list(devices)))
        yield

    monkeypatch.setattr(torch.random, "fork_rng", record)

    class Pipe:
        def __init__(self, execution: torch.device) -> None:
            self.components = {"text_encoder": nn.Linear(2, 2, device="meta"), "transformer": nn.Linear(2, 2)}
            self._execution_device = execution

    with isolated_text_encoding(Pipe(torch.device("cuda", 1))):
        pass
    assert calls == [("cuda", [1])]
    calls.clear()
    with isolated_text_encoding(Pipe(torch.device("cpu"))):
        pass
    assert calls == [("cuda", [])]  # devices=[]: the CPU generator only
