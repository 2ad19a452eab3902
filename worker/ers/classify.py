"""What an e-RS answer means for the saga, decided once, here, for every endpoint."""

from __future__ import annotations

import math
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Any

import httpx

from worker.fhir.read import operation_outcome
from worker.fhir.vocabulary import Endpoint
from worker.saga.errors import (
    ErsAuthError,
    ErsConflict,
    ErsError,
    ErsLocked,
    ErsOutcomeUnknown,
    ErsRateLimited,
    ErsRejected,
    ErsTransientError,
    ErsUnexpected,
    RequestNotSendable,
)

# The statuses the spec lists for the referrer-flow endpoints; anything else is unexpected.
_REFUSALS = frozenset({400, 403, 404, 406, 415, 422})
_SERVER_FAULTS = frozenset({500, 502, 504})


def _retry_after(value: str | None, now: datetime) -> float | None:
    """Retry-After as seconds from ``now``: delay-seconds or an HTTP-date (RFC 9110)."""
    if value is None:
        return None
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = parsedate_to_datetime(value)
        except (TypeError, ValueError):
            return None  # unreadable: fall back to our own backoff
        if when.tzinfo is None:
            when = when.replace(tzinfo=UTC)
        return max(0.0, (when - now).total_seconds())
    # RFC 9110 delay-seconds is a non-negative integer; 'inf', 'nan' or '1e400' is unreadable.
    return seconds if math.isfinite(seconds) and seconds >= 0 else None


def classify_status(
    endpoint: Endpoint,
    status: int,
    body: Any,
    *,
    retry_after: str | None = None,
    request_id: str | None = None,
    now: datetime | None = None,
) -> ErsError:
    """The error a non-2xx answer stands for."""
    code, diagnostics = operation_outcome(body)
    code = code or f"HTTP_{status}"
    kw: dict[str, Any] = {"diagnostics": diagnostics, "request_id": request_id}
    if status == 401:
        return ErsAuthError(endpoint, status, code, **kw)
    if status == 429:
        asked = _retry_after(retry_after, now or datetime.now(UTC))
        return ErsRateLimited(endpoint, asked, **kw)
    if status in (409, 412):
        return ErsConflict(endpoint, status, code, **kw)
    if status == 423:
        return ErsLocked(endpoint, status, code, **kw)
    if status == 503:
        # e-RS (or its gateway) did not take the request on: safe to send again.
        return ErsTransientError(endpoint, status, code, **kw)
    if status in _SERVER_FAULTS:
        if endpoint.changes_state:
            return ErsOutcomeUnknown(endpoint, status, code, **kw)
        return ErsTransientError(endpoint, status, code, **kw)
    if status in _REFUSALS:
        return ErsRejected(endpoint, status, code, **kw)
    return ErsUnexpected(endpoint, status, code, **kw)


def classify_transport(endpoint: Endpoint, exc: httpx.TransportError) -> ErsError:
    """A failure with no HTTP answer: was the request surely not sent, or maybe acted on?"""
    if isinstance(exc, httpx.LocalProtocolError):
        # httpx refused to send what we built (e.g. a header with a line break): nothing
        # was sent, and sending it again would fail the same way.
        return RequestNotSendable(
            endpoint, None, "REQUEST_NOT_SENDABLE", diagnostics=type(exc).__name__
        )
    not_sent = isinstance(exc, httpx.ConnectError | httpx.ConnectTimeout | httpx.PoolTimeout)
    code = "TIMEOUT" if isinstance(exc, httpx.TimeoutException) else "CONNECTION_ERROR"
    if not_sent or not endpoint.changes_state:
        return ErsTransientError(endpoint, None, code, diagnostics=type(exc).__name__)
    return ErsOutcomeUnknown(endpoint, None, code, diagnostics=type(exc).__name__)
