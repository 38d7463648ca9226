"""An evaluation's output folder: its identity (``run.json``), its resumable JSONL results, and the folder checks.

Output folder layout::

    OUT/
      run.json                    what is evaluated (dataset, method, model, metric settings); checked on resume
      results/rank-00000.jsonl    one JSON line per image, appended and flushed as soon as it is scored
      results/rank-00001.jsonl    (one file per process of a multi-process run)
      report.json, report.md      metrics, configuration, package versions, git revision, hardware, timing

**Resume**: with ``resume=True`` (``--resume``) the images already in a results file are skipped, so a killed run
continues without recomputing or double counting anything. A torn last line (a process killed while writing it) is
ignored and cut off before appending (:func:`read_records`, :func:`cut_torn_tail`). The configuration must equal the
one in ``run.json`` (:func:`check_same_run`). Sweep folders (``sweep.json``), the per-kind protocol and the
ShapesWorld measurements use the same checks.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from conceptattention.errors import ConceptAttentionError
from conceptattention.outputs import (
    OutputExistsError,
    OutputPathError,
    atomic_write_json,
    check_writable_location,
    protected_location,
)


__all__ = [
    "RUN_FORMAT",
    "RUN_FORMAT_VERSION",
    "ResultsFileError",
    "RunMismatchError",
    "check_output_folder",
    "check_reusable_folder",
    "check_run_folder",
    "check_same_run",
    "cut_torn_tail",
    "has_results",
    "load_results",
    "prepare_run_folder",
    "read_records",
    "removed_on_failure",
    "results_file",
    "resume_records",
]

RUN_FORMAT = "conceptattention.evaluation.run"
RUN_FORMAT_VERSION = 1
_RESULTS_FOLDER = "results"


class ResultsFileError(ConceptAttentionError, ValueError):
    """A results file is corrupt in a way that resuming cannot repair (not just a torn last line)."""


class RunMismatchError(ConceptAttentionError, ValueError):
    """The output folder holds a run with another configuration (or of other data) than the one requested."""



def _results_folder(out: Path) -> Path:
    return out / _RESULTS_FOLDER


def results_file(out: Path, rank: int) -> Path:
    """The results file of process ``rank`` (``OUT/results/rank-00000.jsonl``)."""
    return _results_folder(out) / f"rank-{rank:05d}.jsonl"


def read_records(
    path: Path, *, key: str = "binary", what: str = "conceptattention evaluate"
) -> tuple[list[dict[str, Any]], bool]:
    """The complete records of one JSONL results file, and whether it ends with a torn (unterminated) line.

    Args:
        path: The file.
        key: A key every record has besides its integer ``index``.
        what: The program whose records these are (errors).

    Raises:
        ResultsFileError: A line other than the last is not a JSON object with an integer ``index`` and ``key``.

    Example:
        >>> import tempfile
        >>> path = Path(tempfile.mkdtemp()) / "rank-00000.jsonl"
        >>> _ = path.write_text('{"index": 0, "binary": []}\\n{"index": 1, "bin')
        >>> read_records(path)
        ([{'index': 0, 'binary': []}], True)
    """
    data = path.read_bytes()
    lines = data.split(b"\n")
    records = []
    for number, line in enumerate(lines[:-1], start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as error:
            raise ResultsFileError(
                f"{path}:{number} is not a valid result line ({error}); the file was edited or corrupted. Remove "
                "the line (it is recomputed on --resume) or start over with --overwrite."
            ) from error
        if not isinstance(record, dict) or not isinstance(record.get("index"), int) or key not in record:
            raise ResultsFileError(f"{path}:{number} is not a result record of {what}.")
        records.append(record)
    return records, bool(lines[-1].strip())


def cut_torn_tail(path: Path) -> None:
    """Truncate a results file after its last complete line (a process was killed while writing).

    Example:
        >>> import tempfile
        >>> path = Path(tempfile.mkdtemp()) / "rank-00000.jsonl"
        >>> _ = path.write_text('{"index": 0}\\n{"ind')
        >>> cut_torn_tail(path)
        >>> path.read_text()
        '{"index": 0}\\n'
    """
    data = path.read_bytes()
    keep = data.rfind(b"\n") + 1
    if keep != len(data):
        with open(path, "r+b") as handle:
            handle.truncate(keep)


def resume_records(path: Path, *, key: str, what: str) -> dict[int, dict[str, Any]]:
    """The records of a resumable JSONL file by index, after cutting off a torn last line (recomputed by the caller).

    Args:
        path: The file (missing: no records yet).
        key: A key every record has besides its integer ``index`` (see :func:`read_records`).
        what: The program whose records these are (errors).

    Raises:
        ResultsFileError: A line other than the last is not such a record.

    Example:
        >>> import tempfile
        >>> path = Path(tempfile.mkdtemp()) / "scenes.jsonl"
        >>> _ = path.write_text('{"index": 3, "stats": {}}\\n{"index": 4, "st')
        >>> resume_records(path, key="stats", what="the per-kind protocol"), path.read_text()
        ({3: {'index': 3, 'stats': {}}}, '{"index": 3, "stats": {}}\\n')
    """
    if not path.is_file():
        return {}
    cut_torn_tail(path)
    records, _torn = read_records(path, key=key, what=what)
    return {record["index"]: record for record in records}


def load_results(out: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """Every per-image record of an evaluation folder, merged over processes, sorted by dataset index.

    A torn last line of a file is ignored; an image recorded twice (which the runner never does) is kept once.

    Args:
        out: The evaluation output folder.

    Returns:
        The records (dicts with ``index``, ``id``, ``binary``, ``multiclass``, ``seconds`` ...).

    Raises:
        ResultsFileError: A line in the middle of a file is not a valid record.

    Example:
        >>> load_results("no/such/run")
        []
    """
    folder = _results_folder(Path(out))
    if not folder.is_dir():
        return []
    by_index: dict[int, dict[str, Any]] = {}
    for path in sorted(folder.glob("rank-*.jsonl")):
        records, _torn = read_records(path)
        for record in records:
            by_index.setdefault(record["index"], record)
    return [by_index[index] for index in sorted(by_index)]


def check_output_folder(out: str | os.PathLike[str], *, resume: bool, overwrite: bool) -> None:
    """Refuse an unusable output folder before any work (the configuration is compared later, by :func:`evaluate`).

    Raises:
        ValueError: ``resume`` and ``overwrite`` together.
        OutputPathError: ``out`` is a file.
        OutputExistsError: ``out`` exists and neither ``resume`` nor ``overwrite`` is given.

    Example:
        >>> check_output_folder("no/such/folder", resume=False, overwrite=False)  # a new folder is fine
    """
    check_run_folder(Path(out), None, resume=resume, overwrite=overwrite)


def check_reusable_folder(
    out: Path, marker: str, *, resume: bool, overwrite: bool, exists_message: str, foreign_message: str
) -> Path | None:
    """The checks shared by run and sweep folders, before anything is written (run by every process).

    Args:
        out: The output folder.
        marker: The JSON file that identifies the folder's contents (``run.json``, ``sweep.json``).
        resume: Continue in an existing folder.
        overwrite: Replace an existing folder's results.
        exists_message: The error for an existing folder without ``resume`` or ``overwrite``.
        foreign_message: The error for a non-empty folder without ``marker`` when resuming.

    Returns:
        The marker file to compare with the requested configuration (resuming into a folder that has one), else
        ``None``: nothing more to check.

    Raises:
        ValueError: ``resume`` and ``overwrite`` together.
        OutputPathError: ``out`` is a file, cannot be written, or (with ``overwrite``) is not a folder of this program
            (no valid ``marker``) or a protected location (home, root, the current directory or an ancestor).
        OutputExistsError: ``out`` exists and neither ``resume`` nor ``overwrite`` is given.
        RunMismatchError: ``resume`` into a non-empty folder without ``marker``.
    """
    if resume and overwrite:
        raise ValueError(
            "--resume and --overwrite exclude each other: resume keeps the results, overwrite drops them."
        )
    if not os.path.lexists(out):
        check_writable_location(out)
        return None
    if not out.is_dir():
        raise OutputPathError(f"The output path '{out}' is a file, not a folder; choose another --out.")
    if overwrite:
        _check_replaceable(out, marker)
        check_writable_location(out)
        return None
    if not resume:
        raise OutputExistsError(exists_message)
    marker_file = out / marker
    if not marker_file.is_file():
        if any(out.iterdir()):
            raise RunMismatchError(foreign_message)
        return None
    return marker_file


#: The keys every marker file of a run or sweep folder has (what ``--overwrite`` checks before replacing results).
_MARKER_KEYS = {"run.json": ("dataset", "method"), "sweep.json": ("sweep",)}


def _check_replaceable(out: Path, marker: str) -> None:
    """Refuse ``--overwrite`` of a folder that is not a run/sweep folder of this program, or a protected location."""
    protected = protected_location(out)
    if protected is not None:
        raise OutputPathError(f"'{out}' cannot be used as an output folder: {protected}. Choose another --out.")
    if not any(out.iterdir()):
        return
    try:
        stored = json.loads((out / marker).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        stored = None
    if not isinstance(stored, dict) or not all(key in stored for key in _MARKER_KEYS.get(marker, ())):
        raise OutputPathError(
            f"'{out}' exists but has no valid {marker}: conceptattention did not write it, so --overwrite does not "
            "replace it. Choose another --out (or delete that folder yourself)."
        )


def check_run_folder(
    out: Path, identity: Mapping[str, Any] | None, *, resume: bool, overwrite: bool, what: str = "a run"
) -> None:
    """Refuse unusable output folders before anything is written (run by every process).

    Args:
        out: The output folder.
        identity: The run's configuration (``run.json``), or ``None`` to check the folder alone.
        resume: Continue the run in ``out``.
        overwrite: Replace the run in ``out``.
        what: What the folder holds (errors), e.g. ``"a per-kind run"``.

    Raises:
        See :func:`check_reusable_folder` and :func:`check_same_run`.
    """
    run_file = check_reusable_folder(
        out,
        "run.json",
        resume=resume,
        overwrite=overwrite,
        exists_message=f"The output folder '{out}' already exists; pass --resume to continue the run in it, or "
        "--overwrite to start over.",
        foreign_message=f"'{out}' exists but has no run.json: it is not an evaluation folder. Choose another --out.",
    )
    if run_file is not None and identity is not None:
        check_same_run(run_file, identity, what=what)


def check_same_run(
    marker: Path,
    identity: Mapping[str, Any],
    *,
    what: str = "a run",
    remedy: str = "Use another --out, or --overwrite to replace it.",
) -> None:
    """Refuse to continue in a folder whose marker file (``run.json``) holds another configuration.

    Args:
        marker: The folder's marker file.
        identity: The requested configuration (JSON-normalised: tuples as lists).
        what: What the folder holds (errors), e.g. ``"a per-kind run"``.
        remedy: What the user can do instead (errors).

    Raises:
        RunMismatchError: ``marker`` is unreadable or differs from ``identity`` (the differing keys are named).

    Example:
        >>> import tempfile
        >>> marker = Path(tempfile.mkdtemp()) / "run.json"
        >>> _ = marker.write_text('{"data": "test:4"}')
        >>> check_same_run(marker, {"data": "test:4"})  # the same run: fine
        >>> check_same_run(marker, {"data": "test:8"}, remedy="Choose another --out.")
        Traceback (most recent call last):
        ...
        conceptattention.evaluation.results.RunMismatchError: '...' holds a run with another configuration (data: stored 'test:4', requested 'test:8'). Choose another --out.
    """
    try:
        stored = json.loads(marker.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise RunMismatchError(f"{marker} is unreadable ({error}); start over with --overwrite.") from error
    if not isinstance(stored, dict):
        raise RunMismatchError(f"{marker} is not a JSON object; start over with --overwrite.")
    if stored != identity:
        keys = sorted(key for key in set(stored) | set(identity) if stored.get(key) != identity.get(key))
        details = "; ".join(f"{key}: stored {stored.get(key)!r}, requested {identity.get(key)!r}" for key in keys)
        raise RunMismatchError(f"'{marker.parent}' holds {what} with another configuration ({details}). {remedy}")


def prepare_run_folder(out: Path, identity: dict[str, Any], *, overwrite: bool) -> bool:
    """Create (or clear, with ``overwrite``) the folder, write run.json, cut torn tails. Returns whether created.

    Called by the main process only, after :func:`check_run_folder`.
    """
    created = not os.path.lexists(out)
    if overwrite and not created:
        for name in ("run.json", "report.json", "report.md"):
            (out / name).unlink(missing_ok=True)
        shutil.rmtree(_results_folder(out), ignore_errors=True)
    _results_folder(out).mkdir(parents=True, exist_ok=True)
    if not (out / "run.json").is_file():
        atomic_write_json(out / "run.json", identity)
    for path in _results_folder(out).glob("rank-*.jsonl"):
        cut_torn_tail(path)
    return created


@contextmanager
def removed_on_failure(folder: Path, *, created: bool, has_results: Callable[[], bool]) -> Iterator[None]:
    """Delete ``folder`` when the body fails, if this process created it and no result was written into it.

    Nothing was computed then, so no partial output is left behind; the error propagates.

    Args:
        folder: The output folder.
        created: Whether this process created it (false on processes other than the main one).
        has_results: Whether any result has been written into it (asked only after a failure).
    """
    try:
        yield
    except BaseException:
        if created and not has_results():
            shutil.rmtree(folder, ignore_errors=True)
        raise


def has_results(out: Path) -> bool:
    """Whether any process has written a result into the run folder ``out``."""
    folder = _results_folder(out)
    return folder.is_dir() and any(path.stat().st_size > 0 for path in folder.glob("rank-*.jsonl"))

