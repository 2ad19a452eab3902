"""Build the events a saga ends with, from its final state. Pure: ids and times passed in."""

from __future__ import annotations

from datetime import datetime

from schemas.events import (
    ErrorInfo,
    FieldError,
    LetterReadyEventV1,
    OutcomeEventV1,
    OutcomeStatus,
    Step,
)
from worker.saga.state import SagaState


def from_saga(
    state: SagaState, *, source_system: str, event_id: str, now: datetime
) -> OutcomeEventV1:
    assert state.status is not None, "only a finished saga has an outcome"
    return OutcomeEventV1(
        event_id=event_id,
        request_id=state.request_id,
        correlation_id=state.correlation_id,
        source_system=source_system,
        status=state.status,
        path=state.path,
        path_reason=state.path_reason,
        ubrn=state.ubrn,
        referral_state=state.referral_state,
        referral_version=state.referral_version,
        service_ids=[s.service_id for s in state.shortlist],
        appointment=state.appointment,
        contact_by=state.contact_by,
        attachments_linked=state.attachments_linked,
        letter=state.letter,
        error=state.error,
        occurred_at=now,
    )


def letter_ready(state: SagaState, *, event_id: str, now: datetime) -> LetterReadyEventV1:
    assert state.letter is not None and state.ubrn is not None
    return LetterReadyEventV1(
        event_id=event_id,
        request_id=state.request_id,
        correlation_id=state.correlation_id,
        ubrn=state.ubrn,
        letter=state.letter,
        occurred_at=now,
    )


def rejected(
    problems: list[FieldError],
    *,
    request_id: str | None,
    correlation_id: str | None,
    source_system: str | None,
    event_id: str,
    now: datetime,
) -> OutcomeEventV1:
    summary = "; ".join(f"{p.field}: {p.problem}" for p in problems[:20])
    return OutcomeEventV1(
        event_id=event_id,
        request_id=request_id,
        correlation_id=correlation_id,
        source_system=source_system,
        status=OutcomeStatus.REJECTED,
        error=ErrorInfo(step=Step.VALIDATE, code="INVALID_MESSAGE", text=summary, retryable=False),
        validation_errors=problems,
        occurred_at=now,
    )


def not_started(
    *,
    status: OutcomeStatus,
    error: ErrorInfo,
    request_id: str | None,
    correlation_id: str | None,
    source_system: str | None,
    event_id: str,
    now: datetime,
) -> OutcomeEventV1:
    """An outcome for a request whose saga never ran (no token, busy too long, poison)."""
    return OutcomeEventV1(
        event_id=event_id,
        request_id=request_id,
        correlation_id=correlation_id,
        source_system=source_system,
        status=status,
        error=error,
        occurred_at=now,
    )


def reply_to_missing() -> FieldError:
    return FieldError(
        field="(properties).reply_to",
        problem="reply_to is required: outcomes are sent to the requester's queue",
        type="missing",
    )


def request_id_reused() -> FieldError:
    return FieldError(
        field="request_id",
        problem="already used for a different request; an id is referred once",
        type="request_id_reused",
    )


def no_token(expired: bool) -> ErrorInfo:
    why = "access token expired" if expired else "no access token in the message"
    return ErrorInfo(
        step=Step.REFERENCE_DATA,
        code="TOKEN_EXPIRED" if expired else "TOKEN_MISSING",
        text=f"{why}: re-send with a fresh CIS2 token",
        retryable=True,
    )


def malformed_token(why: str) -> ErrorInfo:
    """``why`` names the header and the fault, never the token's value."""
    return ErrorInfo(
        step=Step.REFERENCE_DATA,
        code="TOKEN_MALFORMED",
        text=f"{why}: it cannot be sent to e-RS; re-send with a fresh CIS2 token",
        retryable=True,
    )


def token_unusable(code: str, why: str) -> ErrorInfo:
    """``why`` names the token and the fault (``worker.saga.ports.TokenUnusable``)."""
    return ErrorInfo(
        step=Step.REFERENCE_DATA,
        code=code,
        text=f"{why}: re-send with a fresh CIS2 ID token",
        retryable=True,
    )


def busy_too_long(code: str) -> ErrorInfo:
    return ErrorInfo(
        step=Step.REFERENCE_DATA,
        code=code,
        text="the request (or another for the same patient) stayed in progress "
        "longer than the retry budget",
        retryable=True,
    )


def redelivery_limit() -> ErrorInfo:
    return ErrorInfo(
        step=Step.VALIDATE,
        code="REDELIVERY_LIMIT",
        text="the message was delivered repeatedly without being settled; parked "
        "for a person (its saga, if any, resumes from its checkpoint when replayed)",
        retryable=False,
    )


def token_expires_first(waiting: ErrorInfo) -> ErrorInfo:
    return waiting.model_copy(
        update={
            "code": "TOKEN_EXPIRES_BEFORE_RETRY",
            "text": f"{waiting.code} at {waiting.step.value}; the access "
            "token expires before the next attempt: re-send with a fresh token",
        }
    )


def budget_spent(waiting: ErrorInfo) -> ErrorInfo:
    return waiting.model_copy(update={"text": f"retry budget spent: {waiting.text}"})
