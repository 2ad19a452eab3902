"""What an outcome means for its request: the one table every layer reads.

Each outcome falls into one ``OutcomeKind``; the kind's ``Rule`` says whether
1. it is **final**: a re-send is answered with the stored outcome, not run again (the store);
2. it is **parked**: the message goes to the dead letters for a person (the handler);
3. it is **reopenable**: an operator may make it resumable after a fix (``dead-letters
   replay --reopen``).

``status_for`` gives the outcome status an error's disposition ends a saga with, and
``PARK_REASONS`` the reasons a message is parked for (the metrics show each from the start).
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from schemas.events import ErrorInfo, OutcomeEventV1, OutcomeStatus
from worker.saga.errors import Disposition
from worker.saga.state import SagaState


class OutcomeKind(StrEnum):
    COMPLETED = "completed"
    REJECTED = "rejected"  # invalid message, or a request id re-used for another request
    REAUTHENTICATE = "reauthenticate"  # no token, token expired, 401
    RECONCILE = "reconcile"  # NEEDS_RECONCILIATION: e-RS cannot say what happened
    BUDGET_SPENT = "budget_spent"  # a retryable failure that ran out of retry budget
    BROKEN = "broken"  # a bug, an answer nobody expected, a message that never settled
    REFUSED = "refused"  # e-RS or a worker rule said no: final, the requester acts


@dataclass(frozen=True, slots=True)
class Rule:
    final: bool
    parked: bool
    reopenable: bool


POLICY: dict[OutcomeKind, Rule] = {
    OutcomeKind.COMPLETED: Rule(final=True, parked=False, reopenable=False),
    OutcomeKind.REJECTED: Rule(final=True, parked=True, reopenable=False),
    OutcomeKind.REAUTHENTICATE: Rule(final=False, parked=False, reopenable=False),
    OutcomeKind.RECONCILE: Rule(final=True, parked=True, reopenable=True),
    OutcomeKind.BUDGET_SPENT: Rule(final=False, parked=True, reopenable=True),
    OutcomeKind.BROKEN: Rule(final=True, parked=True, reopenable=True),
    OutcomeKind.REFUSED: Rule(final=True, parked=False, reopenable=True),
}

# FAILED outcomes with these codes are the worker's or e-RS' fault, not the request's.
BROKEN_CODES = frozenset(
    {"INTERNAL_ERROR", "UNEXPECTED_RESPONSE", "REDELIVERY_LIMIT", "REQUEST_NOT_SENDABLE"}
)
PARK_REASONS = (
    "INVALID_MESSAGE",
    "NEEDS_RECONCILIATION",
    "UNEXPECTED_RESPONSE",
    "INTERNAL_ERROR",
    "REDELIVERY_LIMIT",
    "REQUEST_NOT_SENDABLE",
    "REQUEST_ID_REUSED",
)


def kind_of(status: OutcomeStatus, error: ErrorInfo | None) -> OutcomeKind:
    if status is OutcomeStatus.COMPLETED:
        return OutcomeKind.COMPLETED
    if status is OutcomeStatus.REJECTED:
        return OutcomeKind.REJECTED
    if status is OutcomeStatus.REAUTHENTICATION_NEEDED:
        return OutcomeKind.REAUTHENTICATE
    if status is OutcomeStatus.NEEDS_RECONCILIATION:
        return OutcomeKind.RECONCILE
    # A retryable failure is one that ran out of budget, whatever code e-RS gave it (e-RS may
    # name a 5xx INTERNAL_ERROR too): a re-send may still resume it.
    if error is not None and error.retryable:
        return OutcomeKind.BUDGET_SPENT
    if error is not None and error.code in BROKEN_CODES:
        return OutcomeKind.BROKEN
    return OutcomeKind.REFUSED


def rule_for(status: OutcomeStatus, error: ErrorInfo | None) -> Rule:
    return POLICY[kind_of(status, error)]


def is_final(state: SagaState) -> bool:
    """Whether a re-send gets the stored outcome (True) or resumes the saga (False)."""
    return state.status is not None and rule_for(state.status, state.error).final


def needs_a_person(outcome: OutcomeEventV1) -> bool:
    """Whether the outcome's message is parked for a person."""
    return rule_for(outcome.status, outcome.error).parked


def reopenable(state: SagaState) -> bool:
    """Whether an operator may make this stored saga resumable again."""
    return state.status is not None and rule_for(state.status, state.error).reopenable


def reopened(state: SagaState) -> SagaState:
    """The saga as an operator's reopen stores it. A NEEDS_RECONCILIATION saga's pending call
    was checked by a person, who found it did not take effect: its mark goes, and the step
    runs again. Any other mark (a write answered as the spec does not say, a retry budget
    spent on an unknown effect) is kept, so that the saga asks e-RS before writing again."""
    if state.status is OutcomeStatus.NEEDS_RECONCILIATION:
        return state.model_copy(update={"pending": None})
    return state


def status_for(disposition: Disposition) -> OutcomeStatus:
    """The status a saga ends with when an error of this disposition stops it."""
    if disposition is Disposition.REAUTHENTICATE:
        return OutcomeStatus.REAUTHENTICATION_NEEDED
    if disposition is Disposition.ASK_A_PERSON:
        return OutcomeStatus.NEEDS_RECONCILIATION
    return OutcomeStatus.FAILED
