"""The AsyncAPI document's header schemas: what requesters set, what the worker sets on the
messages it delays and parks, and the broker's own dead-lettering headers."""

from __future__ import annotations

from typing import Any

from schemas.events import OutcomeStatus, Step
from worker.messaging.asyncapi_refs import PARKED_HEADERS_ALWAYS
from worker.messaging.headers import (
    ATTEMPT_HEADER,
    DEATH_HEADER,
    DELIVERY_COUNT_HEADER,
    EXPIRES_HEADER,
    FIRST_SEEN_HEADER,
    FIRST_SEEN_MS_HEADER,
    OUTCOME_STATUS_HEADER,
    PARKED_AT_HEADER,
    PROBLEM_HEADER,
    REASON_HEADER,
    REQUEST_ID_HEADER,
    SCHEMA_VERSION_HEADER,
    STEP_HEADER,
    TOKEN_HEADER,
)


def _trace_context(description: str) -> dict[str, Any]:
    """W3C Trace Context headers (worker/observability/tracing.py); OpenTelemetry may add others."""
    return {
        "traceparent": {
            "type": "string",
            "pattern": "^[0-9a-f]{2}-[0-9a-f]{32}-[0-9a-f]{16}-[0-9a-f]{2}$",
            "description": description,
        },
        "tracestate": {"type": "string", "description": "W3C tracestate, with traceparent."},
    }


def header_schemas() -> dict[str, Any]:
    any_text = {"type": "string"}
    statuses = [s.value for s in OutcomeStatus]
    steps = [s.value for s in Step]
    request = {
        "type": "object",
        "description": "AMQP headers of a referral request. Unknown headers are kept.",
        "properties": {
            TOKEN_HEADER: {
                "type": "string",
                "minLength": 1,
                "description": "The acting clinician's NHS CIS2 access token (a leading "
                "'Bearer ' is ignored). Never in the body; never logged, stored or copied "
                "into events, and removed when the message is parked. Without it (and with "
                "ERS_TOKEN_PROVIDER=message) the outcome is REAUTHENTICATION_NEEDED.",
            },
            EXPIRES_HEADER: {
                "description": "When the token expires: ISO 8601 (UTC if no offset), epoch "
                "seconds, or an AMQP timestamp. An unreadable value counts as expired; a "
                "retry never outlives it.",
                "anyOf": [{"type": "string", "minLength": 1}, {"type": "number"}],
            },
            ATTEMPT_HEADER: {
                "type": "integer",
                "minimum": 0,
                "description": "Set by the worker, not by senders: how many times the "
                "request has been through a delay queue.",
            },
            FIRST_SEEN_MS_HEADER: {
                "type": "integer",
                "minimum": 0,
                "description": "Set by the worker, not by senders: Unix time in "
                "milliseconds the request was first received (RETRY_BUDGET_SECONDS counts "
                "from it).",
            },
            FIRST_SEEN_HEADER: {
                "type": "number",
                "description": "Set by the worker, not by senders: the same in seconds, for "
                "workers of the version before; read only when the milliseconds header is "
                "missing.",
            },
            DELIVERY_COUNT_HEADER: {
                "type": "integer",
                "minimum": 0,
                "description": "Set by RabbitMQ on a redelivery from the quorum queue.",
            },
            **_trace_context("The sender's trace context: the saga's span continues it."),
        },
        "additionalProperties": True,
    }
    event = {
        "type": "object",
        "description": "AMQP headers of an event.",
        "properties": {
            SCHEMA_VERSION_HEADER: {
                "type": "string",
                "const": "1",
                "description": "The payload's schema_version.",
            },
            **_trace_context("The saga's trace context, when tracing is on."),
        },
        "required": [SCHEMA_VERSION_HEADER],
        "additionalProperties": True,
    }
    parked = {
        "type": "object",
        "description": "The request's own headers without "
        f"{TOKEN_HEADER} and {EXPIRES_HEADER}, plus why and when it was parked.",
        "properties": {
            REASON_HEADER: {
                "type": "string",
                "minLength": 1,
                "description": "Why: the pipeline's reason, else the outcome's error code "
                "(e.g. VALIDATION_FAILED, NEEDS_RECONCILIATION, UNEXPECTED_RESPONSE), else "
                "UNKNOWN.",
            },
            STEP_HEADER: {
                "type": "string",
                "enum": ["", *steps],
                "description": "The saga step of the outcome's error; empty when none.",
            },
            OUTCOME_STATUS_HEADER: {
                "type": "string",
                "enum": ["", *statuses],
                "description": "The status of the outcome sent for it; empty when none.",
            },
            REQUEST_ID_HEADER: {
                **any_text,
                "description": "The request's id; empty when the body was too broken to read it.",
            },
            PARKED_AT_HEADER: {
                "type": "string",
                "format": "date-time",
                "description": "When it was parked (UTC, ISO 8601).",
            },
            PROBLEM_HEADER: {
                "type": "string",
                "maxLength": 1000,
                "description": "The worker's own error text (fields and rules, never e-RS' "
                "free text); only for errors not answered by e-RS.",
            },
            ATTEMPT_HEADER: {"type": "integer", "minimum": 0},
            FIRST_SEEN_HEADER: {"type": "number"},
            FIRST_SEEN_MS_HEADER: {"type": "integer", "minimum": 0},
        },
        "required": list(PARKED_HEADERS_ALWAYS),
        "not": {"anyOf": [{"required": [TOKEN_HEADER]}, {"required": [EXPIRES_HEADER]}]},
        "additionalProperties": True,
    }
    broker_dead_lettered = {
        "type": "object",
        "description": "The request's headers as it was sent (the access token too), plus "
        "RabbitMQ's x-death / x-first-death-* headers. The last resort: the worker parks a "
        "message itself on its last delivery, so this only happens to a message that "
        "kept killing the worker. Treat the token header as a secret.",
        "properties": {
            DEATH_HEADER: {"type": "array", "items": {"type": "object"}},
            "x-first-death-reason": {"type": "string"},
            "x-first-death-queue": {"type": "string"},
            "x-first-death-exchange": {"type": "string"},
        },
        "required": [DEATH_HEADER],
        "additionalProperties": True,
    }
    return {
        "RequestHeaders": request,
        "EventHeaders": event,
        "ParkedHeaders": parked,
        "BrokerDeadLetteredHeaders": broker_dead_lettered,
    }
