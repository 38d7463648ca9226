"""The attention-input wrapper (adapters/attention_inputs.py): the concept branch takes the joint keys after RoPE from
diffusers' attention dispatcher instead of re-applying RoPE; the registry is always restored, other threads are not
recorded, and the maps are those of the RoPE-re-applying fallback, exactly."""

from __future__ import annotations

import threading
from contextlib import nullcontext

import pytest
import torch
from diffusers.models.attention_dispatch import _AttentionBackendRegistry, dispatch_attention_fn

from conceptattention import ConceptAttention
from conceptattention.adapters import attention_inputs, flux, qwenimage
from conceptattention.adapters.attention_inputs import ATTENTION_KEY, keep_attention_inputs
from conceptattention.testing.flux import tiny_flux_inputs, tiny_flux_transformer
from conceptattention.testing.qwenimage import tiny_qwenimage_inputs, tiny_qwenimage_transformer


class _Processor:
    """The two attributes of a diffusers processor that keep_attention_inputs reads."""

    def __init__(self, backend=None, parallel_config=None):
        self._attention_backend = backend
        self._parallel_config = parallel_config


def _active_function():
    return _AttentionBackendRegistry._backends[_AttentionBackendRegistry._active_backend]


def _qkv():
    generator = torch.Generator().manual_seed(0)
    return tuple(torch.randn(1, 6, 2, 8, generator=generator) for _ in range(3))


def test_keeps_the_first_call_and_restores_the_registry():
    before = _active_function()
    query, key, value = _qkv()
    sink = {}
    with keep_attention_inputs(_Processor(), sink):
        assert _active_function() is not before
        out = dispatch_attention_fn(query, key, value)
        dispatch_attention_fn(value, value, value)  # a second call (IP-Adapter) is not kept
    assert _active_function() is before
    assert sink[ATTENTION_KEY] is key and sink["attention_query"] is query and sink["attention_value"] is value
    assert torch.equal(out, dispatch_attention_fn(query, key, value))  # the attention itself is unchanged


def test_registry_restored_after_an_exception():
    before = _active_function()
    with pytest.raises(RuntimeError, match="inside"), keep_attention_inputs(_Processor(), {}):
        raise RuntimeError("inside")
    assert _active_function() is before
    assert not attention_inputs._wrapped


def test_other_threads_are_not_recorded():
    query, key, value = _qkv()
    sink, outputs = {}, []
    with keep_attention_inputs(_Processor(), sink):
        thread = threading.Thread(target=lambda: outputs.append(dispatch_attention_fn(query, key, value)))
        thread.start()
        thread.join()
    assert sink == {} and len(outputs) == 1


def test_nested_users_share_one_wrapper():
    before = _active_function()
    query, key, value = _qkv()
    outer, inner = {}, {}
    with keep_attention_inputs(_Processor(), outer):
        wrapper = _active_function()
        with keep_attention_inputs(_Processor(), inner):
            assert _active_function() is wrapper  # not wrapped twice
            dispatch_attention_fn(query, key, value)
        assert _active_function() is wrapper  # the outer user still needs it
        dispatch_attention_fn(value, value, value)
    assert _active_function() is before
    assert inner[ATTENTION_KEY] is key and outer[ATTENTION_KEY] is value


@pytest.mark.parametrize(
    "processor",
    [_Processor(parallel_config=object()), _Processor(backend="no-such-backend")],
    ids=["context-parallel", "unknown-backend"],
)
def test_no_op_where_it_cannot_apply(processor):
    before = _active_function()
    sink = {}
    with keep_attention_inputs(processor, sink):
        assert _active_function() is before
        dispatch_attention_fn(*_qkv())
    assert sink == {}


def test_an_explicit_backend_is_wrapped():
    before = _AttentionBackendRegistry._backends[_AttentionBackendRegistry._active_backend]
    sink = {}
    with keep_attention_inputs(_Processor(backend="native"), sink):
        dispatch_attention_fn(*_qkv(), backend="native")
    assert ATTENTION_KEY in sink and _active_function() is before


def _maps(model, inputs, keep):
    """Maps of a forward with the attention inputs kept (``keep``) or with RoPE re-applied (the compiled path)."""
    originals = flux.keep_attention_inputs, qwenimage.keep_attention_inputs
    if not keep:
        flux.keep_attention_inputs = qwenimage.keep_attention_inputs = lambda processor, sink: nullcontext()
    try:
        with ConceptAttention(model, concept_embeds=torch.randn(3, model.config.joint_attention_dim, generator=torch.Generator().manual_seed(1)), layers=[0, 1], space="cross_attention") as ca:
            output = model(**inputs)[0]
    finally:
        flux.keep_attention_inputs, qwenimage.keep_attention_inputs = originals
    return output, ca.maps.tensor


@pytest.mark.parametrize(
    ("build", "inputs"),
    [(tiny_flux_transformer, tiny_flux_inputs), (tiny_qwenimage_transformer, tiny_qwenimage_inputs)],
    ids=["flux", "qwenimage"],
)
def test_kept_keys_give_the_maps_of_re_applied_rope(build, inputs):
    model = build()
    before = _active_function()
    output_kept, kept = _maps(model, inputs(), keep=True)
    output_rope, rope = _maps(model, inputs(), keep=False)
    assert torch.equal(output_kept, output_rope)
    assert torch.equal(kept, rope)  # the same rotated keys, so the same maps, bit for bit
    assert _active_function() is before and not attention_inputs._wrapped


def test_the_eager_branch_does_not_re_apply_rope(monkeypatch):
    """FLUX.1 double and single blocks: no ``apply_rotary_emb`` call by the concept branch (diffusers' processor
    still applies it once to the joint rows)."""
    from conceptattention.adapters import flux_single

    def refuse(*args, **kwargs):
        raise AssertionError("RoPE re-applied by the concept branch")

    monkeypatch.setattr(flux, "apply_rotary_emb", refuse)
    monkeypatch.setattr(flux_single, "apply_rotary_emb", refuse)
    model = tiny_flux_transformer()
    num_double = len(model.transformer_blocks)
    with ConceptAttention(model, concept_embeds=torch.randn(2, model.config.joint_attention_dim), layers=[1, num_double]) as ca:
        model(**tiny_flux_inputs())
    assert ca.maps.tensor.isfinite().all()


def test_no_stream_update_after_the_last_selected_block():
    """The concept stream's MLP runs in the selected blocks before the last one, not in the last one (no later block
    reads the stream)."""
    model = tiny_flux_transformer()
    calls = {0: 0, 1: 0}
    for index in calls:
        model.transformer_blocks[index].ff_context.register_forward_hook(
            lambda module, args, output, index=index: calls.__setitem__(index, calls[index] + 1)
        )
    with ConceptAttention(model, concept_embeds=torch.randn(2, model.config.joint_attention_dim), layers=[0, 1]):
        model(**tiny_flux_inputs())
    assert calls == {0: 2, 1: 1}  # block 0: text and concepts; block 1 (last selected): text only


def test_two_sessions_in_two_threads_keep_their_own_inputs():
    """Two models with maps, run at the same time in two threads (e.g. a Gradio app serving two users): each gets
    the maps it gets alone, and the registry is restored after both."""
    before = _active_function()
    models = [tiny_flux_transformer(), tiny_flux_transformer(seed=1)]
    embeds = [torch.randn(2, 32, generator=torch.Generator().manual_seed(seed)) for seed in (3, 4)]

    def maps_of(index: int) -> torch.Tensor:
        with ConceptAttention(models[index], concept_embeds=embeds[index]) as ca:
            for _ in range(5):  # several calls, so that the threads' blocks interleave
                models[index](**tiny_flux_inputs(seed=index))
        return ca.maps.tensor

    alone = [maps_of(0), maps_of(1)]
    results: dict[int, torch.Tensor] = {}
    barrier = threading.Barrier(2)

    def worker(index: int) -> None:
        barrier.wait()
        results[index] = maps_of(index)

    threads = [threading.Thread(target=worker, args=(index,)) for index in (0, 1)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert torch.equal(results[0], alone[0]) and torch.equal(results[1], alone[1])
    assert not torch.equal(alone[0], alone[1])
    assert _active_function() is before and not attention_inputs._wrapped
