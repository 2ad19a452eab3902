"""One message in, its events and its fate out: the consumer's logic without the broker.

``RequestHandler.handle`` never raises for a message: every message ends as events to
publish plus one ``Fate``: acknowledge, park for a person, or send to a delay queue.

Order of work for a valid request: hold the patient (in process), claim the saga in the
store (which also keeps other replicas and other sagas of the patient off it), run it from
its checkpoint, store the outcome, and only then hand the events to the consumer. A crash
at any point leaves either a checkpoint to resume from or a stored outcome to send again.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

from schemas.events import (
    ErrorInfo,
    FieldError,
    LetterReadyEventV1,
    OutcomeEventV1,
    OutcomeStatus,
    Step,
)
from schemas.referral_request import ReferralRequestV1
from worker.ers.client import ErsClient
from worker.messaging.intake import Rejection, parse_request
from worker.messaging.keyed_lock import KeyedLock
from worker.messaging.tokens import AccessToken, TokenProvider
from worker.observability.logs import saga_context
from worker.observability.metrics import (
    DELAYED,
    POISONED,
    PROCESSED,
    REJECTED,
    REPLAYED,
    REQUEUED,
    Metrics,
)
from worker.observability.tracing import current_headers, saga_span
from worker.ops.failpoints import NONE, Failpoints
from worker.saga import outcomes
from worker.saga.ports import LetterStore
from worker.saga.reference_data import ReferenceData
from worker.saga.runner import run_saga
from worker.saga.state import SagaState, finish, new_saga
from worker.saga.steps import SagaContext, SagaOptions, SlotClaims
from worker.saga.store import (
    ClaimKind,
    LeaseLost,
    SagaStore,
    is_final,
    patient_key,
    request_fingerprint,
    resumable,
)
from worker.store.journal import Journal

log = logging.getLogger("worker.messaging.handler")

Event = OutcomeEventV1 | LetterReadyEventV1
ATTEMPT_HEADER = "x-ers-attempt"
FIRST_SEEN_HEADER = "x-ers-first-seen"


def attempt_of(headers: Mapping[str, Any]) -> int:
    """How many times the message has been through a delay queue."""
    value = headers.get(ATTEMPT_HEADER, 0)
    return value if isinstance(value, int) and value >= 0 else 0


class Fate(StrEnum):
    ACK = "ack"
    DEAD_LETTER = "dead_letter"
    DELAY = "delay"
    REQUEUE = "requeue"


@dataclass(frozen=True, slots=True)
class Incoming:
    body: bytes
    headers: Mapping[str, Any] = field(default_factory=dict)
    correlation_id: str | None = None
    message_id: str | None = None
    reply_to: str | None = None

    @property
    def attempt(self) -> int:
        return attempt_of(self.headers)

    def first_seen(self, default: float) -> float:
        value = self.headers.get(FIRST_SEEN_HEADER)
        return float(value) if isinstance(value, int | float) else default


@dataclass(frozen=True, slots=True)
class Handled:
    events: list[Event]
    fate: Fate
    outcome: OutcomeEventV1 | None = None
    reason: str = ""
    delay_seconds: float = 0.0
    result: str = PROCESSED
    trace_headers: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Durability:
    """How sagas are kept and retried: the store, this replica's name, and the budgets."""

    store: SagaStore
    owner: str
    lease_seconds: float
    patient_key_secret: bytes
    retry_delays: tuple[float, ...]
    retry_budget_seconds: float
    failpoints: Failpoints = NONE


PARKED_CODES = frozenset({"INTERNAL_ERROR", "UNEXPECTED_RESPONSE"})


def needs_a_person(outcome: OutcomeEventV1) -> bool:
    """Outcomes whose message is parked: e-RS state unknown, an answer nobody expected, a bug,
    or a retry budget spent (a person decides when to replay it)."""
    error = outcome.error
    if outcome.status is OutcomeStatus.NEEDS_RECONCILIATION:
        return True
    if error is None or outcome.status is not OutcomeStatus.FAILED:
        return False
    return error.code in PARKED_CODES or error.retryable


def _new_id() -> str:
    return str(uuid.uuid4())


class RequestHandler:
    def __init__(
        self,
        *,
        ers: ErsClient,
        tokens: TokenProvider,
        letters: LetterStore,
        reference: ReferenceData,
        options: SagaOptions,
        durability: Durability,
        metrics: Metrics,
        now: Callable[[], datetime] = lambda: datetime.now(UTC),
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._ers = ers
        self._tokens = tokens
        self._letters = letters
        self._reference = reference
        self._options = options
        self._durable = durability
        self.metrics = metrics
        self._now = now
        self._clock = clock
        self._patients = KeyedLock()
        self.stopping = False
        self._slot_claims = SlotClaims()

    async def handle(self, msg: Incoming) -> Handled:
        parsed = parse_request(msg.body)
        problems = list(parsed.problems) if isinstance(parsed, Rejection) else []
        if not msg.reply_to:
            problems.append(
                FieldError(
                    field="(properties).reply_to",
                    problem="reply_to is required: outcomes are sent to the requester's queue",
                    type="missing",
                )
            )
        if problems:
            event = outcomes.rejected(
                problems,
                request_id=parsed.request_id,
                correlation_id=msg.correlation_id or msg.message_id,
                source_system=parsed.source_system,
                event_id=_new_id(),
                now=self._now(),
            )
            log.warning(
                "rejected invalid message",
                extra={"request_id": event.request_id, "fields": [p.field for p in problems]},
            )
            self._count(event)
            return Handled(
                [event], Fate.DEAD_LETTER, event, reason="INVALID_MESSAGE", result=REJECTED
            )
        assert isinstance(parsed, ReferralRequestV1)
        correlation_id = msg.correlation_id or msg.message_id or parsed.request_id
        try:
            with (
                saga_context(parsed.request_id, correlation_id),
                saga_span(msg.headers, parsed.request_id),
            ):
                handled = await self._handle_valid(parsed, msg)
                return replace(handled, trace_headers=current_headers())
        except LeaseLost:
            # Another replica took the saga over (ours stalled past its lease). Come back
            # later: by then it has an outcome to answer with, or the saga resumes here.
            log.warning("lease lost", extra={"request_id": parsed.request_id})
            delay = self._durable.retry_delays[0]
            return Handled([], Fate.DELAY, reason="LEASE_LOST", delay_seconds=delay, result=DELAYED)

    async def store_ping(self) -> None:
        await self._durable.store.ping()

    async def poisoned(self, msg: Incoming) -> Handled:
        """The message's last delivery before the broker gives up on it: earlier deliveries
        ended without settling (the worker died or lost the broker each time). Park it, with
        an outcome, rather than risk a fourth crash and the broker parking it with its token.
        A saga that did finish is answered with its stored outcome instead."""
        parsed = parse_request(msg.body)
        if parsed.request_id is not None:
            saga = await self._durable.store.load(parsed.request_id)
            if saga is not None and saga.final and saga.outcome is not None:
                stored = OutcomeEventV1.model_validate_json(saga.outcome)
                return Handled([stored], Fate.ACK, stored, result=REPLAYED)
        event = OutcomeEventV1(
            event_id=_new_id(),
            request_id=parsed.request_id,
            correlation_id=msg.correlation_id or msg.message_id,
            source_system=parsed.source_system,
            status=OutcomeStatus.FAILED,
            error=ErrorInfo(
                step=Step.VALIDATE,
                code="REDELIVERY_LIMIT",
                text="the message was delivered repeatedly without being settled; parked "
                "for a person (its saga, if any, resumes from its checkpoint when replayed)",
                retryable=False,
            ),
            occurred_at=self._now(),
        )
        log.error("parked a poison message", extra={"request_id": parsed.request_id})
        self._count(event)
        return Handled([event], Fate.DEAD_LETTER, event, reason="REDELIVERY_LIMIT", result=POISONED)

    async def _handle_valid(self, request: ReferralRequestV1, msg: Incoming) -> Handled:
        correlation_id = msg.correlation_id or msg.message_id or request.request_id
        durable = self._durable
        key = patient_key(request.patient.nhs_number, durable.patient_key_secret)
        # Same-patient requests queue up here rather than bouncing through delay queues.
        async with self._patients.hold(key):
            if self.stopping:  # stop() began while this one waited for its patient
                return Handled([], Fate.REQUEUE, reason="STOPPING", result=REQUEUED)
            claim = await durable.store.claim(
                new_saga(request.request_id, correlation_id),
                key,
                durable.owner,
                durable.lease_seconds,
                self._clock(),
                request_fingerprint(msg.body, durable.patient_key_secret),
            )
            if claim.kind is ClaimKind.REUSED:
                return self._reused(request, msg, correlation_id)
            if claim.kind is ClaimKind.FINISHED:
                # A finished request is answered again without e-RS, so without a token.
                assert claim.outcome is not None
                stored = OutcomeEventV1.model_validate_json(claim.outcome)
                log.info("replayed outcome", extra={"request_id": request.request_id})
                return Handled([stored], Fate.ACK, stored, result=REPLAYED)
            if claim.kind in (ClaimKind.BUSY_REQUEST, ClaimKind.BUSY_PATIENT):
                return self._busy(request, msg, claim.kind, correlation_id)
            assert claim.state is not None
            token = self._tokens.token_for(msg.headers)
            if token is None or token.expired(self._now()):
                await durable.store.release(claim.state, durable.owner, self._clock())
                return self._no_token(request, correlation_id, token)
            start = resumable(claim.state) if claim.kind is ClaimKind.RESUMED else claim.state
            return await self._run(request, msg, token, start, correlation_id)

    def _no_token(
        self, request: ReferralRequestV1, correlation_id: str, token: AccessToken | None
    ) -> Handled:
        why = "no access token in the message" if token is None else "access token expired"
        error = ErrorInfo(
            step=Step.REFERENCE_DATA,
            code="TOKEN_MISSING" if token is None else "TOKEN_EXPIRED",
            text=f"{why}: re-send with a fresh CIS2 token",
            retryable=True,
        )
        event = self._outcome_without_saga(request, correlation_id, error)
        self._count(event)
        return Handled([event], Fate.ACK, event)

    def _reused(self, request: ReferralRequestV1, msg: Incoming, correlation_id: str) -> Handled:
        """The request id names another request already: refuse, never run or answer it."""
        event = outcomes.rejected(
            [
                FieldError(
                    field="request_id",
                    problem="already used for a different request; an id is referred once",
                    type="request_id_reused",
                )
            ],
            request_id=request.request_id,
            correlation_id=correlation_id,
            source_system=request.source_system,
            event_id=_new_id(),
            now=self._now(),
        )
        self._count(event)
        log.warning("request id reused", extra={"request_id": request.request_id})
        return Handled(
            [event], Fate.DEAD_LETTER, event, reason="REQUEST_ID_REUSED", result=REJECTED
        )

    async def _run(
        self,
        request: ReferralRequestV1,
        msg: Incoming,
        token: AccessToken,
        start: SagaState,
        correlation_id: str,
    ) -> Handled:
        durable = self._durable
        journal = Journal(
            durable.store,
            start,
            owner=durable.owner,
            lease_seconds=durable.lease_seconds,
            now=self._now,
            clock=self._clock,
            failpoints=durable.failpoints,
        )
        session = self._ers.session(
            request.user, token, correlation_id, now=self._now, before_write=journal.before_write
        )
        ctx = SagaContext(
            request=request,
            ers=session,
            letters=self._letters,
            reference=self._reference,
            options=self._options,
            now=self._now,
            slot_claims=self._slot_claims,
        )
        started = time.monotonic()
        state = await run_saga(
            start,
            ctx,
            drain_calls=session.drain_calls,
            checkpoint=journal.checkpoint,
            metrics=self.metrics,
        )
        if state.waiting is not None:
            waited = self._wait_or_give_up(state, msg, token)
            if isinstance(waited, Handled):
                await durable.store.release(state, durable.owner, self._clock())
                return waited
            state = waited
        handled = await self._finish(request, state)
        if handled.outcome is not None:
            self.metrics.saga_duration.labels(handled.outcome.status.value.lower()).observe(
                time.monotonic() - started
            )
        return handled

    def _wait_or_give_up(
        self, state: SagaState, msg: Incoming, token: AccessToken
    ) -> Handled | SagaState:
        """A waiting saga goes to a delay queue, unless its token or its budget runs out."""
        assert state.waiting is not None
        delays = self._durable.retry_delays
        delay = delays[min(msg.attempt, len(delays) - 1)]
        now = self._clock()
        resume_at = datetime.fromtimestamp(now + delay, UTC)
        if token.expires_at is not None and token.expires_at <= resume_at:
            return finish(
                state,
                OutcomeStatus.REAUTHENTICATION_NEEDED,
                state.waiting.model_copy(
                    update={
                        "code": "TOKEN_EXPIRES_BEFORE_RETRY",
                        "text": f"{state.waiting.code} at {state.waiting.step.value}; the access "
                        "token expires before the next attempt: re-send with a fresh token",
                    }
                ),
            )
        if now + delay > msg.first_seen(now) + self._durable.retry_budget_seconds:
            return finish(
                state,
                OutcomeStatus.FAILED,
                state.waiting.model_copy(
                    update={"text": f"retry budget spent: {state.waiting.text}"}
                ),
            )
        log.info(
            "saga waiting",
            extra={
                "request_id": state.request_id,
                "step": state.waiting.step.value,
                "code": state.waiting.code,
                "delay_seconds": delay,
            },
        )
        return Handled(
            [], Fate.DELAY, reason=state.waiting.code, delay_seconds=delay, result=DELAYED
        )

    def _busy(
        self, request: ReferralRequestV1, msg: Incoming, kind: ClaimKind, correlation_id: str
    ) -> Handled:
        delays = self._durable.retry_delays
        delay = delays[min(msg.attempt, len(delays) - 1)]
        now = self._clock()
        if now + delay > msg.first_seen(now) + self._durable.retry_budget_seconds:
            error = ErrorInfo(
                step=Step.REFERENCE_DATA,
                code=kind.value.upper(),
                text="the request (or another for the same patient) stayed in progress "
                "longer than the retry budget",
                retryable=True,
            )
            event = self._outcome_without_saga(request, correlation_id, error, OutcomeStatus.FAILED)
            self._count(event)
            return Handled([event], Fate.DEAD_LETTER, event, reason=error.code)
        log.info("saga busy", extra={"request_id": request.request_id, "why": kind.value})
        return Handled(
            [], Fate.DELAY, reason=kind.value.upper(), delay_seconds=delay, result=DELAYED
        )

    async def _finish(self, request: ReferralRequestV1, state: SagaState) -> Handled:
        now = self._now()
        outcome = outcomes.from_saga(
            state, source_system=request.source_system, event_id=_new_id(), now=now
        )
        await self._durable.store.finish(
            state,
            outcome.model_dump_json().encode(),
            self._durable.owner,
            final=is_final(state),
            now=self._clock(),
        )
        events: list[Event] = []
        if state.letter is not None:
            events.append(outcomes.letter_ready(state, event_id=_new_id(), now=now))
        events.append(outcome)
        self._count(outcome)
        error = outcome.error
        parked = needs_a_person(outcome)
        log.info(
            "saga finished",
            extra={
                "request_id": request.request_id,
                "status": outcome.status.value,
                "path": outcome.path.value if outcome.path else None,
                "error_code": error.code if error else None,
                "ers_calls": len(state.history),
            },
        )
        return Handled(
            events,
            Fate.DEAD_LETTER if parked else Fate.ACK,
            outcome,
            reason=error.code if error else "",
        )

    def _count(self, outcome: OutcomeEventV1) -> None:
        path = outcome.path.value.lower() if outcome.path else "none"
        self.metrics.sagas_finished.labels(outcome.status.value.lower(), path).inc()

    def _outcome_without_saga(
        self,
        request: ReferralRequestV1,
        correlation_id: str,
        error: ErrorInfo,
        status: OutcomeStatus = OutcomeStatus.REAUTHENTICATION_NEEDED,
    ) -> OutcomeEventV1:
        return outcomes.not_started(
            status=status,
            error=error,
            request_id=request.request_id,
            correlation_id=correlation_id,
            source_system=request.source_system,
            event_id=_new_id(),
            now=self._now(),
        )
