"""The RabbitMQ side: consume requests, publish events, and carry out each message's fate.

Rules:
1. A message is acknowledged only after everything it leads to (events, its copy in a delay
   queue, its parked copy) is confirmed by the broker; if any publish fails the message stays
   unacknowledged and comes back when the channel closes.
2. Ack, park, delay and requeue are carried out in ``_settle`` and ``_requeue`` only.
3. Parked messages are re-published by us to the dead-letter exchange with the reason in
   their headers and WITHOUT the access token, then acknowledged. The broker's own
   dead-lettering (the quorum queue's delivery limit) is the last resort for a message that
   kills the worker; we park such a message ourselves on its last delivery.
4. On stop: no new saga starts; running ones get the grace period; the rest are requeued
   and resume from their checkpoints.
5. A broker that is not up when the worker starts is waited for, with backoff and one log
   line per try (the robust connection only reconnects once it has connected).
6. After the robust connection comes back, the worker checks that the broker really sees a
   consumer on each of its queues (a known failure is a live connection with none),
   subscribes again if not, and gives up (``failed`` is set, the process exits non-zero so
   the orchestrator restarts it) if that does not work either.
7. Clinical priority: requests are sorted from the intake queue into one work queue per
   priority (``worker.messaging.sorter``), and the sagas waiting for a slot in this process
   are admitted earliest turn first (``worker.saga.priority``), as are their e-RS calls.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from functools import partial
from typing import Any

import aio_pika
from aio_pika.abc import (
    AbstractIncomingMessage,
    AbstractQueue,
    AbstractRobustChannel,
    AbstractRobustConnection,
)

from schemas.referral_request import Priority
from worker.messaging.config import ConsumerConfig
from worker.messaging.fate import Fate, Handled, Incoming
from worker.messaging.handler import RequestHandler
from worker.messaging.headers import (
    ATTEMPT_HEADER,
    DELIVERY_COUNT_HEADER,
    FIRST_SEEN_HEADER,
    FIRST_SEEN_MS_HEADER,
    attempt_of,
    first_seen_headers,
    first_seen_of,
)
from worker.messaging.outgoing import copy_message, event_message, parked_headers, routing_key
from worker.messaging.publish import confirmed_channel
from worker.messaging.sorter import sort
from worker.messaging.topology import Names, Topology, declare
from worker.observability.health import HealthServer
from worker.observability.metrics import REQUEUED, bounded_code
from worker.saga.priority import Turns, turn

OnMessage = Callable[[AbstractIncomingMessage], Awaitable[None]]

log = logging.getLogger("worker.messaging.consumer")


async def _all_confirmed(publishes: list[Awaitable[object]]) -> None:
    """Send every publish at once and wait for all their confirms: one round trip to the
    broker instead of one each (a saga's events held its slot for four in a row).

    The order is kept: aiormq sends a channel's frames under a FIFO lock taken in call order,
    and the broker keeps a channel's order into each queue, so a letter-ready event still
    reaches every queue before its outcome. Should one fail, the others still finish (none
    is left unretrieved) and the first failure is raised: the message is requeued and its
    events go out again, at least once, as before."""
    results = await asyncio.gather(*publishes, return_exceptions=True)
    for result in results:
        if isinstance(result, BaseException):
            raise result


class Worker:
    """Consumes referral requests until stopped; one per process."""

    def __init__(self, settings: ConsumerConfig, handler: RequestHandler) -> None:
        self._settings = settings
        self._handler = handler
        self._names = Names(settings.topology_prefix)
        self._slots = Turns(settings.concurrency)
        self._tasks: set[asyncio.Task[None]] = set()
        self._connection: AbstractRobustConnection | None = None
        self._channel: AbstractRobustChannel | None = None
        self._topology: Topology | None = None
        self._consumer_tags: dict[str, str] = {}  # queue name: tag
        self._stopping = False
        self._checks: set[asyncio.Task[None]] = set()
        self.failed = asyncio.Event()
        self.reconnects = 0
        self.metrics = handler.metrics
        self.health = HealthServer(self.metrics, self.not_ready)

    @property
    def in_flight(self) -> int:
        return len(self._tasks)

    @property
    def topology(self) -> Topology:
        assert self._topology is not None, "start() first"
        return self._topology

    async def not_ready(self) -> list[str]:
        """Why this worker should not be sent traffic now (empty when it is ready)."""
        problems = []
        if self._stopping:
            problems.append("draining")
        if self._connection is None or self._connection.is_closed:
            problems.append("broker connection closed")
        if not self._consumer_tags or self.failed.is_set():
            problems.append("not consuming")
        try:
            await asyncio.wait_for(self._handler.store_ping(), timeout=2)
        except Exception as exc:
            problems.append(f"saga store unreachable ({type(exc).__name__})")
        return problems

    async def start(self) -> None:
        settings = self._settings
        await self.health.start(settings.metrics_host, settings.metrics_port)
        self._connection = await self._connect()
        channel = await confirmed_channel(self._connection)
        assert isinstance(channel, AbstractRobustChannel)
        self._channel = channel
        # Per consumer: each work queue, and the intake queue being sorted, get this many.
        await channel.set_qos(prefetch_count=self._settings.prefetch)
        self._topology = await declare(
            channel,
            self._names,
            delivery_limit=self._settings.delivery_limit,
            delays=self._settings.retry_delays,
        )
        for queue, on_message in self._queues():
            self._consumer_tags[queue.name] = await queue.consume(on_message)
        self.metrics.consumer_attached.set(1)
        self._connection.reconnect_callbacks.add(self._after_reconnect)
        log.info(
            "consuming",
            extra={
                "queues": sorted(self._consumer_tags),
                "prefetch": self._settings.prefetch,
                # Which loop runs (EVENT_LOOP), as the process saw it: the first fact to
                # check in a report that only one deployment shows.
                "event_loop": type(asyncio.get_running_loop()).__module__.split(".")[0],
            },
        )

    def _queues(self) -> list[tuple[AbstractQueue, OnMessage]]:
        """Each queue this worker consumes, with what it does with a message from it: the
        intake queue's are sorted by priority, each work queue's run as sagas."""
        topology = self.topology
        queues: list[tuple[AbstractQueue, OnMessage]] = [(topology.requests, self._on_intake)]
        for priority, queue in topology.work.items():
            queues.append((queue, partial(self._on_message, priority)))
        return queues

    async def _connect(self) -> AbstractRobustConnection:
        """The broker connection, waited for with backoff if the broker is not up yet (a
        robust connection only reconnects once it has connected): one log line per try."""
        delay, attempt = 1.0, 0
        while True:
            attempt += 1
            try:
                return await aio_pika.connect_robust(
                    self._settings.amqp_url.get_secret_value(),
                    client_properties={"connection_name": "ers-worker"},
                )
            except (OSError, aio_pika.exceptions.AMQPError) as exc:
                log.error(
                    "broker unreachable, retrying",
                    extra={"attempt": attempt, "error": type(exc).__name__, "delay_seconds": delay},
                )
            await asyncio.sleep(delay)
            delay = min(delay * 2, 30.0)

    def _after_reconnect(self, *_: Any) -> None:
        self.reconnects += 1
        task = asyncio.create_task(self._verify_consuming())
        self._checks.add(task)
        task.add_done_callback(self._checks.discard)

    async def _missing_consumers(self, within: float = 5.0) -> list[str]:
        """The queues on which the broker counts no consumer within ``within`` seconds.

        A quorum queue reports its consumer count a moment late, so one look is not enough.
        """
        assert self._channel is not None
        deadline = time.monotonic() + within
        while True:
            # The robust channel caches its queues' declare results; ask the broker itself.
            underlay = await self._channel.get_underlay_channel()
            missing = []
            for queue, _ in self._queues():
                declared = await underlay.queue_declare(queue.name, passive=True)
                if not declared.consumer_count:
                    missing.append(queue.name)
            if not missing or time.monotonic() >= deadline:
                return missing
            await asyncio.sleep(0.25)

    async def _verify_consuming(self) -> None:
        if self._stopping:
            return
        try:
            missing = await self._missing_consumers()
            if not missing:
                log.info("consumers attached after reconnect")
                return
            log.warning("no consumer after reconnect: subscribing again", extra={"queues": missing})
            for queue, on_message in self._queues():
                if queue.name in missing:
                    self._consumer_tags[queue.name] = await queue.consume(on_message)
            if not await self._missing_consumers():
                return
        except Exception as exc:
            log.error("consumer check failed", extra={"error": type(exc).__name__})
        self.metrics.consumer_attached.set(0)
        self.failed.set()

    async def _on_intake(self, message: AbstractIncomingMessage) -> None:
        self._track(self._sort(message))

    async def _sort(self, message: AbstractIncomingMessage) -> None:
        try:
            await sort(message, self.topology, self.metrics)
        except asyncio.CancelledError:
            await self._requeue(message)
            raise
        except Exception as exc:  # the broker refused the copy or went away: try again later
            log.error("request not sorted", extra={"error": type(exc).__name__})
            await asyncio.sleep(1.0)
            await self._requeue(message)

    def _track(self, work: Awaitable[None]) -> None:
        task = asyncio.ensure_future(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _on_message(self, priority: Priority, message: AbstractIncomingMessage) -> None:
        self._track(self._tracked(priority, message))

    def _incoming(self, message: AbstractIncomingMessage) -> Incoming:
        return Incoming(
            body=message.body,
            headers=message.headers or {},
            correlation_id=message.correlation_id,
            message_id=message.message_id,
            reply_to=message.reply_to,
        )

    async def _tracked(self, priority: Priority, message: AbstractIncomingMessage) -> None:
        try:
            if self._stopping:
                await self._requeue(message)
                return
            first_seen = first_seen_of(message.headers or {}, time.time())
            await self._slots.acquire(turn(priority, first_seen))
            try:
                # Counted while it holds a slot, not while it waits for one: a message
                # waiting behind more urgent work is not a saga stuck (ErsSagaStuck).
                with self.metrics.in_flight_message():
                    handled = await self._handled(message)
            finally:
                # The slot is for a saga's work, which ends with its outcome stored: the
                # next message starts while this one's events are confirmed and it is
                # acknowledged, which took ~12 ms of each slot's ~800 ms at concurrency 50.
                self._slots.release()
            if handled is not None:
                await self._settle(message, handled)
        except asyncio.CancelledError:
            # Shutdown ran out of grace: hand the message back; the saga resumes elsewhere.
            await self._requeue(message)
            raise
        except Exception as exc:
            # Publishing or acking failed (broker gone), or the saga store did: hand the
            # message back, after a pause so that a store outage is not a hot loop. If the
            # channel is gone the broker requeues it anyway; its delivery limit stops a loop.
            log.error("message not settled", extra={"error": type(exc).__name__})
            await asyncio.sleep(1.0)
            await self._requeue(message)

    async def _handled(self, message: AbstractIncomingMessage) -> Handled | None:
        """The message's events and fate, or None once it has been handed back."""
        if self._stopping:  # stop() began while this one waited for a slot
            await self._requeue(message)
            return None
        incoming = self._incoming(message)
        if self._last_delivery(message):
            handled = await self._handler.poisoned(incoming)
        else:
            handled = await self._handler.handle(incoming)
        if handled.fate is Fate.REQUEUE:
            await self._requeue(message)
            return None
        return handled

    def _last_delivery(self, message: AbstractIncomingMessage) -> bool:
        count = (message.headers or {}).get(DELIVERY_COUNT_HEADER, 0)
        return isinstance(count, int) and count >= self._settings.delivery_limit

    async def _settle(self, message: AbstractIncomingMessage, handled: Handled) -> None:
        topology = self.topology
        metrics = self.metrics
        copies: list[Awaitable[object]] = []
        for event in handled.events:
            body = event_message(event, message.correlation_id, handled.trace_headers)
            if message.reply_to:
                copies.append(
                    topology.default.publish(body, routing_key=message.reply_to, mandatory=False)
                )
            copies.append(
                topology.events.publish(body, routing_key=routing_key(event), mandatory=False)
            )
        await _all_confirmed(copies)
        if handled.fate is Fate.DEAD_LETTER:
            parked = copy_message(message, parked_headers(message.headers or {}, handled))
            await topology.dead_letters.publish(parked, routing_key="", mandatory=False)
            metrics.dead_lettered.labels(bounded_code(handled.reason)).inc()
        elif handled.fate is Fate.DELAY:
            headers = dict(message.headers or {})
            headers.pop(DELIVERY_COUNT_HEADER, None)
            headers[ATTEMPT_HEADER] = attempt_of(headers) + (1 if handled.counts_attempt else 0)
            if FIRST_SEEN_MS_HEADER not in headers and FIRST_SEEN_HEADER not in headers:
                headers.update(first_seen_headers(time.time()))
            queue = topology.names.delay_queue(handled.delay_seconds)
            await topology.default.publish(copy_message(message, headers), routing_key=queue)
            metrics.delayed.labels(f"{handled.delay_seconds:g}", bounded_code(handled.reason)).inc()
        await message.ack()
        metrics.messages.labels(handled.result).inc()

    async def _requeue(self, message: AbstractIncomingMessage) -> None:
        try:
            await message.nack(requeue=True)
            self.metrics.messages.labels(REQUEUED).inc()
        except Exception as exc:  # the channel may be gone already; the broker requeues then
            log.warning("requeue failed", extra={"error": type(exc).__name__})

    async def stop(self, grace_seconds: float | None = None) -> None:
        """Stop taking messages, let running sagas finish within the grace, requeue the rest."""
        grace = self._settings.shutdown_grace_seconds if grace_seconds is None else grace_seconds
        self._stopping = True
        self._handler.stopping = True
        for check in set(self._checks):
            check.cancel()
        if self._topology is not None:
            for queue, _ in self._queues():
                tag = self._consumer_tags.pop(queue.name, None)
                if tag is None:
                    continue
                try:
                    await queue.cancel(tag)
                except Exception as exc:
                    log.warning("consumer cancel failed", extra={"error": type(exc).__name__})
        deadline = time.monotonic() + grace
        while self._tasks:
            log.info("draining", extra={"in_flight": len(self._tasks)})
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                for task in set(self._tasks):
                    task.cancel()
                await asyncio.gather(*set(self._tasks), return_exceptions=True)
                break
            await asyncio.wait(set(self._tasks), timeout=remaining)
        self.metrics.consumer_attached.set(0)
        if self._connection is not None:
            await self._connection.close()
            self._connection = None
        await self.health.stop()
