"""The outcomes a handler answers with, counted, each given the fate the policy says.

Parking is ``worker.saga.policy``'s decision (``needs_a_person``); this module only applies it.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import replace
from datetime import datetime

from schemas.events import ErrorInfo, FieldError, OutcomeEventV1, OutcomeStatus
from worker.messaging.fate import Event, Fate, Handled
from worker.observability.metrics import ALREADY_FINISHED, REJECTED, Metrics
from worker.saga import outcomes
from worker.saga.policy import needs_a_person


def new_id() -> str:
    return str(uuid.uuid4())


class Answers:
    def __init__(self, metrics: Metrics, now: Callable[[], datetime]) -> None:
        self._metrics = metrics
        self._now = now

    def settled(self, outcome: OutcomeEventV1, *, before: list[Event] | None = None) -> Handled:
        """The outcome, counted, with the fate the policy gives it."""
        self._count(outcome)
        error = outcome.error
        parked = needs_a_person(outcome)
        return Handled(
            [*(before or []), outcome],
            Fate.DEAD_LETTER if parked else Fate.ACK,
            outcome,
            reason=error.code if error else "",
        )

    def rejected(
        self,
        problems: list[FieldError],
        request_id: str | None,
        correlation_id: str | None,
        source_system: str | None,
        reason: str,
    ) -> Handled:
        event = outcomes.rejected(
            problems,
            request_id=request_id,
            correlation_id=correlation_id,
            source_system=source_system,
            event_id=new_id(),
            now=self._now(),
        )
        return replace(self.settled(event), reason=reason, result=REJECTED)

    def replayed(self, stored: bytes) -> Handled:
        """A stored final outcome, sent again as it was (same ``event_id``)."""
        outcome = OutcomeEventV1.model_validate_json(stored)
        return Handled([outcome], Fate.ACK, outcome, result=ALREADY_FINISHED)

    def not_started(
        self,
        request_id: str | None,
        correlation_id: str | None,
        source_system: str | None,
        status: OutcomeStatus,
        error: ErrorInfo,
    ) -> Handled:
        """A request whose saga did not run: no token, busy too long, a poison message."""
        event = outcomes.not_started(
            status=status,
            error=error,
            request_id=request_id,
            correlation_id=correlation_id,
            source_system=source_system,
            event_id=new_id(),
            now=self._now(),
        )
        return self.settled(event)

    def _count(self, outcome: OutcomeEventV1) -> None:
        path = outcome.path.value.lower() if outcome.path else "none"
        self._metrics.sagas_finished.labels(outcome.status.value.lower(), path).inc()
