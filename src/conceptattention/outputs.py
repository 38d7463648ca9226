"""Atomic output writing: files and whole output directories appear complete or not at all.

Every file the library and the CLI write goes through this module, so that an interrupted run (an exception, a
``KeyboardInterrupt``, a bad input discovered half way) never leaves a half-written file or a half-filled output
directory behind, and never destroys the outputs of an earlier run before the new ones are complete.

* Files are written to a temporary file in the same directory (hence the same filesystem), flushed and ``fsync``-ed,
  then moved into place with :func:`os.replace`, which is atomic on POSIX and Windows.
* Directories are filled in a temporary sibling directory and renamed into place on success
  (:func:`atomic_output_dir`).

Temporary names start with a dot and contain ``.tmp-`` (files and directories being written) or ``.old-`` (an earlier
output directory being replaced), so they are easy to recognise should a process be killed with ``SIGKILL``.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import uuid
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any


__all__ = [
    "OutputExistsError",
    "OutputPathError",
    "atomic_output_dir",
    "atomic_write_bytes",
    "atomic_write_json",
    "atomic_write_text",
]


class OutputExistsError(FileExistsError, ValueError):
    """The output directory already exists and overwriting was not requested.

    It is a :class:`FileExistsError` (an ``OSError``) and also a :class:`ValueError`, so callers that handle bad user
    input with ``except ValueError`` catch it too.
    """


class OutputPathError(ValueError):
    """The output path cannot be used (it is a file where a directory is expected, or the reverse)."""


def _unique_sibling(path: Path, tag: str) -> Path:
    """A fresh hidden name next to ``path``: ``.<name>.<tag>-<random>``."""
    return path.parent / f".{path.name}.{tag}-{uuid.uuid4().hex[:12]}"


def _make_parents(directory: Path) -> list[Path]:
    """Create ``directory`` and its missing ancestors; return the ones created, outermost first."""
    missing: list[Path] = []
    current = directory
    while not current.exists():
        if os.path.lexists(current):
            raise OutputPathError(f"Cannot create directory '{current}': it is a broken symbolic link; remove it.")
        missing.append(current)
        current = current.parent
    if not current.is_dir():
        raise OutputPathError(f"Cannot write under '{directory}': '{current}' is a file, not a directory.")
    missing.reverse()  # outermost first
    for created in missing:
        os.mkdir(created)
    return missing


def _remove_created_parents(created: list[Path]) -> None:
    """Remove directories made by :func:`_make_parents` if they are still empty (innermost first)."""
    for directory in reversed(created):
        try:
            os.rmdir(directory)
        except OSError:
            return  # not empty or already gone: leave it and everything above it


def _check_file_target(path: Path) -> None:
    if path.is_dir():
        raise OutputPathError(f"Cannot write the file '{path}': a directory with that name exists.")


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes | bytearray | memoryview) -> Path:
    """Write ``data`` to ``path`` atomically, replacing any existing file.

    The bytes go to a temporary file in the same directory, are flushed to disk, and the temporary file is renamed
    over ``path`` with :func:`os.replace`. Readers therefore see either the old file or the complete new one, and an
    error leaves the old file untouched and no temporary file behind. Missing parent directories are created (and
    removed again if the write fails). The new file gets the usual permissions (``0o666`` minus the umask).

    Args:
        path: Destination file.
        data: The content.

    Returns:
        The destination as a :class:`~pathlib.Path`.

    Raises:
        ValueError: If ``data`` is not bytes-like.
        OutputPathError: If ``path`` is an existing directory or lies under a file.

    Example:
        >>> import tempfile
        >>> folder = tempfile.mkdtemp()
        >>> atomic_write_bytes(f"{folder}/blob.bin", b"\\x00\\x01").read_bytes()
        b'\\x00\\x01'
    """
    if not isinstance(data, bytes | bytearray | memoryview):
        raise ValueError(f"atomic_write_bytes expects bytes, bytearray or memoryview, got {type(data).__name__}.")
    final_path = Path(path)
    _check_file_target(final_path)
    created_parents = _make_parents(final_path.parent)
    temporary_path = _unique_sibling(final_path, "tmp")
    try:
        # O_EXCL: never clobber a file someone else is creating; 0o666 so that the umask decides the permissions
        # (tempfile.mkstemp would leave the final file readable by its owner only).
        file_descriptor = os.open(
            temporary_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666
        )
        with open(file_descriptor, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary_path, final_path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temporary_path)
        _remove_created_parents(created_parents)
        raise
    return final_path


def atomic_write_text(path: str | os.PathLike[str], text: str, *, encoding: str = "utf-8") -> Path:
    """Write ``text`` to ``path`` atomically (see :func:`atomic_write_bytes`).

    No newline translation is done: ``"\\n"`` is written as ``"\\n"`` on every platform.

    Args:
        path: Destination file.
        text: The content.
        encoding: Text encoding.

    Returns:
        The destination as a :class:`~pathlib.Path`.

    Raises:
        ValueError: If ``text`` is not a ``str`` or cannot be encoded.
        OutputPathError: If ``path`` is an existing directory or lies under a file.

    Example:
        >>> import tempfile
        >>> folder = tempfile.mkdtemp()
        >>> atomic_write_text(f"{folder}/note.txt", "hello\\n").read_text()
        'hello\\n'
    """
    if not isinstance(text, str):
        raise ValueError(
            f"atomic_write_text expects a str, got {type(text).__name__}; use atomic_write_bytes for bytes."
        )
    return atomic_write_bytes(path, text.encode(encoding))


def atomic_write_json(
    path: str | os.PathLike[str], obj: Any, *, indent: int | None = 2, allow_nan: bool = False
) -> Path:
    """Serialise ``obj`` as JSON and write it to ``path`` atomically (see :func:`atomic_write_bytes`).

    The object is serialised completely before anything touches the disk, so an object that is not serialisable
    leaves no file behind. The file ends with a newline.

    Args:
        path: Destination file.
        obj: A JSON-serialisable object (dicts with string keys, lists, tuples, strings, numbers, booleans, None).
        indent: Indentation passed to :func:`json.dumps` (``None`` for a single line).
        allow_nan: Whether ``NaN`` and ``Infinity`` may be written. They are not valid JSON and many readers reject
            them, so by default they raise; store ``None`` for undefined numbers instead.

    Returns:
        The destination as a :class:`~pathlib.Path`.

    Raises:
        ValueError: If ``obj`` is not JSON-serialisable (or holds NaN/Infinity while ``allow_nan`` is False).
        OutputPathError: If ``path`` is an existing directory or lies under a file.

    Example:
        >>> import json, tempfile
        >>> folder = tempfile.mkdtemp()
        >>> json.loads(atomic_write_json(f"{folder}/result.json", {"miou": 0.5}).read_text())
        {'miou': 0.5}
    """
    try:
        text = json.dumps(obj, indent=indent, allow_nan=allow_nan, ensure_ascii=False)
    except (TypeError, ValueError) as error:
        raise ValueError(
            f"Cannot write '{path}': the object is not JSON-serialisable ({error}). Convert tensors and arrays with "
            ".tolist(), paths with str(), and NaN/Infinity to None."
        ) from error
    return atomic_write_text(path, text + "\n")


def _check_directory_target(path: Path, overwrite: bool) -> None:
    """Refuse unusable output directories before anything is created."""
    if not os.path.lexists(path):
        return
    if not path.is_dir():
        raise OutputPathError(
            f"The output path '{path}' exists and is not a directory; choose another output path or remove the file."
        )
    if not overwrite:
        raise OutputExistsError(
            f"The output directory '{path}' already exists; pass --overwrite (overwrite=True) to replace it, "
            "or choose another output path."
        )


def _remove_tree(path: Path) -> None:
    if path.is_symlink():
        os.unlink(path)  # remove the link, never the directory it points to
    else:
        shutil.rmtree(path)


def _commit_directory(temporary_dir: Path, final_path: Path, overwrite: bool) -> None:
    """Move the finished temporary directory into place, keeping the old one until the new one is in."""
    # Checked again: the path may have appeared while the caller was writing.
    _check_directory_target(final_path, overwrite)
    if not os.path.lexists(final_path):
        os.rename(temporary_dir, final_path)
        return
    old_dir = _unique_sibling(final_path, "old")
    os.rename(final_path, old_dir)
    try:
        os.rename(temporary_dir, final_path)
    except BaseException:
        os.rename(old_dir, final_path)  # put the user's previous outputs back
        raise
    try:
        _remove_tree(old_dir)
    except OSError as error:
        warnings.warn(
            f"The new outputs are in '{final_path}', but the previous ones, moved to '{old_dir}', could not be "
            f"deleted ({error}); remove that directory by hand.",
            RuntimeWarning,
            stacklevel=3,
        )


@contextlib.contextmanager
def atomic_output_dir(path: str | os.PathLike[str], *, overwrite: bool = False) -> Iterator[Path]:
    """Fill an output directory that appears complete, or not at all.

    Yields a fresh, empty temporary directory next to ``path`` (on the same filesystem). When the ``with`` block
    finishes normally the temporary directory is renamed to ``path``. If ``path`` exists and ``overwrite`` is True,
    the old directory is first renamed aside, the new one moved in, and only then is the old one deleted, so the
    previous outputs survive any failure before that point. If the block raises (including ``KeyboardInterrupt``) the
    temporary directory is deleted and the exception propagates: no partial output is left and an existing ``path``
    is untouched.

    Missing parent directories of ``path`` are created, and removed again on failure if still empty.

    Args:
        path: The output directory to create or replace.
        overwrite: Replace ``path`` if it already exists.

    Yields:
        The temporary directory to write into (a :class:`~pathlib.Path`). Do not keep references to it after the
        block: it is renamed to ``path``.

    Raises:
        OutputExistsError: If ``path`` exists and ``overwrite`` is False. Raised before anything is created.
        OutputPathError: If ``path`` (or one of its parents) exists as a file.

    Example:
        >>> import tempfile
        >>> out = f"{tempfile.mkdtemp()}/run"
        >>> with atomic_output_dir(out) as folder:
        ...     _ = (folder / "config.json").write_text("{}")
        >>> sorted(p.name for p in Path(out).iterdir())
        ['config.json']
    """
    final_path = Path(path)
    if final_path.name in ("", ".", ".."):
        raise OutputPathError(
            f"'{path}' cannot be used as an output directory; name a new directory, e.g. 'runs/dog'."
        )
    _check_directory_target(final_path, overwrite)
    created_parents = _make_parents(final_path.parent)
    temporary_dir = _unique_sibling(final_path, "tmp")
    try:
        os.mkdir(temporary_dir)  # os.mkdir honours the umask, unlike tempfile.mkdtemp (0o700)
    except BaseException:
        _remove_created_parents(created_parents)
        raise
    try:
        yield temporary_dir
        _commit_directory(temporary_dir, final_path, overwrite)
    except BaseException:
        shutil.rmtree(temporary_dir, ignore_errors=True)
        _remove_created_parents(created_parents)
        raise
