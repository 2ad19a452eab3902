"""The worker's messaging interface as an AsyncAPI 2.6 document, built from the code.

Channels (AsyncAPI 2.x reads ``publish`` as "others send this to the worker" and ``subscribe``
as "the worker sends this"):

- ``referral.request``: requests in, exchange ``ers.requests`` (direct) → quorum queue
  ``ers.requests``; the token in ``x-ers-access-token``, replies to ``reply_to``.
- ``{reply_to}``: the requester's queue, through the default exchange: the outcome and the
  letter-ready event, with the request's ``correlation_id``.
- ``referral.outcome.{status}`` and ``referral.letter_ready``: the same events on the topic
  exchange ``ers.events``.
- ``ers.delay.{seconds}s``: the worker's own delay queues (TTL, then back to the requests).
- ``ers.dead-letters``: parked messages (``ers.dlx``, fanout), the reason in ``x-ers-*``
  headers and the access token removed.

Payloads are the pydantic models' JSON Schemas (the same as ``schemas/*.schema.json``), their
``$defs`` moved under ``components/schemas``. Names, routing keys and header names come from
the worker's modules, with the default settings (prefix ``ers``). A test fails when
``schemas/asyncapi.json`` is stale; regenerate with ``python -m worker.messaging.asyncapi``.
"""

from __future__ import annotations

import sys
from importlib.metadata import version
from typing import Any

import orjson
from pydantic import BaseModel

from schemas.events import OutcomeStatus, Step
from schemas.export import MODELS, SCHEMA_DIR
from worker.messaging.headers import (
    ATTEMPT_HEADER,
    DEATH_HEADER,
    DELIVERY_COUNT_HEADER,
    EXPIRES_HEADER,
    FIRST_SEEN_HEADER,
    LETTER_READY_ROUTING_KEY,
    OUTCOME_ROUTING_PREFIX,
    OUTCOME_STATUS_HEADER,
    PARKED_AT_HEADER,
    PARKED_HEADERS,
    PROBLEM_HEADER,
    REASON_HEADER,
    REQUEST_ID_HEADER,
    REQUEST_ROUTING_KEY,
    SCHEMA_VERSION_HEADER,
    STEP_HEADER,
    TOKEN_HEADER,
)
from worker.messaging.topology import (
    DEAD_LETTER_QUEUE_ARGUMENTS,
    DEFAULT_DELIVERY_LIMIT,
    DEFAULT_PREFIX,
    DEFAULT_RETRY_DELAYS,
    Names,
    delay_queue_arguments,
    requests_queue_arguments,
)

ASYNCAPI_VERSION = "2.6.0"
OUTPUT = SCHEMA_DIR / "asyncapi.json"
SCHEMAS_REF = "#/components/schemas/"
MESSAGES_REF = "#/components/messages/"
AMQP_BINDING_VERSION = "0.2.0"

# Set by the worker on a message it parks (worker/messaging/consumer.py, parked_headers).
PARKED_HEADERS_ALWAYS = PARKED_HEADERS[:-1]


def _ref(path: str, name: str) -> dict[str, str]:
    return {"$ref": f"{path}{name}"}


def _asyncapi_schema(node: Any) -> Any:
    """AsyncAPI 2.x's Schema Object takes ``discriminator`` as the property name (a string),
    where pydantic writes OpenAPI 3's object; its ``oneOf`` with ``const`` says the rest."""
    if isinstance(node, dict):
        out = {key: _asyncapi_schema(value) for key, value in node.items()}
        discriminator = out.get("discriminator")
        if isinstance(discriminator, dict):
            out["discriminator"] = discriminator["propertyName"]
        return out
    if isinstance(node, list):
        return [_asyncapi_schema(item) for item in node]
    return node


def model_schemas(models: list[type[BaseModel]]) -> dict[str, Any]:
    """Each model's JSON Schema and its ``$defs``, as named component schemas, with every
    ``$ref`` pointing at ``#/components/schemas/<name>``."""
    out: dict[str, Any] = {}

    def put(name: str, schema: Any) -> None:
        if name in out and out[name] != schema:
            raise ValueError(f"two different schemas named {name}")
        out[name] = schema

    for model in models:
        schema = model.model_json_schema(mode="validation", ref_template=SCHEMAS_REF + "{model}")
        for name, definition in schema.pop("$defs", {}).items():
            put(name, _asyncapi_schema(definition))
        put(model.__name__, _asyncapi_schema(schema))
    return dict(sorted(out.items()))


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


def _header_schemas() -> dict[str, Any]:
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
            FIRST_SEEN_HEADER: {
                "type": "number",
                "description": "Set by the worker, not by senders: Unix time the request "
                "was first received (RETRY_BUDGET_SECONDS counts from it).",
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


def _messages(names: Names) -> dict[str, Any]:
    json_body = "application/json"
    request_properties = dict(
        reply_to={
            "required": True,
            "description": "Queue the outcome and letter-ready events are sent to (default "
            "exchange). A request without one is REJECTED and parked.",
        },
        correlation_id={
            "required": False,
            "description": "Copied to the replies; when absent the replies carry the "
            "message_id, else the request_id.",
        },
        message_id={"required": False},
        content_type={"value": json_body},
        delivery_mode={"value": 2, "description": "persistent"},
    )
    event_properties = dict(
        correlation_id={
            "description": "The request's correlation_id (else its message_id, else its "
            "request_id)."
        },
        message_id={"description": "The event_id: the key to de-duplicate on."},
        type={"description": "The event_type."},
        timestamp={"description": "occurred_at."},
        content_type={"value": json_body},
        delivery_mode={"value": 2, "description": "persistent"},
    )
    request_payload = _ref(SCHEMAS_REF, "ReferralRequestV1")
    return {
        "ReferralRequest": {
            "name": REQUEST_ROUTING_KEY,
            "title": "Referral request (v1)",
            "summary": "Carry one referral through the e-RS referrer flow.",
            "contentType": json_body,
            "headers": _ref(SCHEMAS_REF, "RequestHeaders"),
            "payload": request_payload,
            "correlationId": {
                "description": "The request_id keys the saga: a re-send gets the original "
                "outcome again, never a second referral.",
                "location": "$message.payload#/request_id",
            },
            "bindings": {"amqp": {"bindingVersion": AMQP_BINDING_VERSION}},
            "x-amqp-properties": request_properties,
        },
        "OutcomeEvent": {
            "name": "referral.outcome",
            "title": "Outcome event (v1)",
            "summary": "Exactly one per request (at least once: de-duplicate on event_id).",
            "contentType": json_body,
            "headers": _ref(SCHEMAS_REF, "EventHeaders"),
            "payload": _ref(SCHEMAS_REF, "OutcomeEventV1"),
            "correlationId": {"location": "$message.payload#/correlation_id"},
            "bindings": {
                "amqp": {"messageType": "referral.outcome", "bindingVersion": AMQP_BINDING_VERSION}
            },
            "x-amqp-properties": event_properties,
        },
        "LetterReadyEvent": {
            "name": LETTER_READY_ROUTING_KEY,
            "title": "Letter-ready event (v1)",
            "summary": "The patient letter (A019 PDF) is stored.",
            "contentType": json_body,
            "headers": _ref(SCHEMAS_REF, "EventHeaders"),
            "payload": _ref(SCHEMAS_REF, "LetterReadyEventV1"),
            "correlationId": {"location": "$message.payload#/correlation_id"},
            "bindings": {
                "amqp": {
                    "messageType": LETTER_READY_ROUTING_KEY,
                    "bindingVersion": AMQP_BINDING_VERSION,
                }
            },
            "x-amqp-properties": event_properties,
        },
        "DelayedRequest": {
            "name": "referral.request.delayed",
            "title": "Delayed referral request",
            "summary": "A request waiting out an e-RS fault: the same body and properties, "
            f"{ATTEMPT_HEADER} counted up, {FIRST_SEEN_HEADER} kept. When its TTL ends it goes "
            f"back to {names.requests_exchange} with routing key {REQUEST_ROUTING_KEY}.",
            "contentType": json_body,
            "headers": _ref(SCHEMAS_REF, "RequestHeaders"),
            "payload": request_payload,
            "x-amqp-properties": request_properties,
        },
        "ParkedRequest": {
            "name": "referral.request.parked",
            "title": "Parked referral request",
            "summary": "A request a person must look at: rejected, needing reconciliation, "
            "out of retry budget, or answered unexpectedly. Its outcome was sent already.",
            "contentType": json_body,
            "headers": _ref(SCHEMAS_REF, "ParkedHeaders"),
            "payload": {
                "description": "The request's body as it arrived: a REJECTED one may not "
                "even be JSON.",
                "anyOf": [request_payload, {}],
            },
            "x-amqp-properties": dict(
                reply_to={"description": "The request's."},
                correlation_id={"description": "The request's."},
                message_id={"description": "The request's."},
            ),
        },
        "BrokerDeadLetteredRequest": {
            "name": "referral.request.dead-lettered",
            "title": "Referral request dead-lettered by RabbitMQ",
            "summary": "A request that reached the quorum queue's delivery limit without "
            "being settled (it kept killing the worker).",
            "headers": _ref(SCHEMAS_REF, "BrokerDeadLetteredHeaders"),
            "payload": {"description": "The request's body as it arrived.", "anyOf": [{}]},
        },
    }


def _exchange(name: str, kind: str) -> dict[str, Any]:
    return {"name": name, "type": kind, "durable": True, "autoDelete": False, "vhost": "/"}


def _queue(name: str) -> dict[str, Any]:
    return {"name": name, "durable": True, "exclusive": False, "autoDelete": False, "vhost": "/"}


def _routing_key_binding(exchange: dict[str, Any]) -> dict[str, Any]:
    return {
        "amqp": {"is": "routingKey", "exchange": exchange, "bindingVersion": AMQP_BINDING_VERSION}
    }


def _queue_binding(queue: dict[str, Any]) -> dict[str, Any]:
    return {"amqp": {"is": "queue", "queue": queue, "bindingVersion": AMQP_BINDING_VERSION}}


def _publishes(message: str) -> dict[str, Any]:
    return {"message": _ref(MESSAGES_REF, message)}


def _channels(names: Names, delivery_limit: int, delays: tuple[float, ...]) -> dict[str, Any]:
    events = _exchange(names.events_exchange, "topic")
    statuses = [s.value.lower() for s in OutcomeStatus]
    delay_names = [f"{d:g}" for d in delays]
    delay_channel = f"{names.prefix}.delay.{{seconds}}s"
    return {
        REQUEST_ROUTING_KEY: {
            "description": f"Referral requests in: publish to exchange "
            f"{names.requests_exchange} (direct) with routing key {REQUEST_ROUTING_KEY}, "
            f"persistent, with reply_to set; they wait in quorum queue "
            f"{names.requests_queue}. A message is acknowledged only after its outcome is "
            "stored and its events are confirmed.",
            "publish": {
                "operationId": "sendReferralRequest",
                "summary": "Ask the worker to carry one referral through e-RS.",
                "bindings": {"amqp": {"deliveryMode": 2, "bindingVersion": AMQP_BINDING_VERSION}},
                **_publishes("ReferralRequest"),
            },
            "bindings": _routing_key_binding(_exchange(names.requests_exchange, "direct")),
            "x-ers-queue": {
                "name": names.requests_queue,
                "arguments": requests_queue_arguments(names, delivery_limit),
            },
        },
        "{reply_to}": {
            "description": "The requester's own queue (the request's reply_to), through the "
            "default exchange: the outcome event and, when a letter was made, the "
            "letter-ready event, each with the request's correlation_id.",
            "parameters": {
                "reply_to": {
                    "description": "The request's reply_to property.",
                    "schema": {"type": "string", "minLength": 1},
                }
            },
            "subscribe": {
                "operationId": "receiveReplies",
                "summary": "The events for a request, sent to its reply_to queue.",
                "message": {
                    "oneOf": [
                        _ref(MESSAGES_REF, "OutcomeEvent"),
                        _ref(MESSAGES_REF, "LetterReadyEvent"),
                    ]
                },
            },
            "bindings": _routing_key_binding({"type": "default", "vhost": "/"}),
        },
        f"{OUTCOME_ROUTING_PREFIX}.{{status}}": {
            "description": f"Every outcome event, on topic exchange {names.events_exchange} "
            f"(bind {OUTCOME_ROUTING_PREFIX}.* for all of them).",
            "parameters": {
                "status": {
                    "description": "The outcome's status, in lower case.",
                    "schema": {"type": "string", "enum": statuses},
                }
            },
            "subscribe": {
                "operationId": "receiveOutcomes",
                "summary": "One outcome per request.",
                **_publishes("OutcomeEvent"),
            },
            "bindings": _routing_key_binding(events),
        },
        LETTER_READY_ROUTING_KEY: {
            "description": f"Every letter-ready event, on topic exchange {names.events_exchange}.",
            "subscribe": {
                "operationId": "receiveLetterReady",
                "summary": "A patient letter was stored.",
                **_publishes("LetterReadyEvent"),
            },
            "bindings": _routing_key_binding(events),
        },
        delay_channel: {
            "description": "The worker's delay queues (internal): a request waiting out an "
            "e-RS fault sits in one until its TTL ends, then goes back to "
            f"{names.requests_exchange} (at-least-once dead lettering). The last tier repeats "
            "until RETRY_BUDGET_SECONDS.",
            "parameters": {
                "seconds": {
                    "description": "The tier's TTL in seconds (RETRY_DELAYS_SECONDS).",
                    "schema": {"type": "string", "enum": delay_names},
                }
            },
            "subscribe": {
                "operationId": "delayRequest",
                "summary": "The worker puts a request here to wait out an e-RS fault.",
                **_publishes("DelayedRequest"),
            },
            "bindings": _queue_binding(_queue(delay_channel)),
            "x-ers-queue-arguments": {
                name: delay_queue_arguments(names, d)
                for name, d in zip(delay_names, delays, strict=True)
            },
            "x-internal": True,
        },
        names.dead_letter_queue: {
            "description": f"Parked messages: exchange {names.dead_letter_exchange} (fanout) "
            f"→ quorum queue {names.dead_letter_queue}, for a person to look at and replay "
            "(with a fresh token) or drop.",
            "subscribe": {
                "operationId": "receiveParked",
                "summary": "Messages the worker parked, or RabbitMQ dead-lettered.",
                "message": {
                    "oneOf": [
                        _ref(MESSAGES_REF, "ParkedRequest"),
                        _ref(MESSAGES_REF, "BrokerDeadLetteredRequest"),
                    ]
                },
            },
            "bindings": _queue_binding(_queue(names.dead_letter_queue)),
            "x-ers-exchange": _exchange(names.dead_letter_exchange, "fanout"),
            "x-ers-queue-arguments": DEAD_LETTER_QUEUE_ARGUMENTS,
        },
    }


def build() -> dict[str, Any]:
    """The AsyncAPI document, with the default settings (not the environment's)."""
    names = Names(DEFAULT_PREFIX)
    delays = tuple(float(d) for d in DEFAULT_RETRY_DELAYS.split(","))
    schemas = model_schemas(list(MODELS.values()))
    headers = _header_schemas()
    clash = schemas.keys() & headers.keys()
    if clash:
        raise ValueError(f"header schemas clash with model schemas: {sorted(clash)}")
    return {
        "asyncapi": ASYNCAPI_VERSION,
        "id": "urn:nhs:ers-worker",
        "info": {
            "title": "ers-worker",
            "version": version("ers-worker"),
            "description": "Referral requests in, one outcome event per request out, over "
            "RabbitMQ: the worker carries each request through the NHS e-Referral Service "
            "(e-RS) referrer flow as a durable saga.",
            "license": {"name": "MIT", "url": "https://opensource.org/licenses/MIT"},
        },
        "defaultContentType": "application/json",
        "servers": {
            "rabbitmq": {
                "url": "amqp://{host}:{port}/",
                "protocol": "amqp",
                "protocolVersion": "0.9.1",
                "description": "RabbitMQ 3.10 or later (quorum queues, at-least-once dead "
                "lettering); the worker's AMQP_URL.",
                "variables": {
                    "host": {"default": "127.0.0.1"},
                    "port": {"default": "5672"},
                },
                "security": [{"rabbitmqUser": []}],
            }
        },
        "channels": _channels(names, DEFAULT_DELIVERY_LIMIT, delays),
        "components": {
            "schemas": {**schemas, **dict(sorted(headers.items()))},
            "messages": _messages(names),
            "securitySchemes": {
                "rabbitmqUser": {
                    "type": "userPassword",
                    "description": "The RabbitMQ user and password in the AMQP URL.",
                }
            },
        },
    }


def render() -> bytes:
    return orjson.dumps(build(), option=orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS) + b"\n"


def main() -> int:
    OUTPUT.write_bytes(render())
    print(f"wrote schemas/{OUTPUT.name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
