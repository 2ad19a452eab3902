"""A020 upload file to document store."""

from __future__ import annotations

import asyncio
import uuid
from pathlib import PurePosixPath

from aiohttp import web

from sandbox.context import caller, state
from sandbox.outcomes import PlainError, unprocessable
from sandbox.state import Binary

FILE_NAME_HEADER = "NHSD-eRS-File-Name"
REFERRAL_ID_HEADER = "NHSD-eRS-Referral-ID"
MAX_FILE_SIZE = 5 * 1024 * 1024

# The A020 request body media types, and the file extensions the A020 table allows for each.
EXTENSIONS_BY_MEDIA_TYPE: dict[str, frozenset[str]] = {
    "text/plain": frozenset({".txt"}),
    "application/pdf": frozenset({".pdf"}),
    "text/xml": frozenset({".xml"}),
    "text/rtf": frozenset({".rtf", ".rtx"}),
    "audio/basic": frozenset({".au"}),
    "audio/mpeg": frozenset({".mp3"}),
    "image/png": frozenset({".png"}),
    "image/gif": frozenset({".gif"}),
    "image/jpeg": frozenset({".jpg", ".jpe", ".jpeg"}),
    "image/tiff": frozenset({".tif", ".tiff"}),
    "video/mpeg": frozenset({".mpg", ".mpeg", ".mpe"}),
    "application/msword": frozenset({".doc", ".docx"}),
    "application/vnd.openxmlformats-officedocument.wordprocessingml.document": frozenset(
        {".doc", ".docx"}
    ),
    "application/dicom": frozenset({".dcm"}),
}
ALLOWED_EXTENSIONS = frozenset().union(*EXTENSIONS_BY_MEDIA_TYPE.values())


async def _read_capped(request: web.Request) -> bytes:
    """The body, or its first MAX_FILE_SIZE + 1 bytes: enough to know it is too large."""
    try:
        return await request.content.readexactly(MAX_FILE_SIZE + 1)
    except asyncio.IncompleteReadError as short:
        return short.partial


async def upload_file(request: web.Request) -> web.Response:
    """A020: POST /STU3/Binary"""
    media_type = request.headers.get("Content-Type", "").split(";")[0].strip().lower()
    if media_type not in EXTENSIONS_BY_MEDIA_TYPE:
        raise PlainError(415, "Unsupported Media Type")
    file_name = request.headers.get(FILE_NAME_HEADER, "").strip()
    if not file_name:
        raise unprocessable("MISSING_VALUE", f"Missing mandatory header '{FILE_NAME_HEADER}'.")
    extension = PurePosixPath(file_name).suffix.lower()
    if extension not in ALLOWED_EXTENSIONS:
        raise unprocessable(
            "INVALID_VALUE", f"File extension '{extension or '(none)'}' is not supported by e-RS."
        )
    if extension not in EXTENSIONS_BY_MEDIA_TYPE[media_type]:
        raise unprocessable(
            "CONFLICTING_VALUES",
            f"Content-Type '{media_type}' does not match file extension '{extension}'.",
        )
    data = await _read_capped(request)
    if not data or len(data) > MAX_FILE_SIZE:
        raise unprocessable(
            "FILE_SIZE_ERROR", f"The file is empty or larger than {MAX_FILE_SIZE} bytes."
        )
    store = state(request)
    referral_id = request.headers.get(REFERRAL_ID_HEADER) or None
    binary = Binary(
        id=str(uuid.uuid4()),
        data=data,
        file_name=file_name,
        content_type=media_type,
        referral_id=referral_id,
        uploaded=store.clock(),
        ods_code=caller(request).ods_code,
    )
    store.binaries[binary.id] = binary
    return web.Response(status=201, headers={"Location": f"Binary/{binary.id}"})
