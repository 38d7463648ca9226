"""The supported diffusers range per family (docs/compatibility.md): older releases are refused with a clear message.

Runs on the development diffusers and, in CI (scripts/ci_old_diffusers.sh), on the oldest supported one.
"""

from __future__ import annotations

import diffusers
import pytest
import torch

from conceptattention import ConceptAttention, supported_models
from conceptattention.adapters import MIN_DIFFUSERS, UnsupportedModelError, _diffusers_release, get_adapter
from conceptattention.testing import tiny_flux_transformer, tiny_qwenimage_transformer


@pytest.fixture(scope="module")
def qwen() -> torch.nn.Module:
    return tiny_qwenimage_transformer(num_layers=1)


@pytest.fixture(scope="module")
def flux() -> torch.nn.Module:
    return tiny_flux_transformer(num_layers=1)


def test_every_family_has_a_floor_within_the_package_range() -> None:
    newer = {name for name, floor in MIN_DIFFUSERS.items() if _diffusers_release() < floor}  # refused here
    assert set(MIN_DIFFUSERS) == {row["transformer"] for row in supported_models()} | newer
    assert min(MIN_DIFFUSERS.values()) == (0, 38)  # pyproject: diffusers>=0.38,<0.43


def test_installed_diffusers_is_in_range() -> None:
    assert (0, 38) <= _diffusers_release() < (0, 43), diffusers.__version__


def test_qwen_image_refused_before_0_39(qwen: torch.nn.Module, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(diffusers, "__version__", "0.38.0")
    with pytest.raises(UnsupportedModelError, match=r"QwenImageTransformer2DModel on diffusers >= 0\.39; this is "
                       r"diffusers 0\.38\.0\. Upgrade with: pip install 'diffusers>=0\.39,<0\.43'"):
        get_adapter(qwen)
    with pytest.raises(UnsupportedModelError, match="diffusers >= 0.39"):
        ConceptAttention(qwen, concept_embeds=torch.randn(2, 16))
    assert "QwenImageTransformer2DModel" not in {row["transformer"] for row in supported_models()}


def test_flux_accepted_on_0_38_refused_on_0_37(flux: torch.nn.Module, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(diffusers, "__version__", "0.38.0")
    assert get_adapter(flux).name
    monkeypatch.setattr(diffusers, "__version__", "0.37.1")
    with pytest.raises(UnsupportedModelError, match=r"diffusers >= 0\.38; this is diffusers 0\.37\.1"):
        get_adapter(flux)
    assert supported_models() == []


def test_installed_release_decides(qwen: torch.nn.Module) -> None:
    """On the real installed diffusers: Qwen-Image works from 0.39 on and is refused (not silently map-less) before."""
    if _diffusers_release() >= (0, 39):
        with ConceptAttention(qwen, concept_embeds=torch.randn(2, 16)) as attention:
            from conceptattention.testing import tiny_qwenimage_inputs

            qwen(**tiny_qwenimage_inputs())
        assert attention.maps.tensor.shape[0] == 2
    else:
        with pytest.raises(UnsupportedModelError, match="diffusers >= 0.39"):
            get_adapter(qwen)
