"""The referral saga's state machine: states, allowed transitions and terminal outcomes.

Rules kept here:
1. One ``SagaState`` holds everything a saga has learned. It is serialisable, so it is what
   a store checkpoints and what the outcome event is built from. It never holds the token,
   attachment bytes or the NHS number (those stay in the request message).
2. Steps run in a fixed order; which of them a saga needs is derived from the request and
   the state (``next_step``), never remembered separately.
3. Every move goes through ``transition``; an illegal move raises ``IllegalTransition``.
"""

from __future__ import annotations

from datetime import date, datetime
from enum import StrEnum

from pydantic import BaseModel, ConfigDict, Field

from schemas.events import AppointmentInfo, ErrorInfo, LetterInfo, OutcomeStatus, Path, Step
from schemas.referral_request import IntendedAction, ReferralRequestV1
from worker.fhir.vocabulary import BookableType

TRANSITIONS: dict[Step, frozenset[Step]] = {
    Step.REFERENCE_DATA: frozenset({Step.SEARCH}),
    Step.SEARCH: frozenset({Step.CREATE}),
    Step.CREATE: frozenset({Step.UPLOAD, Step.BOOK_OR_DEFER, Step.PATIENT_LETTER, Step.DONE}),
    Step.UPLOAD: frozenset({Step.UPLOAD, Step.LINK_LETTER}),
    Step.LINK_LETTER: frozenset({Step.BOOK_OR_DEFER, Step.PATIENT_LETTER, Step.DONE}),
    Step.BOOK_OR_DEFER: frozenset({Step.PATIENT_LETTER, Step.DONE}),
    Step.PATIENT_LETTER: frozenset({Step.DONE}),
    Step.DONE: frozenset(),
}
FIRST_STEP = Step.REFERENCE_DATA


class IllegalTransition(RuntimeError):
    pass


class TriageRoute(StrEnum):
    A021 = "A021"
    """Create and send for triage in one call (the seed design; deprecated by e-RS)."""
    A011_A016 = "A011_A016"
    """Create with A011, then send to the triage service with A016."""


class PendingWrite(BaseModel):
    """A state-changing e-RS call about to be sent: recorded first, so that after a crash
    the saga knows the call may have had its effect and checks before going on."""

    model_config = ConfigDict(frozen=True)

    step: Step
    endpoint: str
    at: datetime


class Reconciliation(BaseModel):
    """How the saga settled a call whose effect it did not hear: kept in its history."""

    model_config = ConfigDict(frozen=True)

    endpoint: str
    decision: str  # ADOPTED (its UBRN taken on) or NOT_CREATED (the call sent again)
    ubrns: tuple[str, ...] = ()
    how: str
    at: datetime


class CallRecord(BaseModel):
    model_config = ConfigDict(frozen=True)

    step: Step
    endpoint: str
    status: int | None
    at: datetime
    duration_ms: int
    x_request_id: str | None = None
    error_code: str | None = None


class ShortlistedService(BaseModel):
    model_config = ConfigDict(frozen=True)

    service_id: str
    name: str
    bookable_type: str | None
    triage: bool
    appointments: bool = True


class SagaState(BaseModel):
    model_config = ConfigDict(frozen=True)

    request_id: str
    correlation_id: str
    step: Step = FIRST_STEP
    status: OutcomeStatus | None = None
    path: Path | None = None
    path_reason: str | None = None
    defer_contact_days: int | None = Field(
        default=None, description="A004 deferToProviderContactDays for the request's priority."
    )
    triage_contact_days: int | None = Field(
        default=None, description="A004 triageContactDays for the request's priority."
    )
    shortlist: tuple[ShortlistedService, ...] = ()
    ubrn: str | None = None
    referral_version: str | None = None
    referral_state: str | None = None
    commissioning_rule_org: str | None = None
    uploaded_urls: tuple[str, ...] = ()
    attachments_linked: int = 0
    booking_done: bool = False
    appointment: AppointmentInfo | None = None
    contact_by: date | None = None
    letter: LetterInfo | None = None
    error: ErrorInfo | None = None
    pending: PendingWrite | None = None
    waiting: ErrorInfo | None = Field(
        default=None, description="Paused on a transient fault; resumes from a delay queue."
    )
    waiting_at_least: float | None = Field(
        default=None, description="Seconds e-RS asked us to wait (Retry-After), if it did."
    )
    history: tuple[CallRecord, ...] = ()
    reconciliations: tuple[Reconciliation, ...] = ()

    @property
    def finished(self) -> bool:
        return self.status is not None

    @property
    def running(self) -> bool:
        return self.status is None and self.waiting is None

    @property
    def target(self) -> ShortlistedService:
        """The service the saga books, defers or triages into: the first on the shortlist."""
        return self.shortlist[0]


def new_saga(request_id: str, correlation_id: str) -> SagaState:
    return SagaState(request_id=request_id, correlation_id=correlation_id)


def needs_booking_step(state: SagaState, triage_route: TriageRoute) -> bool:
    if state.path in (Path.DBS_BOOKED, Path.DBS_DEFERRED):
        return True
    return state.path is Path.RAS_TRIAGE and triage_route is TriageRoute.A011_A016


def next_step(state: SagaState, request: ReferralRequestV1, triage_route: TriageRoute) -> Step:
    """The step that follows ``state.step``, derived from what is done and what is asked."""
    if state.step is Step.REFERENCE_DATA:
        return Step.SEARCH
    if state.step is Step.SEARCH:
        return Step.CREATE
    if len(state.uploaded_urls) < len(request.attachments):
        return Step.UPLOAD
    if request.attachments and state.attachments_linked == 0:
        return Step.LINK_LETTER
    if needs_booking_step(state, triage_route) and not state.booking_done:
        return Step.BOOK_OR_DEFER
    if request.generate_patient_letter and state.letter is None:
        return Step.PATIENT_LETTER
    return Step.DONE


def transition(state: SagaState, to: Step) -> SagaState:
    if to not in TRANSITIONS[state.step]:
        raise IllegalTransition(f"{state.step} -> {to} is not a saga transition")
    update: dict[str, object] = {"step": to}
    if to is Step.DONE:
        update["status"] = OutcomeStatus.COMPLETED
    return state.model_copy(update=update)


def finish(state: SagaState, status: OutcomeStatus, error: ErrorInfo) -> SagaState:
    """End the saga early (failure or re-authentication); the step it reached stays in error."""
    return state.model_copy(update={"status": status, "error": error})


def planned_path(action: IntendedAction, target: ShortlistedService) -> Path | None:
    """The path a saga takes for the intended action and the first shortlisted service.

    None means the action cannot be carried out with that service.
    """
    if action is IntendedAction.SHORTLIST_ONLY:
        return Path.SHORTLIST_ONLY
    if action is IntendedAction.SEND_FOR_TRIAGE:
        return Path.RAS_TRIAGE if target.triage else None
    if not target.appointments:
        return None
    if target.bookable_type == BookableType.INDIRECTLY_BOOKABLE:
        return Path.IBS_SHORTLISTED
    if target.bookable_type != BookableType.DIRECTLY_BOOKABLE:
        return None
    return Path.DBS_BOOKED if action is IntendedAction.BOOK_EARLIEST else Path.DBS_DEFERRED
