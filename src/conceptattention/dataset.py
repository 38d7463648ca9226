"""Build a labelled dataset: prompts → images + concept maps + masks + COCO annotations + a JSONL manifest.

Items come from a list of prompts (:func:`items_from_prompts`) or from a template filled with every combination of
word lists (:func:`items_from_template`). Item ``i`` is generated with the seed :func:`item_seed` ``(base_seed, i)``
(numpy's ``SeedSequence``), so an item's image depends only on the settings and its index, never on the number of
processes or the order in which they run.

Output folder::

    OUT/
      dataset.json               the settings (format tag; checked on resume: a run continues only with equal settings)
      items/000000/              one folder per item, written atomically (complete or absent):
        image.png, maps.safetensors, masks/<concept>.png, labels.png, legend.json, annotations.json
      parts/rank-00000.jsonl     manifest records, one line per finished item, appended after its folder is in place
      manifest.jsonl             all records in item order (rewritten at the end of every run)
      annotations.json           COCO annotations of the whole dataset (rewritten at the end of every run)
      summary.json               counts and timing of the last run

* **Resume**: running the same command again skips the items that have both a folder and a manifest record; an item
  folder without a record (killed after the folder and before the record) is generated again and replaced, a torn
  last manifest line is dropped, and temporary folders of killed runs are removed. Nothing is lost or duplicated.
* **Several processes** (``accelerate launch --num_processes N -m conceptattention.cli.dataset ...``; on CPUs add
  ``--multi_gpu``): the pending items are dealt round-robin to the processes, each appends to its own
  ``parts/rank-*.jsonl``, and after a barrier the main process writes ``manifest.jsonl`` and ``annotations.json``.
  The results equal those of one process (same seeds; generators on the CPU).
* **Folder safety**: an existing folder is used only when it is empty or holds a ``dataset.json`` of this format with
  the same settings; anything else is refused before any work.

Example:
    >>> items = items_from_template("a {colour} {object}", {"colour": ["red", "blue"], "object": ["boat"]},
    ...                             concept_fields=["object"], concepts=["sea", "sky"])
    >>> [(item.prompt, item.concepts) for item in items]
    [('a red boat', ('boat', 'sea', 'sky')), ('a blue boat', ('boat', 'sea', 'sky'))]
"""

from __future__ import annotations

import itertools
import json
import os
import shutil
import string
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from conceptattention.errors import ConceptAttentionError
from conceptattention.outputs import atomic_output_dir, atomic_write_json, atomic_write_text


__all__ = [
    "DATASET_FORMAT",
    "DatasetFolderError",
    "DatasetSpecError",
    "DatasetItem",
    "ItemOutputs",
    "build_dataset",
    "check_folder",
    "item_seed",
    "items_from_prompts",
    "items_from_template",
    "prepare_folder",
    "read_records",
]

DATASET_FORMAT = "conceptattention.dataset/1"
"""Format tag of ``dataset.json``; a folder without it is never written into."""

_SETTINGS_FILE = "dataset.json"
_PARTS = "parts"
_ITEMS = "items"


class DatasetFolderError(ConceptAttentionError, ValueError):
    """The output folder is not a dataset folder of this command, or was made with other settings."""


class DatasetSpecError(ConceptAttentionError, ValueError):
    """An invalid dataset specification: prompts, template, word lists, concept fields or seeds."""


@dataclass(frozen=True)
class DatasetItem:
    """One item to generate.

    Attributes:
        index: Position in the dataset (0-based); names the item folder.
        prompt: The text prompt.
        concepts: The concepts mapped for this item.
        seed: The generator seed (:func:`item_seed`).
        words: The template words of this item (``{}`` for prompts from a file).

    Example:
        >>> DatasetItem(42, "a red car", ("car", "sky"), item_seed(0, 42)).name
        '000042'
    """

    index: int
    prompt: str
    concepts: tuple[str, ...]
    seed: int
    words: dict[str, str] = field(default_factory=dict)

    @property
    def name(self) -> str:
        """The item's folder name, ``"000042"``."""
        return f"{self.index:06d}"


def item_seed(base_seed: int, index: int) -> int:
    """The seed of item ``index``: the first word of ``numpy.random.SeedSequence([base_seed, index])``.

    Independent of process count and order; different base seeds give unrelated streams (unlike ``base + index``).

    Example:
        >>> item_seed(0, 3) == item_seed(0, 3) != item_seed(1, 2)
        True
    """
    if base_seed < 0 or index < 0:
        raise DatasetSpecError(f"base seed and index must be non-negative, got {base_seed} and {index}.")
    return int(np.random.SeedSequence([base_seed, index]).generate_state(1, dtype=np.uint32)[0])


def _unique(concepts: Sequence[str]) -> tuple[str, ...]:
    return tuple(dict.fromkeys(concept.strip() for concept in concepts if concept.strip()))


def items_from_prompts(
    prompts: Sequence[str],
    concepts: Sequence[str],
    *,
    per_prompt: int = 1,
    base_seed: int = 0,
) -> list[DatasetItem]:
    """One item per prompt (``per_prompt`` items with different seeds each).

    A prompt may carry its own concepts after a tab: ``"a cat on a sofa\\tcat,sofa"``; they come before the common
    ``concepts``. Blank lines are skipped.

    Args:
        prompts: Prompts, e.g. the lines of a file.
        concepts: Concepts mapped for every item.
        per_prompt: Images per prompt.
        base_seed: See :func:`item_seed`.

    Returns:
        The items, in order.

    Raises:
        DatasetSpecError: If there is no prompt, an item has fewer than one concept, or ``per_prompt`` < 1.

    Example:
        >>> [item.concepts for item in items_from_prompts(["a cat\\tcat", "a dog"], ["sky"])]
        [('cat', 'sky'), ('sky',)]
    """
    if per_prompt < 1:
        raise DatasetSpecError(f"per_prompt must be at least 1, got {per_prompt}.")
    entries = []
    for number, line in enumerate(prompts, start=1):
        prompt, _, own = line.rstrip("\n").partition("\t")
        if not prompt.strip():
            continue
        item_concepts = _unique([*own.split(","), *concepts])
        if not item_concepts:
            raise DatasetSpecError(
                f"Prompt {number} ({prompt!r}) has no concepts; give --concepts, or concepts after a tab in the file."
            )
        entries.append((prompt.strip(), item_concepts, {}))
    if not entries:
        raise DatasetSpecError("No prompts: the prompt list (file) is empty.")
    return _expand(entries, per_prompt, base_seed)


def items_from_template(
    template: str,
    words: Mapping[str, Sequence[str]],
    *,
    concepts: Sequence[str] = (),
    concept_fields: Sequence[str] = (),
    per_prompt: int = 1,
    base_seed: int = 0,
) -> list[DatasetItem]:
    """Every combination of the word lists put into the template (``itertools.product``, first field slowest).

    Args:
        template: A :meth:`str.format` template with named fields, e.g. ``"a {colour} {object} on the {ground}"``.
        words: The words of every field of the template.
        concepts: Concepts mapped for every item.
        concept_fields: Fields whose word becomes a concept of the item (before ``concepts``).
        per_prompt: Images per prompt.
        base_seed: See :func:`item_seed`.

    Returns:
        The items, in order.

    Raises:
        DatasetSpecError: If the template's fields and the word lists differ, a list is empty, a concept field is not a
            field, or an item has no concept.

    Example:
        >>> [item.prompt for item in items_from_template("{a}{b}", {"a": ["x", "y"], "b": ["1", "2"]}, concepts=["c"])]
        ['x1', 'x2', 'y1', 'y2']
    """
    try:
        fields = [name for _, name, _, _ in string.Formatter().parse(template) if name is not None]
    except ValueError as error:
        raise DatasetSpecError(f"Bad template {template!r}: {error}") from error
    if not fields:
        raise DatasetSpecError(f"The template {template!r} has no {{field}}; use e.g. 'a {{colour}} {{object}}'.")
    bad = [name for name in fields if not name.isidentifier()]
    if bad:
        raise DatasetSpecError(f"Template fields must be names such as {{colour}}, got {bad}.")
    fields = list(dict.fromkeys(fields))
    missing = [name for name in fields if name not in words]
    extra = [name for name in words if name not in fields]
    if missing or extra:
        raise DatasetSpecError(
            f"The template's fields {fields} and the word lists {list(words)} differ"
            + (f": no words for {missing}" if missing else "")
            + (f"; {extra} not in the template" if extra else "")
            + "."
        )
    empty = [name for name in fields if not [word for word in words[name] if word.strip()]]
    if empty:
        raise DatasetSpecError(f"The word lists of {empty} are empty.")
    unknown = [name for name in concept_fields if name not in fields]
    if unknown:
        raise DatasetSpecError(f"Concept fields {unknown} are not fields of the template {fields}.")
    lists = [[word.strip() for word in words[name] if word.strip()] for name in fields]
    entries = []
    for combination in itertools.product(*lists):
        chosen = dict(zip(fields, combination))
        item_concepts = _unique([*(chosen[name] for name in concept_fields), *concepts])
        if not item_concepts:
            raise DatasetSpecError("Items have no concepts; give --concepts or --concept-fields.")
        entries.append((template.format(**chosen), item_concepts, chosen))
    return _expand(entries, per_prompt, base_seed)


def _expand(
    entries: Sequence[tuple[str, tuple[str, ...], dict[str, str]]], per_prompt: int, base_seed: int
) -> list[DatasetItem]:
    items = []
    for prompt, concepts, words in entries:
        for _ in range(per_prompt):
            index = len(items)
            items.append(DatasetItem(index, prompt, concepts, item_seed(base_seed, index), dict(words)))
    return items


# ----------------------------------------------------------------------------------------------------------------
# Folder
# ----------------------------------------------------------------------------------------------------------------


def _read_settings(out: Path) -> dict[str, Any] | None:
    path = out / _SETTINGS_FILE
    if not path.is_file():
        return None
    try:
        settings = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return settings if isinstance(settings, dict) and settings.get("format") == DATASET_FORMAT else None


def check_folder(out: Path, settings: Mapping[str, Any]) -> bool:
    """Whether ``out`` is a previous run with these settings (True), usable as new (False), or refused (raises).

    Raises:
        DatasetFolderError: ``out`` is a file, a non-empty folder of something else, or a dataset folder made with
            other settings.

    Example:
        >>> import tempfile
        >>> check_folder(Path(tempfile.mkdtemp()) / "new", {"model": "shapesworld"})
        False
    """
    if not os.path.lexists(out):
        return False
    if not out.is_dir():
        raise DatasetFolderError(f"'{out}' exists and is not a folder; choose another --out.")
    stored = _read_settings(out)
    if stored is None:
        if any(out.iterdir()):
            raise DatasetFolderError(
                f"'{out}' exists and is not a dataset folder of 'conceptattention dataset' (no {_SETTINGS_FILE} of "
                "this format); refusing to write into it. Choose a new --out."
            )
        return False
    wanted = json.loads(json.dumps({"format": DATASET_FORMAT, **settings}))
    if stored != wanted:
        keys = sorted(key for key in set(stored) | set(wanted) if stored.get(key) != wanted.get(key))
        raise DatasetFolderError(
            f"'{out}' holds a dataset made with other settings (differing: {', '.join(keys)}); resume with the same "
            "command, or choose a new --out."
        )
    return True


def prepare_folder(out: Path, settings: Mapping[str, Any]) -> bool:
    """Create (or reopen) the dataset folder; remove what killed runs left half-written. Main process only.

    Returns:
        Whether a previous run is continued.

    Example:
        >>> import tempfile
        >>> out = Path(tempfile.mkdtemp()) / "dataset"
        >>> prepare_folder(out, {"model": "shapesworld"}), prepare_folder(out, {"model": "shapesworld"})
        (False, True)
    """
    resumed = check_folder(out, settings)
    out.mkdir(parents=True, exist_ok=True)
    if not resumed:
        atomic_write_json(out / _SETTINGS_FILE, {"format": DATASET_FORMAT, **settings})
    (out / _ITEMS).mkdir(exist_ok=True)
    (out / _PARTS).mkdir(exist_ok=True)
    for leftover in (out / _ITEMS).glob(".*"):  # .NAME.tmp-* / .NAME.old-* of atomic_output_dir, killed mid-item
        if leftover.is_dir() and (".tmp-" in leftover.name or ".old-" in leftover.name):
            shutil.rmtree(leftover, ignore_errors=True)
    for part in (out / _PARTS).glob("rank-*.jsonl"):
        _drop_torn_line(part)
    return resumed


def _drop_torn_line(path: Path) -> None:
    data = path.read_bytes()
    if data and not data.endswith(b"\n"):
        atomic_write_text(path, data[: data.rfind(b"\n") + 1].decode("utf-8"))


def read_records(out: Path) -> dict[int, dict[str, Any]]:
    """The manifest records of the complete items: a record whose item folder exists; the last one per index.

    Example:
        >>> import tempfile
        >>> read_records(Path(tempfile.mkdtemp()))
        {}
    """
    records: dict[int, dict[str, Any]] = {}
    for part in sorted((out / _PARTS).glob("rank-*.jsonl")):
        for line in part.read_text(encoding="utf-8").split("\n")[:-1]:  # the text after the last newline is torn
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except ValueError:
                continue
            if isinstance(record, dict) and isinstance(record.get("index"), int):
                if (out / _ITEMS / f"{record['index']:06d}" / "image.png").is_file():
                    records[record["index"]] = record
    return records


# ----------------------------------------------------------------------------------------------------------------
# Generation
# ----------------------------------------------------------------------------------------------------------------


@dataclass
class ItemOutputs:
    """What :func:`build_dataset` needs from the model for one item (returned by its ``generate_item``).

    Attributes:
        image: The generated ``PIL.Image.Image``.
        maps: Its :class:`~conceptattention.ConceptMaps`.
    """

    image: Any
    maps: Any


def _write_item(
    out: Path,
    item: DatasetItem,
    outputs: ItemOutputs,
    mask_options: Mapping[str, Any],
) -> dict[str, Any]:
    """Write one item folder atomically; returns its manifest record."""
    from conceptattention.cli.run_folder import slug
    from conceptattention.masks import write_masks

    folder_name = f"{_ITEMS}/{item.name}"
    image = outputs.image
    with atomic_output_dir(out / folder_name, overwrite=True) as folder:
        image.save(folder / "image.png")
        outputs.maps.save(folder / "maps.safetensors")
        taken: set[str] = set()
        names = [slug(concept, taken) for concept in outputs.maps.concepts]
        files = write_masks(
            folder,
            outputs.maps,
            mask_options["rule"],
            size=(image.height, image.width),
            threshold=mask_options.get("threshold"),
            none=mask_options.get("none_logit"),
            names=names,
        )
    prefixed = {
        "image": f"{folder_name}/image.png",
        "maps": f"{folder_name}/maps.safetensors",
        "masks": {concept: f"{folder_name}/{path}" for concept, path in files["masks"].items()},
        **{key: f"{folder_name}/{files[key]}" for key in ("labels", "legend", "annotations")},
    }
    return {
        "index": item.index,
        "id": item.name,
        "prompt": item.prompt,
        "seed": item.seed,
        "concepts": list(item.concepts),
        "words": item.words,
        "width": image.width,
        "height": image.height,
        "files": prefixed,
    }


def build_dataset(
    out: str | os.PathLike[str],
    items: Sequence[DatasetItem],
    generate_item: Callable[[DatasetItem], ItemOutputs],
    *,
    settings: Mapping[str, Any],
    mask_options: Mapping[str, Any],
    rank: int = 0,
    world_size: int = 1,
    barrier: Callable[[], None] = lambda: None,
    progress: bool = True,
) -> dict[str, Any]:
    """Generate the items not done yet (this process's share), then (main process) write the merged files.

    Args:
        out: The dataset folder (see the module docstring).
        items: All items of the dataset (every process passes the same list).
        generate_item: ``item -> ItemOutputs(image, maps)``: runs the model for one item.
        settings: JSON-serialisable settings stored in ``dataset.json`` and checked on resume.
        mask_options: ``{"rule", "threshold", "none_logit"}`` of :func:`conceptattention.masks.write_masks`.
        rank: This process's index.
        world_size: Number of processes.
        barrier: Blocks until every process reached it.
        progress: Show a tqdm progress bar (main process).

    Returns:
        A summary: ``{"items", "done_before", "generated", "seconds", "items_per_second",
        "generated_all_processes", "seconds_all_processes", "items_per_second_all_processes", "processes"}``
        (``generated``, ``seconds`` and ``items_per_second`` are this process's; the ``*_all_processes`` entries
        count every process's items over the time until the last one finished).

    Raises:
        DatasetFolderError: If ``out`` cannot be used (before any work).

    Example:
        >>> import tempfile
        >>> from PIL import Image
        >>> from conceptattention import ConceptMaps
        >>> def fake_model(item):  # stands in for a pipeline run under ConceptAttention
        ...     maps = ConceptMaps(item.concepts, torch.rand(len(item.concepts), 1, 4, 4))  # [C, 1, h, w]
        ...     return ItemOutputs(Image.new("RGB", (16, 16)), maps)
        >>> items = items_from_prompts(["a cat", "a dog"], ["animal", "background"])
        >>> out = Path(tempfile.mkdtemp()) / "dataset"
        >>> summary = build_dataset(out, items, fake_model, settings={"model": "fake"},
        ...                         mask_options={"rule": "argmax"}, progress=False)
        >>> summary["generated"], len((out / "manifest.jsonl").read_text().splitlines())
        (2, 2)
    """
    from tqdm.auto import tqdm

    out = Path(out)
    check_folder(out, settings)  # every process refuses a bad folder itself, before the barrier
    barrier()  # nobody checks any more once the main process starts writing (its temporary files would look foreign)
    if rank == 0:
        prepare_folder(out, settings)
    barrier()
    done = read_records(out)
    pending = [item for item in items if item.index not in done]
    shard = pending[rank::world_size]
    started = time.perf_counter()
    part = out / _PARTS / f"rank-{rank:05d}.jsonl"
    with (
        open(part, "a", encoding="utf-8") as handle,
        tqdm(total=len(shard), desc="dataset", unit="item", disable=not progress or rank != 0) as bar,
    ):
        for item in shard:
            record = _write_item(out, item, generate_item(item), mask_options)
            handle.write(json.dumps(record, ensure_ascii=False) + "\n")  # the record last: the item is complete
            handle.flush()
            os.fsync(handle.fileno())
            bar.update(1)
    seconds = time.perf_counter() - started
    barrier()
    seconds_all = time.perf_counter() - started  # until every process is done
    summary = {
        "items": len(items),
        "done_before": len(done),
        "generated": len(shard),
        "seconds": round(seconds, 3),
        "items_per_second": round(len(shard) / seconds, 4) if shard and seconds > 0 else None,
        "generated_all_processes": len(pending),
        "seconds_all_processes": round(seconds_all, 3),
        "items_per_second_all_processes": round(len(pending) / seconds_all, 4) if pending else None,
        "processes": world_size,
    }
    if rank == 0:
        _finish(out, items, summary)
    barrier()
    return summary


def _finish(out: Path, items: Sequence[DatasetItem], summary: dict[str, Any]) -> None:
    """Write ``manifest.jsonl`` (item order) and the dataset's ``annotations.json``; check nothing is missing."""
    records = read_records(out)
    missing = [item.index for item in items if item.index not in records]
    if missing:
        raise RuntimeError(f"{len(missing)} items have no complete record after the run (first: {missing[:5]}).")
    ordered = [records[item.index] for item in items]
    atomic_write_text(out / "manifest.jsonl", "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in ordered))
    categories: dict[str, int] = {}
    images, annotations = [], []
    for record in ordered:
        coco = json.loads((out / record["files"]["annotations"]).read_text(encoding="utf-8"))
        local = {category["id"]: category["name"] for category in coco["categories"]}
        for name in local.values():  # categories in order of first appearance (item order, concept order)
            categories.setdefault(name, len(categories) + 1)
        image_id = record["index"] + 1
        images.append(
            {
                "id": image_id,
                "file_name": record["files"]["image"],
                "height": record["height"],
                "width": record["width"],
            }
        )
        for annotation in coco["annotations"]:
            category_id = categories[local[annotation["category_id"]]]
            annotations.append(
                {**annotation, "id": len(annotations) + 1, "image_id": image_id, "category_id": category_id}
            )
    merged = {
        "info": {"description": "conceptattention dataset", "format": DATASET_FORMAT},
        "images": images,
        "categories": [{"id": i, "name": n, "supercategory": "concept"} for n, i in categories.items()],
        "annotations": annotations,
    }
    atomic_write_json(out / "annotations.json", merged)
    atomic_write_json(out / "summary.json", summary)


def seeded_generator(seed: int) -> torch.Generator:
    """A CPU generator seeded with ``seed`` (CPU: the same noise on every device and in every process)."""
    return torch.Generator("cpu").manual_seed(seed)
