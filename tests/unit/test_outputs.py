"""Tests for conceptattention.outputs: atomic files and output directories."""

from __future__ import annotations

import json
import os
import stat
import sys
from pathlib import Path

import pytest

from conceptattention import outputs
from conceptattention.outputs import (
    MARKER_NAME,
    OutputExistsError,
    OutputPathError,
    atomic_output_dir,
    atomic_write_bytes,
    atomic_write_json,
    atomic_write_text,
    check_output_dir,
    remove_output_dir,
)


def _entries(directory: Path) -> list[str]:
    return sorted(entry.name for entry in directory.iterdir())


def _previous_run(final: Path, name: str = "old.txt") -> Path:
    """An output directory written by atomic_output_dir (so with its marker) holding one file."""
    with atomic_output_dir(final) as folder:
        (folder / name).write_text("old")
    return final


def _current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


class TestAtomicWriteBytes:
    """atomic_write_bytes and its text/JSON wrappers."""

    def test_writes_content_and_leaves_no_temporary_file(self, tmp_path: Path) -> None:
        result = atomic_write_bytes(tmp_path / "blob.bin", b"\x00\x01\x02")
        assert result == tmp_path / "blob.bin"
        assert result.read_bytes() == b"\x00\x01\x02"
        assert _entries(tmp_path) == ["blob.bin"]

    def test_accepts_bytearray_and_memoryview(self, tmp_path: Path) -> None:
        atomic_write_bytes(tmp_path / "a", bytearray(b"ab"))
        atomic_write_bytes(tmp_path / "b", memoryview(b"cd"))
        assert (tmp_path / "a").read_bytes() == b"ab"
        assert (tmp_path / "b").read_bytes() == b"cd"

    def test_replaces_an_existing_file(self, tmp_path: Path) -> None:
        target = tmp_path / "data.bin"
        target.write_bytes(b"old content")
        atomic_write_bytes(target, b"new")
        assert target.read_bytes() == b"new"
        assert _entries(tmp_path) == ["data.bin"]

    def test_creates_missing_parent_directories(self, tmp_path: Path) -> None:
        target = tmp_path / "a" / "b" / "file.txt"
        atomic_write_bytes(target, b"x")
        assert target.read_bytes() == b"x"

    @pytest.mark.skipif(sys.platform == "win32", reason="POSIX permission bits")
    def test_permissions_follow_the_umask(self, tmp_path: Path) -> None:
        target = atomic_write_bytes(tmp_path / "file.bin", b"x")
        assert stat.S_IMODE(target.stat().st_mode) == 0o666 & ~_current_umask()

    def test_failure_keeps_the_old_file_and_removes_the_temporary_one(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        target = tmp_path / "data.bin"
        target.write_bytes(b"old content")

        def failing_replace(source: str | os.PathLike[str], destination: str | os.PathLike[str]) -> None:
            raise OSError("disk full")

        monkeypatch.setattr(outputs.os, "replace", failing_replace)
        with pytest.raises(OSError, match="disk full"):
            atomic_write_bytes(target, b"new")
        assert target.read_bytes() == b"old content"
        assert _entries(tmp_path) == ["data.bin"]

    def test_failure_removes_the_parent_directories_it_created(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        def failing_replace(source: str | os.PathLike[str], destination: str | os.PathLike[str]) -> None:
            raise OSError("disk full")

        monkeypatch.setattr(outputs.os, "replace", failing_replace)
        with pytest.raises(OSError):
            atomic_write_bytes(tmp_path / "new" / "deeper" / "file.bin", b"x")
        assert _entries(tmp_path) == []

    def test_refuses_a_directory_target(self, tmp_path: Path) -> None:
        (tmp_path / "folder").mkdir()
        with pytest.raises(OutputPathError, match="directory") as error_info:
            atomic_write_bytes(tmp_path / "folder", b"x")
        assert isinstance(error_info.value, ValueError)
        assert _entries(tmp_path / "folder") == []

    def test_refuses_a_parent_that_is_a_file(self, tmp_path: Path) -> None:
        (tmp_path / "plain").write_text("x")
        with pytest.raises(OutputPathError, match="is a file"):
            atomic_write_bytes(tmp_path / "plain" / "child.bin", b"x")

    def test_refuses_non_bytes(self, tmp_path: Path) -> None:
        with pytest.raises(ValueError, match="bytes"):
            atomic_write_bytes(tmp_path / "file", "text")  # type: ignore[arg-type]
        assert _entries(tmp_path) == []

    def test_write_text_round_trips_unicode_without_newline_translation(self, tmp_path: Path) -> None:
        target = atomic_write_text(tmp_path / "note.txt", "chien\nhund 🐕\r\n")
        assert target.read_bytes() == "chien\nhund 🐕\r\n".encode()
        atomic_write_text(tmp_path / "latin.txt", "é", encoding="latin-1")
        assert (tmp_path / "latin.txt").read_bytes() == b"\xe9"

    def test_write_text_refuses_bytes(self, tmp_path: Path) -> None:
        with pytest.raises(ValueError, match="atomic_write_bytes"):
            atomic_write_text(tmp_path / "note.txt", b"x")  # type: ignore[arg-type]

    def test_write_json_round_trips_and_ends_with_newline(self, tmp_path: Path) -> None:
        payload = {"miou": 0.5, "concepts": ["dog", "chat"], "nested": {"layers": [15, 16]}}
        target = atomic_write_json(tmp_path / "result.json", payload)
        text = target.read_text()
        assert json.loads(text) == payload
        assert text.endswith("}\n")
        assert "\n  " in text  # indented by default
        atomic_write_json(tmp_path / "flat.json", payload, indent=None)
        assert (tmp_path / "flat.json").read_text().count("\n") == 1

    def test_write_json_refuses_unserialisable_objects_before_writing(self, tmp_path: Path) -> None:
        with pytest.raises(ValueError, match="not JSON-serialisable"):
            atomic_write_json(tmp_path / "result.json", {"value": object()})
        assert _entries(tmp_path) == []

    def test_write_json_refuses_nan_unless_allowed(self, tmp_path: Path) -> None:
        with pytest.raises(ValueError, match="NaN"):
            atomic_write_json(tmp_path / "result.json", {"value": float("nan")})
        assert _entries(tmp_path) == []
        atomic_write_json(tmp_path / "result.json", {"value": float("nan")}, allow_nan=True)
        assert "NaN" in (tmp_path / "result.json").read_text()


class TestAtomicOutputDir:
    """atomic_output_dir: complete output directories or none."""

    def test_success_moves_the_directory_into_place(self, tmp_path: Path) -> None:
        final = tmp_path / "run"
        with atomic_output_dir(final) as folder:
            assert folder.is_dir()
            assert folder.parent == tmp_path  # same filesystem: a sibling of the final path
            assert folder != final
            assert not final.exists()  # nothing visible before the block ends
            (folder / "image.png").write_bytes(b"png")
            (folder / "sub").mkdir()
            (folder / "sub" / "maps.safetensors").write_bytes(b"maps")
        assert _entries(final) == [MARKER_NAME, "image.png", "sub"]
        assert (final / "sub" / "maps.safetensors").read_bytes() == b"maps"
        assert json.loads((final / MARKER_NAME).read_text())["files"] == ["image.png", "sub/maps.safetensors"]
        assert _entries(tmp_path) == ["run"]

    def test_accepts_a_string_path(self, tmp_path: Path) -> None:
        with atomic_output_dir(str(tmp_path / "run")) as folder:
            (folder / "a.txt").write_text("a")
        assert (tmp_path / "run" / "a.txt").read_text() == "a"

    @pytest.mark.skipif(sys.platform == "win32", reason="POSIX permission bits")
    def test_directory_permissions_follow_the_umask(self, tmp_path: Path) -> None:
        with atomic_output_dir(tmp_path / "run"):
            pass
        assert stat.S_IMODE((tmp_path / "run").stat().st_mode) == 0o777 & ~_current_umask()

    def test_exception_leaves_nothing_and_propagates(self, tmp_path: Path) -> None:
        with pytest.raises(RuntimeError, match="boom"):
            with atomic_output_dir(tmp_path / "run") as folder:
                (folder / "partial.png").write_bytes(b"half")
                raise RuntimeError("boom")
        assert _entries(tmp_path) == []

    def test_keyboard_interrupt_leaves_nothing(self, tmp_path: Path) -> None:
        with pytest.raises(KeyboardInterrupt):
            with atomic_output_dir(tmp_path / "run") as folder:
                (folder / "partial.png").write_bytes(b"half")
                raise KeyboardInterrupt
        assert _entries(tmp_path) == []

    def test_missing_parents_are_created_and_removed_again_on_failure(self, tmp_path: Path) -> None:
        with pytest.raises(RuntimeError):
            with atomic_output_dir(tmp_path / "runs" / "2025" / "dog"):
                raise RuntimeError("boom")
        assert _entries(tmp_path) == []
        with atomic_output_dir(tmp_path / "runs" / "2025" / "dog") as folder:
            (folder / "a.txt").write_text("a")
        assert (tmp_path / "runs" / "2025" / "dog" / "a.txt").read_text() == "a"

    def test_existing_directory_is_refused_before_anything_is_done(self, tmp_path: Path) -> None:
        final = _previous_run(tmp_path / "run")
        entered = False
        with pytest.raises(OutputExistsError, match="--overwrite") as error_info:
            with atomic_output_dir(final):
                entered = True
        assert not entered
        assert isinstance(error_info.value, FileExistsError)
        assert isinstance(error_info.value, ValueError)
        assert _entries(tmp_path) == ["run"]
        assert _entries(final) == [MARKER_NAME, "old.txt"]

    def test_overwrite_keeps_old_content_until_success(self, tmp_path: Path) -> None:
        final = _previous_run(tmp_path / "run")
        with atomic_output_dir(final, overwrite=True) as folder:
            assert (final / "old.txt").read_text() == "old"  # still there while the new outputs are written
            (folder / "new.txt").write_text("new")
        assert _entries(final) == [MARKER_NAME, "new.txt"]
        assert _entries(tmp_path) == ["run"]  # the old directory was deleted, no temporary siblings

    def test_overwrite_with_exception_keeps_old_content(self, tmp_path: Path) -> None:
        final = _previous_run(tmp_path / "run")
        with pytest.raises(RuntimeError):
            with atomic_output_dir(final, overwrite=True) as folder:
                (folder / "new.txt").write_text("new")
                raise RuntimeError("boom")
        assert _entries(final) == [MARKER_NAME, "old.txt"]
        assert _entries(tmp_path) == ["run"]

    def test_overwrite_restores_old_directory_if_moving_the_new_one_in_fails(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        final = _previous_run(tmp_path / "run")
        real_rename = os.rename
        calls: list[tuple[str, str]] = []

        def rename_failing_on_move_in(source: str | os.PathLike[str], destination: str | os.PathLike[str]) -> None:
            calls.append((os.fspath(source), os.fspath(destination)))
            if len(calls) == 2:  # 1: old -> aside, 2: new -> final
                raise OSError("rename failed")
            real_rename(source, destination)

        monkeypatch.setattr(outputs.os, "rename", rename_failing_on_move_in)
        with pytest.raises(OSError, match="rename failed"):
            with atomic_output_dir(final, overwrite=True) as folder:
                (folder / "new.txt").write_text("new")
        assert len(calls) == 3  # the third rename put the old directory back
        assert _entries(final) == [MARKER_NAME, "old.txt"]
        assert _entries(tmp_path) == ["run"]

    def test_failure_to_delete_the_old_directory_only_warns(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        final = _previous_run(tmp_path / "run")

        def failing_rmtree(path: str | os.PathLike[str], *args: object, **kwargs: object) -> None:
            raise PermissionError("busy")

        monkeypatch.setattr(outputs.shutil, "rmtree", failing_rmtree)
        with pytest.warns(RuntimeWarning, match="could not be deleted"):
            with atomic_output_dir(final, overwrite=True) as folder:
                (folder / "new.txt").write_text("new")
        assert _entries(final) == [MARKER_NAME, "new.txt"]
        leftovers = [name for name in _entries(tmp_path) if name != "run"]
        assert len(leftovers) == 1 and ".old-" in leftovers[0]
        assert _entries(tmp_path / leftovers[0]) == [MARKER_NAME, "old.txt"]

    def test_path_created_by_someone_else_during_the_block_is_not_replaced(self, tmp_path: Path) -> None:
        final = tmp_path / "run"
        with pytest.raises(OutputPathError, match="not written by conceptattention"):
            with atomic_output_dir(final) as folder:
                (folder / "new.txt").write_text("new")
                final.mkdir()
                (final / "theirs.txt").write_text("theirs")
        assert _entries(final) == ["theirs.txt"]
        assert _entries(tmp_path) == ["run"]

    @pytest.mark.parametrize("overwrite", [False, True])
    def test_existing_file_is_refused(self, tmp_path: Path, overwrite: bool) -> None:
        final = tmp_path / "run"
        final.write_text("a file")
        with pytest.raises(OutputPathError, match="is a file, not a folder") as error_info:
            with atomic_output_dir(final, overwrite=overwrite):
                pass
        assert "--overwrite" not in str(error_info.value)
        assert final.read_text() == "a file"
        assert _entries(tmp_path) == ["run"]

    def test_parent_that_is_a_file_is_refused(self, tmp_path: Path) -> None:
        (tmp_path / "plain").write_text("x")
        with pytest.raises(OutputPathError, match="is a file"):
            with atomic_output_dir(tmp_path / "plain" / "run"):
                pass

    @pytest.mark.parametrize("relative_path", [".", "..", "inner/.."])
    def test_unnamed_paths_are_refused_even_with_overwrite(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, relative_path: str
    ) -> None:
        (tmp_path / "inner").mkdir()
        monkeypatch.chdir(tmp_path / "inner")
        with pytest.raises(OutputPathError, match="cannot be used"):
            with atomic_output_dir(relative_path, overwrite=True):
                pass
        assert _entries(tmp_path) == ["inner"]

    @pytest.mark.skipif(sys.platform == "win32", reason="symbolic links need privileges on Windows")
    def test_overwriting_a_symlinked_directory_removes_the_link_not_the_target(self, tmp_path: Path) -> None:
        target = _previous_run(tmp_path / "real", "keep.txt")
        link = tmp_path / "run"
        link.symlink_to(target, target_is_directory=True)
        with atomic_output_dir(link, overwrite=True) as folder:
            (folder / "new.txt").write_text("new")
        assert not link.is_symlink()
        assert _entries(link) == [MARKER_NAME, "new.txt"]
        assert _entries(target) == [MARKER_NAME, "keep.txt"]


class TestOverwriteOnlyOwnFolders:
    """overwrite replaces only folders this program wrote; everything else is refused with the reason (issue 16)."""

    def test_folder_without_marker_is_never_replaced(self, tmp_path: Path) -> None:
        final = tmp_path / "mine"
        final.mkdir()
        (final / "thesis.tex").write_text("precious")
        for overwrite in (False, True):
            with pytest.raises(OutputPathError, match="not written by conceptattention") as error_info:
                with atomic_output_dir(final, overwrite=overwrite):
                    pass
            assert "choose a new output folder" in str(error_info.value)
        assert _entries(final) == ["thesis.tex"]

    def test_own_folder_with_a_foreign_file_is_not_replaced(self, tmp_path: Path) -> None:
        final = _previous_run(tmp_path / "run")
        (final / "notes.txt").write_text("mine")
        with pytest.raises(OutputPathError, match=r"did not write \('notes.txt'\)"):
            with atomic_output_dir(final, overwrite=True):
                pass
        assert (final / "notes.txt").read_text() == "mine"

    def test_forged_or_corrupt_marker_is_not_trusted(self, tmp_path: Path) -> None:
        final = tmp_path / "run"
        final.mkdir()
        (final / "data.csv").write_text("1,2")
        for content in ("{not json", json.dumps({"format": "something-else", "files": ["data.csv"]}), "[]"):
            (final / MARKER_NAME).write_text(content)
            with pytest.raises(OutputPathError, match="not written by conceptattention"):
                check_output_dir(final, overwrite=True)
        assert (final / "data.csv").read_text() == "1,2"

    def test_empty_folder_may_be_filled(self, tmp_path: Path) -> None:
        (tmp_path / "empty").mkdir()
        with atomic_output_dir(tmp_path / "empty", overwrite=True) as folder:
            (folder / "a.txt").write_text("a")
        assert (tmp_path / "empty" / "a.txt").read_text() == "a"

    @pytest.mark.parametrize("which", ["cwd", "parent", "home", "root"])
    def test_protected_locations_are_refused(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, which: str
    ) -> None:
        working = _previous_run(tmp_path / "work")  # even a folder of ours, if it is where we run
        monkeypatch.chdir(working)
        monkeypatch.setenv("HOME", str(tmp_path / "home"))
        (tmp_path / "home").mkdir()
        target = {"cwd": working, "parent": tmp_path, "home": tmp_path / "home", "root": Path("/")}[which]
        reason = {"cwd": "current directory", "parent": "contains the current directory", "home": "home folder",
                  "root": "filesystem root"}[which]
        with pytest.raises(OutputPathError, match=reason):
            with atomic_output_dir(str(target), overwrite=True):
                pass
        assert sorted(p.name for p in tmp_path.iterdir()) == ["home", "work"]

    @pytest.mark.skipif(sys.platform == "win32" or os.geteuid() == 0, reason="POSIX permissions; root ignores them")
    def test_unwritable_location_is_a_clean_error(self, tmp_path: Path) -> None:
        locked = tmp_path / "locked"
        locked.mkdir()
        locked.chmod(0o500)
        try:
            with pytest.raises(OutputPathError, match="permission") as error_info:
                with atomic_output_dir(locked / "run"):
                    pass
            assert ".tmp-" not in str(error_info.value)
        finally:
            locked.chmod(0o700)

    def test_unwritable_location_when_the_check_passes_is_a_clean_error(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        def denied(path: str | os.PathLike[str], *args: object, **kwargs: object) -> None:
            raise PermissionError(13, "Permission denied", os.fspath(path))

        monkeypatch.setattr(outputs.os, "mkdir", denied)
        with pytest.raises(OutputPathError, match="no permission") as error_info:
            with atomic_output_dir(tmp_path / "run"):
                pass
        assert ".tmp-" not in str(error_info.value)
        assert _entries(tmp_path) == []

    @pytest.mark.skipif(not Path("/dev/null").exists(), reason="POSIX")
    def test_dev_null_is_a_file_not_a_folder(self) -> None:
        with pytest.raises(OutputPathError, match="is a file, not a folder"):
            check_output_dir("/dev/null", overwrite=True)


def test_remove_output_dir_deletes_only_own_folders(tmp_path: Path) -> None:
    """The function the app's pruning of old runs can use: never deletes a folder it did not write."""
    own = _previous_run(tmp_path / "run-000001")
    foreign = tmp_path / "run-000002"
    foreign.mkdir()
    (foreign / "photo.jpg").write_bytes(b"mine")
    with pytest.raises(OutputPathError, match="not written by conceptattention"):
        remove_output_dir(foreign)
    remove_output_dir(own)
    assert _entries(tmp_path) == ["run-000002"] and (foreign / "photo.jpg").read_bytes() == b"mine"
