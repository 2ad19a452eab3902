"""The saga once e-RS has booked, deferred or triaged: read from A016's answer or from A005."""

from __future__ import annotations

from datetime import date, datetime

from schemas.events import AppointmentInfo, Path
from worker.fhir.read import AppointmentFacts, FreeSlot, parse_instant
from worker.fhir.vocabulary import APPOINTMENT_BOOKED, REVIEW_REASON_TRIAGE, ReferralState
from worker.saga.context import LONDON
from worker.saga.state import SagaState
from worker.saga.working_days import HolidayRegion, add_working_days


def contact_by(created: datetime | None, days: int | None, region: HolidayRegion) -> date | None:
    """The date the provider must contact the patient by: ``days`` working days in ``region``."""
    if created is None or days is None:
        return None
    return add_working_days(created.astimezone(LONDON).date(), days, region)


def after_appointment(
    state: SagaState,
    facts: AppointmentFacts,
    region: HolidayRegion,
    slot: FreeSlot | None = None,
) -> SagaState:
    """The saga once A016 has booked, deferred or triaged (read from its answer or A005)."""
    if facts.status == APPOINTMENT_BOOKED:
        path, referral_state, due = Path.DBS_BOOKED, ReferralState.BOOKED, None
    elif facts.reason == REVIEW_REASON_TRIAGE:
        path, referral_state = Path.RAS_TRIAGE, ReferralState.AWAITING_TRIAGE
        due = contact_by(facts.created, state.triage_contact_days, region)
    else:
        path, referral_state = Path.DBS_DEFERRED, ReferralState.DEFERRED_TO_PROVIDER
        due = contact_by(facts.created, state.defer_contact_days, region)
    appointment = AppointmentInfo(
        appointment_id=facts.appointment_id,
        service_id=state.target.service_id,
        slot_id=slot.slot_id if slot else facts.slot_id,
        start=_instant_or_none(facts.start or (slot.start if slot else None)),
        end=_instant_or_none(facts.end or (slot.end if slot else None)),
        status=facts.status,
        reason=facts.reason,
    )
    return state.model_copy(
        update={
            "path": path,
            "booking_done": True,
            "appointment": appointment,
            "referral_state": referral_state.value,
            "referral_version": facts.referral_version or state.referral_version,
            "contact_by": due,
        }
    )


def _instant_or_none(value: str | None) -> datetime | None:
    return parse_instant(value) if value else None
