"""Patient letters on disk: private to the worker's user, and deleted past retention."""

from __future__ import annotations

import asyncio
import os
import stat
import time
from pathlib import Path

import pytest

from worker.store.letters import FileLetterStore


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def save(store: FileLetterStore, request_id: str) -> Path:
    """One save, on an event loop of its own (the tests' file checks then block nothing)."""
    info = asyncio.run(
        store.save(ubrn="000049000001", request_id=request_id, file_name=None, content=b"%PDF-1.4")
    )
    return Path(info.location)


def test_a_letter_is_0600_in_a_0700_directory_whatever_the_umask(tmp_path: Path) -> None:
    old = os.umask(0o000)  # the widest: what the worker's own code must narrow
    try:
        letters = tmp_path / "letters"
        path = save(FileLetterStore(letters, retention_days=30), "r-1")
    finally:
        os.umask(old)
    assert path.read_bytes() == b"%PDF-1.4"
    assert mode(path) == 0o600
    assert mode(letters) == 0o700
    assert [p.name for p in letters.iterdir()] == [path.name]  # no .part left behind


def test_a_letters_directory_removed_while_the_worker_runs_is_made_again(
    tmp_path: Path,
) -> None:
    letters = tmp_path / "letters"
    store = FileLetterStore(letters)
    first = save(store, "r-1")
    for path in letters.iterdir():
        path.unlink()
    letters.rmdir()

    second = save(store, "r-2")

    assert second.read_bytes() == b"%PDF-1.4"
    assert second.parent == first.parent == letters.resolve()
    assert (mode(second), mode(letters)) == (0o600, 0o700)
    assert [p.name for p in letters.iterdir()] == [second.name]


def test_letters_written_world_readable_before_are_tightened(tmp_path: Path) -> None:
    tmp_path.chmod(0o755)
    old = tmp_path / "r-0__old.pdf"
    old.write_bytes(b"old")
    old.chmod(0o644)
    save(FileLetterStore(tmp_path, retention_days=30), "r-1")
    assert mode(tmp_path) == 0o700
    assert mode(old) == 0o600


def test_letters_past_retention_are_deleted_and_younger_ones_kept(tmp_path: Path) -> None:
    stale, fresh = tmp_path / "r-0__stale.pdf", tmp_path / "r-9__fresh.pdf"
    for path, age_days in ((stale, 31), (fresh, 29)):
        path.write_bytes(b"x")
        then = time.time() - age_days * 86400
        os.utime(path, (then, then))
    written = save(FileLetterStore(tmp_path, retention_days=30), "r-1")
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([fresh.name, written.name])


def test_retention_0_keeps_every_letter(tmp_path: Path) -> None:
    ancient = tmp_path / "r-0__ancient.pdf"
    ancient.write_bytes(b"x")
    os.utime(ancient, (0, 0))
    save(FileLetterStore(tmp_path, retention_days=0), "r-1")
    assert ancient.exists()


def test_the_sweep_runs_at_most_hourly(tmp_path: Path) -> None:
    store = FileLetterStore(tmp_path, retention_days=1)
    save(store, "r-1")  # the first save sweeps
    late = tmp_path / "r-0__late.pdf"
    late.write_bytes(b"x")
    os.utime(late, (0, 0))
    save(store, "r-2")
    assert late.exists()  # not swept again within the hour
    assert store.sweep() == 1
    assert not late.exists()


def test_a_file_gone_during_the_sweep_is_skipped_and_the_rest_swept(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Another saving thread renames its .part while this one sweeps (seen in CI: the save
    # failed with FileNotFoundError and its saga ended FAILED).
    store = FileLetterStore(tmp_path, retention_days=1)
    old = tmp_path / "r-0__old.pdf"
    old.write_bytes(b"x")
    os.utime(old, (0, 0))
    vanishing = tmp_path / "r-1__x.pdf.part"
    vanishing.write_bytes(b"x")
    real_scandir = os.scandir

    class Listed(list[os.DirEntry[str]]):  # what os.scandir returns: iterable, a context
        def __enter__(self) -> Listed:
            return self

        def __exit__(self, *_: object) -> None:
            return None

    def scandir_then_rename(path: Path) -> Listed:
        with real_scandir(path) as entries:
            listed = Listed(entries)
        vanishing.unlink()  # listed, then gone before its stat
        return listed

    monkeypatch.setattr(os, "scandir", scandir_then_rename)
    assert store.sweep() == 1
    assert not old.exists()


def test_a_sweep_that_fails_does_not_fail_the_save(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = FileLetterStore(tmp_path, retention_days=1)

    def broken(now: float | None = None) -> int:
        raise PermissionError("no")

    monkeypatch.setattr(store, "sweep", broken)
    assert save(store, "r-1").read_bytes() == b"%PDF-1.4"
