"""The referral-request message (version 1) that interface engines publish to the worker.

Rules this contract keeps:
1. It carries what the e-RS referrer flow needs and nothing else; the acting user's access
   token travels in an AMQP header, never in this body.
2. Every validation message names the field and the rule, never the value: the messages
   are copied into rejected-outcome events and must not leak patient identifiers.
3. Anything e-RS itself would refuse and that we can know up front (file types, sizes,
   shortlist length, pathway start window) is refused here, before any e-RS call.
"""

from __future__ import annotations

import base64
import binascii
import math
from datetime import UTC, date, datetime, timedelta
from enum import StrEnum
from pathlib import PurePosixPath
from typing import Annotated, Literal

from pydantic import (
    AfterValidator,
    AwareDatetime,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PlainSerializer,
    StringConstraints,
    ValidationInfo,
    WithJsonSchema,
    field_validator,
    model_validator,
)

from schemas.file_types import content_problem
from schemas.nhs_number import TEN_DIGITS, nhs_number_problem

SCHEMA_VERSION = "1"
MAX_SHORTLIST = 20
MAX_ATTACHMENT_BYTES = 5 * 1024 * 1024
MAX_ATTACHMENTS = 10
PATHWAY_START_MAX_AGE = timedelta(days=365)
# The longest base64 text of a file e-RS accepts (4 characters per 3 bytes, padded).
MAX_ATTACHMENT_BASE64_CHARS = 4 * math.ceil(MAX_ATTACHMENT_BYTES / 3)
# Everything but attachment content, with room to spare: 10 descriptions of 1,000 characters
# escaped as \uXXXX (60 KB), 10 file names, the other fields and pretty-printing.
ENVELOPE_BYTES = 256 * 1024
# The largest body the contract allows: checked before the body is parsed, and declared to
# the broker as max_message_size (deploy/rabbitmq/rabbitmq.conf; a test keeps them equal).
MAX_MESSAGE_BYTES = MAX_ATTACHMENTS * MAX_ATTACHMENT_BASE64_CHARS + ENVELOPE_BYTES

# A020's table of the file types e-RS accepts, as media type -> file extensions.
ALLOWED_ATTACHMENT_TYPES: dict[str, frozenset[str]] = {
    "text/plain": frozenset({".txt"}),
    "application/pdf": frozenset({".pdf"}),
    "text/xml": frozenset({".xml"}),
    "text/rtf": frozenset({".rtf", ".rtx"}),
    "audio/basic": frozenset({".au"}),
    "audio/mpeg": frozenset({".mp3"}),
    "image/png": frozenset({".png"}),
    "image/gif": frozenset({".gif"}),
    "image/jpeg": frozenset({".jpg", ".jpe", ".jpeg"}),
    "image/tiff": frozenset({".tif", ".tiff"}),
    "video/mpeg": frozenset({".mpg", ".mpeg", ".mpe"}),
    "application/msword": frozenset({".doc"}),
    "application/vnd.openxmlformats-officedocument.wordprocessingml.document": frozenset({".docx"}),
    "application/dicom": frozenset({".dcm"}),
}


def _check_nhs_number(value: str) -> str:
    problem = nhs_number_problem(value)
    if problem:
        raise ValueError(f"NHS number {problem}")
    return value


def _decode_base64(value: object) -> object:
    if isinstance(value, str):
        # The size the text decodes to, known from its length and padding: an over-size file
        # is refused before its bytes are made.
        padding = len(value) - len(value.rstrip("="))
        if len(value) // 4 * 3 - min(padding, 2) > MAX_ATTACHMENT_BYTES:
            raise ValueError(f"content is larger than e-RS accepts ({MAX_ATTACHMENT_BYTES} bytes)")
        try:
            return base64.b64decode(value, validate=True)
        except (binascii.Error, ValueError):
            raise ValueError("content is not valid base64") from None
    return value


def _check_size(value: bytes) -> bytes:
    if not value:
        raise ValueError("content is empty")
    if len(value) > MAX_ATTACHMENT_BYTES:
        raise ValueError(f"content is larger than e-RS accepts ({MAX_ATTACHMENT_BYTES} bytes)")
    return value


NhsNumber = Annotated[
    str,
    AfterValidator(_check_nhs_number),
    # Our validator words the problem; the published schema says the shape as well.
    WithJsonSchema(
        {
            "type": "string",
            "pattern": TEN_DIGITS.pattern,
            "description": "10 ASCII digits, Modulus 11 checked, in an issued range.",
        }
    ),
]
OdsCode = Annotated[str, StringConstraints(pattern=r"^[A-Z0-9]{3,10}$")]
SdsUserId = Annotated[str, StringConstraints(pattern=r"^[0-9]{12}$")]
ServiceId = Annotated[str, StringConstraints(pattern=r"^[0-9]{1,12}$")]
# A Slot's logical id, which FHIR's id type bounds: A015 gives it, A016 references it.
SlotId = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9.-]{1,64}$")]
Code = Annotated[str, StringConstraints(pattern=r"^[A-Z0-9_]{1,64}$")]
AttachmentBytes = Annotated[
    bytes,
    BeforeValidator(_decode_base64),
    AfterValidator(_check_size),
    PlainSerializer(lambda b: base64.b64encode(b).decode("ascii"), return_type=str),
    WithJsonSchema(
        {"type": "string", "contentEncoding": "base64", "maxLength": MAX_ATTACHMENT_BASE64_CHARS}
    ),
]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, str_strip_whitespace=False)


class BusinessFunction(StrEnum):
    REFERRING_CLINICIAN = "REFERRING_CLINICIAN"
    REFERRING_CLINICIAN_ADMIN = "REFERRING_CLINICIAN_ADMIN"


class Priority(StrEnum):
    ROUTINE = "ROUTINE"
    URGENT = "URGENT"
    TWO_WEEK_WAIT = "TWO_WEEK_WAIT"


class SortBy(StrEnum):
    DISTANCE = "DISTANCE"
    IWT = "IWT"


class IntendedAction(StrEnum):
    BOOK_EARLIEST = "BOOK_EARLIEST"
    DEFER_TO_PROVIDER = "DEFER_TO_PROVIDER"
    SEND_FOR_TRIAGE = "SEND_FOR_TRIAGE"
    SHORTLIST_ONLY = "SHORTLIST_ONLY"


class ActingUser(_Strict):
    """The e-RS user on whose behalf (and with whose CIS2 token) the worker acts."""

    ods_code: OdsCode = Field(description="ODS code of the referring organisation.")
    business_function: BusinessFunction
    sds_user_id: SdsUserId | None = Field(
        default=None, description="SDS user id of the acting user, for audit."
    )
    referring_clinician_sds_user_id: SdsUserId | None = Field(
        default=None,
        description="The named referring clinician; required when an admin refers for one.",
    )

    @model_validator(mode="after")
    def _admin_names_a_clinician(self) -> ActingUser:
        if (
            self.business_function is BusinessFunction.REFERRING_CLINICIAN_ADMIN
            and self.referring_clinician_sds_user_id is None
        ):
            raise ValueError(
                "referring_clinician_sds_user_id is required for REFERRING_CLINICIAN_ADMIN"
            )
        return self


class Patient(_Strict):
    nhs_number: NhsNumber


class SearchCriteria(_Strict):
    priority: Priority
    specialty: Code | None = Field(default=None, description="e-RS SPECIALTY code.")
    clinic_type: Code | None = Field(default=None, description="e-RS CLINIC-TYPE code.")
    clinical_term: Annotated[str, StringConstraints(pattern=r"^[0-9]{1,18}$")] | None = Field(
        default=None, description="SNOMED CT concept id."
    )
    named_clinician_sds_user_id: SdsUserId | None = None
    age_and_gender_appropriate: bool = True
    sort_by: SortBy = SortBy.DISTANCE
    indicative_wait_time_limit_days: Annotated[int, Field(ge=0, le=9999)] | None = None
    postcode: Annotated[str, StringConstraints(pattern=r"^[A-Z0-9 ]{2,8}$")] | None = None
    distance_limit_miles: Annotated[int, Field(ge=0, le=9999)] | None = None
    organisation_ods_code: OdsCode | None = Field(
        default=None, description="Restrict the search to services of this organisation."
    )
    commissioning_rule_organisation: OdsCode | None = None

    @model_validator(mode="after")
    def _says_what_to_search_for(self) -> SearchCriteria:
        # A010 makes each of these optional (a search by named clinician alone is one of the
        # specification's examples); a search with none of them asks for every service the
        # patient could be sent to, which is an interface engine's mapping fault, not a referral.
        if (
            self.specialty is None
            and self.clinical_term is None
            and self.named_clinician_sds_user_id is None
        ):
            raise ValueError(
                "one of specialty, clinical_term or named_clinician_sds_user_id is required"
            )
        return self


class ExplicitShortlist(_Strict):
    """Services the clinician chose; each must come back from the patient's search."""

    mode: Literal["explicit"]
    service_ids: Annotated[list[ServiceId], Field(min_length=1, max_length=MAX_SHORTLIST)]

    @field_validator("service_ids")
    @classmethod
    def _unique(cls, value: list[str]) -> list[str]:
        if len(set(value)) != len(value):
            raise ValueError("service_ids must not repeat a service")
        return value


class AutomaticShortlist(_Strict):
    """Take the first ``count`` services the search returns that suit the intended action."""

    mode: Literal["auto"]
    count: Annotated[int, Field(ge=1, le=MAX_SHORTLIST)]


Shortlist = Annotated[ExplicitShortlist | AutomaticShortlist, Field(discriminator="mode")]


class BookingWindow(_Strict):
    not_before: date | None = None
    not_after: date | None = None

    @model_validator(mode="after")
    def _ordered(self) -> BookingWindow:
        if self.not_before and self.not_after and self.not_after < self.not_before:
            raise ValueError("not_after is before not_before")
        return self


class Action(_Strict):
    kind: IntendedAction
    booking_window: BookingWindow | None = Field(
        default=None, description="Only with BOOK_EARLIEST: the dates a slot may fall on."
    )
    comment: Annotated[str, StringConstraints(min_length=1, max_length=1000)] | None = Field(
        default=None,
        description=(
            "Only with DEFER_TO_PROVIDER: the referring clinician's comment to the provider, "
            "sent as the A016 Appointment's comment in place of the worker's own."
        ),
    )
    requested_slot_id: SlotId | None = Field(
        default=None,
        description=(
            "Only with DEFER_TO_PROVIDER: the slot (A015 Slot id) the patient asked about. "
            "The deferral references it, with reason SLOT_NOT_AVAILABLE when the service has "
            "other free slots but not this one."
        ),
    )

    @model_validator(mode="after")
    def _window_only_when_booking(self) -> Action:
        if self.booking_window is not None and self.kind is not IntendedAction.BOOK_EARLIEST:
            raise ValueError("booking_window is only allowed with BOOK_EARLIEST")
        return self

    @model_validator(mode="after")
    def _deferral_details_only_when_deferring(self) -> Action:
        if self.kind is not IntendedAction.DEFER_TO_PROVIDER:
            for name in ("comment", "requested_slot_id"):
                if getattr(self, name) is not None:
                    raise ValueError(f"{name} is only allowed with DEFER_TO_PROVIDER")
        return self


class ReferralDetails(_Strict):
    pathway_start: AwareDatetime | None = Field(
        default=None,
        description="eReferralPathwayStart: in the past and at most 365 days ago.",
    )
    first_reminder_letter_follow_up_days: Annotated[int, Field(ge=0, le=365)] = 0
    intention_to_add_referral_letter: bool = True

    @field_validator("pathway_start")
    @classmethod
    def _pathway_start_window(cls, value: datetime | None) -> datetime | None:
        if value is not None:
            now = datetime.now(UTC)
            if value > now:
                raise ValueError("pathway_start must be in the past")
            if now - value > PATHWAY_START_MAX_AGE:
                raise ValueError("pathway_start must be at most 365 days ago")
        return value


class Attachment(_Strict):
    # Sent in the NHSD-eRS-File-Name header, so printable ASCII only.
    file_name: Annotated[str, StringConstraints(pattern=r"^[ -.0-\[\]-~]{1,200}$")]
    media_type: str
    description: Annotated[str, StringConstraints(min_length=1, max_length=1000)]
    content: AttachmentBytes

    @field_validator("media_type")
    @classmethod
    def _type_allowed(cls, value: str) -> str:
        if value not in ALLOWED_ATTACHMENT_TYPES:
            raise ValueError("media_type is not a file type e-RS accepts")
        return value

    @field_validator("content")
    @classmethod
    def _content_is_the_declared_type(cls, value: bytes, info: ValidationInfo) -> bytes:
        # media_type is validated first (field order); when it failed, that is the problem.
        media_type = info.data.get("media_type")
        if media_type is not None:
            problem = content_problem(media_type, value)
            if problem:
                raise ValueError(problem)
        return value

    @model_validator(mode="after")
    def _extension_matches(self) -> Attachment:
        if (
            PurePosixPath(self.file_name).suffix.lower()
            not in ALLOWED_ATTACHMENT_TYPES[self.media_type]
        ):
            raise ValueError("file_name extension does not match media_type")
        return self


class ReferralRequestV1(_Strict):
    """Ask the worker to carry one patient's referral through e-RS."""

    model_config = ConfigDict(title="ReferralRequestV1")

    schema_version: Literal["1"]
    request_id: Annotated[
        str, StringConstraints(pattern=r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$")
    ] = Field(description="Idempotency key chosen upstream; the same id is never referred twice.")
    source_system: Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9][A-Za-z0-9 ._-]{0,63}$")]
    user: ActingUser
    patient: Patient
    search: SearchCriteria
    shortlist: Shortlist
    action: Action
    referral: ReferralDetails = ReferralDetails()
    attachments: Annotated[list[Attachment], Field(max_length=MAX_ATTACHMENTS)] = []
    generate_patient_letter: bool = True

    @field_validator("attachments")
    @classmethod
    def _distinct_names(cls, value: list[Attachment]) -> list[Attachment]:
        names = [a.file_name.lower() for a in value]
        if len(set(names)) != len(names):
            raise ValueError("attachments must have distinct file names")
        return value

    @model_validator(mode="after")
    def _consistent(self) -> ReferralRequestV1:
        shortlist_size = (
            len(self.shortlist.service_ids)
            if isinstance(self.shortlist, ExplicitShortlist)
            else self.shortlist.count
        )
        # A RAS referral is sent with a shortlist holding only the triage service.
        if self.action.kind is IntendedAction.SEND_FOR_TRIAGE and shortlist_size != 1:
            raise ValueError("SEND_FOR_TRIAGE takes a shortlist of exactly one triage service")
        return self
