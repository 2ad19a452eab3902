"""One message in, its events and its fate out: the consumer's logic without the broker.

``RequestHandler.handle`` never raises for a message's content: every message ends as
events to publish plus one ``Fate`` (acknowledge, or dead-letter for a person to look at).
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
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
from worker import outcomes
from worker.ers_client import ErsClient
from worker.intake import Rejection, parse_request
from worker.ports import LetterStore
from worker.privacy import where
from worker.reference_data import ReferenceData
from worker.saga import new_saga
from worker.saga_runner import run_saga
from worker.steps import SagaContext, SagaOptions
from worker.tokens import TokenProvider

log = logging.getLogger("worker.pipeline")

Event = OutcomeEventV1 | LetterReadyEventV1


class Fate(StrEnum):
    ACK = "ack"
    DEAD_LETTER = "dead_letter"


@dataclass(frozen=True, slots=True)
class Incoming:
    body: bytes
    headers: Mapping[str, Any] = field(default_factory=dict)
    correlation_id: str | None = None
    message_id: str | None = None
    reply_to: str | None = None


@dataclass(frozen=True, slots=True)
class Handled:
    events: list[Event]
    fate: Fate
    outcome: OutcomeEventV1


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
        now: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self._ers = ers
        self._tokens = tokens
        self._letters = letters
        self._reference = reference
        self._options = options
        self._now = now

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
            return Handled([event], Fate.DEAD_LETTER, event)
        assert isinstance(parsed, ReferralRequestV1)
        return await self._run(parsed, msg)

    async def _run(self, request: ReferralRequestV1, msg: Incoming) -> Handled:
        correlation_id = msg.correlation_id or msg.message_id or request.request_id
        token = self._tokens.token_for(msg.headers)
        if token is None or token.expired(self._now()):
            why = "no access token in the message" if token is None else "access token expired"
            return self._early(
                request,
                correlation_id,
                OutcomeStatus.REAUTHENTICATION_NEEDED,
                ErrorInfo(
                    step=Step.REFERENCE_DATA,
                    code="TOKEN_MISSING" if token is None else "TOKEN_EXPIRED",
                    text=f"{why}: re-send with a fresh CIS2 token",
                    retryable=True,
                ),
            )
        session = self._ers.session(request.user, token, correlation_id, now=self._now)
        ctx = SagaContext(
            request=request,
            ers=session,
            letters=self._letters,
            reference=self._reference,
            options=self._options,
            now=self._now,
        )
        try:
            state = await run_saga(
                new_saga(request.request_id, correlation_id), ctx, drain_calls=session.drain_calls
            )
        except Exception as exc:  # a bug, not a message problem: park it for a person
            # Not log.exception: an unexpected error's message may quote patient data.
            log.error(
                "saga crashed",
                extra={
                    "request_id": request.request_id,
                    "error": type(exc).__name__,
                    "where": where(exc),
                },
            )
            return self._early(
                request,
                correlation_id,
                OutcomeStatus.FAILED,
                ErrorInfo(
                    step=Step.DONE,
                    code="INTERNAL_ERROR",
                    text=f"the worker failed unexpectedly ({type(exc).__name__})",
                    retryable=False,
                ),
                fate=Fate.DEAD_LETTER,
            )
        now = self._now()
        events: list[Event] = []
        if state.letter is not None:
            events.append(outcomes.letter_ready(state, event_id=_new_id(), now=now))
        outcome = outcomes.from_saga(
            state, source_system=request.source_system, event_id=_new_id(), now=now
        )
        events.append(outcome)
        log.info(
            "saga finished",
            extra={
                "request_id": request.request_id,
                "status": outcome.status.value,
                "path": outcome.path.value if outcome.path else None,
                "error_code": outcome.error.code if outcome.error else None,
                "ers_calls": len(state.history),
            },
        )
        return Handled(events, Fate.ACK, outcome)

    def _early(
        self,
        request: ReferralRequestV1,
        correlation_id: str,
        status: OutcomeStatus,
        error: ErrorInfo,
        fate: Fate = Fate.ACK,
    ) -> Handled:
        event = outcomes.not_started(
            status=status,
            error=error,
            request_id=request.request_id,
            correlation_id=correlation_id,
            source_system=request.source_system,
            event_id=_new_id(),
            now=self._now(),
        )
        return Handled([event], fate, event)
