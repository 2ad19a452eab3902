"""The e-RS words the worker speaks, each spelled once: endpoint ids, which of them change
state, bookable types, request flows, referral states, appointment codes and e-RS error codes.

Pure: no I/O, so the saga, the client and the stores can all name these without pulling in
httpx or aio-pika.
"""

from __future__ import annotations

from enum import StrEnum


class Endpoint(StrEnum):
    """The e-RS API endpoints of the referrer flow, by their ids in the specification."""

    A004 = "A004"  # retrieve reference data
    A005 = "A005"  # retrieve referral
    A008 = "A008"  # retrieve worklist
    A010 = "A010"  # patient service search
    A011 = "A011"  # create referral
    A012 = "A012"  # maintain referral letter
    A015 = "A015"  # retrieve appointment slots
    A016 = "A016"  # book or defer appointment
    A019 = "A019"  # generate patient letter
    A020 = "A020"  # upload file
    A021 = "A021"  # create referral and send for triage

    @property
    def changes_state(self) -> bool:
        """A call e-RS may have acted on even when we saw no answer: never blindly repeated."""
        return self in STATE_CHANGING

    @property
    def answers_with_fhir(self) -> bool:
        """Whether a success carries a FHIR resource (application/fhir+json) per the spec;
        A019 answers with the letter's bytes and A020 with a Location and no body."""
        return self not in _NOT_FHIR_ANSWERS

    @property
    def repeatable_when_unknown(self) -> bool:
        """Whether a call with an unknown effect may simply be sent again: an A020 upload
        that did land is an unlinked Binary, inert, since only what A012 links is part of
        the referral."""
        return self is Endpoint.A020

    @property
    def checkable(self) -> bool:
        """Whether A005 can tell, after an unknown outcome, if this call took effect."""
        return self in CHECKABLE_WITH_A005


STATE_CHANGING = frozenset(
    {Endpoint.A011, Endpoint.A012, Endpoint.A016, Endpoint.A020, Endpoint.A021}
)
_NOT_FHIR_ANSWERS = frozenset({Endpoint.A019, Endpoint.A020})
# A005 shows the letters linked (A012) and the appointment made (A016). e-RS has no lookup by
# our request for a create (A011/A021) or an upload (A020).
CHECKABLE_WITH_A005 = frozenset({Endpoint.A012, Endpoint.A016})


class Worklist(StrEnum):
    """eRS-ReferralListSelector-1: the referrer worklists that hold a referral just made."""

    AWAITING_BOOKING = "AWAITING_BOOKING"  # not booked, deferred, or awaiting triage
    LETTERS_OUTSTANDING = "LETTERS_OUTSTANDING"  # created intending a letter, none linked


class BookableType(StrEnum):
    DIRECTLY_BOOKABLE = "DIRECTLY_BOOKABLE"
    INDIRECTLY_BOOKABLE = "INDIRECTLY_BOOKABLE"


# eRS-RequestType-1: a service that takes appointment requests (as opposed to advice only),
# and one that triages referrals.
APPOINTMENT_REQUEST = "APPOINTMENT_REQUEST"
TRIAGE_REQUEST = "TRIAGE_REQUEST"


class ReferralState(StrEnum):
    """eRS-ReferralState-1 values the worker reads or reports."""

    BOOKED = "BOOKED"
    DEFERRED_TO_PROVIDER = "DEFERRED_TO_PROVIDER"
    AWAITING_TRIAGE = "AWAITING_TRIAGE"


# A referral in one of these states has its appointment arranged (booked, deferred, triaged).
ARRANGED_STATES = frozenset(
    {ReferralState.BOOKED, ReferralState.DEFERRED_TO_PROVIDER, ReferralState.AWAITING_TRIAGE}
)

APPOINTMENT_BOOKED = "booked"  # FHIR Appointment.status of a booked slot
REVIEW_REASON_TRIAGE = "TRIAGE"  # eRS-ReviewReason-1 of an appointment sent for triage


class ErsCode(StrEnum):
    """e-RS error codes (OperationOutcome issue codes) the saga acts on."""

    # A012: the same set of files is linked already (an earlier attempt worked).
    DUPLICATE_FILENAME = "DUPLICATE_FILENAME"
    NO_CHANGES_DETECTED = "NO_CHANGES_DETECTED"
    # A016: the slot went between A015 and A016.
    SLOT_NOT_AVAILABLE = "SLOT_NOT_AVAILABLE"
    INAPPROPRIATE_SLOT = "INAPPROPRIATE_SLOT"
    # A016 deferral refused: the service has free slots.
    SLOTS_CURRENTLY_AVAILABLE = "SLOTS_CURRENTLY_AVAILABLE"
    # A015: a page past the end of the list.
    INVALID_VALUE = "INVALID_VALUE"


ALREADY_LINKED = frozenset({ErsCode.DUPLICATE_FILENAME, ErsCode.NO_CHANGES_DETECTED})
SLOT_GONE = frozenset({ErsCode.SLOT_NOT_AVAILABLE, ErsCode.INAPPROPRIATE_SLOT})


class DeferReason(StrEnum):
    """Why the saga defers to the provider (eRS-AppointmentDeferralReason codes)."""

    NO_SLOTS_AT_SERVICE = "NO_SLOTS_AT_SERVICE"
    SLOT_NOT_AVAILABLE = "SLOT_NOT_AVAILABLE"
    BOOKING_ATTEMPT_PROBLEM = "BOOKING_ATTEMPT_PROBLEM"
