"""``worker.saga.policy``: what each outcome means for its request, and the error classes'
dispositions (``worker.saga.errors``) that the outcome's ``retryable`` derives from."""

from __future__ import annotations

import inspect
from datetime import UTC, datetime

import pytest

from schemas.events import ErrorInfo, OutcomeEventV1, OutcomeStatus, Step
from worker.saga import errors
from worker.saga.errors import Disposition, SagaError
from worker.saga.policy import (
    BROKEN_CODES,
    PARK_REASONS,
    POLICY,
    OutcomeKind,
    Rule,
    is_final,
    kind_of,
    needs_a_person,
    reopenable,
    reopened,
    rule_for,
    status_for,
)
from worker.saga.runner import error_info
from worker.saga.state import PendingWrite, SagaState


def err(code: str, *, retryable: bool) -> ErrorInfo:
    return ErrorInfo(step=Step.CREATE, code=code, text="why", retryable=retryable)


# (status, error) -> kind: one or more rows for every OutcomeKind
ROWS: list[tuple[OutcomeStatus, ErrorInfo | None, OutcomeKind]] = [
    (OutcomeStatus.COMPLETED, None, OutcomeKind.COMPLETED),
    # a completed saga is completed, whatever error it carries
    (OutcomeStatus.COMPLETED, err("INTERNAL_ERROR", retryable=False), OutcomeKind.COMPLETED),
    (OutcomeStatus.REJECTED, err("INVALID_MESSAGE", retryable=False), OutcomeKind.REJECTED),
    (OutcomeStatus.REJECTED, None, OutcomeKind.REJECTED),
    (
        OutcomeStatus.REAUTHENTICATION_NEEDED,
        err("TOKEN_EXPIRED", retryable=True),
        OutcomeKind.REAUTHENTICATE,
    ),
    (
        OutcomeStatus.NEEDS_RECONCILIATION,
        err("NEEDS_RECONCILIATION", retryable=False),
        OutcomeKind.RECONCILE,
    ),
    (OutcomeStatus.FAILED, err("INTERNAL_ERROR", retryable=False), OutcomeKind.BROKEN),
    (OutcomeStatus.FAILED, err("UNEXPECTED_RESPONSE", retryable=False), OutcomeKind.BROKEN),
    (OutcomeStatus.FAILED, err("REDELIVERY_LIMIT", retryable=False), OutcomeKind.BROKEN),
    # retryable wins over a broken code: e-RS may name a 5xx INTERNAL_ERROR, and a re-send
    # of a request that ran out of budget resumes it
    (OutcomeStatus.FAILED, err("INTERNAL_ERROR", retryable=True), OutcomeKind.BUDGET_SPENT),
    (OutcomeStatus.FAILED, err("SERVICE_UNAVAILABLE", retryable=True), OutcomeKind.BUDGET_SPENT),
    (OutcomeStatus.FAILED, err("PRECONDITION_FAILED", retryable=True), OutcomeKind.BUDGET_SPENT),
    (OutcomeStatus.FAILED, err("NO_RELATIONSHIP", retryable=False), OutcomeKind.REFUSED),
    (OutcomeStatus.FAILED, None, OutcomeKind.REFUSED),
]

# The table as the module docstring states it: (final, parked, reopenable)
RULES: dict[OutcomeKind, tuple[bool, bool, bool]] = {
    OutcomeKind.COMPLETED: (True, False, False),
    OutcomeKind.REJECTED: (True, True, False),
    OutcomeKind.REAUTHENTICATE: (False, False, False),
    OutcomeKind.RECONCILE: (True, True, True),
    OutcomeKind.BUDGET_SPENT: (False, True, True),
    OutcomeKind.BROKEN: (True, True, True),
    OutcomeKind.REFUSED: (True, False, True),
}


def test_the_rows_cover_every_kind() -> None:
    assert {kind for _, _, kind in ROWS} == set(OutcomeKind)
    assert set(POLICY) == set(OutcomeKind) == set(RULES)


@pytest.mark.parametrize(("status", "error", "kind"), ROWS)
def test_kind_of(status: OutcomeStatus, error: ErrorInfo | None, kind: OutcomeKind) -> None:
    assert kind_of(status, error) is kind


@pytest.mark.parametrize(("status", "error", "kind"), ROWS)
def test_rule_for(status: OutcomeStatus, error: ErrorInfo | None, kind: OutcomeKind) -> None:
    final, parked, reopen = RULES[kind]

    assert rule_for(status, error) == Rule(final=final, parked=parked, reopenable=reopen)


def state(status: OutcomeStatus | None, error: ErrorInfo | None = None) -> SagaState:
    return SagaState(request_id="req-1", correlation_id="corr-1", status=status, error=error)


def outcome(status: OutcomeStatus, error: ErrorInfo | None) -> OutcomeEventV1:
    return OutcomeEventV1(
        event_id="ev-1",
        request_id="req-1",
        correlation_id="corr-1",
        status=status,
        error=error,
        occurred_at=datetime(2025, 6, 2, tzinfo=UTC),
    )


@pytest.mark.parametrize(("status", "error", "kind"), ROWS)
def test_is_final_needs_a_person_and_reopenable_read_the_rule(
    status: OutcomeStatus, error: ErrorInfo | None, kind: OutcomeKind
) -> None:
    final, parked, reopen = RULES[kind]

    assert is_final(state(status, error)) is final
    assert needs_a_person(outcome(status, error)) is parked
    assert reopenable(state(status, error)) is reopen


def test_a_running_saga_is_neither_final_nor_reopenable() -> None:
    assert not is_final(state(None))
    assert not reopenable(state(None))


def test_broken_codes_are_parked_with_their_own_reason() -> None:
    assert set(PARK_REASONS) >= BROKEN_CODES


STATUS_FOR = {
    Disposition.REAUTHENTICATE: OutcomeStatus.REAUTHENTICATION_NEEDED,
    Disposition.ASK_A_PERSON: OutcomeStatus.NEEDS_RECONCILIATION,
    Disposition.FAIL: OutcomeStatus.FAILED,
    # the runner settles these otherwise; should one end a saga, it ends FAILED
    Disposition.RETRY_NOW: OutcomeStatus.FAILED,
    Disposition.WAIT: OutcomeStatus.FAILED,
    Disposition.REFRESH: OutcomeStatus.FAILED,
    Disposition.RECONCILE: OutcomeStatus.FAILED,
}


def test_status_for_is_given_for_every_disposition() -> None:
    assert set(STATUS_FOR) == set(Disposition)


@pytest.mark.parametrize(("disposition", "status"), STATUS_FOR.items())
def test_status_for(disposition: Disposition, status: OutcomeStatus) -> None:
    assert status_for(disposition) is status


# --- the error classes ------------------------------------------------------------------------

DISPOSITIONS: dict[type[SagaError], Disposition] = {
    SagaError: Disposition.FAIL,
    errors.ErsError: Disposition.FAIL,
    errors.ErsTransientError: Disposition.RETRY_NOW,
    errors.ErsRateLimited: Disposition.RETRY_NOW,
    errors.ErsAuthError: Disposition.REAUTHENTICATE,
    errors.ErsConflict: Disposition.REFRESH,
    errors.ErsLocked: Disposition.WAIT,
    errors.ErsRejected: Disposition.FAIL,
    errors.ErsUnexpected: Disposition.FAIL,
    errors.ErsOutcomeUnknown: Disposition.RECONCILE,
    errors.RequestNotSendable: Disposition.FAIL,
    errors.TokenExpired: Disposition.REAUTHENTICATE,
    errors.ExchangeRefused: Disposition.REAUTHENTICATE,
    errors.IdTokenExpired: Disposition.REAUTHENTICATE,
    errors.NeedsReconciliation: Disposition.ASK_A_PERSON,
    errors.CreateNotYetVisible: Disposition.WAIT,
    errors.BusinessRuleFailure: Disposition.FAIL,
}
RETRYABLE = {
    Disposition.RETRY_NOW: True,
    Disposition.WAIT: True,
    Disposition.REFRESH: True,
    Disposition.REAUTHENTICATE: True,
    Disposition.RECONCILE: False,
    Disposition.ASK_A_PERSON: False,
    Disposition.FAIL: False,
}


def _all_subclasses(cls: type[SagaError]) -> set[type[SagaError]]:
    found = {cls}
    for sub in cls.__subclasses__():
        found |= _all_subclasses(sub)
    return found


def test_every_error_class_is_in_the_table() -> None:
    in_module = {
        obj for _, obj in inspect.getmembers(errors, inspect.isclass) if issubclass(obj, SagaError)
    }
    # Subclasses made elsewhere in the worker count too (tests' own are not imported here).
    assert in_module == set(DISPOSITIONS)
    assert {c for c in _all_subclasses(SagaError) if c.__module__.startswith("worker.")} == set(
        DISPOSITIONS
    )


def test_retryable_of_each_disposition() -> None:
    assert {d: d.retryable for d in Disposition} == RETRYABLE


def instance(cls: type[SagaError]) -> SagaError:
    if cls is errors.ErsRateLimited:
        return errors.ErsRateLimited("A010", 2.0)
    if cls is errors.ExchangeRefused:
        return errors.ExchangeRefused(400, "invalid_grant")
    if issubclass(cls, errors.ErsError):
        return cls("A010", 400, "SOME_CODE")
    return cls("something went wrong")


@pytest.mark.parametrize("cls", list(DISPOSITIONS), ids=lambda c: c.__name__)
def test_each_error_class_has_its_disposition(cls: type[SagaError]) -> None:
    exc = instance(cls)

    assert exc.disposition is DISPOSITIONS[cls]
    assert isinstance(exc.disposition, Disposition)


@pytest.mark.parametrize("cls", list(DISPOSITIONS), ids=lambda c: c.__name__)
def test_the_outcomes_retryable_derives_from_the_disposition(cls: type[SagaError]) -> None:
    exc = instance(cls)

    info = error_info(Step.SEARCH, exc)

    assert info.retryable is RETRYABLE[DISPOSITIONS[cls]]
    assert info.retryable is exc.disposition.retryable
    assert info.step is Step.SEARCH


def test_an_unexpected_answer_is_reported_as_unexpected_response() -> None:
    info = error_info(Step.SEARCH, errors.ErsUnexpected("A010", 418, "HTTP_418"))

    assert (info.code, info.http_status, info.retryable) == ("UNEXPECTED_RESPONSE", 418, False)


def test_an_error_code_given_at_raise_time_wins_over_the_class_code() -> None:
    assert errors.TokenExpired("expired").code == "TOKEN_EXPIRED"
    assert errors.BusinessRuleFailure("no", code="NO_SUITABLE_SERVICE").code == (
        "NO_SUITABLE_SERVICE"
    )
    assert errors.BusinessRuleFailure("no").code == "ERROR"


@pytest.mark.parametrize(
    ("status", "code", "kept"),
    [
        (OutcomeStatus.NEEDS_RECONCILIATION, "NEEDS_RECONCILIATION", False),  # a person checked
        (OutcomeStatus.FAILED, "UNEXPECTED_RESPONSE", True),  # nobody knows what A011 did
        (OutcomeStatus.FAILED, "SERVICE_UNAVAILABLE", True),  # a budget spent on an unknown
    ],
)
def test_a_reopen_keeps_a_mark_nobody_checked(status: OutcomeStatus, code: str, kept: bool) -> None:
    mark = PendingWrite(step=Step.CREATE, endpoint="A011", at=datetime(2025, 6, 2, tzinfo=UTC))
    ended = state(status, err(code, retryable=False)).model_copy(update={"pending": mark})

    again = reopened(ended)

    assert again.pending == (mark if kept else None)
    assert again.status is status  # the store's reopen clears it
