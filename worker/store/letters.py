"""Patient letters (A019 PDFs) kept on disk, written off the event loop and atomically."""

from __future__ import annotations

import asyncio
import hashlib
import os
import re
from pathlib import Path

from schemas.events import LetterInfo

_UNSAFE = re.compile(r"[^A-Za-z0-9._-]")


class FileLetterStore:
    def __init__(self, directory: Path) -> None:
        self._dir = directory

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

    def _write(self, name: str, content: bytes) -> Path:
        self._dir.mkdir(parents=True, exist_ok=True)
        final = (self._dir / name).resolve()
        tmp = final.with_suffix(final.suffix + ".part")
        with open(tmp, "wb") as f:
            f.write(content)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, final)
        return final
