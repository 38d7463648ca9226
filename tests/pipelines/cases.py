"""One tiny offline pipeline per supported family, with what the pipeline-surface tests need to call it.

Each :class:`PipelineCase` names a builder from ``conceptattention.testing*``, the keyword arguments of a short
generation, how to pass precomputed prompt embeddings, how to turn on classifier-free guidance (true CFG or
negative prompts) and the name of the per-prompt count argument. Also: helpers that compare two pipeline outputs
exactly (tensors, arrays, PIL images, nested lists) and snapshot every processor and hook of a pipeline.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import nn

from conceptattention.testing import (
    tiny_auraflow_pipeline,
    tiny_chroma_pipeline,
    tiny_cogvideox_pipeline,
    tiny_flux2_klein_pipeline,
    tiny_flux2_pipeline,
    tiny_flux_pipeline,
    tiny_hunyuan_video_pipeline,
    tiny_qwenimage_pipeline,
    tiny_sd3_pipeline,
)


CONCEPTS = ("cat", "sky")
PROMPT = "a cat under the sky"


@dataclass(frozen=True)
class PipelineCase:
    """A supported pipeline family as the surface tests drive it.

    Attributes:
        name: Test id (``"flux"``).
        build: Builds the tiny pipeline (random weights, in-memory tokenizers, progress bar off).
        call: Keyword arguments of a short generation (size, steps, sequence length, ``output_type``).
        embeds: ``(pipe, prompt) -> kwargs`` with precomputed prompt embeddings replacing ``prompt``.
        cfg: Keyword arguments that turn on classifier-free guidance (true CFG / negative prompt); None for a
            guidance-distilled pipeline without it (FLUX.2-dev).
        per_prompt: Name of the images-per-prompt argument.
        output: Attribute of the pipeline's result holding the images (``"images"``) or videos (``"frames"``).
        lora_targets: Linear layers of the joint blocks that get a LoRA (``"to_q"``, ``"add_q_proj"``...).
    """

    name: str
    build: Callable[[], Any]
    call: dict[str, Any]
    embeds: Callable[[Any, str], dict[str, Any]]
    cfg: dict[str, Any] | None
    per_prompt: str = "num_images_per_prompt"
    output: str = "images"
    lora_targets: tuple[str, ...] = ("to_q", "to_k", "to_v", "add_q_proj", "add_k_proj", "add_v_proj")
    extra: dict[str, Any] = field(default_factory=dict)


def _flux_embeds(pipe: Any, prompt: str) -> dict[str, Any]:
    prompt_embeds, pooled, _ = pipe.encode_prompt(prompt, prompt_2=None, max_sequence_length=32)
    return {"prompt_embeds": prompt_embeds, "pooled_prompt_embeds": pooled}


def _sd3_embeds(pipe: Any, prompt: str) -> dict[str, Any]:
    prompt_embeds, _, pooled, _ = pipe.encode_prompt(
        prompt, None, None, do_classifier_free_guidance=False, max_sequence_length=16
    )
    return {"prompt_embeds": prompt_embeds, "pooled_prompt_embeds": pooled}


def _cogvideox_embeds(pipe: Any, prompt: str) -> dict[str, Any]:
    prompt_embeds, _ = pipe.encode_prompt(prompt, do_classifier_free_guidance=False, max_sequence_length=16)
    return {"prompt_embeds": prompt_embeds}


def _chroma_embeds(pipe: Any, prompt: str) -> dict[str, Any]:
    prompt_embeds, _, mask, *_ = pipe.encode_prompt(prompt, do_classifier_free_guidance=False, max_sequence_length=32)
    return {"prompt_embeds": prompt_embeds, "prompt_attention_mask": mask}


def _flux2_embeds(pipe: Any, prompt: str) -> dict[str, Any]:
    prompt_embeds, _ = pipe.encode_prompt(prompt, max_sequence_length=64)
    return {"prompt_embeds": prompt_embeds}


def _qwenimage_embeds(pipe: Any, prompt: str) -> dict[str, Any]:
    prompt_embeds, mask = pipe.encode_prompt(prompt, max_sequence_length=256)
    return {"prompt_embeds": prompt_embeds, "prompt_embeds_mask": mask}


def _hunyuan_embeds(pipe: Any, prompt: str) -> dict[str, Any]:
    prompt_embeds, pooled, mask = pipe.encode_prompt(
        prompt, None, prompt_template={"template": "{}", "crop_start": 0}, max_sequence_length=16
    )
    return {"prompt_embeds": prompt_embeds, "pooled_prompt_embeds": pooled, "prompt_attention_mask": mask}


def _auraflow_embeds(pipe: Any, prompt: str) -> dict[str, Any]:
    prompt_embeds, mask, *_ = pipe.encode_prompt(prompt, do_classifier_free_guidance=False, max_sequence_length=32)
    return {"prompt_embeds": prompt_embeds, "prompt_attention_mask": mask}


def _cogvideox_case(name: str, build: Callable[[], Any]) -> PipelineCase:
    """A CogVideoX case (1.0 and 1.5 run the same calls)."""
    return PipelineCase(
        name,
        build,
        dict(height=16, width=16, num_frames=9, num_inference_steps=2, guidance_scale=1.0, max_sequence_length=16),
        _cogvideox_embeds,
        dict(negative_prompt="blurry", guidance_scale=6.0),
        per_prompt="num_videos_per_prompt",
        output="frames",
        lora_targets=("to_q", "to_k", "to_v"),
    )


CASES: dict[str, PipelineCase] = {
    case.name: case
    for case in (
        PipelineCase(
            "flux",
            tiny_flux_pipeline,
            dict(height=32, width=32, num_inference_steps=2, max_sequence_length=32),
            _flux_embeds,
            dict(negative_prompt="blurry", true_cfg_scale=2.0),
        ),
        PipelineCase(
            "sd3",
            tiny_sd3_pipeline,
            dict(height=32, width=32, num_inference_steps=2, guidance_scale=1.0, max_sequence_length=16),
            _sd3_embeds,
            dict(negative_prompt="blurry", guidance_scale=3.0),
        ),
        PipelineCase(
            "sd35",  # SD3.5-Medium layout: dual attention in the first block, RMS q/k norms
            functools.partial(tiny_sd3_pipeline, sd35=True),
            dict(height=32, width=32, num_inference_steps=2, guidance_scale=1.0, max_sequence_length=16),
            _sd3_embeds,
            dict(  # with skip-layer guidance (an extra transformer call on step 1)
                negative_prompt="blurry",
                guidance_scale=3.0,
                skip_guidance_layers=[1],
                skip_layer_guidance_start=0.0,
                skip_layer_guidance_stop=1.0,
            ),
        ),
        _cogvideox_case("cogvideox", tiny_cogvideox_pipeline),
        _cogvideox_case("cogvideox15", functools.partial(tiny_cogvideox_pipeline, version="1.5")),  # temporal patches, RoPE
        PipelineCase(
            "chroma",
            tiny_chroma_pipeline,
            dict(height=32, width=32, num_inference_steps=2, guidance_scale=1.0, max_sequence_length=32),
            _chroma_embeds,
            dict(negative_prompt="blurry", guidance_scale=3.0),
        ),
        PipelineCase(
            "flux2_klein",
            tiny_flux2_klein_pipeline,
            dict(height=32, width=32, num_inference_steps=2, guidance_scale=1.0, max_sequence_length=64),
            _flux2_embeds,
            dict(guidance_scale=3.0),  # Klein (not distilled): CFG against the empty prompt
        ),
        PipelineCase(
            "flux2_dev",
            tiny_flux2_pipeline,
            dict(height=32, width=32, num_inference_steps=2, guidance_scale=4.0, max_sequence_length=64),
            _flux2_embeds,
            None,  # guidance-distilled: no negative prompt, no CFG
        ),
        PipelineCase(
            "qwenimage",
            tiny_qwenimage_pipeline,
            dict(height=32, width=32, num_inference_steps=2, max_sequence_length=256),  # the template comes first
            _qwenimage_embeds,
            dict(negative_prompt="blurry", true_cfg_scale=3.0),
        ),
        PipelineCase(
            "hunyuan_video",
            tiny_hunyuan_video_pipeline,
            dict(
                height=16,
                width=16,
                num_frames=5,
                num_inference_steps=2,
                max_sequence_length=16,
                prompt_template={"template": "{}", "crop_start": 0},
            ),
            _hunyuan_embeds,
            dict(negative_prompt="blurry", true_cfg_scale=3.0),
            per_prompt="num_videos_per_prompt",
            output="frames",
        ),
        PipelineCase(
            "auraflow",
            tiny_auraflow_pipeline,
            dict(height=16, width=16, num_inference_steps=2, guidance_scale=1.0, max_sequence_length=32),
            _auraflow_embeds,
            dict(negative_prompt="blurry", guidance_scale=3.0),
        ),
    )
}


def generate(case: PipelineCase, pipe: Any, reseed: bool = True, **overrides: Any) -> Any:
    """One short seeded generation: ``case.call`` updated with ``overrides``; ``prompt`` defaults to :data:`PROMPT`.

    With ``reseed`` the global RNG is reseeded first, so that anything drawing from it is reproducible.
    """
    kwargs = {"prompt": PROMPT, "output_type": "pt", **case.call, **overrides}
    if "prompt_embeds" in kwargs:
        kwargs.pop("prompt")
    if reseed:
        torch.manual_seed(1234)
    kwargs.setdefault("generator", torch.Generator().manual_seed(0))
    return getattr(pipe(**kwargs), case.output)


def assert_identical(ours: Any, reference: Any, where: str = "output") -> None:
    """Exact equality of two pipeline outputs (tensors, arrays, PIL images, and lists/tuples of them)."""
    assert type(ours) is type(reference), f"{where}: {type(ours).__name__} vs {type(reference).__name__}"
    if isinstance(ours, torch.Tensor):
        assert ours.dtype == reference.dtype and torch.equal(ours, reference), f"{where}: tensors differ"
    elif isinstance(ours, np.ndarray):
        assert ours.dtype == reference.dtype and np.array_equal(ours, reference), f"{where}: arrays differ"
    elif isinstance(ours, Image.Image):
        assert ours.size == reference.size and ours.mode == reference.mode, f"{where}: images differ in size/mode"
        assert ours.tobytes() == reference.tobytes(), f"{where}: image pixels differ"
    elif isinstance(ours, list | tuple):
        assert len(ours) == len(reference), f"{where}: {len(ours)} vs {len(reference)} items"
        for index, (item, expected) in enumerate(zip(ours, reference)):
            assert_identical(item, expected, f"{where}[{index}]")
    else:
        raise AssertionError(f"{where}: cannot compare {type(ours).__name__}")


def _hooks_of(module: nn.Module) -> tuple[Any, ...]:
    registry = getattr(module, "_diffusers_hook", None)
    return (
        tuple(module._forward_pre_hooks),
        tuple(module._forward_hooks),
        tuple(getattr(module, "_forward_hooks_with_kwargs", {})),
        "forward" in vars(module),
        tuple(registry._hook_order) if registry is not None else (),  # pipelines create an empty one on first call
        type(getattr(module, "_hf_hook", None)).__name__,  # model CPU offload re-creates its hooks every call
    )


def snapshot(pipe: Any) -> dict[str, Any]:
    """Every attention processor (by identity) and every hook of every module of the pipeline's components.

    Two snapshots compare equal when nothing was added, removed or swapped: torch hooks (their handle ids), diffusers
    hook registries (hook names in order), accelerate hooks (by class), instance-level ``forward`` overrides, processors.
    """
    state: dict[str, Any] = {}
    for name, component in pipe.components.items():
        if not isinstance(component, nn.Module):
            continue
        for path, module in component.named_modules():
            state[f"{name}.{path}:hooks"] = _hooks_of(module)
            processor = getattr(module, "processor", None)
            if processor is not None:
                state[f"{name}.{path}:processor"] = id(processor)
    return state
