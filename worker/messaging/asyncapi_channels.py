"""The AsyncAPI document's messages and channels: the requests exchange and queue, the reply
queue, the events exchange, the delay queues and the dead letters."""

from __future__ import annotations

from typing import Any

from schemas.events import OutcomeStatus
from worker.messaging.asyncapi_refs import AMQP_BINDING_VERSION, MESSAGES_REF, SCHEMAS_REF, ref
from worker.messaging.headers import (
    ATTEMPT_HEADER,
    FIRST_SEEN_HEADER,
    LETTER_READY_ROUTING_KEY,
    OUTCOME_ROUTING_PREFIX,
    REQUEST_ROUTING_KEY,
    work_routing_key,
)
from worker.messaging.topology import (
    DEAD_LETTER_QUEUE_ARGUMENTS,
    Names,
    delay_queue_arguments,
    requests_queue_arguments,
)
from worker.saga.priority import MOST_URGENT_FIRST


def messages(names: Names) -> dict[str, Any]:
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
    request_payload = ref(SCHEMAS_REF, "ReferralRequestV1")
    return {
        "ReferralRequest": {
            "name": REQUEST_ROUTING_KEY,
            "title": "Referral request (v1)",
            "summary": "Carry one referral through the e-RS referrer flow.",
            "contentType": json_body,
            "headers": ref(SCHEMAS_REF, "RequestHeaders"),
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
            "headers": ref(SCHEMAS_REF, "EventHeaders"),
            "payload": ref(SCHEMAS_REF, "OutcomeEventV1"),
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
            "headers": ref(SCHEMAS_REF, "EventHeaders"),
            "payload": ref(SCHEMAS_REF, "LetterReadyEventV1"),
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
            "headers": ref(SCHEMAS_REF, "RequestHeaders"),
            "payload": request_payload,
            "x-amqp-properties": request_properties,
        },
        "ParkedRequest": {
            "name": "referral.request.parked",
            "title": "Parked referral request",
            "summary": "A request a person must look at: rejected, needing reconciliation, "
            "out of retry budget, or answered unexpectedly. Its outcome was sent already.",
            "contentType": json_body,
            "headers": ref(SCHEMAS_REF, "ParkedHeaders"),
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
            "headers": ref(SCHEMAS_REF, "BrokerDeadLetteredHeaders"),
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
    return {"message": ref(MESSAGES_REF, message)}


def channels(names: Names, delivery_limit: int, delays: tuple[float, ...]) -> dict[str, Any]:
    events = _exchange(names.events_exchange, "topic")
    statuses = [s.value.lower() for s in OutcomeStatus]
    delay_names = [f"{d:g}" for d in delays]
    delay_channel = f"{names.prefix}.delay.{{seconds}}s"
    work_channel = f"{names.requests_queue}.{{priority}}"
    prefix_length = len(names.requests_queue) + 1
    work_names = [names.work_queue(p)[prefix_length:] for p in MOST_URGENT_FIRST]
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
                        ref(MESSAGES_REF, "OutcomeEvent"),
                        ref(MESSAGES_REF, "LetterReadyEvent"),
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
        work_channel: {
            "description": "The worker's work queues (internal), one per clinical priority: "
            f"the worker moves each request from {names.requests_queue} to the queue of its "
            "search.priority at once, and takes the most urgent first, since quorum queues "
            "have no message priorities.",
            "parameters": {
                "priority": {
                    "description": "The request's search.priority, in lower case with hyphens.",
                    "schema": {"type": "string", "enum": work_names},
                }
            },
            "subscribe": {
                "operationId": "sortRequest",
                "summary": "The worker moves a request here by its clinical priority.",
                **_publishes("ReferralRequest"),
            },
            "bindings": _queue_binding(_queue(work_channel)),
            "x-ers-routing-keys": {
                name: work_routing_key(p)
                for name, p in zip(work_names, MOST_URGENT_FIRST, strict=True)
            },
            "x-ers-queue-arguments": requests_queue_arguments(names, delivery_limit),
            "x-internal": True,
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
                        ref(MESSAGES_REF, "ParkedRequest"),
                        ref(MESSAGES_REF, "BrokerDeadLetteredRequest"),
                    ]
                },
            },
            "bindings": _queue_binding(_queue(names.dead_letter_queue)),
            "x-ers-exchange": _exchange(names.dead_letter_exchange, "fanout"),
            "x-ers-queue-arguments": DEAD_LETTER_QUEUE_ARGUMENTS,
        },
    }
