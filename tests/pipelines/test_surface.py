"""The diffusers pipeline surface with maps on vs off, for every supported family (issue 11, item 5).

For each tiny pipeline of ``tests/pipelines/cases.py`` and each feature a user may combine with maps (step-end
callbacks, also one that changes the latents; precomputed prompt embeddings; several images per prompt; a batch of
prompts; classifier-free guidance with a negative prompt; LoRA; VAE tiling and slicing; every ``output_type``; a
save/load round trip; group offloading and model CPU offload; fused QKV projections; a ``torch.compile``'d
transformer), the output inside ``with ConceptAttention(...)`` must equal the output
without maps bit for bit (``torch.equal`` / ``np.array_equal`` / identical pixels), maps must be recorded for every
image, and afterwards every processor and hook of the pipeline must be the one that was there before.

Regional compilation (``compile_repeated_blocks``) and the graph counts are tested with the adapter battery.
"""

from __future__ import annotations

import inspect
from typing import Any

import pytest
import torch

from conceptattention import ConceptAttention
from conceptattention.testing.battery import fresh_dynamo

from .cases import CASES, CONCEPTS, PROMPT, PipelineCase, assert_identical, generate, snapshot


@pytest.fixture(scope="module", params=list(CASES))
def case(request: pytest.FixtureRequest) -> PipelineCase:
    return CASES[request.param]


@pytest.fixture(scope="module")
def pipe(case: PipelineCase) -> Any:
    """The family's tiny pipeline, built once per family; tests that change it build their own."""
    return case.build()


def compare(case: PipelineCase, pipe: Any, **overrides: Any) -> ConceptAttention:
    """Generate without and with maps; assert bit-identity, one finite map set per output, nothing leaked.

    The snapshot is taken after the run without maps: a pipeline's first call may install its own lazy hooks (e.g.
    transformers' output-recording hooks on the text encoders, the diffusers hook registry of ``cache_context``).
    """
    reference = generate(case, pipe, **overrides)
    before = snapshot(pipe)
    with ConceptAttention(pipe, list(CONCEPTS)) as attention:
        ours = generate(case, pipe, **overrides)
    assert snapshot(pipe) == before, "a processor or hook was left behind (or one of the pipeline's was removed)"
    assert_identical(ours, reference)
    maps = attention.batch_maps
    assert len(maps) == len(reference)  # one map set per image / video
    for item in maps:
        assert item.concepts == CONCEPTS and bool(torch.isfinite(item.tensor).all())
    return attention


def transformer_rows(case: PipelineCase, pipe: Any, **overrides: Any) -> int:
    """Rows of latents the transformer processed in one generation (a guided step processes two per image)."""
    rows = []

    def count(module: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        rows.append(kwargs.get("hidden_states", args[0] if args else None).shape[0])

    handle = pipe.transformer.register_forward_pre_hook(count, with_kwargs=True)
    try:
        generate(case, pipe, **overrides)
    finally:
        handle.remove()
    return sum(rows)


@pytest.fixture(scope="module")
def default_maps(case: PipelineCase, pipe: Any) -> torch.Tensor:
    """The maps of the default call: features that leave the generation alone must leave them alone too."""
    return compare(case, pipe).maps.tensor


def test_default_call(case: PipelineCase, pipe: Any, default_maps: torch.Tensor) -> None:
    assert torch.equal(compare(case, pipe).maps.tensor, default_maps)  # and repeatable


def test_callback_on_step_end(case: PipelineCase, pipe: Any, default_maps: torch.Tensor) -> None:
    seen: list[int] = []

    def callback(pipeline: Any, step: int, timestep: Any, tensors: dict[str, Any]) -> dict[str, Any]:
        seen.append(step)
        assert isinstance(tensors["latents"], torch.Tensor)
        return {}

    attention = compare(case, pipe, callback_on_step_end=callback, callback_on_step_end_tensor_inputs=["latents"])
    assert torch.equal(attention.maps.tensor, default_maps)
    steps = case.call["num_inference_steps"]
    assert seen == list(range(steps)) * 2  # once without, once with maps


def test_callback_changing_latents(case: PipelineCase, pipe: Any) -> None:
    def damp(pipeline: Any, step: int, timestep: Any, tensors: dict[str, Any]) -> dict[str, Any]:
        return {"latents": tensors["latents"] * 0.5} if step == 0 else {}

    changed = generate(case, pipe, callback_on_step_end=damp, callback_on_step_end_tensor_inputs=["latents"])
    assert not torch.equal(changed, generate(case, pipe))  # the callback does change the generation
    compare(case, pipe, callback_on_step_end=damp, callback_on_step_end_tensor_inputs=["latents"])


def test_prompt_embeds_passed_in(case: PipelineCase, pipe: Any, default_maps: torch.Tensor) -> None:
    with torch.no_grad():  # as inside the pipeline (with autograd on, CPU kernels may differ in the last bit)
        embeds = case.embeds(pipe, PROMPT)
    assert torch.equal(compare(case, pipe, **embeds).maps.tensor, default_maps)  # the same transformer inputs


def test_num_images_per_prompt(case: PipelineCase, pipe: Any) -> None:
    # CogVideoXPipeline ignores num_videos_per_prompt (always one video per prompt); compare still holds
    compare(case, pipe, **{case.per_prompt: 2})


def test_batch_of_prompts(case: PipelineCase, pipe: Any) -> None:
    attention = compare(case, pipe, prompt=["a cat under the sky", "a dog on the grass"])
    assert len(attention.batch_maps) == 2


def test_classifier_free_guidance_negative_prompt(case: PipelineCase, pipe: Any) -> None:
    if case.cfg is None:  # nothing to test: the pipeline has no negative prompt and no guidance batch
        assert "negative_prompt" not in inspect.signature(type(pipe).__call__).parameters
        return
    steps = case.call["num_inference_steps"]
    guided, plain = transformer_rows(case, pipe, **case.cfg), transformer_rows(case, pipe)
    assert plain == steps and guided >= 2 * steps  # guided (SD3 skip-layer guidance adds calls)
    attention = compare(case, pipe, **case.cfg)
    assert len(attention.batch_maps) == 1  # the conditional half only


@pytest.mark.parametrize("output_type", ["latent", "np", "pil"])
def test_output_type(case: PipelineCase, pipe: Any, default_maps: torch.Tensor, output_type: str) -> None:
    assert torch.equal(compare(case, pipe, output_type=output_type).maps.tensor, default_maps)


@pytest.mark.parametrize("mode", ["tiling", "slicing"])
def test_vae_tiling_and_slicing(case: PipelineCase, pipe: Any, default_maps: torch.Tensor, mode: str) -> None:
    vae = pipe.vae
    getattr(vae, f"enable_{mode}")()
    try:
        assert torch.equal(compare(case, pipe).maps.tensor, default_maps)
    finally:
        getattr(vae, f"disable_{mode}")()


def test_lora(case: PipelineCase) -> None:
    from peft import LoraConfig  # the dev extra installs peft

    pipe = case.build()
    reference = generate(case, pipe)
    names = {name.rsplit(".", 1)[-1] for name, _ in pipe.transformer.named_modules()}
    targets = [target for target in case.lora_targets if target in names]
    pipe.transformer.add_adapter(LoraConfig(r=4, lora_alpha=4, target_modules=targets, init_lora_weights=False))
    assert not torch.equal(generate(case, pipe), reference)  # the LoRA is active
    compare(case, pipe)
    pipe.transformer.set_adapters(["default_0"], weights=[0.5])  # scaled
    compare(case, pipe)
    pipe.transformer.disable_adapters()
    compare(case, pipe)


def test_save_pretrained_round_trip(case: PipelineCase, pipe: Any, tmp_path: Any) -> None:
    """Saved inside the ``with`` block, the pipeline reloads with stock processors and the same output and maps."""
    stock = {name: type(processor) for name, processor in pipe.transformer.attn_processors.items()}
    reference = generate(case, pipe)
    with ConceptAttention(pipe, list(CONCEPTS)) as attention:
        generate(case, pipe)
        pipe.save_pretrained(tmp_path)
    loaded = type(pipe).from_pretrained(tmp_path)
    loaded.set_progress_bar_config(disable=True)
    assert {name: type(processor) for name, processor in loaded.transformer.attn_processors.items()} == stock
    assert_identical(generate(case, loaded), reference)
    again = compare(case, loaded)
    torch.testing.assert_close(again.maps.tensor, attention.maps.tensor, rtol=0, atol=0)


OFFLOAD = {
    "group_block_level": lambda pipe: pipe.transformer.enable_group_offload(
        torch.device("cpu"), offload_type="block_level", num_blocks_per_group=1
    ),
    "group_leaf_level": lambda pipe: pipe.enable_group_offload(torch.device("cpu"), offload_type="leaf_level"),
    "model_cpu_offload": lambda pipe: pipe.enable_model_cpu_offload(device="cpu"),
}


@pytest.mark.parametrize("offload", list(OFFLOAD))
def test_offload_hooks(case: PipelineCase, default_maps: torch.Tensor, offload: str) -> None:
    """Offload hooks (CPU to CPU here: the hooks are those used with an accelerator) stay bit-identical and in place.

    ``enable_sequential_cpu_offload(device="cpu")`` is not covered: it fails on a CPU-only machine without maps too.
    """
    pipe = case.build()
    reference = generate(case, pipe)
    OFFLOAD[offload](pipe)
    assert_identical(generate(case, pipe), reference)
    assert torch.equal(compare(case, pipe).maps.tensor, default_maps)  # same seeds, same weights, same maps


def test_fused_qkv_projections(case: PipelineCase, default_maps: torch.Tensor) -> None:
    """``transformer.fuse_qkv_projections()`` (SD3, CogVideoX and AuraFlow swap in fused processors, FLUX-style models
    fuse inside theirs): bit-identical with maps on, and the maps are those of the unfused pipeline (the fused
    projections hold the same weights; the matmuls are grouped differently, hence a float tolerance)."""
    pipe = case.build()
    pipe.transformer.fuse_qkv_projections()
    if getattr(pipe.transformer.config, "dual_attention_layers", ()):
        # SD3.5-medium's dual attention: diffusers 0.42.1 fuses it, then fails in its own processor without maps too
        with pytest.raises(AttributeError):
            generate(case, pipe)
        return
    attention = compare(case, pipe)
    torch.testing.assert_close(attention.maps.tensor, default_maps, rtol=1e-4, atol=1e-5)


def test_compiled_transformer(case: PipelineCase, default_maps: torch.Tensor) -> None:
    """``pipe.transformer = torch.compile(pipe.transformer)`` (aot_eager on the CPU): with maps on the compiled
    pipeline's output equals its output without, and the maps equal the eager pipeline's."""
    pipe = case.build()
    with fresh_dynamo():
        pipe.transformer = torch.compile(pipe.transformer, backend="aot_eager")
        attention = compare(case, pipe)
        assert attention.transformer is pipe.transformer._orig_mod
        torch.testing.assert_close(attention.maps.tensor, default_maps, rtol=1e-4, atol=1e-5)
