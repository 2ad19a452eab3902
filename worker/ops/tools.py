"""Operator tools behind the ``ers-worker`` CLI: submit, status, dead-letters.

What they show never includes an access token (parked messages have none) or attachment
bytes; NHS numbers are masked to their last four digits.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aio_pika
import orjson
from aio_pika.abc import AbstractChannel, AbstractIncomingMessage
from tqdm import tqdm

from worker.messaging.headers import (
    ATTEMPT_HEADER,
    OUTCOME_STATUS_HEADER,
    PARKED_AT_HEADER,
    REASON_HEADER,
    REPLAYED_AT_HEADER,
    REQUEST_ID_HEADER,
    REQUEST_ROUTING_KEY,
    RESET_ON_REPLAY,
    STEP_HEADER,
    TOKEN_HEADER,
)
from worker.messaging.outgoing import copy_message
from worker.messaging.publish import publish_request
from worker.messaging.topology import Names
from worker.ops.app import open_store
from worker.ops.settings import Settings
from worker.saga.policy import reopenable
from worker.saga.store import StoredSaga


def mask_nhs_number(value: object) -> str:
    text = str(value)
    return f"******{text[-4:]}" if len(text) >= 4 else "****"


def redacted_body(body: bytes) -> Any:
    """A parked message's body fit to show a person: no attachment bytes, NHS number masked."""
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError:
        return f"<{len(body)} bytes, not JSON>"
    if not isinstance(data, dict):
        return data
    patient = data.get("patient")
    if isinstance(patient, dict) and "nhs_number" in patient:
        patient["nhs_number"] = mask_nhs_number(patient["nhs_number"])
    for attachment in data.get("attachments") or []:
        if isinstance(attachment, dict) and isinstance(attachment.get("content"), str):
            attachment["content"] = f"<{len(attachment['content'])} characters of base64>"
    return data


# --- submit ---


async def submit(
    settings: Settings, files: list[Path], *, token: str | None, wait: bool, timeout: float
) -> list[dict[str, Any]]:
    """Publish request files; with ``wait``, return their outcomes (None where none came)."""
    names = Names(settings.topology_prefix)
    connection = await aio_pika.connect(settings.amqp_url.get_secret_value())
    async with connection:
        channel = await connection.channel(publisher_confirms=True)
        replies = await channel.declare_queue(exclusive=True, auto_delete=True)
        exchange = await channel.get_exchange(names.requests_exchange)
        sent: dict[str, Path] = {}
        for path in tqdm(files, desc="submitting", unit="request", disable=len(files) < 10):
            correlation_id = await publish_request(
                exchange,
                path.read_bytes(),
                reply_to=replies.name,
                correlation_id=f"submit-{uuid.uuid4().hex}",
                token=token or None,
            )
            sent[correlation_id] = path
        if not wait:
            return [{"file": str(p), "correlation_id": c} for c, p in sent.items()]
        outcomes: dict[str, dict[str, Any]] = {}
        try:
            async with asyncio.timeout(timeout), replies.iterator() as messages:
                async for message in messages:
                    await message.ack()
                    event = orjson.loads(message.body)
                    if event.get("event_type") == "referral.outcome":
                        outcomes[message.correlation_id or ""] = event
                        if len(outcomes) == len(sent):
                            break
        except TimeoutError:
            pass
        return [
            {"file": str(p), "correlation_id": c, "outcome": outcomes.get(c)}
            for c, p in sent.items()
        ]


# --- status ---


async def saga_status(settings: Settings, request_id: str) -> StoredSaga | None:
    store = await open_store(settings, release_leases=False)
    try:
        return await store.load(request_id)
    finally:
        await store.close()


def describe(saga: StoredSaga) -> Iterator[str]:
    state = saga.state
    now = time.time()
    yield f"request id     {saga.request_id}"
    yield f"step           {state.step.value}"
    yield f"status         {state.status.value if state.status else 'RUNNING'}"
    yield f"final          {'yes' if saga.final else 'no (a re-send resumes it)'}"
    yield f"path           {state.path.value if state.path else '-'}"
    yield f"ubrn           {state.ubrn or '-'} (version {state.referral_version or '-'})"
    yield f"referral state {state.referral_state or '-'}"
    if saga.owner:
        yield f"running on     {saga.owner} (lease {max(0, (saga.lease_until or 0) - now):.0f}s)"
    if state.pending:
        yield f"pending call   {state.pending.endpoint} in {state.pending.step.value}"
    if state.waiting:
        yield f"waiting        {state.waiting.code} at {state.waiting.step.value}"
    if state.error:
        yield f"error          {state.error.code} at {state.error.step.value}: {state.error.text}"
    for note in state.reconciliations:
        ubrns = f" ({', '.join(note.ubrns)})" if note.ubrns else ""
        yield f"reconciled     {note.endpoint} {note.decision}{ubrns}: {note.how}"
    yield f"claims         {saga.claims}; updated {now - saga.updated_at:.0f}s ago"
    yield "history:"
    for call in state.history:
        yield (
            f"  {call.at.isoformat(timespec='seconds')} {call.step.value:<15} {call.endpoint} "
            f"{call.status or '---'} {call.duration_ms}ms {call.error_code or ''} "
            f"x-request-id={call.x_request_id or '-'}"
        ).rstrip()


# --- dead letters ---


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
    body: bytes

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
            headers={k: v for k, v in headers.items() if k != TOKEN_HEADER},
            body=message.body,
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


async def _browse(
    channel: AbstractChannel, queue_name: str, limit: int
) -> list[tuple[AbstractIncomingMessage, Parked]]:
    """Take up to ``limit`` parked messages without acknowledging them: closing the channel
    puts every one back, so looking never removes anything."""
    queue = await channel.get_queue(queue_name)
    taken: list[tuple[AbstractIncomingMessage, Parked]] = []
    while len(taken) < limit:
        message = await queue.get(no_ack=False, fail=False)
        if message is None:
            break
        taken.append((message, Parked.of(message)))
    return taken


async def dead_letters(settings: Settings, limit: int = 1000) -> list[Parked]:
    names = Names(settings.topology_prefix)
    connection = await aio_pika.connect(settings.amqp_url.get_secret_value())
    async with connection:
        channel = await connection.channel()
        return [parked for _, parked in await _browse(channel, names.dead_letter_queue, limit)]


async def replay(
    settings: Settings,
    message_ids: set[str],
    *,
    token: str | None,
    reopen: bool,
    limit: int = 10_000,
) -> list[str]:
    """Send chosen parked messages back to the work queue, keeping their x-ers-* history.

    Parked messages carry no token: give one (``token``), or the requester is asked to
    re-authenticate and re-send. ``reopen`` makes a finished saga resumable again, for when a
    person has fixed what parked it (for NEEDS_RECONCILIATION: checked that the pending call
    did not take effect).
    """
    names = Names(settings.topology_prefix)
    store = await open_store(settings, release_leases=False) if reopen else None
    replayed: list[str] = []
    connection = await aio_pika.connect(settings.amqp_url.get_secret_value())
    try:
        async with connection:
            channel = await connection.channel(publisher_confirms=True)
            exchange = await channel.get_exchange(names.requests_exchange)
            for message, parked in await _browse(channel, names.dead_letter_queue, limit):
                if parked.message_id not in message_ids:
                    continue
                if store is not None and parked.request_id != "-":
                    saga = await store.load(parked.request_id)
                    # Only a saga a person must finish is reopened; a completed one never is.
                    if saga is not None and reopenable(saga.state):
                        await store.reopen(
                            saga.state.model_copy(update={"pending": None}), time.time()
                        )
                headers = {k: v for k, v in parked.headers.items() if k not in RESET_ON_REPLAY}
                headers[REPLAYED_AT_HEADER] = datetime.now(UTC).isoformat()
                if token:
                    headers[TOKEN_HEADER] = token
                await exchange.publish(
                    copy_message(message, headers), routing_key=REQUEST_ROUTING_KEY
                )
                await message.ack()  # only once the copy is confirmed in the work queue
                replayed.append(parked.message_id)
    finally:
        if store is not None:
            await store.close()
    return replayed
