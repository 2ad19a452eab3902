"""Patient letters (A019 PDFs) kept on disk, written off the event loop and atomically.

A letter holds the patient's NHS number, name and address: each file is 0600 in a 0700
directory (only the worker's user reads them), and letters older than the retention period
are deleted. The sweep rides on a save's trip to its thread, at most hourly (so the first
letter after a start sweeps too): no task of its own, nothing to schedule or stop.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import re
import stat
import time
from pathlib import Path

from schemas.events import LetterInfo

log = logging.getLogger("worker.store.letters")

_UNSAFE = re.compile(r"[^A-Za-z0-9._-]")
_FILE_MODE = 0o600
_DIR_MODE = 0o700
SWEEP_EVERY_SECONDS = 3600.0


class FileLetterStore:
    def __init__(self, directory: Path, retention_days: float = 0.0) -> None:
        """``retention_days``: letters older than this are deleted; 0 keeps them for ever."""
        self._dir = directory
        self._retention_seconds = retention_days * 86400.0
        self._next_sweep = 0.0  # monotonic: the first save sweeps
        self._resolved: Path | None = None  # the directory, once made

    async def save(
        self, *, ubrn: str, request_id: str, file_name: str | None, content: bytes
    ) -> LetterInfo:
        # Named by request id so an upstream system finds its letter without the UBRN, and a
        # re-run of the same request overwrites rather than piles up copies.
        suggested = _UNSAFE.sub("_", file_name or f"{ubrn}_Patient_Letter.pdf")
        name = f"{_UNSAFE.sub('_', request_id)}__{suggested}"
        path = await asyncio.to_thread(self._write, name, content)
        return LetterInfo(
            location=str(path),
            file_name=name,
            size_bytes=len(content),
            sha256=hashlib.sha256(content).hexdigest(),
        )

    def _directory(self, *, again: bool = False) -> Path:
        """The directory, made and resolved on the first save, or ``again`` if it has gone.
        Not on every save: that was a stat per path component per letter, each one the GIL
        handed to the event loop's thread and back (docs/performance.md)."""
        if self._resolved is None or again:
            self._dir.mkdir(mode=_DIR_MODE, parents=True, exist_ok=True)
            self._resolved = self._dir.resolve()
        return self._resolved

    def _open_part(self, name: str) -> tuple[Path, Path, int]:
        try:
            return _open_part_in(self._directory(), name)
        except FileNotFoundError:  # the directory was removed while the worker ran
            return _open_part_in(self._directory(again=True), name)

    def _write(self, name: str, content: bytes) -> Path:
        final, tmp, fd = self._open_part(name)
        with os.fdopen(fd, "wb") as f:
            os.fchmod(f.fileno(), _FILE_MODE)  # a .part left by a crash may be older and wider
            f.write(content)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, final)
        if time.monotonic() >= self._next_sweep:
            try:
                self.sweep()
            except OSError as exc:
                # The letter is written: a sweep that fails must not fail the saga. The next
                # one (an hour on) tries again. Only the error's kind: paths name requests.
                log.warning("letters sweep failed", extra={"error": type(exc).__name__})
        return final

    def sweep(self, now: float | None = None) -> int:
        """Tighten the directory and any letter written before 0600 (older versions wrote
        0644), and delete letters past retention. Returns how many were deleted."""
        self._next_sweep = time.monotonic() + SWEEP_EVERY_SECONDS
        if not self._dir.is_dir():
            return 0
        os.chmod(self._dir, _DIR_MODE)
        cutoff = (time.time() if now is None else now) - self._retention_seconds
        deleted = 0
        with os.scandir(self._dir) as entries:
            for entry in entries:
                try:
                    deleted += self._sweep_one(entry, cutoff)
                except FileNotFoundError:
                    # Gone under us: another saving thread's .part renamed, or a letter removed.
                    continue
        return deleted

    def _sweep_one(self, entry: os.DirEntry[str], cutoff: float) -> int:
        if not entry.is_file(follow_symlinks=False):
            return 0
        info = entry.stat(follow_symlinks=False)
        if self._retention_seconds and info.st_mtime < cutoff:
            os.unlink(entry.path)
            return 1
        if stat.S_IMODE(info.st_mode) & 0o077:
            os.chmod(entry.path, _FILE_MODE)
        return 0


def _open_part_in(directory: Path, name: str) -> tuple[Path, Path, int]:
    """The letter's final path, its ``.part`` beside it, and the ``.part`` open for writing:
    created 0600 (never readable by others, even for a moment), which os.replace keeps.
    ``name`` is made safe: it holds no separator."""
    final = directory / name
    tmp = final.with_suffix(final.suffix + ".part")
    return final, tmp, os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, _FILE_MODE)
