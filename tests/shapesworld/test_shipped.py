"""The shipped ShapesWorld model: offline loading, non-degenerate generation, and a map-quality floor."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from conceptattention import ConceptAttention
from conceptattention.models import load_embedded_default, shipped_model_dir


# Fixed prompts with a ground concept (grass / sea / sand) that fills the bottom rows of every ShapesWorld scene.
GROUND_CASES = [
    ("a blue house on the grass under a white cloud", ["house", "grass", "cloud"], "grass"),
    ("a red boat on the sea under a yellow sun", ["boat", "sea", "sun"], "sea"),
    ("a green tree on the sand under a grey cloud", ["tree", "sand", "cloud"], "sand"),
    ("a yellow car on the grass under an orange sun", ["car", "grass", "sun"], "grass"),
    ("a purple flower on the sand under a white cloud", ["flower", "sand", "cloud"], "sand"),
    ("a red house on the sand under a yellow sun", ["house", "sand", "sun"], "sand"),
]
GROUND_ROWS = slice(13, 16)  # the bottom 3 of 16 token rows: always ground (the horizon is at pixel rows 13-20)


@pytest.fixture(scope="module")
def shipped():
    loaded = load_embedded_default()
    loaded.pipeline.set_progress_bar_config(disable=True)
    return loaded


def run(loaded, prompt: str, steps: int = 20, seed: int = 0) -> torch.Tensor:
    defaults = loaded.defaults
    return loaded.pipeline(
        prompt,
        generator=torch.Generator().manual_seed(seed),
        num_inference_steps=steps,
        height=defaults["height"],
        width=defaults["width"],
        max_sequence_length=defaults["max_sequence_length"],
        guidance_scale=0.0,
        output_type="pt",
    ).images


def test_shipped_model_is_small_and_loads_offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    folder = shipped_model_dir()
    size = sum(path.stat().st_size for path in folder.rglob("*") if path.is_file())
    assert size < 25_000_000
    assert not list(folder.rglob("*.bin")) and not list(folder.rglob("*.ckpt"))  # safetensors only
    loaded = load_embedded_default()
    assert loaded.notice is None and "ShapesWorld" in loaded.description
    assert type(loaded.pipeline.transformer).__name__ == "FluxTransformer2DModel"
    assert loaded.defaults["height"] == 32 and loaded.defaults["concepts"]


def test_generation_is_not_degenerate(shipped):
    image = run(shipped, "a red boat on the sea under a yellow sun", steps=10)[0]  # [3, 32, 32] in [0, 1]
    assert image.std() > 0.1  # not a constant image
    # not noise: neighbouring pixels are far more alike than in a pixel-shuffled copy of the same image
    neighbour = (image[:, 1:, :] - image[:, :-1, :]).abs().mean()
    shuffled = image.flatten(1)[:, torch.randperm(32 * 32, generator=torch.Generator().manual_seed(0))].view_as(image)
    shuffled_neighbour = (shuffled[:, 1:, :] - shuffled[:, :-1, :]).abs().mean()
    assert neighbour < 0.5 * shuffled_neighbour
    # the prompted sea: the bottom rows are blue-dominant
    bottom = image[:, -6:, :].mean(dim=(1, 2))
    assert bottom[2] > bottom[0] and bottom[2] > bottom[1]


def test_bit_identical_with_maps(shipped):
    reference = run(shipped, "a green tree on the sand under a grey cloud", steps=4)
    with ConceptAttention(shipped.pipeline, ["tree", "sand", "cloud"]):
        output = run(shipped, "a green tree on the sand under a grey cloud", steps=4)
    assert torch.equal(reference, output)


def ground_fraction(loaded, concept_embeds_fn=None) -> float:
    fractions = []
    for prompt, concepts, ground in GROUND_CASES:
        kwargs = {"concept_embeds": concept_embeds_fn(len(concepts))} if concept_embeds_fn else {}
        # pinned to the blocks the floor was measured with (the FLUX default, the last four joint blocks); the model's
        # recommended blocks 4-5 score 0.63 here (0.29 with random embeddings): chosen for the explain path
        with ConceptAttention(loaded.pipeline, concepts, layers=(2, 3, 4, 5), **kwargs) as ca:
            run(loaded, prompt)
        segmentation = ca.maps.segmentation()[0]  # [16, 16]
        fractions.append(float((segmentation[GROUND_ROWS] == concepts.index(ground)).float().mean()))
    return float(np.mean(fractions))


def test_map_quality_floor(shipped):
    """The ground concept wins the ground rows; a broken concept path (random embeddings) falls far below."""
    real = ground_fraction(shipped)
    generator = torch.Generator().manual_seed(0)
    broken = ground_fraction(shipped, lambda count: torch.randn(count, 128, generator=generator) * 2)
    assert real >= 0.6, real  # measured 0.74 (2026-11-27); chance is 1/3
    assert real > broken + 0.3, (real, broken)  # measured 0.15 with random concept embeddings
