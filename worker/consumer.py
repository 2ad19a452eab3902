"""The RabbitMQ side: consume requests, publish events, and decide each message's fate.

Rules:
1. A message is acknowledged only after its events are confirmed by the broker (publisher
   confirms); if publishing fails the message stays unacknowledged and comes back.
2. Ack, dead-letter and requeue are decided in ``_settle`` and nowhere else.
3. Dead-lettered messages are re-published by us to the dead-letter exchange with the
   reason in their headers and WITHOUT the access token, then acknowledged; the broker's
   own dead-lettering (delivery limit) catches messages that crash the worker.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

import aio_pika
from aio_pika.abc import (
    AbstractIncomingMessage,
    AbstractRobustChannel,
    AbstractRobustConnection,
)

from schemas.events import OutcomeEventV1
from worker.pipeline import Event, Fate, Handled, Incoming, RequestHandler
from worker.settings import Settings
from worker.tokens import EXPIRES_HEADER, TOKEN_HEADER
from worker.topology import (
    LETTER_READY_ROUTING_KEY,
    OUTCOME_ROUTING_PREFIX,
    Names,
    Topology,
    declare,
)

log = logging.getLogger("worker.consumer")
_SECRET_HEADERS = frozenset({TOKEN_HEADER, EXPIRES_HEADER})


def event_message(event: Event) -> aio_pika.Message:
    return aio_pika.Message(
        body=event.model_dump_json().encode(),
        content_type="application/json",
        delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
        message_id=event.event_id,
        correlation_id=event.correlation_id,
        type=event.event_type,
        timestamp=event.occurred_at,
        headers={"x-ers-schema-version": event.schema_version},
    )


def routing_key(event: Event) -> str:
    if event.event_type == "referral.letter_ready":
        return LETTER_READY_ROUTING_KEY
    assert isinstance(event, OutcomeEventV1)
    return f"{OUTCOME_ROUTING_PREFIX}.{event.status.value.lower()}"


def parked_headers(headers: Mapping[str, Any], handled: Handled) -> dict[str, Any]:
    kept = {k: v for k, v in headers.items() if k.lower() not in _SECRET_HEADERS}
    error = handled.outcome.error
    kept.update(
        {
            "x-ers-reason": error.code if error else "UNKNOWN",
            "x-ers-step": error.step.value if error else "",
            "x-ers-problem": (error.text if error else "")[:1000],
            "x-ers-outcome-status": handled.outcome.status.value,
            "x-ers-request-id": handled.outcome.request_id or "",
            "x-ers-parked-at": datetime.now(UTC).isoformat(),
        }
    )
    return kept


class Worker:
    """Consumes referral requests until stopped; one per process."""

    def __init__(self, settings: Settings, handler: RequestHandler) -> None:
        self._settings = settings
        self._handler = handler
        self._names = Names(settings.topology_prefix)
        self._slots = asyncio.Semaphore(settings.concurrency)
        self._tasks: set[asyncio.Task[None]] = set()
        self._connection: AbstractRobustConnection | None = None
        self._channel: AbstractRobustChannel | None = None
        self._topology: Topology | None = None
        self._consumer_tag: str | None = None

    @property
    def in_flight(self) -> int:
        return len(self._tasks)

    @property
    def topology(self) -> Topology:
        assert self._topology is not None, "start() first"
        return self._topology

    async def start(self) -> None:
        self._connection = await aio_pika.connect_robust(
            self._settings.amqp_url.get_secret_value(),
            client_properties={"connection_name": "ers-worker"},
        )
        channel = await self._connection.channel(publisher_confirms=True)
        assert isinstance(channel, AbstractRobustChannel)
        self._channel = channel
        await channel.set_qos(prefetch_count=self._settings.prefetch)
        self._topology = await declare(
            channel, self._names, delivery_limit=self._settings.delivery_limit
        )
        self._consumer_tag = await self._topology.requests.consume(self._on_message)
        log.info(
            "consuming",
            extra={"queue": self._names.requests_queue, "prefetch": self._settings.prefetch},
        )

    async def _on_message(self, message: AbstractIncomingMessage) -> None:
        task = asyncio.create_task(self._process(message))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _process(self, message: AbstractIncomingMessage) -> None:
        try:
            async with self._slots:
                incoming = Incoming(
                    body=message.body,
                    headers=message.headers or {},
                    correlation_id=message.correlation_id,
                    message_id=message.message_id,
                    reply_to=message.reply_to,
                )
                handled = await self._handler.handle(incoming)
                await self._settle(message, handled)
        except asyncio.CancelledError:
            # Shutdown ran out of grace: hand the message back for another replica.
            await self._requeue(message)
            raise
        except Exception as exc:
            # Publishing or acking failed (broker gone): leave it unacknowledged; the broker
            # redelivers when the channel closes, and its delivery limit stops a loop.
            log.error("message not settled", extra={"error": type(exc).__name__})

    async def _settle(self, message: AbstractIncomingMessage, handled: Handled) -> None:
        topology = self.topology
        for event in handled.events:
            body = event_message(event)
            if message.reply_to:
                await topology.default.publish(body, routing_key=message.reply_to, mandatory=False)
            await topology.events.publish(body, routing_key=routing_key(event), mandatory=False)
        if handled.fate is Fate.DEAD_LETTER:
            parked = aio_pika.Message(
                body=message.body,
                headers=parked_headers(message.headers or {}, handled),
                content_type=message.content_type,
                delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
                message_id=message.message_id,
                correlation_id=message.correlation_id,
                reply_to=message.reply_to,
            )
            await topology.dead_letters.publish(parked, routing_key="", mandatory=False)
        await message.ack()

    async def _requeue(self, message: AbstractIncomingMessage) -> None:
        try:
            await message.nack(requeue=True)
        except Exception as exc:  # the channel may be gone already; the broker requeues then
            log.warning("requeue failed", extra={"error": type(exc).__name__})

    async def stop(self, grace_seconds: float | None = None) -> None:
        """Stop taking messages, let in-flight sagas finish within the grace, requeue the rest."""
        grace = self._settings.shutdown_grace_seconds if grace_seconds is None else grace_seconds
        if self._topology is not None and self._consumer_tag is not None:
            try:
                await self._topology.requests.cancel(self._consumer_tag)
            except Exception as exc:
                log.warning("consumer cancel failed", extra={"error": type(exc).__name__})
            self._consumer_tag = None
        if self._tasks:
            log.info("draining", extra={"in_flight": len(self._tasks), "grace_seconds": grace})
            _, pending = await asyncio.wait(set(self._tasks), timeout=grace)
            for task in pending:
                task.cancel()
            if pending:
                await asyncio.gather(*pending, return_exceptions=True)
        if self._connection is not None:
            await self._connection.close()
            self._connection = None
