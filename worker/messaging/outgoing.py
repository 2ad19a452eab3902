"""The messages the worker sends: events (to the reply queue and the events exchange), and
copies of a request (parked without its token, delayed, or replayed).

Rule: a parked copy never carries the access token or its expiry (``SECRET_HEADERS``).
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

import aio_pika
from aio_pika.abc import AbstractIncomingMessage

from schemas.events import OutcomeEventV1
from worker.messaging.fate import Event, Handled
from worker.messaging.headers import (
    LETTER_READY_ROUTING_KEY,
    OUTCOME_ROUTING_PREFIX,
    OUTCOME_STATUS_HEADER,
    PARKED_AT_HEADER,
    PROBLEM_HEADER,
    REASON_HEADER,
    REQUEST_ID_HEADER,
    SCHEMA_VERSION_HEADER,
    SECRET_HEADERS,
    STEP_HEADER,
)


def event_message(
    event: Event, correlation_id: str | None, trace_headers: Mapping[str, str]
) -> aio_pika.Message:
    return aio_pika.Message(
        body=event.model_dump_json().encode(),
        content_type="application/json",
        delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
        message_id=event.event_id,
        # A reply correlates with the message it answers (a re-send has its own id).
        correlation_id=correlation_id or event.correlation_id,
        type=event.event_type,
        timestamp=event.occurred_at,
        headers={SCHEMA_VERSION_HEADER: event.schema_version, **trace_headers},
    )


def routing_key(event: Event) -> str:
    if isinstance(event, OutcomeEventV1):
        return f"{OUTCOME_ROUTING_PREFIX}.{event.status.value.lower()}"
    return LETTER_READY_ROUTING_KEY


def parked_headers(headers: Mapping[str, Any], handled: Handled) -> dict[str, Any]:
    kept = {k: v for k, v in headers.items() if k.lower() not in SECRET_HEADERS}
    outcome = handled.outcome
    error = outcome.error if outcome else None
    kept.update(
        {
            REASON_HEADER: handled.reason or (error.code if error else "UNKNOWN"),
            STEP_HEADER: error.step.value if error else "",
            OUTCOME_STATUS_HEADER: outcome.status.value if outcome else "",
            REQUEST_ID_HEADER: (outcome.request_id if outcome else None) or "",
        }
    )
    # A replayed message parked again keeps when it was first parked.
    kept.setdefault(PARKED_AT_HEADER, datetime.now(UTC).isoformat())
    # Our own texts name fields and rules only; e-RS' free-text diagnostics stay in the event.
    if error is not None and error.http_status is None:
        kept[PROBLEM_HEADER] = error.text[:1000]
    return kept


def copy_message(message: AbstractIncomingMessage, headers: dict[str, Any]) -> aio_pika.Message:
    """The message again, persistent, with these headers (parked, delayed or replayed)."""
    return aio_pika.Message(
        body=message.body,
        headers=headers,
        content_type=message.content_type,
        delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
        message_id=message.message_id,
        correlation_id=message.correlation_id,
        reply_to=message.reply_to,
        priority=message.priority,  # upstream's own, if it set one; we route by the body's
    )
