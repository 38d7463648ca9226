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

Replacing an existing output directory (``overwrite=True``) is allowed only for a directory this program wrote: every
directory made by :func:`atomic_output_dir` holds a marker file, :data:`MARKER_NAME`, that lists the files written.
A directory without it, with files the marker does not list, or that is the home folder, the filesystem root, the
current directory or one of its ancestors is never replaced (:func:`check_output_dir`).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import uuid
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from .errors import ConceptAttentionError


__all__ = [
    "MARKER_NAME",
    "OutputExistsError",
    "OutputPathError",
    "atomic_output_dir",
    "check_output_dir",
    "check_writable_location",
    "foreign_content",
    "protected_location",
    "atomic_write_bytes",
    "atomic_write_json",
    "atomic_write_text",
]


class OutputExistsError(ConceptAttentionError, FileExistsError, ValueError):
    """The output directory already exists and overwriting was not requested.

    It is a :class:`FileExistsError` (an ``OSError``) and also a :class:`ValueError`, so callers that handle bad user
    input with ``except ValueError`` catch it too.
    """


class OutputPathError(ConceptAttentionError, ValueError):
    """The output path cannot be used (it is a file where a directory is expected, or the reverse), cannot be written
    (no permission), or must not be replaced (a folder this program did not write)."""


#: The marker file :func:`atomic_output_dir` writes into every output directory: it identifies the directory as this
#: program's and lists the files it wrote, so that ``overwrite`` never replaces anything else.
MARKER_NAME = ".conceptattention-output.json"
_MARKER_FORMAT = "conceptattention.output-dir"
_MARKER_VERSION = 1


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


def protected_location(path: str | os.PathLike[str]) -> str | None:
    """Why ``path`` must never be replaced or filled as an output directory, or None if it may be.

    Protected: the filesystem root, the user's home folder, and the current directory or any of its ancestors
    (replacing those would delete the user's files or the directory the program runs in). Both the path as given
    (made absolute) and its resolved form (symbolic links followed) are checked.

    Example:
        >>> protected_location("/")
        'it is the filesystem root'
        >>> protected_location("runs/never-made") is None
        True
    """
    given = Path(os.path.abspath(path))
    candidates = {given}
    with contextlib.suppress(OSError, RuntimeError):
        candidates.add(given.resolve())
    home = {Path(os.path.abspath(Path.home()))}
    with contextlib.suppress(OSError, RuntimeError):
        home.add(Path.home().resolve())
    try:
        cwd = Path.cwd()
        working = {cwd, cwd.resolve()}
    except OSError:
        working = set()
    for candidate in candidates:
        if candidate.parent == candidate:
            return "it is the filesystem root"
        if candidate in home:
            return "it is your home folder"
        for directory in working:
            if candidate == directory:
                return "it is the current directory"
            if candidate in directory.parents:
                return "it contains the current directory"
    return None


def _read_marker(directory: Path) -> set[str] | None:
    """The files listed by ``directory``'s marker, or None if it has no valid marker."""
    try:
        marker = json.loads((directory / MARKER_NAME).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None
    if not isinstance(marker, dict) or marker.get("format") != _MARKER_FORMAT:
        return None
    files = marker.get("files")
    if not isinstance(files, list) or not all(isinstance(name, str) for name in files):
        return None
    return set(files)


def _listing(directory: Path) -> list[str]:
    """Every file (and symbolic link, and special file) under ``directory``, as sorted relative POSIX paths."""
    found: list[str] = []
    for root, folders, files in os.walk(directory):
        base = Path(root).relative_to(directory)
        for name in list(folders):
            if os.path.islink(os.path.join(root, name)):  # os.walk does not descend into links: count them
                found.append((base / name).as_posix())
        found.extend((base / name).as_posix() for name in files)
    return sorted(found)


#: A function that recognises an output directory written without a marker (by an earlier version): it returns the
#: set of relative file paths that directory's own records list, or None if it does not recognise the directory.
Recogniser = Callable[[Path], "set[str] | None"]


def foreign_content(directory: str | os.PathLike[str], *, recognise: Recogniser | None = None) -> str | None:
    """Why the existing directory ``directory`` is not an output directory of this program, or None if it is one.

    A directory is this program's when it is empty, or when it holds the marker :data:`MARKER_NAME` written by
    :func:`atomic_output_dir` (or, without one, ``recognise`` lists its files) and no file that the marker does not
    list (a file the user added, for example).

    Args:
        directory: An existing directory.
        recognise: Optional :data:`Recogniser` for directories written before markers existed.

    Example:
        >>> import tempfile
        >>> out = f"{tempfile.mkdtemp()}/run"
        >>> with atomic_output_dir(out) as folder:
        ...     _ = (folder / "result.txt").write_text("1")
        >>> foreign_content(out) is None
        True
        >>> _ = (Path(out) / "notes.txt").write_text("mine")
        >>> foreign_content(out)
        "it holds files conceptattention did not write ('notes.txt')"
    """
    folder = Path(directory)
    try:
        listing = _listing(folder)
        if not listing and not any(folder.iterdir()):
            return None
    except OSError as error:
        return f"it cannot be read ({error.strerror or error})"
    written = _read_marker(folder)
    if written is None and recognise is not None:
        try:
            written = recognise(folder)
        except (OSError, ValueError):
            written = None
    if written is None:
        return f"it was not written by conceptattention (it has no valid {MARKER_NAME} marker)"
    foreign = [name for name in listing if name != MARKER_NAME and name not in written]
    if foreign:
        shown = ", ".join(repr(name) for name in foreign[:3]) + (f" and {len(foreign) - 3} more" if len(foreign) > 3 else "")
        return f"it holds files conceptattention did not write ({shown})"
    return None


def check_writable_location(path: str | os.PathLike[str]) -> None:
    """Refuse an output path whose nearest existing ancestor is not a writable directory.

    Raises:
        OutputPathError: The nearest existing ancestor is a file, or the user may not create entries in it.

    Example:
        >>> check_writable_location("runs/new-run")  # the current directory is writable
    """
    current = Path(os.path.abspath(path)).parent
    while not os.path.lexists(current) and current.parent != current:
        current = current.parent
    if not current.is_dir():
        raise OutputPathError(f"Cannot write under '{path}': '{current}' is a file, not a folder.")
    if not os.access(current, os.W_OK | os.X_OK):
        raise OutputPathError(
            f"Cannot write to '{path}': no permission to create files in '{current}'; choose another output folder."
        )


def check_output_dir(
    path: str | os.PathLike[str],
    *,
    overwrite: bool,
    option: str = "--overwrite",
    recognise: Recogniser | None = None,
) -> None:
    """Refuse an unusable output directory before any work is done (and again before it is replaced).

    A new path is fine if its parent can be written. An existing path must be a directory; it is replaced only with
    ``overwrite`` and only if this program wrote it (see :func:`foreign_content`) and it is not a protected location
    (see :func:`protected_location`).

    Args:
        path: The output directory.
        overwrite: Whether an existing directory may be replaced.
        option: How the user asks for ``overwrite``, for the messages.
        recognise: Optional :data:`Recogniser` for output directories written before markers existed.

    Raises:
        OutputPathError: ``path`` names no directory (``.``, ``..``), is a file, cannot be written, or must not be
            replaced (the message says why).
        OutputExistsError: ``path`` is a replaceable output directory and ``overwrite`` is False.

    Example:
        >>> check_output_dir("runs/new-run", overwrite=False)  # a new folder is fine
        >>> check_output_dir("/", overwrite=True)
        Traceback (most recent call last):
        ...
        conceptattention.outputs.OutputPathError: '/' cannot be used as an output folder: it is the filesystem root...
    """
    final_path = Path(path)
    exists = os.path.lexists(final_path)
    protected = protected_location(final_path) if exists and final_path.is_dir() else None
    if protected is not None:
        raise OutputPathError(
            f"'{path}' cannot be used as an output folder: {protected}. Name a new folder, e.g. 'runs/dog'."
        )
    if final_path.name in ("", ".", ".."):
        raise OutputPathError(
            f"'{path}' cannot be used as an output directory; name a new directory, e.g. 'runs/dog'."
        )
    if not exists:
        check_writable_location(final_path)
        return
    if not final_path.is_dir():
        raise OutputPathError(
            f"The output path '{path}' is a file, not a folder (not a directory); choose another output path."
        )
    foreign = foreign_content(final_path, recognise=recognise)
    if foreign is not None:
        raise OutputPathError(
            f"The output folder '{path}' already exists and {foreign}, so it is never replaced, even with {option}; "
            "choose a new output folder (or delete this one yourself)."
        )
    if not overwrite:
        raise OutputExistsError(
            f"The output directory '{path}' already exists; pass {option} (overwrite=True) to replace it, "
            "or choose another output path."
        )
    check_writable_location(final_path)


def remove_output_dir(path: str | os.PathLike[str], *, recognise: Recogniser | None = None) -> None:
    """Delete an output directory, but only one this program wrote (e.g. to prune old runs of a server).

    The same rules as ``overwrite`` apply (see :func:`check_output_dir`): the directory must hold a valid marker and
    no foreign file, and must not be a protected location. A symbolic link is removed, never its target.

    Raises:
        OutputPathError: With the reason, when the directory is not this program's; nothing is deleted then.
        FileNotFoundError: ``path`` does not exist.

    Example:
        >>> import tempfile
        >>> out = f"{tempfile.mkdtemp()}/run"
        >>> with atomic_output_dir(out) as folder:
        ...     _ = (folder / "a.txt").write_text("a")
        >>> remove_output_dir(out)
        >>> os.path.exists(out)
        False
    """
    directory = Path(path)
    if not os.path.lexists(directory):
        raise FileNotFoundError(f"No output folder at '{path}'.")
    if not directory.is_dir():
        raise OutputPathError(f"'{path}' is a file, not a folder; it is not removed.")
    reason = protected_location(directory) or foreign_content(directory, recognise=recognise)
    if reason is not None:
        raise OutputPathError(f"'{path}' is not removed: {reason}.")
    _remove_tree(directory)


def _write_marker(directory: Path) -> None:
    """Write :data:`MARKER_NAME` into the finished temporary ``directory``, listing every file in it."""
    marker = {"format": _MARKER_FORMAT, "version": _MARKER_VERSION, "files": _listing(directory)}
    (directory / MARKER_NAME).write_text(json.dumps(marker, indent=1) + "\n", encoding="utf-8")


def _remove_tree(path: Path) -> None:
    if path.is_symlink():
        os.unlink(path)  # remove the link, never the directory it points to
    else:
        shutil.rmtree(path)


def _commit_directory(
    temporary_dir: Path, final_path: Path, overwrite: bool, recognise: Recogniser | None = None
) -> None:
    """Move the finished temporary directory into place, keeping the old one until the new one is in."""
    # Checked again: the path may have appeared (or changed) while the caller was writing.
    check_output_dir(final_path, overwrite=overwrite, recognise=recognise)
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
def atomic_output_dir(
    path: str | os.PathLike[str], *, overwrite: bool = False, recognise: Recogniser | None = None
) -> Iterator[Path]:
    """Fill an output directory that appears complete, or not at all.

    Yields a fresh, empty temporary directory next to ``path`` (on the same filesystem). When the ``with`` block
    finishes normally the temporary directory is renamed to ``path``. If ``path`` exists and ``overwrite`` is True,
    the old directory is first renamed aside, the new one moved in, and only then is the old one deleted, so the
    previous outputs survive any failure before that point. If the block raises (including ``KeyboardInterrupt``) the
    temporary directory is deleted and the exception propagates: no partial output is left and an existing ``path``
    is untouched.

    Missing parent directories of ``path`` are created, and removed again on failure if still empty. The finished
    directory holds the marker :data:`MARKER_NAME`, which lists its files: only such a directory (or an empty one) is
    ever replaced, and never the home folder, the filesystem root or the current directory or its ancestors (see
    :func:`check_output_dir`).

    Args:
        path: The output directory to create or replace.
        overwrite: Replace ``path`` if it already exists (and this program wrote it).
        recognise: Optional :data:`Recogniser` for output directories written before markers existed.

    Yields:
        The temporary directory to write into (a :class:`~pathlib.Path`). Do not keep references to it after the
        block: it is renamed to ``path``.

    Raises:
        OutputExistsError: If ``path`` exists and ``overwrite`` is False. Raised before anything is created.
        OutputPathError: If ``path`` (or one of its parents) exists as a file, cannot be written, or is a directory
            this program did not write or must not replace. Raised before anything is created.

    Example:
        >>> import tempfile
        >>> out = f"{tempfile.mkdtemp()}/run"
        >>> with atomic_output_dir(out) as folder:
        ...     _ = (folder / "config.json").write_text("{}")
        >>> sorted(p.name for p in Path(out).iterdir())
        ['.conceptattention-output.json', 'config.json']
    """
    final_path = Path(path)
    check_output_dir(final_path, overwrite=overwrite, recognise=recognise)
    temporary_dir = _unique_sibling(final_path, "tmp")
    try:
        created_parents = _make_parents(final_path.parent)
    except PermissionError as error:
        raise OutputPathError(
            f"Cannot create the output folder '{path}': permission denied ({error.filename}); choose another one."
        ) from None
    try:
        os.mkdir(temporary_dir)  # os.mkdir honours the umask, unlike tempfile.mkdtemp (0o700)
    except PermissionError:
        _remove_created_parents(created_parents)
        raise OutputPathError(
            f"Cannot write the output folder '{path}': no permission to create files in '{final_path.parent}'; "
            "choose another output folder."
        ) from None
    except BaseException:
        _remove_created_parents(created_parents)
        raise
    try:
        yield temporary_dir
        _write_marker(temporary_dir)
        _commit_directory(temporary_dir, final_path, overwrite, recognise)
    except BaseException:
        shutil.rmtree(temporary_dir, ignore_errors=True)
        _remove_created_parents(created_parents)
        raise
