"""Structured logs: one JSON object per line, on stderr.

Privacy by construction: a record's ``extra`` fields are written only when their key is on
``FIELDS``, a list of keys that never hold patient data or secrets; anything else passed as
extra is dropped, and exceptions are written as their type and place, never their message.
The request and correlation ids of the saga being run are added to every line from context.
"""

from __future__ import annotations

import contextvars
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any

import orjson

from schemas.privacy import where

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


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage() if record.name.startswith("worker") else record.msg,
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
