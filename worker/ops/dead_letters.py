"""Operator tools for parked messages: list, show, replay, drop.

Rules:
1. Looking never changes a parked message. AMQP has no peek, and a message taken and handed
   back counts as a redelivery (quorum queues raise its x-delivery-count; RabbitMQ 4.x drops
   it after its delivery limit). So a look takes each message in turn, puts an exact copy
   (body, properties, headers) at the back of the queue, confirmed by the broker, and only
   then acknowledges the original: after a full pass every message is back, in its order,
   unchanged. The pass takes the messages that were there when it began, no more.
2. Replay and drop remove only the messages chosen, and only once the replayed copy is
   confirmed in the work queue.
3. What is shown never includes an access or ID token (parked messages have none) or
   attachment bytes; NHS numbers are masked to their last four digits.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import aio_pika
from aio_pika.abc import AbstractChannel, AbstractIncomingMessage, AbstractQueue

from worker.messaging.headers import (
    ATTEMPT_HEADER,
    DELIVERY_COUNT_HEADER,
    OUTCOME_STATUS_HEADER,
    PARKED_AT_HEADER,
    REASON_HEADER,
    REPLAYED_AT_HEADER,
    REQUEST_ID_HEADER,
    REQUEST_ROUTING_KEY,
    RESET_ON_REPLAY,
    SECRET_HEADERS,
    STEP_HEADER,
)
from worker.messaging.outgoing import copy_message
from worker.messaging.publish import confirmed_channel, with_tokens
from worker.messaging.topology import Names
from worker.ops.app import operator_store
from worker.ops.settings import Settings
from worker.saga.policy import reopenable, reopened


@dataclass(frozen=True, slots=True)
class Parked:
    message_id: str
    correlation_id: str | None
    request_id: str
    reason: str
    step: str
    outcome_status: str
    parked_at: str
    age_seconds: float | None
    attempts: int
    size: int
    headers: dict[str, Any]

    @classmethod
    def of(cls, message: AbstractIncomingMessage) -> Parked:
        headers = dict(message.headers or {})
        parked_at = str(headers.get(PARKED_AT_HEADER, ""))
        try:
            age: float | None = (
                datetime.now(UTC) - datetime.fromisoformat(parked_at)
            ).total_seconds()
        except ValueError:
            age = None
        attempts = headers.get(ATTEMPT_HEADER, 0)
        return cls(
            message_id=message.message_id or "",
            correlation_id=message.correlation_id,
            request_id=str(headers.get(REQUEST_ID_HEADER) or "-"),
            reason=str(headers.get(REASON_HEADER, "BROKER_DEAD_LETTERED")),
            step=str(headers.get(STEP_HEADER) or "-"),
            outcome_status=str(headers.get(OUTCOME_STATUS_HEADER) or "-"),
            parked_at=parked_at or "-",
            age_seconds=age,
            attempts=attempts if isinstance(attempts, int) else 0,
            size=len(message.body),
            headers={k: v for k, v in headers.items() if k.lower() not in SECRET_HEADERS},
        )

    def summary(self) -> dict[str, Any]:
        return {
            "message_id": self.message_id,
            "request_id": self.request_id,
            "reason": self.reason,
            "step": self.step,
            "outcome": self.outcome_status,
            "attempts": self.attempts,
            "age_seconds": None if self.age_seconds is None else round(self.age_seconds),
            "size_bytes": self.size,
        }


@dataclass(frozen=True, slots=True)
class Page:
    parked: list[Parked]
    total: int  # parked messages when the look began
    offset: int


def _unchanged_copy(message: AbstractIncomingMessage) -> aio_pika.Message:
    headers = {k: v for k, v in (message.headers or {}).items() if k != DELIVERY_COUNT_HEADER}
    copy = copy_message(message, headers)
    copy.timestamp = message.timestamp
    copy.type = message.type
    return copy


async def _parked(channel: AbstractChannel, queue_name: str) -> tuple[AbstractQueue, int]:
    queue = await channel.declare_queue(queue_name, passive=True)
    return queue, queue.declaration_result.message_count or 0


async def _pass(
    channel: AbstractChannel, queue_name: str
) -> AsyncIterator[AbstractIncomingMessage]:
    """Each message that was parked when the pass began; the caller settles each one
    (``_keep`` or an ack) before the next is taken."""
    queue, total = await _parked(channel, queue_name)
    for _ in range(total):
        message = await queue.get(no_ack=False, fail=False)
        if message is None:
            break
        yield message


async def _keep(
    channel: AbstractChannel, queue_name: str, message: AbstractIncomingMessage
) -> None:
    # Rule 1: the copy is confirmed at the back of the queue before the original goes.
    await channel.default_exchange.publish(_unchanged_copy(message), routing_key=queue_name)
    await message.ack()


async def look(settings: Settings, *, offset: int = 0, limit: int = 1000) -> Page:
    """The parked messages ``offset`` to ``offset + limit``, every one left as it was."""
    names = Names(settings.topology_prefix)
    found: list[Parked] = []
    total = 0
    connection = await aio_pika.connect(settings.amqp_url.get_secret_value())
    async with connection:
        channel = await confirmed_channel(connection)
        _, total = await _parked(channel, names.dead_letter_queue)
        index = 0
        async for message in _pass(channel, names.dead_letter_queue):
            if offset <= index < offset + limit:
                found.append(Parked.of(message))
            index += 1
            await _keep(channel, names.dead_letter_queue, message)
    return Page(found, total, offset)


async def show(settings: Settings, message_id: str) -> tuple[Parked, bytes] | None:
    """One parked message and its body (to be shown redacted), left as it was."""
    names = Names(settings.topology_prefix)
    shown: tuple[Parked, bytes] | None = None
    connection = await aio_pika.connect(settings.amqp_url.get_secret_value())
    async with connection:
        channel = await confirmed_channel(connection)
        async for message in _pass(channel, names.dead_letter_queue):
            if shown is None and message.message_id == message_id:
                shown = (Parked.of(message), message.body)
            await _keep(channel, names.dead_letter_queue, message)
    return shown


async def drop(settings: Settings, message_ids: set[str]) -> list[str]:
    """Remove the chosen parked messages, settled by a person; keep every other one."""
    names = Names(settings.topology_prefix)
    dropped: list[str] = []
    connection = await aio_pika.connect(settings.amqp_url.get_secret_value())
    async with connection:
        channel = await confirmed_channel(connection)
        async for message in _pass(channel, names.dead_letter_queue):
            if message.message_id in message_ids:
                await message.ack()
                dropped.append(message.message_id or "")
            else:
                await _keep(channel, names.dead_letter_queue, message)
    return dropped


async def replay(
    settings: Settings,
    message_ids: set[str],
    *,
    token: str | None,
    reopen: bool,
    id_token: str | None = None,
) -> list[str]:
    """Send chosen parked messages back to the work queue, keeping their x-ers-* history
    (their first x-ers-parked-at included).

    Parked messages carry no token: give an access token (``token``, x-ers-access-token) or a
    CIS2 ID token (``id_token``, x-ers-id-token, for ERS_TOKEN_PROVIDER=message-id-token), or
    the requester is asked to re-authenticate and re-send. ``reopen`` makes a finished saga
    resumable again, for when a person has fixed what parked it (for NEEDS_RECONCILIATION:
    checked that the pending call did not take effect; ``policy.reopened`` says which marks
    go).
    """
    names = Names(settings.topology_prefix)
    store = await operator_store(settings, read_only=False) if reopen else None
    replayed: list[str] = []
    connection = await aio_pika.connect(settings.amqp_url.get_secret_value())
    try:
        async with connection:
            channel = await confirmed_channel(connection)
            exchange = await channel.get_exchange(names.requests_exchange)
            async for message in _pass(channel, names.dead_letter_queue):
                if message.message_id not in message_ids:
                    await _keep(channel, names.dead_letter_queue, message)
                    continue
                parked = Parked.of(message)
                if store is not None and parked.request_id != "-":
                    saga = await store.load(parked.request_id)
                    # Only a saga a person must finish is reopened; a completed one never is.
                    if saga is not None and reopenable(saga.state):
                        await store.reopen(reopened(saga.state), time.time())
                headers = {k: v for k, v in parked.headers.items() if k not in RESET_ON_REPLAY}
                headers[REPLAYED_AT_HEADER] = datetime.now(UTC).isoformat()
                with_tokens(headers, token=token, id_token=id_token)
                await exchange.publish(
                    copy_message(message, headers), routing_key=REQUEST_ROUTING_KEY
                )
                await message.ack()  # only once the copy is confirmed in the work queue
                replayed.append(parked.message_id)
    finally:
        if store is not None:
            await store.close()
    return replayed
