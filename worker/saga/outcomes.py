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
    request_id: str,
    correlation_id: str,
    source_system: str,
    event_id: str,
    now: datetime,
) -> OutcomeEventV1:
    """An outcome for a valid request that never reached e-RS (no token, internal error)."""
    return OutcomeEventV1(
        event_id=event_id,
        request_id=request_id,
        correlation_id=correlation_id,
        source_system=source_system,
        status=status,
        error=error,
        occurred_at=now,
    )
