"""Structured logs: one JSON object per line, on stderr.

Privacy by construction: a record's ``extra`` fields are written only when their key is on
``FIELDS``, a list of keys that never hold patient data or secrets; anything else passed as
extra is dropped, and exceptions are written as their type and place, never their message.
The request and correlation ids of the saga being run are added to every line from context.

A record's message is interpolated (``record.getMessage()``) and, unless it is one of the
worker's own constant strings, passed through :func:`scrub`: libraries format whatever they
hold (aio-pika a connection URL, an HTTP library a header), so NHS numbers, tokens, URL
credentials, personal names and attachment-sized blobs are replaced before the line is
written.
"""

from __future__ import annotations

import contextvars
import logging
import re
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any

import orjson
from pydantic import ValidationError

from schemas.privacy import redact, where

FIELDS = frozenset(
    {
        "request_id",
        "correlation_id",
        "step",
        "duration_ms",
        "status",
        "path",
        "error_code",
        "ers_calls",
        "code",
        "delay_seconds",
        "why",
        "error",
        "where",
        "queue",
        "prefetch",
        "in_flight",
        "grace_seconds",
        "sagas",
        "fields",
        "reason",
        "endpoint",
        "http_status",
        "attempt",
        "port",
        "event_loop",
    }
)
_request_id: contextvars.ContextVar[str | None] = contextvars.ContextVar("request_id", default=None)
_correlation_id: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "correlation_id", default=None
)


@contextmanager
def saga_context(request_id: str, correlation_id: str) -> Iterator[None]:
    """Every log line written inside carries these ids."""
    tokens = (_request_id.set(request_id), _correlation_id.set(correlation_id))
    try:
        yield
    finally:
        _request_id.reset(tokens[0])
        _correlation_id.reset(tokens[1])


# Keyed values, in JSON, a repr or a query string: secrets, and the parts of a FHIR
# HumanName (e-RS' Patient and letters carry the patient's).
_KEYED = re.compile(
    r"""(?ix)
    (["']?(?:authorization|x-ers-access-token|[a-z_-]*token|password|passwd|secret|api[_-]?key
        |family|given|prefix|suffix|name)["']?\s*[:=]\s*)
    (\[[^\]]*\]|"[^"]*"|'[^']*'|[^\s,;&})\]]+)
    """
)
_BEARER = re.compile(r"(?i)\b(bearer)\s+[A-Za-z0-9._~+/=-]+")
_URL_CREDENTIALS = re.compile(r"(?i)\b([a-z][a-z0-9+.-]*://)[^/\s:@]+:[^\s@]*@")
_JWT = re.compile(r"\beyJ[A-Za-z0-9_-]{4,}\.[A-Za-z0-9_-]{4,}\.[A-Za-z0-9_-]*")
_BLOB = re.compile(r"[A-Za-z0-9+/]{64,}={0,2}")


def scrub(text: str) -> str:
    """Text from a library, with what must never reach a log replaced."""
    text = _URL_CREDENTIALS.sub(r"\1[credentials]@", text)
    text = _BEARER.sub(r"\1 [token]", text)
    text = _JWT.sub("[token]", text)
    text = _KEYED.sub(r"\1[redacted]", text)
    text = _BLOB.sub("[bytes]", text)
    return redact(text)


def message(record: logging.LogRecord) -> str:
    """The record's message, interpolated; scrubbed unless the worker's own constant."""
    if not record.args and record.name.startswith("worker"):
        return str(record.msg)  # a constant: the worker passes values as FIELDS extras
    try:
        text = record.getMessage()
    except (TypeError, ValueError):  # arguments that do not fit the format
        text = f"{record.msg} (arguments did not fit)"
    return scrub(text)


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": message(record),
        }
        request_id, correlation_id = _request_id.get(), _correlation_id.get()
        if request_id:
            line["request_id"] = request_id
        if correlation_id:
            line["correlation_id"] = correlation_id
        for key in FIELDS.intersection(record.__dict__):
            line[key] = record.__dict__[key]
        if record.exc_info and record.exc_info[1] is not None:
            exc = record.exc_info[1]
            line["exception"] = f"{type(exc).__name__} at {where(exc)}"
        return orjson.dumps(line, default=str).decode()


def failure_fields(exc: BaseException, why: str | None = None) -> dict[str, Any]:
    """What a failure's log line may say: its type and place, the settings it names (never
    their values) or the OS's reason; ``why``, a message known to be safe."""
    fields: dict[str, Any] = {"error": type(exc).__name__, "where": where(exc)}
    if isinstance(exc, ValidationError):
        errors = exc.errors(include_input=False, include_url=False)
        fields["fields"] = sorted({".".join(str(p) for p in e["loc"]) for e in errors})
        why = why or "; ".join(sorted({e["type"] for e in errors}))
    elif isinstance(exc, OSError) and exc.strerror:
        why = why or (f"{exc.strerror}: {exc.filename}" if exc.filename else exc.strerror)
    if why:
        fields["why"] = scrub(why)
    return fields
