"""Transformers without an adapter are refused with a message that says which kind the model is and why
ConceptAttention does not apply (single-stream: beyond the paper, planned; cross-attention only: out of scope, and
the DAAM-style baseline covers UNets only; two-stream without an adapter yet: planned), checked on tiny instances.
The README's generated list of refused classes stays in sync with the registry."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import torch

from conceptattention import ConceptAttention
from conceptattention.adapters import UnsupportedModelError, get_adapter, refused_models

from ..script_modules import ROOT, load_script


def _tiny(name: str, **config: Any) -> Callable[[], Any]:
    def build() -> Any:
        import diffusers

        torch.manual_seed(0)
        return getattr(diffusers, name)(**config)

    build.__name__ = name
    return build


SINGLE_STREAM = [
    _tiny(
        "Lumina2Transformer2DModel", sample_size=8, in_channels=4, hidden_size=32, num_layers=1, num_refiner_layers=1,
        num_attention_heads=2, num_kv_heads=2, multiple_of=16, axes_dim_rope=(4, 6, 6), axes_lens=(16, 16, 16),
        cap_feat_dim=16,
    ),
]
CROSS_ATTENTION = [
    _tiny(
        "WanTransformer3DModel", patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=8, in_channels=4,
        out_channels=4, text_dim=16, freq_dim=16, ffn_dim=32, num_layers=1, rope_max_seq_len=32,
    ),
    _tiny(
        "SanaTransformer2DModel", in_channels=4, out_channels=4, num_attention_heads=2, attention_head_dim=8,
        num_layers=1, num_cross_attention_heads=2, cross_attention_head_dim=8, cross_attention_dim=16,
        caption_channels=16, sample_size=8,
    ),
    _tiny(
        "PixArtTransformer2DModel", num_attention_heads=2, attention_head_dim=8, in_channels=4, out_channels=8,
        num_layers=1, cross_attention_dim=16, sample_size=8, caption_channels=16,
    ),
    _tiny(
        "Kandinsky5Transformer3DModel", in_visual_dim=4, in_text_dim=16, in_text_dim2=8, time_dim=16,
        out_visual_dim=4, model_dim=32, ff_dim=64, num_text_blocks=1, num_visual_blocks=1, axes_dims=(4, 6, 6),
    ),
]
def _refusal(build: Callable[[], Any]) -> str:
    model = build()
    with pytest.raises(UnsupportedModelError) as by_registry:
        get_adapter(model)
    with pytest.raises(UnsupportedModelError) as by_session:
        ConceptAttention(model, concept_embeds=torch.randn(2, 16))
    assert str(by_registry.value) == str(by_session.value)
    message = str(by_registry.value)
    assert message.startswith(type(model).__name__)
    assert "FluxTransformer2DModel" in message  # the supported transformers are listed
    return message


@pytest.mark.parametrize("build", SINGLE_STREAM, ids=lambda build: build.__name__)
def test_single_stream_refused_as_beyond_the_paper(build):
    message = _refusal(build)
    assert "is a single-stream transformer" in message
    assert "beyond the paper and planned" in message and "shared weights" in message


@pytest.mark.parametrize("build", CROSS_ATTENTION, ids=lambda build: build.__name__)
def test_cross_attention_refused_as_out_of_scope(build):
    message = _refusal(build)
    assert "is a cross-attention-only transformer" in message and "out of scope" in message
    assert "conceptattention.evaluation.daam" in message and "UNet pipelines" in message


def test_two_stream_without_adapter_refused_as_planned(monkeypatch):
    """Every surveyed two-stream class has an adapter now; the message for one that has none (a class added to the
    refused list) says so, checked on a stand-in class."""
    from conceptattention import adapters

    monkeypatch.setitem(adapters._REFUSED, "Linear", (adapters.TWO_STREAM, "stand-in evidence"))
    with pytest.raises(UnsupportedModelError) as refused:
        get_adapter(torch.nn.Linear(2, 2))
    message = str(refused.value)
    assert message.startswith("Linear is a two-stream joint-attention transformer")
    assert "(stand-in evidence)" in message and "no adapter for it yet" in message and "register_adapter" in message
    assert not [row for row in refused_models() if row["kind"] == adapters.TWO_STREAM and row["transformer"] != "Linear"]


def test_unknown_model_keeps_the_generic_message():
    with pytest.raises(UnsupportedModelError, match="has no adapter for Linear"):
        get_adapter(torch.nn.Linear(2, 2))


def test_refused_classes_exist_in_diffusers_and_are_not_supported():
    import diffusers

    from conceptattention.adapters import _BUILTIN_ADAPTERS

    present = [row["transformer"] for row in refused_models() if hasattr(diffusers, row["transformer"])]
    if diffusers.__version__ == "0.42.1":  # the release the survey was made on holds every class
        assert len(present) == len(refused_models())
    assert present and not set(present) & set(_BUILTIN_ADAPTERS)


def test_readme_refused_list_is_generated_from_the_registry():
    module = load_script("supported_models_table")
    readme = (ROOT / "README.md").read_text()
    start = readme.index("<!-- refused-models:start")
    start = readme.index("\n", start) + 1
    end = readme.index("<!-- refused-models:end -->")
    assert readme[start:end].strip() == module.refused_table().strip()
