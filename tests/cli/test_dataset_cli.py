"""``conceptattention dataset`` on the shipped ShapesWorld model: files, seeds, resume after a kill, two processes."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from conceptattention import ConceptMaps
from conceptattention.cli.main import main
from conceptattention.dataset import item_seed, items_from_prompts, items_from_template

from .conftest import two_process_launch


ARGS = [
    "--template", "a {colour} boat on the {ground}", "--words", "colour=red,blue", "ground=sea,grass",
    "--concept-fields", "ground", "--concepts", "boat", "sky", "--steps", "2", "--masks", "argmax", "--no-progress",
]  # fmt: skip
NUM_ITEMS = 4


def command(out: Path, *extra: str) -> list[str]:
    return ["dataset", *ARGS, "--out", str(out), *extra]


def environment(tmp_path: Path) -> dict[str, str]:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "CUDA_VISIBLE_DEVICES": ""}
    env["PYTHONPATH"] = os.pathsep.join([str(Path(__file__).resolve().parents[2] / "src"), env.get("PYTHONPATH", "")])
    return env


def listing(out: Path) -> dict[str, bytes | ConceptMaps]:
    """Every file of a dataset folder but the timing summary, by relative path: the bytes, or the loaded maps
    (safetensors writes its header metadata in no fixed order, so equal maps need not be equal bytes)."""
    return {
        path.relative_to(out).as_posix(): ConceptMaps.load(path)
        if path.suffix == ".safetensors"
        else path.read_bytes()
        for path in sorted(out.rglob("*"))
        if path.is_file() and path.parent.name != "parts" and path.name != "summary.json"
    }


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> Path:
    """One uninterrupted one-process run."""
    torch.set_num_threads(1)  # the same arithmetic as the OMP_NUM_THREADS=1 subprocesses below
    out = tmp_path_factory.mktemp("reference") / "dataset"
    assert main(command(out)) == 0
    return out


class TestItems:
    def test_seeds_depend_on_base_seed_and_index_only(self) -> None:
        items = items_from_template("a {c} {o}", {"c": ["red", "blue"], "o": ["car", "boat"]}, concepts=["sky"])
        assert [item.seed for item in items] == [item_seed(0, index) for index in range(4)]
        assert len({item.seed for item in items}) == 4
        other = items_from_template(
            "a {c} {o}", {"c": ["red", "blue"], "o": ["car", "boat"]}, concepts=["sky"], base_seed=1
        )
        assert not {item.seed for item in items} & {item.seed for item in other}

    def test_template_product_and_concept_fields(self) -> None:
        items = items_from_template(
            "a {c} {o}",
            {"c": ["red", "blue"], "o": ["car"]},
            concept_fields=["o", "c"],
            concepts=["sky"],
            per_prompt=2,
        )
        assert [item.prompt for item in items] == ["a red car", "a red car", "a blue car", "a blue car"]
        assert items[2].concepts == ("car", "blue", "sky") and items[2].words == {"c": "blue", "o": "car"}
        assert items[0].seed != items[1].seed

    def test_prompt_lines(self) -> None:
        items = items_from_prompts(["a cat\tcat,sofa", "", "a dog"], ["sky", "cat"])
        assert [(item.prompt, item.concepts) for item in items] == [
            ("a cat", ("cat", "sofa", "sky")),
            ("a dog", ("sky", "cat")),
        ]

    @pytest.mark.parametrize(
        ("template", "words", "kwargs", "message"),
        [
            ("a {c}", {}, {"concepts": ["x"]}, "no words for"),
            ("a {c}", {"c": ["red"], "d": ["x"]}, {"concepts": ["x"]}, "not in the template"),
            ("a {c}", {"c": [" "]}, {"concepts": ["x"]}, "empty"),
            ("a car", {}, {"concepts": ["x"]}, "no {field}"),
            ("a {c}", {"c": ["red"]}, {"concept_fields": ["z"]}, "not fields"),
            ("a {c}", {"c": ["red"]}, {}, "no concepts"),
            ("a {0}", {"0": ["red"]}, {"concepts": ["x"]}, "must be names"),
        ],
    )
    def test_bad_templates(self, template, words, kwargs, message) -> None:
        with pytest.raises(ValueError, match=message):
            items_from_template(template, words, **kwargs)


class TestRun:
    def test_files_manifest_and_annotations(self, reference: Path) -> None:
        records = [json.loads(line) for line in (reference / "manifest.jsonl").read_text().splitlines()]
        assert [record["index"] for record in records] == list(range(NUM_ITEMS))
        assert [record["prompt"] for record in records] == [
            "a red boat on the sea", "a red boat on the grass", "a blue boat on the sea", "a blue boat on the grass",
        ]  # fmt: skip
        assert [record["seed"] for record in records] == [item_seed(0, index) for index in range(NUM_ITEMS)]
        assert records[1]["concepts"] == ["grass", "boat", "sky"]
        for record in records:
            image = Image.open(reference / record["files"]["image"])
            assert image.size == (32, 32)
            maps = ConceptMaps.load(reference / record["files"]["maps"])
            expected = maps.masks("argmax", size=(32, 32))
            for index, concept in enumerate(record["concepts"]):
                mask = np.asarray(Image.open(reference / record["files"]["masks"][concept]))
                assert np.array_equal(mask == 255, expected[index, 0].numpy())
        from pycocotools.coco import COCO

        api = COCO(str(reference / "annotations.json"))
        assert len(api.imgs) == NUM_ITEMS
        assert [api.cats[i]["name"] for i in sorted(api.cats)] == ["sea", "boat", "sky", "grass"]
        total = sum(int(api.annToMask(annotation).sum()) for annotation in api.anns.values())
        assert total == NUM_ITEMS * 32 * 32  # argmax: every pixel belongs to exactly one concept

    def test_same_seed_same_image_as_generate(self, reference: Path, tmp_path: Path) -> None:
        """Item 0 is what ``generate`` makes with the item's prompt, concepts and seed."""
        record = json.loads((reference / "manifest.jsonl").read_text().splitlines()[0])
        out = tmp_path / "generated"
        args = ["generate", "--prompt", record["prompt"], "--concepts", *record["concepts"], "--steps", "2"]
        assert main([*args, "--seed", str(record["seed"]), "--out", str(out)]) == 0
        assert np.array_equal(
            np.asarray(Image.open(out / "image.png")), np.asarray(Image.open(reference / record["files"]["image"]))
        )
        assert ConceptMaps.load(out / "maps.safetensors").tensor.equal(
            ConceptMaps.load(reference / record["files"]["maps"]).tensor
        )

    def test_resume_redoes_partial_items_only(self, reference: Path, tmp_path: Path) -> None:
        out = tmp_path / "dataset"
        shutil.copytree(reference, out)
        part = out / "parts" / "rank-00000.jsonl"
        lines = part.read_text().splitlines(keepends=True)
        # item 2: folder written, killed before its record; item 3: record, but its folder is gone; a torn line;
        # a temporary folder of an item being written
        part.write_text("".join(line for line in lines if json.loads(line)["index"] != 2) + '{"index": 1, "id"')
        shutil.rmtree(out / "items" / "000003")
        (out / "items" / "000002" / "image.png").write_bytes(b"half")
        (out / "items" / ".000001.tmp-0123456789ab").mkdir()
        (out / "manifest.jsonl").unlink()
        stamp = (out / "items" / "000000" / "image.png").stat().st_mtime_ns
        assert main(command(out)) == 0
        assert listing(out) == listing(reference)  # nothing lost, nothing duplicated, partial items redone
        assert (out / "items" / "000000" / "image.png").stat().st_mtime_ns == stamp  # complete items kept
        assert json.loads((out / "summary.json").read_text())["done_before"] == 2

    def test_resume_after_sigkill(self, reference: Path, tmp_path: Path) -> None:
        out = tmp_path / "dataset"
        process = subprocess.Popen(
            [sys.executable, "-m", "conceptattention.cli.main", *command(out)],
            env=environment(tmp_path),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        part = out / "parts" / "rank-00000.jsonl"
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline and process.poll() is None:
            if part.exists() and part.read_text().count("\n") >= 1:
                break
            time.sleep(0.05)
        process.send_signal(signal.SIGKILL)
        process.wait()
        done_before = part.read_text().count("\n")
        assert 1 <= done_before <= NUM_ITEMS
        assert main(command(out)) == 0
        assert listing(out) == listing(reference)
        assert json.loads((out / "summary.json").read_text())["done_before"] == done_before

    def test_two_processes_give_the_same_files(self, reference: Path, tmp_path: Path) -> None:
        launcher = two_process_launch("conceptattention.cli.dataset")
        out = tmp_path / "multi"
        completed = subprocess.run(
            [*launcher, *command(out)[1:]], capture_output=True, text=True, timeout=300, env=environment(tmp_path)
        )
        assert completed.returncode == 0, completed.stderr[-3000:]
        assert listing(out) == listing(reference)
        parts = sorted((out / "parts").glob("rank-*.jsonl"))
        assert [len(part.read_text().splitlines()) for part in parts] == [2, 2]  # the items were split
        assert json.loads((out / "summary.json").read_text())["processes"] == 2


class TestRefusals:
    def test_foreign_folder_is_refused_untouched(self, tmp_path: Path, capsys) -> None:
        out = tmp_path / "photos"
        out.mkdir()
        (out / "holiday.jpg").write_bytes(b"x")
        assert main(command(out)) == 2
        assert "not a dataset folder" in capsys.readouterr().err
        assert [path.name for path in out.iterdir()] == ["holiday.jpg"]

    def test_other_settings_are_refused(self, reference: Path, tmp_path: Path, capsys) -> None:
        out = tmp_path / "dataset"
        shutil.copytree(reference, out)
        before = listing(out)
        assert main(command(out, "--seed", "5")) == 2
        err = capsys.readouterr().err
        assert "other settings" in err and "generation" in err and "items" in err
        assert listing(out) == before

    def test_file_as_output(self, tmp_path: Path, capsys) -> None:
        (tmp_path / "file").write_text("x")
        assert main(command(tmp_path / "file")) == 2
        assert "not a folder" in capsys.readouterr().err

    @pytest.mark.parametrize(
        ("args", "message"),
        [
            (["--template", "a {x}", "--words", "x"], "FIELD=WORD1"),
            (["--template", "a {x}", "--words", "y=1"], "no words for"),
            (["--template", "a {x}", "--words", "x=a", "x=b", "--concepts", "c"], "twice"),
            (["--prompts", "missing.txt", "--concepts", "c"], "does not exist"),
            (["--template", "a {x}", "--words", "x=a", "--concepts", "c", "--masks", "threshold"], "--mask-threshold"),
            (["--template", "a {x}", "--words", "x=a", "--concepts", "c", "--per-prompt", "0"], "--per-prompt"),
        ],
    )
    def test_bad_options_write_nothing(self, tmp_path: Path, capsys, args, message) -> None:
        out = tmp_path / "dataset"
        try:
            status = main(["dataset", *args, "--out", str(out)])
        except SystemExit as exit_:  # refused by argparse itself (e.g. a count below 1)
            status = exit_.code
        assert status == 2
        assert message in capsys.readouterr().err
        assert not out.exists()

    def test_prompt_file_with_words_is_refused(self, tmp_path: Path, capsys) -> None:
        prompts = tmp_path / "prompts.txt"
        prompts.write_text("a red car\n")
        assert (
            main(
                [
                    "dataset",
                    "--prompts",
                    str(prompts),
                    "--words",
                    "x=a",
                    "--concepts",
                    "car",
                    "--out",
                    str(tmp_path / "d"),
                ]
            )
            == 2
        )
        assert "go with --template" in capsys.readouterr().err
