"""Attachment content against its declared media type: what passes, what is refused, and how
the refusal reads (the attachment's index and the types, never its content or file name)."""

from __future__ import annotations

import base64
import io
import struct
import zipfile
import zlib
from pathlib import Path
from typing import Any

import orjson
import pytest
from fpdf import FPDF

from schemas.file_types import EXPECTED, content_problem, detected_type
from schemas.referral_request import ALLOWED_ATTACHMENT_TYPES, ReferralRequestV1
from worker.messaging.intake import Rejection, parse_request

SAMPLES = Path(__file__).resolve().parents[3] / "samples"
DOCX = "application/vnd.openxmlformats-officedocument.wordprocessingml.document"


def pdf() -> bytes:
    doc = FPDF()
    doc.add_page()
    doc.set_font("helvetica", size=12)
    doc.cell(text="Referral letter")
    return bytes(doc.output())


def png() -> bytes:
    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    header = struct.pack(">IIBBBBB", 1, 1, 8, 0, 0, 0, 0)
    pixels = zlib.compress(b"\x00\x00")
    return (
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", pixels) + chunk(b"IEND", b"")
    )


def zipped(entries: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for name, data in entries.items():
            archive.writestr(name, data)
    return buffer.getvalue()


def word_97() -> bytes:
    # An OLE compound file whose first sector holds Word's FIB (magic 0xA5EC).
    return b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1" + b"\x00" * 504 + b"\xec\xa5\xc1\x00" + b"\x00" * 600


EXE = b"MZ\x90\x00\x03\x00\x00\x00\x04\x00\x00\x00\xff\xff" + b"\x00" * 200
ELF = b"\x7fELF\x02\x01\x01" + b"\x00" * 200
GOOD: dict[str, bytes] = {
    "text/plain": b"Referral letter\n\nDear colleague, please see this patient.",
    "text/xml": b'<?xml version="1.0"?><letter>Dear colleague</letter>',
    "text/rtf": b"{\\rtf1\\ansi Referral letter}",
    "audio/basic": b".snd\x00\x00\x00\x18\xff\xff\xff\xff\x00\x00\x00\x01" + b"\x00" * 64,
    "audio/mpeg": b"ID3\x03\x00\x00\x00\x00\x00\x00" + b"\x00" * 200,
    "image/png": png(),
    "image/gif": b"GIF89a\x01\x00\x01\x00\x00\x00\x00;",
    "image/jpeg": b"\xff\xd8\xff\xe0\x00\x10JFIF\x00\x01\x01" + b"\x00" * 200,
    "image/tiff": b"II*\x00\x08\x00\x00\x00" + b"\x00" * 200,
    "video/mpeg": b"\x00\x00\x01\xba\x44\x00\x04\x00\x04\x01" + b"\x00" * 200,
    "application/pdf": pdf(),
    "application/msword": word_97(),
    DOCX: zipped({"[Content_Types].xml": b"<Types/>", "word/document.xml": b"<w:document/>"}),
    "application/dicom": b"\x00" * 128 + b"DICM" + b"\x00" * 200,
}


def test_every_type_e_rs_accepts_has_a_rule_and_a_case() -> None:
    assert set(EXPECTED) == set(ALLOWED_ATTACHMENT_TYPES) == set(GOOD)


@pytest.mark.parametrize("media_type", sorted(GOOD))
def test_content_of_the_declared_type_passes(media_type: str) -> None:
    assert content_problem(media_type, GOOD[media_type]) is None


@pytest.mark.parametrize(
    ("media_type", "content", "found"),
    [
        ("application/pdf", EXE, "application/x-msdownload"),  # the finding: a .pdf holding an .exe
        ("text/plain", ELF, "application/x-executable"),
        (DOCX, zipped({"setup.exe": EXE}), "application/zip"),  # a ZIP, but not Word's
        ("application/msword", b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1" + b"\x00" * 600, None),
        ("text/plain", pdf(), "application/pdf"),
        ("image/png", GOOD["image/jpeg"], "image/jpeg"),
        ("application/pdf", b"Referral letter, not a PDF", None),
    ],
)
def test_content_of_another_type_is_refused_naming_both(
    media_type: str, content: bytes, found: str | None
) -> None:
    assert detected_type(content) == found
    problem = content_problem(media_type, content)
    assert problem is not None
    assert media_type in problem
    assert (found or "no file type the worker recognises") in problem


def request_with(attachments: list[dict[str, Any]]) -> bytes:
    data = orjson.loads((SAMPLES / "01-dbs-booked.json").read_bytes())
    data["attachments"] = attachments
    return orjson.dumps(data)


def attachment(file_name: str, media_type: str, content: bytes) -> dict[str, Any]:
    return {
        "file_name": file_name,
        "media_type": media_type,
        "description": "Referral letter",
        "content": base64.b64encode(content).decode(),
    }


def test_a_mismatch_is_named_by_the_attachments_index_without_its_name_or_content() -> None:
    body = request_with(
        [
            attachment("letter.txt", "text/plain", GOOD["text/plain"]),
            attachment("Jane Smith scan.pdf", "application/pdf", EXE),
        ]
    )
    result = parse_request(body)
    assert isinstance(result, Rejection)
    [problem] = result.problems
    assert problem.field == "attachments.1.content"
    assert "application/x-msdownload" in problem.problem
    assert "Jane Smith" not in problem.problem and "MZ" not in problem.problem


def test_every_good_type_passes_the_whole_contract() -> None:
    extension = {m: sorted(e)[0] for m, e in ALLOWED_ATTACHMENT_TYPES.items()}
    files = [attachment(f"file-{i}{extension[m]}", m, GOOD[m]) for i, m in enumerate(sorted(GOOD))]
    for start in range(0, len(files), 10):  # at most 10 attachments a request
        assert isinstance(parse_request(request_with(files[start : start + 10])), ReferralRequestV1)
