"""A requester's view of the worker for end-to-end tests: publish, then read what came back.

Reading uses basic.get polled against a deadline (a condition with a timeout, never a bare
sleep). ``settle`` stops the worker first, so what is read after it is everything the worker
published for the test: counts can be asserted exactly.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import aio_pika
import orjson
from aio_pika.abc import AbstractChannel, AbstractConnection, AbstractQueue

from sandbox.testing import SandboxAdmin
from worker.messaging.consumer import Worker
from worker.messaging.publish import publish_request
from worker.messaging.topology import Names
from worker.ops.samples import SAMPLES, mixed_batch, nhs_numbers, sample

TEST_TOKEN = "test-user-token-0123456789"
__all__ = [
    "SAMPLES",
    "TEST_TOKEN",
    "Harness",
    "Received",
    "eventually",
    "mixed_batch",
    "nhs_numbers",
    "sample",
]


async def eventually(check: Callable[[], Awaitable[bool]], timeout: float = 30.0) -> None:
    """Wait until ``check`` holds, polling, or fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not await check():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.05)


@dataclass
class Received:
    body: dict[str, Any]
    headers: dict[str, Any]
    correlation_id: str | None
    routing_key: str | None


@dataclass
class Harness:
    amqp_url: str
    names: Names
    worker: Worker
    sandbox: SandboxAdmin
    replies: list[Received] = field(default_factory=list)
    topic: list[Received] = field(default_factory=list)
    parked: list[Received] = field(default_factory=list)
    _connection: AbstractConnection | None = None
    _channel: AbstractChannel | None = None
    _reply_queue: AbstractQueue | None = None
    _tap: AbstractQueue | None = None
    _dlq: AbstractQueue | None = None
    read_parked: bool = True
    """False leaves parked messages in the dead-letter queue (for tests of the tools that
    read it); poll() then does not take them."""

    async def open(self) -> None:
        self._connection = await aio_pika.connect(self.amqp_url)
        self._channel = await self._connection.channel(publisher_confirms=True)
        self._reply_queue = await self._channel.declare_queue(exclusive=True, auto_delete=True)
        self._tap = await self._channel.declare_queue(exclusive=True, auto_delete=True)
        await self._tap.bind(self.names.events_exchange, routing_key="#")
        self._dlq = await self._channel.get_queue(self.names.dead_letter_queue)

    async def close(self) -> None:
        if self._connection is not None:
            await self._connection.close()

    @property
    def reply_to(self) -> str:
        assert self._reply_queue is not None
        return self._reply_queue.name

    async def publish(
        self,
        body: dict[str, Any] | bytes,
        *,
        token: str | None = TEST_TOKEN,
        reply: bool = True,
        headers: dict[str, Any] | None = None,
    ) -> str:
        assert self._channel is not None
        exchange = await self._channel.get_exchange(self.names.requests_exchange)
        return await publish_request(
            exchange,
            body,
            reply_to=self.reply_to if reply else None,
            correlation_id=f"corr-{uuid.uuid4().hex}",
            token=token,
            headers=headers,
        )

    async def _drain(self, queue: AbstractQueue | None, into: list[Received]) -> None:
        assert queue is not None
        while (message := await queue.get(no_ack=True, fail=False)) is not None:
            try:
                body = orjson.loads(message.body)
            except orjson.JSONDecodeError:
                body = {"raw": message.body, "event_type": None}  # a parked garbage message
            into.append(
                Received(
                    body=body,
                    headers=dict(message.headers or {}),
                    correlation_id=message.correlation_id,
                    routing_key=message.routing_key,
                )
            )

    async def poll(self) -> None:
        await self._drain(self._reply_queue, self.replies)
        await self._drain(self._tap, self.topic)
        if self.read_parked:
            await self._drain(self._dlq, self.parked)

    async def parked_depth(self) -> int:
        """Messages in the dead-letter queue now (ready ones: what a reader would find)."""
        assert self._channel is not None
        queue = await self._channel.declare_queue(self.names.dead_letter_queue, passive=True)
        return queue.declaration_result.message_count or 0

    async def consumers(self, queue_name: str) -> int:
        """Consumers the broker counts on ``queue_name`` now (a quorum queue's count may lag
        a moment behind a subscription: poll it)."""
        assert self._channel is not None
        queue = await self._channel.declare_queue(queue_name, passive=True)
        return queue.declaration_result.consumer_count or 0

    async def wait_for_parked(self, count: int, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while await self.parked_depth() < count:
            if time.monotonic() > deadline:
                raise TimeoutError(f"fewer than {count} parked messages after {timeout}s")
            await asyncio.sleep(0.05)

    async def wait_until(self, condition: Callable[[], bool], timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while True:
            await self.poll()
            if condition():
                return
            if time.monotonic() > deadline:
                raise TimeoutError(f"condition not met within {timeout}s")
            await asyncio.sleep(0.05)

    def outcomes(
        self, correlation_id: str, source: list[Received] | None = None
    ) -> list[dict[str, Any]]:
        return [
            r.body
            for r in (self.replies if source is None else source)
            if r.correlation_id == correlation_id and r.body["event_type"] == "referral.outcome"
        ]

    def letters(
        self, correlation_id: str, source: list[Received] | None = None
    ) -> list[dict[str, Any]]:
        return [
            r.body
            for r in (self.replies if source is None else source)
            if r.correlation_id == correlation_id
            and r.body["event_type"] == "referral.letter_ready"
        ]

    async def outcome(self, correlation_id: str, timeout: float = 30.0) -> dict[str, Any]:
        await self.wait_until(lambda: bool(self.outcomes(correlation_id)), timeout)
        return self.outcomes(correlation_id)[0]

    async def settle(self) -> None:
        """Stop the worker and read everything it published."""
        await self.worker.stop(grace_seconds=5)
        await self.poll()
