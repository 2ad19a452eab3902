"""Events the worker publishes: exactly one outcome per request, and a letter-ready event.

Events never carry the access token or attachment bytes. They do carry the UBRN, which the
upstream system needs to track the referral; they never carry the NHS number.
"""

from __future__ import annotations

from datetime import date, datetime
from enum import StrEnum
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


class _Event(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class OutcomeStatus(StrEnum):
    COMPLETED = "COMPLETED"
    """The intended action was carried out (or the documented fallback, e.g. deferral)."""
    FAILED = "FAILED"
    """e-RS refused or could not be reached; ``error`` says where and whether a retry helps."""
    REJECTED = "REJECTED"
    """The message itself was invalid; nothing was sent to e-RS. It is dead-lettered."""
    REAUTHENTICATION_NEEDED = "REAUTHENTICATION_NEEDED"
    """The user's token was missing, expired or refused; re-send with a fresh token and the
    saga resumes from the step it reached."""
    NEEDS_RECONCILIATION = "NEEDS_RECONCILIATION"
    """A state-changing e-RS call was sent but its effect is unknown (no answer, or a crash
    between the call and its record). The worker will not repeat it: a person must check e-RS
    (``error`` names the step and endpoint; ``ubrn`` is set when known)."""


class Path(StrEnum):
    DBS_BOOKED = "DBS_BOOKED"
    DBS_DEFERRED = "DBS_DEFERRED"
    DBS_NOT_BOOKED = "DBS_NOT_BOOKED"
    IBS_SHORTLISTED = "IBS_SHORTLISTED"
    RAS_TRIAGE = "RAS_TRIAGE"
    SHORTLIST_ONLY = "SHORTLIST_ONLY"


class Step(StrEnum):
    VALIDATE = "VALIDATE"
    REFERENCE_DATA = "REFERENCE_DATA"
    SEARCH = "SEARCH"
    CREATE = "CREATE"
    UPLOAD = "UPLOAD"
    LINK_LETTER = "LINK_LETTER"
    BOOK_OR_DEFER = "BOOK_OR_DEFER"
    PATIENT_LETTER = "PATIENT_LETTER"
    DONE = "DONE"


class FieldError(_Event):
    field: str = Field(description="Dotted path to the field at fault, e.g. patient.nhs_number.")
    problem: str
    type: str


class ErrorInfo(_Event):
    step: Step
    code: str = Field(description="e-RS OperationOutcome code, or a worker code such as TIMEOUT.")
    text: str
    http_status: int | None = None
    retryable: bool = Field(description="Whether re-sending the same request later could help.")


class AppointmentInfo(_Event):
    appointment_id: str
    service_id: str
    slot_id: str | None = None
    start: datetime | None = None
    end: datetime | None = None
    status: str = Field(description="e-RS Appointment status: booked or proposed.")
    reason: str | None = Field(default=None, description="Deferral or triage reason code.")


class LetterInfo(_Event):
    location: str = Field(description="Where the PDF is stored (a file path by default).")
    file_name: str
    size_bytes: int
    sha256: str


class OutcomeEventV1(_Event):
    model_config = ConfigDict(title="OutcomeEventV1")

    schema_version: Literal["1"] = "1"
    event_type: Literal["referral.outcome"] = "referral.outcome"
    event_id: str
    request_id: str | None = Field(
        description="The request's id; null only when the message was too broken to read it."
    )
    correlation_id: str | None
    source_system: str | None = None
    status: OutcomeStatus
    path: Path | None = None
    path_reason: str | None = Field(
        default=None,
        description="Why the path differs from the action asked for, e.g. NO_SLOT_IN_WINDOW or "
        "SLOTS_AVAILABLE_DEFERRAL_NOT_ALLOWED (both leave the referral unbooked, DBS_NOT_BOOKED).",
    )
    ubrn: str | None = None
    referral_state: str | None = Field(default=None, description="e-RS referral state code.")
    referral_version: str | None = None
    service_ids: list[str] = Field(default_factory=list, description="The shortlist sent.")
    appointment: AppointmentInfo | None = None
    contact_by: date | None = Field(
        default=None,
        description="Date by which the provider (deferral) or triage service should contact "
        "the patient: A004 contact days counted as working days from the appointment's creation.",
    )
    attachments_linked: int = 0
    letter: LetterInfo | None = None
    error: ErrorInfo | None = None
    validation_errors: list[FieldError] = Field(default_factory=list)
    occurred_at: datetime


class LetterReadyEventV1(_Event):
    model_config = ConfigDict(title="LetterReadyEventV1")

    schema_version: Literal["1"] = "1"
    event_type: Literal["referral.letter_ready"] = "referral.letter_ready"
    event_id: str
    request_id: str
    correlation_id: str | None
    ubrn: str
    media_type: Literal["application/pdf"] = "application/pdf"
    letter: LetterInfo
    occurred_at: datetime
