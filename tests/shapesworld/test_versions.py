"""ShapesWorld data versions: v1 stays byte-identical, v2 varies colours and backgrounds, models record their version."""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil

import pytest
import torch

from conceptattention.cli.evaluate import shapesworld_data_version
from conceptattention.shapesworld import OBJECT_COLOURS, ShapesWorldDataset
from conceptattention.shapesworld.dataset import HELD_OUT_PAIRS_V2, DatasetError, held_out_pairs_in
from conceptattention.shapesworld.model import DEFAULT_MODEL_DIR, ModelError, data_version
from conceptattention.shapesworld.render import GROUND_TINTS, SKY_STYLES, SceneError, SceneSpec, typical_colours


# sha256 of images, background, object_class, colour and instance of the first 64 scenes and their captions, computed
# before data versions existed (commit b920b3e): v1 output must not change by a single byte.
V1_HASHES = {
    ("train", 32): "08aa4fa8022720cdf9ae7e746998972f613cfd69c3d3c490b0a26cf0fac06178",
    ("test", 32): "641c9cee5d3ef689f5d5c97c62bf6fcb29c55936fbf477a50e49d5d449f80862",
    ("heldout", 48): "a211947027b587d164b78d3c2969b94986d4763bf2cdb6953bd0c4fd2d237dea",
}


def _digest(dataset: ShapesWorldDataset) -> str:
    batch, captions = dataset.render(range(len(dataset)))
    digest = hashlib.sha256()
    for tensor in (batch.images, batch.background, batch.object_class, batch.colour, batch.instance):
        digest.update(tensor.contiguous().numpy().tobytes())
    digest.update("|".join(captions).encode())
    return digest.hexdigest()


@pytest.mark.parametrize(("split", "size"), list(V1_HASHES))
def test_v1_output_is_byte_identical(split, size):
    assert _digest(ShapesWorldDataset(split, seed=0, n=64, size=size)) == V1_HASHES[(split, size)]
    assert _digest(ShapesWorldDataset(split, seed=0, n=64, size=size, version="v1")) == V1_HASHES[(split, size)]


def test_v2_varies_colours_skies_and_ground_tints():
    data = ShapesWorldDataset("test", seed=0, n=200, version="v2")
    specs = [data.record(i)[0] for i in range(len(data))]
    off_palette = sum(obj.colour not in OBJECT_COLOURS[obj.name] for spec in specs for obj in spec.objects)
    assert off_palette > 50  # most objects take colours v1 never gives them
    assert {spec.sky for spec in specs} == set(SKY_STYLES)
    assert {(spec.ground, spec.tint) for spec in specs} == {(g, t) for g in GROUND_TINTS for t in range(3)}
    assert _digest(ShapesWorldDataset("test", seed=0, n=16, version="v2")) != _digest(
        ShapesWorldDataset("test", seed=0, n=16)
    )


def test_v2_masks_are_exact_and_held_out_pairs_are_kept_out():
    data = ShapesWorldDataset("test", seed=0, n=20, version="v2", size=48)
    for sample in data:
        objects = torch.zeros_like(sample.object_class, dtype=torch.bool)
        for name in sample.object_concepts:
            objects |= sample.concept_mask(name)
        assert torch.equal(objects, sample.object_class > 0)
        backgrounds = sample.concept_mask("sky") | sample.concept_mask(sample.spec.ground)
        assert torch.equal(backgrounds, sample.object_class == 0)
        assert sample.image.shape == (3, 48, 48)
    train = [ShapesWorldDataset("train", seed=0, n=150, version="v2").record(i)[0] for i in range(150)]
    assert not any(held_out_pairs_in(spec.objects, "v2") for spec in train)
    heldout = ShapesWorldDataset("heldout", seed=0, n=10, version="v2")
    assert all(held_out_pairs_in(heldout.record(i)[0].objects, "v2") for i in range(10))
    assert len(HELD_OUT_PAIRS_V2) > 100


def test_bad_versions_are_refused():
    with pytest.raises(DatasetError, match="v3"):
        ShapesWorldDataset("test", version="v3")
    with pytest.raises(SceneError, match="sky"):
        SceneSpec(horizon=15.0, ground="sea", sky="dusk")
    with pytest.raises(SceneError, match="Tint"):
        SceneSpec(horizon=15.0, ground="sea", tint=7)
    with pytest.raises(SceneError, match="v3"):
        typical_colours("v3")


def test_models_record_their_data_version_and_the_harness_uses_it(tmp_path):
    assert data_version() == "v1"  # the shipped model was trained on v1
    args = argparse.Namespace(model=None, data_version=None)
    assert shapesworld_data_version(args) == "v1"
    folder = tmp_path / "model"
    folder.mkdir()
    settings = json.loads((DEFAULT_MODEL_DIR / "shapesworld.json").read_text())
    (folder / "shapesworld.json").write_text(json.dumps({**settings, "data": {"version": "v2"}}))
    assert shapesworld_data_version(argparse.Namespace(model=str(folder), data_version=None)) == "v2"
    assert shapesworld_data_version(argparse.Namespace(model=str(folder), data_version="v1")) == "v1"
    (folder / "shapesworld.json").write_text(json.dumps({**settings, "data": {"version": "v9"}}))
    with pytest.raises(ModelError, match="v9"):
        data_version(folder)
    legacy = tmp_path / "legacy"
    shutil.copytree(DEFAULT_MODEL_DIR, legacy, ignore=shutil.ignore_patterns("*.safetensors", "*.png"))
    stored = json.loads((legacy / "shapesworld.json").read_text())
    stored.pop("data")
    (legacy / "shapesworld.json").write_text(json.dumps(stored))
    assert data_version(legacy) == "v1"  # folders from before data versions were trained on v1
