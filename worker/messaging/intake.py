"""Turn a message body into a valid request, or into every reason it is not one.

Parsed once with orjson and validated once with pydantic; the result is passed on, never
re-parsed. Problems name fields and rules only: pydantic's input values are dropped so a
rejected NHS number never travels on in an event or a log line.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import orjson
from pydantic import ValidationError

from schemas.events import FieldError
from schemas.referral_request import (
    MAX_ATTACHMENT_BYTES,
    MAX_ATTACHMENTS,
    MAX_MESSAGE_BYTES,
    SCHEMA_VERSION,
    ReferralRequestV1,
)
from worker.messaging.headers import TOKEN_HEADER
from worker.messaging.tokens import MAX_TOKEN_LENGTH, too_long

_SAFE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$")
_SAFE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9 ._-]{0,63}$")


@dataclass(frozen=True, slots=True)
class Rejection:
    problems: list[FieldError]
    request_id: str | None = None
    source_system: str | None = None


def _safe(value: Any, pattern: re.Pattern[str]) -> str | None:
    return value if isinstance(value, str) and pattern.match(value) else None


# pydantic puts the tag of a tagged union in the error path; it is not a field of the message.
_UNION_TAGS = {"shortlist": frozenset({"explicit", "auto"})}


def _field(loc: tuple[int | str, ...]) -> str:
    parts = [
        str(part)
        for i, part in enumerate(loc)
        if not (i and part in _UNION_TAGS.get(str(loc[i - 1]), ()))
    ]
    return ".".join(parts) or "(message)"


def header_problems(headers: Mapping[str, Any]) -> list[FieldError]:
    """What in the AMQP headers makes the message one to refuse, whatever its body."""
    if too_long(headers.get(TOKEN_HEADER)):
        problem = (
            f"{TOKEN_HEADER} is longer than {MAX_TOKEN_LENGTH} characters: no CIS2 or APIM "
            "token is, and e-RS would refuse the request; re-send with the user's token"
        )
        return [FieldError(field=f"(headers).{TOKEN_HEADER}", problem=problem, type="too_long")]
    return []


def _not_json(body: bytes, exc: orjson.JSONDecodeError) -> FieldError:
    """Where the body stops being JSON, by position: never the document's content."""
    if "UTF-8" in exc.msg:
        # orjson reports invalid UTF-8 at position 0 wherever it is; Python's decoder knows
        # the byte (only on this error path, so a valid body is never decoded twice).
        try:
            body.decode("utf-8")
        except UnicodeDecodeError as bad:
            problem = f"body is not valid UTF-8: {bad.reason} at byte {bad.start}"
            return FieldError(field="(body)", problem=problem, type="utf8_invalid")
    problem = f"body is not valid JSON: {exc.msg} at character {exc.pos}"
    return FieldError(field="(body)", problem=problem, type="json_invalid")


def parse_request(body: bytes) -> ReferralRequestV1 | Rejection:
    if len(body) > MAX_MESSAGE_BYTES:
        # Before parsing: a parsed body and its decoded files take several times its size.
        problem = (
            f"body is {len(body)} bytes, over the {MAX_MESSAGE_BYTES} bytes the contract "
            f"allows ({MAX_ATTACHMENTS} attachments of {MAX_ATTACHMENT_BYTES} bytes in base64, "
            "and the rest of the request)"
        )
        return Rejection([FieldError(field="(body)", problem=problem, type="too_large")])
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        return Rejection([_not_json(body, exc)])
    if not isinstance(data, dict):
        return Rejection(
            [FieldError(field="(body)", problem="body must be a JSON object", type="object_type")]
        )
    request_id = _safe(data.get("request_id"), _SAFE_ID)
    source = _safe(data.get("source_system"), _SAFE_NAME)
    version = data.get("schema_version")
    if version != SCHEMA_VERSION:
        shown = (
            version if isinstance(version, str) and len(version) <= 16 else "missing or unreadable"
        )
        problem = f"schema_version {shown!r} is not supported; this worker reads {SCHEMA_VERSION!r}"
        return Rejection(
            [FieldError(field="schema_version", problem=problem, type="unsupported_version")],
            request_id,
            source,
        )
    try:
        return ReferralRequestV1.model_validate(data)
    except ValidationError as exc:
        problems = [
            FieldError(field=_field(err["loc"]), problem=err["msg"], type=err["type"])
            for err in exc.errors(include_url=False, include_input=False, include_context=False)
        ]
        return Rejection(problems, request_id, source)
