"""What every step is given: the request, the ports it may use, and the saga's options."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import datetime
from zoneinfo import ZoneInfo

from schemas.referral_request import ReferralRequestV1
from worker.saga.ports import ErsPort, LetterStore
from worker.saga.reference_data import ReferenceData
from worker.saga.slot_claims import SlotClaims
from worker.saga.state import SagaState, TriageRoute
from worker.saga.working_days import HolidayRegion

UbrnHolder = Callable[[str], Awaitable[str | None]]
"""The request id of the saga that holds a UBRN, or None."""

# Dates patients and clinicians see (booking windows, contact-by dates) are English dates.
LONDON = ZoneInfo("Europe/London")


@dataclass(frozen=True, slots=True)
class SagaOptions:
    specialty_cs: str
    triage_route: TriageRoute = TriageRoute.A021
    slot_page_size: int = 20
    max_slot_pages: int = 5
    max_booking_attempts: int = 3
    # A create whose answer was lost is concluded absent only when it is still missing from
    # the worklists this long after it was sent: longer than any e-RS or API-platform
    # request timeout, so e-RS cannot still be completing it.
    create_horizon_seconds: float = 300.0
    # Clocks differ: a worklist item created this long before our pending mark still counts.
    clock_skew_seconds: float = 60.0
    # Past this long after the send, "not on the worklists" no longer proves "not made".
    create_window_seconds: float = 3600.0
    # Whose bank holidays a contact-by date skips (worker.saga.working_days).
    holiday_region: HolidayRegion = HolidayRegion.ENGLAND_AND_WALES


@dataclass(frozen=True, slots=True)
class SagaContext:
    request: ReferralRequestV1
    ers: ErsPort
    letters: LetterStore
    reference: ReferenceData
    options: SagaOptions
    now: Callable[[], datetime]
    # Shared by the sagas of one handler (so of one process); a fresh one serves a lone saga.
    slot_claims: SlotClaims = field(default_factory=SlotClaims)
    # Which request's saga holds a UBRN (the saga store): a lost create never adopts another
    # request's referral. None: nothing to ask (a lone saga in a test).
    ubrn_holder: UbrnHolder | None = None


StepFn = Callable[[SagaState, SagaContext], Awaitable[SagaState]]
