"""Moves each request from the intake queue to the work queue of its clinical priority.

Upstream publishes every request with one routing key, and the quorum intake queue serves
them in arrival order. Sorting them at once, before any saga runs, is what lets a
two-week-wait referral published behind 500 routine ones be taken next: the worker drains
the intake queue far faster than e-RS' budget drains the work queues.

The priority is the request's own ``search.priority``: a request that names none validly
goes to the routine queue, where intake refuses it, naming the field.

Each move is publish (confirmed), then ack. A crash between the two leaves the request in
both queues: the second copy is an identical re-send, which the saga store answers with
the first one's outcome (``ClaimKind.FINISHED``) or runs after it; it never makes a second
referral.
"""

from __future__ import annotations

import time
from typing import Any

import orjson
from aio_pika.abc import AbstractIncomingMessage

from schemas.referral_request import Priority
from worker.messaging.headers import (
    DELIVERY_COUNT_HEADER,
    FIRST_SEEN_HEADER,
    FIRST_SEEN_MS_HEADER,
    first_seen_headers,
    work_routing_key,
)
from worker.messaging.outgoing import copy_message
from worker.messaging.topology import Topology
from worker.observability.metrics import Metrics
from worker.saga.priority import priority_of


def request_priority(body: bytes) -> Priority:
    """The clinical priority a raw request body names (ROUTINE when it names none)."""
    try:
        request: Any = orjson.loads(body)
    except orjson.JSONDecodeError:
        return Priority.ROUTINE
    search = request.get("search") if isinstance(request, dict) else None
    return priority_of(search.get("priority") if isinstance(search, dict) else None)


def sorted_headers(headers: dict[str, Any], now: float) -> dict[str, Any]:
    """The headers of the moved copy: its first sight stamped (the retry budget, the turn
    and the time to outcome count from it), and the intake queue's delivery count dropped
    (the work queue counts its own)."""
    moved = dict(headers)
    moved.pop(DELIVERY_COUNT_HEADER, None)
    if FIRST_SEEN_MS_HEADER not in moved and FIRST_SEEN_HEADER not in moved:
        moved.update(first_seen_headers(now))
    return moved


async def sort(message: AbstractIncomingMessage, topology: Topology, metrics: Metrics) -> None:
    priority = request_priority(message.body)
    copy = copy_message(message, sorted_headers(dict(message.headers or {}), time.time()))
    await topology.requests_exchange.publish(copy, routing_key=work_routing_key(priority))
    await message.ack()
    metrics.sorted.labels(priority.value.lower()).inc()
