"""Operator tools behind the ``ers-worker`` CLI: validate, submit, status, and the tokens
``submit`` and ``dead-letters replay`` send.

What they show never includes an access or ID token (parked messages have none) or
attachment bytes; NHS numbers are masked to their last four digits.
"""

from __future__ import annotations

import asyncio
import os
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aio_pika
import orjson
from aio_pika.abc import AbstractQueue
from tqdm import tqdm

from schemas.events import FieldError
from worker.messaging.id_tokens import id_token_expiry
from worker.messaging.intake import Rejection, parse_request
from worker.messaging.publish import confirmed_channel, publish_request
from worker.messaging.topology import Names
from worker.ops.app import operator_store
from worker.ops.failure import OperatorError
from worker.ops.settings import Settings
from worker.saga.ports import TokenUnusable
from worker.saga.store import StoredSaga

ACCESS_TOKEN_ENV = "ERS_ACCESS_TOKEN"
ID_TOKEN_ENV = "ERS_ID_TOKEN"


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


# --- the tokens submit and replay send ---


def id_token_from(path: Path | None, *, now: datetime | None = None) -> str | None:
    """The CIS2 ID token to send in x-ers-id-token: the content of ``path``
    (``--id-token-file``), else ``ERS_ID_TOKEN``, else None. Never a command-line value,
    which ``ps`` would show. One that cannot serve (unreadable, empty, no JWT, expired) is
    an ``OperatorError`` naming where it came from, never its value: nothing is sent."""
    if path is not None:
        where = f"--id-token-file {path}"
        try:
            raw = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            why = exc.strerror if isinstance(exc, OSError) else "not UTF-8 text"
            raise OperatorError(
                f"cannot read {where} ({why or type(exc).__name__}): nothing was sent."
            ) from None
    else:
        where = ID_TOKEN_ENV
        raw = os.environ.get(ID_TOKEN_ENV, "")
        if not raw.strip():
            return None
    token = raw.strip()
    if not token:
        raise OperatorError(f"{where} is empty: it must hold the clinician's CIS2 ID token.")
    try:
        expires_at = id_token_expiry(token)
    except TokenUnusable:
        raise OperatorError(
            f"{where} holds no CIS2 ID token (a JWT, header.payload.signature): nothing was sent."
        ) from None
    if expires_at is not None and (now or datetime.now(UTC)) >= expires_at:
        raise OperatorError(
            f"the CIS2 ID token in {where} expired at {expires_at.isoformat(timespec='seconds')}: "
            "get a fresh one from the clinician's sign-in; nothing was sent."
        )
    return token


# --- validate and submit ---


@dataclass(frozen=True, slots=True)
class Checked:
    """One request file as the worker's intake sees it."""

    path: Path
    body: bytes
    request_id: str | None
    problems: list[FieldError]

    def report(self) -> dict[str, Any]:
        return {
            "file": str(self.path),
            "valid": not self.problems,
            "request_id": self.request_id,
            "problems": [p.model_dump(mode="json") for p in self.problems],
        }


def check_files(paths: list[Path]) -> list[Checked]:
    """Read every file, then check each with the very intake code the worker runs
    (``parse_request``), so a check added there is a check here. An unreadable file is the
    operator's to fix: nothing is checked (or sent) until every file can be read."""
    bodies: list[tuple[Path, bytes]] = []
    unreadable: list[str] = []
    for path in paths:
        try:
            bodies.append((path, path.read_bytes()))
        except OSError as exc:
            unreadable.append(f"{path} ({exc.strerror or type(exc).__name__})")
    if unreadable:
        raise OperatorError(
            f"cannot read {', '.join(unreadable)}: nothing was checked or published; fix the "
            "path(s) and run again."
        )
    checked: list[Checked] = []
    for path, body in bodies:
        parsed = parse_request(body)
        if isinstance(parsed, Rejection):
            checked.append(Checked(path, body, parsed.request_id, list(parsed.problems)))
        else:
            checked.append(Checked(path, body, parsed.request_id, []))
    return checked


def _bar(total: int, desc: str) -> tqdm[Any]:
    # disable=None: drawn only when stderr is a terminal; a file or a pipe gets no bar and no
    # carriage returns.
    return tqdm(total=total, desc=desc, unit="request", file=sys.stderr, disable=None)


async def submit(
    settings: Settings,
    requests: list[Checked],
    *,
    token: str | None,
    wait: bool,
    timeout: float,
    id_token: str | None = None,
) -> list[dict[str, Any]]:
    """Publish checked requests (each confirmed by the broker); with ``wait``, add their
    outcomes (None where none came within ``timeout``). The progress bar covers both."""
    names = Names(settings.topology_prefix)
    connection = await aio_pika.connect(settings.amqp_url.get_secret_value())
    async with connection:
        channel = await confirmed_channel(connection)
        replies = await channel.declare_queue(exclusive=True, auto_delete=True)
        exchange = await channel.get_exchange(names.requests_exchange)
        sent: dict[str, Checked] = {}
        with _bar(len(requests), "publishing") as bar:
            for request in requests:
                correlation_id = await publish_request(
                    exchange,
                    request.body,
                    reply_to=replies.name,
                    correlation_id=f"submit-{uuid.uuid4().hex}",
                    token=token or None,
                    id_token=id_token,
                )
                sent[correlation_id] = request
                bar.update()
        outcomes: dict[str, dict[str, Any]] = {}
        if wait:
            with _bar(len(sent), "outcomes") as bar:
                outcomes = await _outcomes(replies, set(sent), timeout, bar.update)
        return [
            {
                "file": str(r.path),
                "request_id": r.request_id,
                "correlation_id": c,
                "published": True,
                **({"outcome": outcomes.get(c)} if wait else {}),
            }
            for c, r in sent.items()
        ]


async def _outcomes(
    replies: AbstractQueue, expected: set[str], timeout: float, arrived: Callable[[], object]
) -> dict[str, dict[str, Any]]:
    outcomes: dict[str, dict[str, Any]] = {}
    try:
        async with asyncio.timeout(timeout), replies.iterator() as messages:
            async for message in messages:
                await message.ack()
                event = orjson.loads(message.body)
                cid = message.correlation_id or ""
                if event.get("event_type") == "referral.outcome" and cid in expected:
                    outcomes[cid] = event
                    arrived()
                    if len(outcomes) == len(expected):
                        break
    except TimeoutError:
        pass
    return outcomes


# --- status ---


async def saga_status(settings: Settings, request_id: str) -> StoredSaga | None:
    store = await operator_store(settings, read_only=True)
    try:
        return await store.load(request_id)
    finally:
        await store.close()


def saga_json(saga: StoredSaga) -> dict[str, Any]:
    """The saga as one JSON object: its state (which never holds the NHS number, the token
    or attachment bytes), where it runs, and its outcome event."""
    now = time.time()
    return {
        "request_id": saga.request_id,
        "final": saga.final,
        "owner": saga.owner,
        "lease_seconds_left": (
            None if saga.lease_until is None else round(max(0.0, saga.lease_until - now), 1)
        ),
        "claims": saga.claims,
        "created_at": datetime.fromtimestamp(saga.created_at, UTC).isoformat(),
        "updated_at": datetime.fromtimestamp(saga.updated_at, UTC).isoformat(),
        "state": saga.state.model_dump(mode="json"),
        "outcome": orjson.loads(saga.outcome) if saga.outcome else None,
    }


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
