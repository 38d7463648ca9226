"""The zoo adapters whose stock processor hands the joint query/key/value to diffusers' attention dispatcher once
(HunyuanImage 2.1, HunyuanVideo 1.5, HunyuanVideo, Krea 2, JoyImage Edit and Edit Plus, Z-Image) take the image rows
of those tensors (adapters/attention_inputs.py) instead of re-applying RoPE (and, for Krea 2, the key/value head
repeat) to their taps: the maps are bit for bit those of the re-applying fallback (the compiled path), the model output
is unchanged, and the eager concept branch rotates no image row itself."""

from __future__ import annotations

import importlib
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Any

import pytest
import torch
from diffusers.models.attention_dispatch import _AttentionBackendRegistry

from conceptattention import ConceptAttention
from conceptattention.adapters import attention_inputs


def _builder(family: str, name: str, **options: Any) -> Callable[[], Any]:
    """``conceptattention.testing.<family>.<name>(**options)``, imported when called (Krea 2 and JoyImage need a
    newer diffusers than the oldest-diffusers CI step has; that step deselects them by name)."""
    return lambda: getattr(importlib.import_module(f"conceptattention.testing.{family}"), name)(**options)


@dataclass(frozen=True)
class Case:
    """One family: its tiny model and inputs, the concept width, the adapter module (name) whose
    ``keep_attention_inputs`` the processor calls, and the function of that module that re-applies RoPE to the image
    rows on the fallback."""

    build: Callable[[], torch.nn.Module]
    inputs: Callable[[], dict[str, Any]]
    width: int
    adapter: str
    rope: str

    @property
    def keeper(self) -> Any:
        return importlib.import_module(f"conceptattention.adapters.{self.adapter}")


CASES = {
    # HunyuanImage 2.1 and HunyuanVideo 1.5 run the FLUX.1 processor: keep_attention_inputs and RoPE in flux.py
    "hunyuan_image": Case(
        _builder("hunyuan_image", "tiny_hunyuan_image_transformer"),
        _builder("hunyuan_image", "tiny_hunyuan_image_inputs", batch_size=2), 16, "flux", "apply_rotary_emb",
    ),
    "hunyuan_video15": Case(
        _builder("hunyuan_video15", "tiny_hunyuan_video15_transformer"),
        _builder("hunyuan_video15", "tiny_hunyuan_video15_inputs", batch_size=2, image_to_video=True), 16, "flux",
        "apply_rotary_emb",
    ),
    "hunyuan_video": Case(
        _builder("hunyuan_video", "tiny_hunyuan_video_transformer"),
        _builder("hunyuan_video", "tiny_hunyuan_video_inputs", batch_size=2), 16, "hunyuan_video", "apply_rotary_emb",
    ),
    "krea2": Case(
        _builder("krea2", "tiny_krea2_transformer"), _builder("krea2", "tiny_krea2_inputs", batch_size=2), 32, "krea2",
        "apply_rotary_emb",
    ),
    "joyimage": Case(
        _builder("joyimage", "tiny_joyimage_transformer"), _builder("joyimage", "tiny_joyimage_inputs", batch_size=2),
        16, "joyimage", "_apply_rotary_emb",
    ),
    "joyimage_mrope": Case(
        _builder("joyimage", "tiny_joyimage_transformer", rope_type="mrope"),
        _builder("joyimage", "tiny_joyimage_inputs", batch_size=2, references=1), 16, "joyimage", "_apply_rotary_emb",
    ),
    "joyimage_edit_plus": Case(
        _builder("joyimage", "tiny_joyimage_edit_plus_transformer"),
        _builder("joyimage", "tiny_joyimage_edit_plus_inputs", batch_size=2), 16, "joyimage",
        "_apply_rotary_emb_batched",
    ),
    "z_image": Case(
        _builder("z_image", "tiny_z_image_transformer"), _builder("z_image", "tiny_z_image_inputs", batch_size=2), 16,
        "z_image", "rotate",
    ),
}


def _active_function() -> Any:
    return _AttentionBackendRegistry._backends[_AttentionBackendRegistry._active_backend]


def _same(first: Any, second: Any) -> bool:
    """Bit-identical model outputs (a tensor, or Z-Image's list of per-sample tensors)."""
    if isinstance(first, torch.Tensor):
        return torch.equal(first, second)
    return len(first) == len(second) and all(torch.equal(a, b) for a, b in zip(first, second, strict=True))


def _run(case: Case, model: torch.nn.Module, space: str | None, monkeypatch: pytest.MonkeyPatch, keep: bool) -> tuple:
    """Model output and maps with the attention inputs kept (``keep``) or with the taps' RoPE re-applied (the
    compiled path's fallback: ``keep_attention_inputs`` made a no-op in the adapter module); the maps and raw scores
    ``[2, B, C, F, h, w]``."""
    embeds = torch.randn(3, case.width, generator=torch.Generator().manual_seed(1))
    options = {} if space is None else {"space": space}
    with monkeypatch.context() as patch:
        if not keep:
            patch.setattr(case.keeper, "keep_attention_inputs", lambda processor, sink: nullcontext())
        with torch.no_grad(), ConceptAttention(model, concept_embeds=embeds, **options) as ca:
            output = model(**case.inputs())[0]
    maps = ca.batch_maps
    # [B, C, F, h, w] maps and raw scores of every sample
    return output, torch.stack([torch.stack([one.tensor, one.logits]) for one in maps], dim=1)


@pytest.mark.parametrize("space", [None, "cross_attention"], ids=["default-space", "cross-attention"])
@pytest.mark.parametrize("family", sorted(CASES))
def test_kept_inputs_give_the_maps_of_the_fallback(family, space, monkeypatch):
    case = CASES[family]
    model = case.build()
    before = _active_function()
    with torch.no_grad():
        plain = model(**case.inputs())[0]
    output_kept, kept = _run(case, model, space, monkeypatch, keep=True)
    output_fallback, fallback = _run(case, model, space, monkeypatch, keep=False)
    assert _same(output_kept, plain) and _same(output_fallback, plain)
    assert kept.isfinite().all()
    assert torch.equal(kept, fallback)  # the same rotated image rows, so the same maps, bit for bit
    assert _active_function() is before and not attention_inputs._wrapped


@pytest.mark.parametrize("family", sorted(CASES))
def test_the_eager_branch_rotates_no_image_row(family, monkeypatch):
    """The adapter module's RoPE function is not applied to the image rows by the eager concept branch (it may
    still rotate the concept rows), while the fallback does apply it to them: the test can fail."""
    case = CASES[family]
    module, name = case.keeper, case.rope
    original = getattr(module, name)
    model = case.build()
    lengths: list[int] = []

    def recording(x: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
        lengths.append(x.shape[1])  # [B, S, H, D]: the rows it rotates
        return original(x, *args, **kwargs)

    monkeypatch.setattr(module, name, recording)
    _, maps = _run(case, model, "cross_attention", monkeypatch, keep=True)
    num_image = maps[0, 0, 0].numel()  # [2, B, C, F, h, w]: the image (target) rows of one sample
    eager = list(lengths)
    lengths.clear()
    _run(case, model, "cross_attention", monkeypatch, keep=False)
    assert num_image not in eager, f"the eager branch rotated {num_image} image rows ({eager})"
    assert num_image in lengths  # the fallback re-applies RoPE to them


def test_launch_count_zoo_counts_fewer_kernels_on_joyimage():
    """benchmarks/launch_count_zoo.py: the kept inputs spare the branch its RoPE kernels (JoyImage Edit rotates the
    target's queries and keys together on the fallback, in every space). The script imports every zoo adapter, so
    the name says JoyImage: the oldest-diffusers CI step deselects it with that family."""
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
    try:
        launch_count_zoo = importlib.import_module("launch_count_zoo")
    finally:
        sys.path.pop(0)
    row = launch_count_zoo.measure("joyimage", concepts=2, dtype=torch.float32)
    assert row["joint_blocks"] == 3 and row["plain_kernels_per_block"] > 0
    for block in ("selected", "unselected"):
        assert 0 < row[f"kept_{block}"][0] < row[f"fallback_{block}"][0]
