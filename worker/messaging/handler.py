"""One message in, its events and its fate out: the consumer's logic without the broker.

``RequestHandler.handle`` never raises for a message: every message ends as events to
publish plus one ``Fate``: acknowledge, park for a person, or send to a delay queue. Which
outcomes are parked is ``worker.saga.policy``'s to say, never this module's.

Order of work for a valid request: hold the patient (in process), claim the saga in the
store (which also keeps other replicas and other sagas of the patient off it), run it from
its checkpoint, store the outcome, and only then hand the events to the consumer. A crash
at any point leaves either a checkpoint to resume from or a stored outcome to send again.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import UTC, datetime

from schemas.events import OutcomeStatus
from schemas.referral_request import ReferralRequestV1
from worker.messaging import waits
from worker.messaging.answers import Answers, new_id
from worker.messaging.fate import Event, Fate, Handled, Incoming
from worker.messaging.intake import Rejection, header_problems, parse_request
from worker.messaging.keyed_lock import KeyedLock
from worker.observability.logs import saga_context
from worker.observability.metrics import DELAYED, POISONED, REQUEUED, Metrics
from worker.observability.tracing import current_headers, saga_span
from worker.saga import outcomes
from worker.saga.claims import (
    content_fingerprint,
    patient_key,
    raw_fingerprint,
    resumable,
)
from worker.saga.context import SagaContext, SagaOptions
from worker.saga.journal import Journal
from worker.saga.lease import heartbeat
from worker.saga.policy import is_final
from worker.saga.ports import (
    NO_FAILPOINTS,
    AccessToken,
    ErsSessions,
    Failpoints,
    LetterStore,
    MalformedToken,
    TokenProvider,
    TokenUnusable,
)
from worker.saga.priority import turn
from worker.saga.reference_data import ReferenceData
from worker.saga.retry import RetrySchedule
from worker.saga.runner import run_saga
from worker.saga.slot_claims import SlotClaims
from worker.saga.state import SagaState, new_saga
from worker.saga.store import Claim, ClaimKind, LeaseLost, SagaStore

log = logging.getLogger("worker.messaging.handler")


@dataclass(frozen=True, slots=True)
class Durability:
    """How sagas are kept and retried: the store, this replica's name, and the budgets."""

    store: SagaStore
    owner: str
    lease_seconds: float
    patient_key_secret: bytes
    retry: RetrySchedule
    failpoints: Failpoints = NO_FAILPOINTS


class RequestHandler:
    def __init__(
        self,
        *,
        ers: ErsSessions,
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
        self._answers = Answers(metrics, now)

    async def handle(self, msg: Incoming) -> Handled:
        parsed = parse_request(msg.body)
        problems = list(parsed.problems) if isinstance(parsed, Rejection) else []
        problems.extend(header_problems(msg.headers))
        if not msg.reply_to:
            problems.append(outcomes.reply_to_missing())
        if problems:
            log.warning(
                "rejected invalid message",
                extra={"request_id": parsed.request_id, "fields": [p.field for p in problems]},
            )
            return self._answers.rejected(
                problems, parsed.request_id, msg.correlation_id or msg.message_id,
                parsed.source_system, "INVALID_MESSAGE",
            )  # fmt: skip
        assert isinstance(parsed, ReferralRequestV1)
        correlation_id = msg.correlation_id or msg.message_id or parsed.request_id
        try:
            with (
                saga_context(parsed.request_id, correlation_id),
                saga_span(msg.headers, parsed.request_id),
            ):
                handled = await self._handle_valid(parsed, msg, correlation_id)
                return replace(handled, trace_headers=current_headers())
        except LeaseLost:
            # Another replica took the saga over (ours stalled past its lease). Come back
            # later: by then it has an outcome to answer with, or the saga resumes here.
            log.warning("lease lost", extra={"request_id": parsed.request_id})
            delay = self._durable.retry.delay_for(0)
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
                return self._answers.replayed(saga.outcome)
        log.error("parked a poison message", extra={"request_id": parsed.request_id})
        handled = self._answers.not_started(
            parsed.request_id, msg.correlation_id or msg.message_id, parsed.source_system,
            OutcomeStatus.FAILED, outcomes.redelivery_limit(),
        )  # fmt: skip
        return replace(handled, result=POISONED)

    async def _handle_valid(
        self, request: ReferralRequestV1, msg: Incoming, correlation_id: str
    ) -> Handled:
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
                raw_fingerprint(msg.body, durable.patient_key_secret),
                content_fingerprint(request, durable.patient_key_secret),
            )
            return await self._after_claim(claim, request, msg, correlation_id)

    async def _after_claim(
        self, claim: Claim, request: ReferralRequestV1, msg: Incoming, correlation_id: str
    ) -> Handled:
        durable = self._durable
        match claim.kind:
            case ClaimKind.REUSED:  # the id names another request: refuse, never run it
                log.warning("request id reused", extra={"request_id": request.request_id})
                return self._answers.rejected(
                    [outcomes.request_id_reused()], request.request_id, correlation_id,
                    request.source_system, "REQUEST_ID_REUSED",
                )  # fmt: skip
            case ClaimKind.FINISHED:  # answered again without e-RS, so without a token
                assert claim.outcome is not None
                log.info("replayed outcome", extra={"request_id": request.request_id})
                return self._answers.replayed(claim.outcome)
            case ClaimKind.BUSY_REQUEST | ClaimKind.BUSY_PATIENT:
                return self._busy(request, msg, claim.kind, correlation_id)
        assert claim.state is not None
        try:
            token = self._tokens.token_for(msg.headers)
        except MalformedToken as exc:
            await durable.store.release(claim.state, durable.owner, self._clock())
            log.warning("malformed token", extra={"request_id": request.request_id})
            return self._answers.not_started(
                request.request_id, correlation_id, request.source_system,
                OutcomeStatus.REAUTHENTICATION_NEEDED, outcomes.malformed_token(str(exc)),
            )  # fmt: skip
        except TokenUnusable as exc:  # e.g. the CIS2 ID token has expired (message-id-token)
            await durable.store.release(claim.state, durable.owner, self._clock())
            log.warning(
                "token unusable", extra={"request_id": request.request_id, "code": exc.code}
            )
            return self._answers.not_started(
                request.request_id, correlation_id, request.source_system,
                OutcomeStatus.REAUTHENTICATION_NEEDED, outcomes.token_unusable(exc.code, str(exc)),
            )  # fmt: skip
        if token is None or token.expired(self._now()):
            await durable.store.release(claim.state, durable.owner, self._clock())
            return self._answers.not_started(
                request.request_id, correlation_id, request.source_system,
                OutcomeStatus.REAUTHENTICATION_NEEDED, outcomes.no_token(token is not None),
            )  # fmt: skip
        start = resumable(claim.state) if claim.kind is ClaimKind.RESUMED else claim.state
        return await self._run(request, msg, token, start, correlation_id)

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
        priority = request.search.priority
        first_seen = msg.first_seen(self._clock())
        session = self._ers.session(
            request.user,
            token,
            correlation_id,
            now=self._now,
            before_write=journal.before_write,
            not_taken=journal.not_taken,
            before_call=journal.before_call,
            priority=priority,
            turn=turn(priority, first_seen),
        )
        ctx = SagaContext(
            request=request,
            ers=session,
            letters=self._letters,
            reference=self._reference,
            options=self._options,
            now=self._now,
            slot_claims=self._slot_claims,
            ubrn_holder=journal.ubrn_holder,
        )
        started = time.monotonic()
        async with heartbeat(
            durable.store, start.request_id, durable.owner, durable.lease_seconds, self._clock
        ):
            state = await run_saga(start, ctx, checkpoint=journal.checkpoint, observer=self.metrics)
            # If the last step wrote (a create or a booking that ends the saga), its effect is
            # stored now: should working out the outcome fail, the saga resumes after it.
            await journal.flush()
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
            self.metrics.time_to_outcome.labels(priority.value.lower()).observe(
                max(0.0, self._clock() - first_seen)
            )
        return handled

    def _wait_or_give_up(
        self, state: SagaState, msg: Incoming, token: AccessToken
    ) -> Handled | SagaState:
        return waits.wait_or_give_up(state, msg, token, self._durable.retry, self._clock())

    def _busy(
        self, request: ReferralRequestV1, msg: Incoming, kind: ClaimKind, correlation_id: str
    ) -> Handled:
        now = self._clock()
        delay = waits.busy_delay(self._durable.retry, msg, now)
        if delay is None:
            error = outcomes.busy_too_long(kind.value.upper())
            return self._answers.not_started(
                request.request_id, correlation_id, request.source_system,
                OutcomeStatus.FAILED, error,
            )  # fmt: skip
        log.info("saga busy", extra={"request_id": request.request_id, "why": kind.value})
        return waits.busy(kind, delay)

    async def _finish(self, request: ReferralRequestV1, state: SagaState) -> Handled:
        now = self._now()
        outcome = outcomes.from_saga(
            state, source_system=request.source_system, event_id=new_id(), now=now
        )
        await self._durable.store.finish(
            state,
            outcome.model_dump_json().encode(),
            self._durable.owner,
            final=is_final(state),
            now=self._clock(),
        )
        self._durable.failpoints.hit("after_finish")
        error = outcome.error
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
        letter: list[Event] = []
        if state.letter is not None:
            letter.append(outcomes.letter_ready(state, event_id=new_id(), now=now))
        return self._answers.settled(outcome, before=letter)
