"""Does an attachment's content hold the file type it declares? Found from the bytes.

Detection is the ``filetype`` package's (pure Python, no libmagic: the image needs nothing
more). It tells a .docx from any other ZIP (a ZIP holding an executable is not a Word
document) and a Word document from other OLE files, and knows executables (PE, ELF, Mach-O)
on sight. The one type of A020's table it lacks, Sun audio (``audio/basic``), is matched
here by its four-byte magic number. Text types have no magic number: their content must be
no binary format the detector knows.

Problems name the declared and the detected type, never the content or the file name (a
file name may hold a patient's name).
"""

from __future__ import annotations

import filetype

# Declared media type -> the detected types that content may have. An empty set: text,
# which no magic number identifies.
EXPECTED: dict[str, frozenset[str]] = {
    "text/plain": frozenset(),
    "text/xml": frozenset(),
    "text/rtf": frozenset({"application/rtf"}),
    "audio/basic": frozenset({"audio/basic"}),
    "audio/mpeg": frozenset({"audio/mpeg"}),
    "image/png": frozenset({"image/png", "image/apng"}),
    "image/gif": frozenset({"image/gif"}),
    "image/jpeg": frozenset({"image/jpeg"}),
    "image/tiff": frozenset({"image/tiff"}),
    "video/mpeg": frozenset({"video/mpeg"}),
    "application/pdf": frozenset({"application/pdf"}),
    "application/msword": frozenset({"application/msword"}),
    "application/vnd.openxmlformats-officedocument.wordprocessingml.document": frozenset(
        {"application/vnd.openxmlformats-officedocument.wordprocessingml.document"}
    ),
    "application/dicom": frozenset({"application/dicom"}),
}

# Sun/NeXT audio (.au): ".snd", then the header's offset and size.
_SUN_AUDIO_MAGIC = b".snd"


def detected_type(content: bytes) -> str | None:
    """The media type the content's bytes show, or None when they show no known format."""
    if content.startswith(_SUN_AUDIO_MAGIC):
        return "audio/basic"
    kind = filetype.guess(content)
    return str(kind.mime) if kind is not None else None


def content_problem(media_type: str, content: bytes) -> str | None:
    """Why ``content`` is not a file of ``media_type``, or None when it is one."""
    found = detected_type(content)
    expected = EXPECTED[media_type]
    if not expected:
        if found is None:
            return None
        return f"content is {found}, not the {media_type} that media_type declares"
    if found in expected:
        return None
    shown = found if found is not None else "no file type the worker recognises"
    return f"content is {shown}, not the {media_type} that media_type declares"
