"""Batched classifier-free guidance halves (SD3, CogVideoX, Bria, Mochi, HiDream-I1, JoyImage Edit Plus): which
rows are reported, decided on the host.

A transformer call the pipeline makes from its own ``__call__`` with guidance on is a ``[uncond, cond]`` batch: the
conditional half is reported with no device-to-host read (no ``torch.equal`` of the latent halves, no ``.item()``).
Only a direct transformer call made outside the pipeline's ``__call__`` while the pipeline still carries its guidance
flag compares the two latent halves (different rows are kept whole); the real-image path never halves its batch.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from typing import Any

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from conceptattention import ConceptAttention, explain
from conceptattention.adapters import guidance
from conceptattention.testing import (
    tiny_bria_pipeline,
    tiny_cogvideox_inputs,
    tiny_cogvideox_pipeline,
    tiny_hidream_image_pipeline,
    tiny_joyimage_edit_plus_pipeline,
    tiny_mochi_pipeline,
    tiny_sd3_inputs,
    tiny_sd3_pipeline,
)
from conceptattention.testing.battery import fresh_dynamo, random_image


#: aten ops that read a tensor's value on the host (a device-to-host synchronisation on a GPU)
HOST_READS = frozenset({"equal", "_local_scalar_dense", "is_nonzero"})
CONCEPTS = ["house", "sea"]


class HostReads(TorchDispatchMode):
    """Counts the :data:`HOST_READS` aten ops dispatched while active."""

    def __init__(self) -> None:
        super().__init__()
        self.ops: Counter[str] = Counter()

    def __torch_dispatch__(self, func: Any, types: Any, args: tuple[Any, ...] = (), kwargs: Any = None) -> Any:
        name = func.overloadpacket.__name__
        if name in HOST_READS:
            self.ops[name] += 1
        return func(*args, **(kwargs or {}))


def host_reads_in_transformer_calls(transformer: torch.nn.Module, run: Callable[[], Any]) -> tuple[int, Counter[str]]:
    """Run ``run()`` and count the host reads made inside the transformer's calls (from its first forward pre-hook,
    before the capture's own hook, to its last forward hook). Returns (transformer calls, host reads)."""
    reads, calls = HostReads(), []

    def enter(*_: Any) -> None:
        calls.append(1)
        reads.__enter__()

    handles = [
        transformer.register_forward_pre_hook(enter, prepend=True),
        # always_call: also when the call raises (the explain path's EarlyExit), else the mode stays on the stack
        transformer.register_forward_hook(lambda *_: reads.__exit__(None, None, None), always_call=True),
    ]
    try:
        run()
    finally:
        for handle in handles:
            handle.remove()
    return len(calls), reads.ops


def seeded(call: Callable[..., Any], **kwargs: Any) -> Callable[[Any], Any]:
    return lambda pipe: call(pipe, generator=torch.Generator().manual_seed(0), **kwargs)


def edit_plus(pipe: Any, **kwargs: Any) -> Any:
    return pipe(images=[[random_image(64, 64)]], height=64, width=96, **kwargs)


def text_to(pipe: Any, **kwargs: Any) -> Any:
    return pipe(**kwargs)


def guided(call: Callable[..., Any], guidance_scale: float, **kwargs: Any) -> Callable[[Any], Any]:
    """A seeded guided generation of one image in 2 steps, latents out: two transformer calls of [uncond, cond]."""
    common = {"prompt": "a house", "num_inference_steps": 2, "output_type": "latent"}
    return seeded(call, guidance_scale=guidance_scale, **common, **kwargs)


#: family -> (tiny pipeline, a guided generation of one image)
GUIDED = {
    "sd3": (tiny_sd3_pipeline, guided(text_to, 5.0, height=32, width=32, max_sequence_length=16)),
    "cogvideox": (tiny_cogvideox_pipeline, guided(text_to, 6.0, height=16, width=16, num_frames=9, max_sequence_length=16)),
    "bria": (tiny_bria_pipeline, guided(text_to, 3.0, height=32, width=32, max_sequence_length=32)),
    "mochi": (tiny_mochi_pipeline, guided(text_to, 3.0, height=32, width=48, num_frames=7, max_sequence_length=32)),
    "hidream_image": (tiny_hidream_image_pipeline, guided(text_to, 3.0, height=16, width=16, max_sequence_length=32)),
    "joyimage_edit_plus": (tiny_joyimage_edit_plus_pipeline, guided(edit_plus, 3.0, negative_prompt="blurry")),
}


@pytest.mark.parametrize("family", sorted(GUIDED))
def test_guided_generation_reads_nothing_on_the_host_per_transformer_call(family: str) -> None:
    """With maps on, a guided generation makes no more host reads inside its transformer calls than without maps
    (none: no ``torch.equal`` of the latent halves), and reports the conditional half: one image's maps."""
    build, generate = GUIDED[family]
    pipe = build()
    calls_off, reads_off = host_reads_in_transformer_calls(pipe.transformer, lambda: generate(pipe))

    def with_maps() -> None:
        with ConceptAttention(pipe, CONCEPTS) as attention:
            generate(pipe)
        assert len(attention.batch_maps) == 1  # the [uncond, cond] batch: its conditional half

    calls_on, reads_on = host_reads_in_transformer_calls(pipe.transformer, with_maps)
    assert calls_on == calls_off == 2
    assert reads_on == reads_off, (reads_on, reads_off)
    assert reads_on["equal"] == 0


@pytest.fixture(scope="module")
def sd3() -> Any:
    return tiny_sd3_pipeline(num_layers=3)


@pytest.fixture(scope="module")
def cogvideox() -> Any:
    return tiny_cogvideox_pipeline("1.0")


def test_guided_generation_never_compares_the_latent_halves(
    sd3: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The pipeline's own calls are halved on the host signal alone: the tensor comparison is never made, and the
    maps are those of the conditional half (the second image of ``batch_half="all"``), bit for bit."""
    generate = GUIDED["sd3"][1]
    with ConceptAttention(sd3, CONCEPTS, batch_half="all") as both:
        generate(sd3)

    def refuse(latents: torch.Tensor) -> bool:
        raise AssertionError("the latent halves were compared")

    monkeypatch.setattr(guidance, "batch_halves_identical", refuse)
    with ConceptAttention(sd3, CONCEPTS) as conditional:
        generate(sd3)
    assert len(both.batch_maps) == 2 and len(conditional.batch_maps) == 1
    assert torch.equal(conditional.maps.tensor, both.batch_maps[1].tensor)
    assert not torch.equal(both.batch_maps[0].tensor, both.batch_maps[1].tensor)


def direct_call_rows(pipe: Any, inputs: dict[str, Any], embeds: torch.Tensor) -> tuple[int, Counter[str]]:
    """Images reported and host reads of one direct transformer call inside a ``with`` block."""
    with ConceptAttention(pipe, concept_embeds=embeds) as attention:
        _, reads = host_reads_in_transformer_calls(pipe.transformer, lambda: pipe.transformer(**inputs))
    return len(attention.batch_maps), reads


def twin_halves(inputs: dict[str, Any]) -> dict[str, Any]:
    """The inputs with the second row's latents replaced by the first's (two identical halves)."""
    latents = inputs["hidden_states"]
    return {**inputs, "hidden_states": torch.cat([latents[:1]] * 2)}  # [2, ...]


@pytest.mark.parametrize("family", ["sd3", "cogvideox"])
def test_direct_call_while_guidance_is_still_on(family: str, sd3: Any, cogvideox: Any) -> None:
    """After a guided generation the pipeline still has its guidance flag on. A direct transformer call (not from the
    pipeline's ``__call__``) with two different rows reports both; with two identical halves it is taken as a
    guidance batch, as before: the one case decided by comparing the halves (one ``torch.equal``)."""
    pipe = {"sd3": sd3, "cogvideox": cogvideox}[family]
    GUIDED[family][1](pipe)  # leaves do_classifier_free_guidance / _guidance_scale on
    assert pipe._guidance_scale > 1
    if family == "sd3":
        inputs = tiny_sd3_inputs(batch_size=2)
        embeds = torch.randn(2, pipe.transformer.config.joint_attention_dim, generator=torch.Generator().manual_seed(1))
    else:
        inputs = tiny_cogvideox_inputs(pipe.transformer, batch_size=2)
        embeds = torch.randn(2, pipe.transformer.config.text_embed_dim, generator=torch.Generator().manual_seed(1))
    assert not torch.equal(inputs["hidden_states"][0], inputs["hidden_states"][1])
    with torch.no_grad():
        rows, reads = direct_call_rows(pipe, inputs, embeds)
        assert rows == 2 and reads["equal"] == 1
        rows, reads = direct_call_rows(pipe, twin_halves(inputs), embeds)
        assert rows == 1 and reads["equal"] == 1


def test_explain_after_guided_generation_keeps_its_batch_without_reading_it(sd3: Any) -> None:
    """The real-image path's batch is noise samples, never a guidance batch, even while the pipeline still has
    guidance on: both samples are averaged (as two single-sample runs), and no latent halves are compared."""
    GUIDED["sd3"][1](sd3)
    assert sd3.do_classifier_free_guidance
    image = random_image()
    kwargs = dict(height=32, width=48)
    calls, reads = host_reads_in_transformer_calls(
        sd3.transformer, lambda: explain(sd3, image, ["cat", "sky"], num_samples=2, **kwargs)
    )
    two = explain(sd3, image, ["cat", "sky"], num_samples=2, **kwargs)
    singles = [explain(sd3, image, ["cat", "sky"], seed=seed, **kwargs).tensor for seed in (0, 1)]
    assert calls == 1 and reads["equal"] == 0
    torch.testing.assert_close(two.tensor, torch.stack(singles).mean(0))


def test_compiled_transformer_guided_generation(sd3: Any) -> None:
    """``torch.compile`` of the whole transformer traces the capture hook: the host-side check runs outside the
    graph (``torch.compiler.disable``), the output is bit-identical and the maps are the eager ones."""
    pipe = tiny_sd3_pipeline(num_layers=3)
    generate = GUIDED["sd3"][1]
    with ConceptAttention(pipe, CONCEPTS) as eager:
        generate(pipe)
    with fresh_dynamo():
        pipe.transformer = torch.compile(pipe.transformer, backend="aot_eager")
        plain = generate(pipe).images
        with ConceptAttention(pipe, CONCEPTS) as compiled:
            output = generate(pipe).images
    assert torch.equal(plain, output)
    assert len(compiled.batch_maps) == 1
    torch.testing.assert_close(compiled.maps.tensor, eager.maps.tensor, rtol=1e-4, atol=1e-5)


class Pipeline:
    def __call__(self, other: Any = None) -> bool:
        return guidance.pipeline_call_running(other if other is not None else self)


class SubPipeline(Pipeline):
    def __call__(self, other: Any = None) -> bool:
        def deeper() -> bool:
            return super(SubPipeline, self).__call__(other)

        return deeper()


def test_pipeline_call_running() -> None:
    """True only inside ``__call__`` of that very pipeline (its class or a base class, any depth below it)."""
    pipe, sub = Pipeline(), SubPipeline()
    assert pipe() and sub()
    assert not guidance.pipeline_call_running(pipe) and not guidance.pipeline_call_running(sub)
    assert not pipe(Pipeline())  # another pipeline's call
    assert not Pipeline()(pipe)
