"""Operator tools behind the ``ers-worker`` CLI: submit, status, dead-letters.

What they show never includes an access token (parked messages have none) or attachment
bytes; NHS numbers are masked to their last four digits.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aio_pika
import orjson
from tqdm import tqdm

from worker.messaging.publish import confirmed_channel, publish_request
from worker.messaging.topology import Names
from worker.ops.app import open_store
from worker.ops.settings import Settings
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
        channel = await confirmed_channel(connection)
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
