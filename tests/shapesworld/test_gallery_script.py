"""scripts/readme_gallery.py: the README's prompts are drawn by the script with its fixed seed, not chosen."""

from __future__ import annotations

import pytest

from conceptattention.shapesworld import ShapesWorldDataset

from ..script_modules import ROOT, load_script


@pytest.fixture(scope="module")
def gallery():
    return load_script("readme_gallery")


def test_prompts_are_the_test_captions_of_the_fixed_seed(gallery):
    prompts = gallery.gallery_prompts()
    data = ShapesWorldDataset("test", seed=gallery.GALLERY_SEED, n=6)
    assert [row["prompt"] for row in prompts] == [data.record(i)[1] for i in range(6)]
    for index, row in enumerate(prompts):
        spec = data.record(index)[0]
        assert row["concepts"][: len(spec.objects)] == [obj.name for obj in spec.objects]
        assert row["absent"] not in row["concepts"][: len(spec.objects)] and row["concepts"][-2:] == [
            "sky",
            spec.ground,
        ]
    assert gallery.gallery_prompts() == prompts  # deterministic


def test_readme_shows_the_script_and_its_seed(gallery, capsys):
    readme = (ROOT / "README.md").read_text()
    assert "scripts/readme_gallery.py" in readme and str(gallery.GALLERY_SEED) in readme
    assert "docs/img/gallery.png" in readme
    assert gallery.main(["--print-prompts"]) == 0
    assert gallery.gallery_prompts()[0]["prompt"] in capsys.readouterr().out
    assert (ROOT / "docs" / "img" / "gallery.png").stat().st_size < 200_000
