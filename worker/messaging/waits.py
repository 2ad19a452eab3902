"""How long a message waits in a delay queue, and when it stops waiting.

Rules:
1. A saga paused on a fault waits its attempt's tier, never less than e-RS asked
   (Retry-After); it stops waiting, and ends, when its token would expire first
   (REAUTHENTICATION_NEEDED) or its retry budget is spent (FAILED, parked).
2. A message whose saga is busy elsewhere (another delivery, another saga of the patient)
   polls at the first tier without counting an attempt: the holder's lease is short, so it
   is taken over within a lease and one tier of the holder's end.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime

from schemas.events import OutcomeStatus
from worker.messaging.fate import Fate, Handled, Incoming
from worker.observability.metrics import DELAYED
from worker.saga import outcomes
from worker.saga.ports import AccessToken
from worker.saga.retry import RetrySchedule
from worker.saga.state import SagaState, finish
from worker.saga.store import ClaimKind

# The handler's logger: these lines are part of handling a message, and are filtered as such.
log = logging.getLogger("worker.messaging.handler")


def wait_or_give_up(
    state: SagaState, msg: Incoming, token: AccessToken, schedule: RetrySchedule, now: float
) -> Handled | SagaState:
    """A waiting saga's delay-queue trip, or the saga ended because it cannot wait (rule 1)."""
    waiting = state.waiting
    assert waiting is not None
    asked = state.waiting_at_least
    resume_at = datetime.fromtimestamp(now + schedule.delay_for(msg.attempt, asked), UTC)
    if token.expires_at is not None and token.expires_at <= resume_at:
        error = outcomes.token_expires_first(waiting)
        return finish(state, OutcomeStatus.REAUTHENTICATION_NEEDED, error)
    delay = schedule.next_delay(msg.attempt, msg.first_seen(now), now, asked)
    if delay is None:
        return finish(state, OutcomeStatus.FAILED, outcomes.budget_spent(waiting))
    log.info(
        "saga waiting",
        extra={
            "request_id": state.request_id,
            "step": waiting.step.value,
            "code": waiting.code,
            "delay_seconds": delay,
        },
    )
    return Handled([], Fate.DELAY, reason=waiting.code, delay_seconds=delay, result=DELAYED)


def busy_delay(schedule: RetrySchedule, msg: Incoming, now: float) -> float | None:
    """The poll for a busy saga (rule 2), or None once the retry budget is spent."""
    return schedule.next_delay(0, msg.first_seen(now), now)


def busy(kind: ClaimKind, delay: float) -> Handled:
    return Handled(
        [],
        Fate.DELAY,
        reason=kind.value.upper(),
        delay_seconds=delay,
        result=DELAYED,
        counts_attempt=False,
    )
