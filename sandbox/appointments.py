"""A016 book or defer appointment."""

from __future__ import annotations

import re
from typing import Any

from aiohttp import web

from sandbox.catalogue import APPOINTMENT_REQUEST, TRIAGE_REQUEST, Service, Slot
from sandbox.context import read_fhir_json, state
from sandbox.fhir import NHS_NUMBER_SYSTEM, SERVICE_SYSTEM, Json, dig, instant
from sandbox.outcomes import ErsError, fhir_response, unprocessable
from sandbox.referrals import etag
from sandbox.resources import appointment_resource
from sandbox.state import Appointment, Referral, SandboxState

_INCOMING_REFERRAL = re.compile(r"^ReferralRequest/(\d+)/_history/(\d+)$")
_SLOT_REFERENCE = re.compile(r"^Slot/(\S+)$")
DEFERRAL_REASONS = ("NO_SLOTS_AT_SERVICE", "SLOT_NOT_AVAILABLE", "BOOKING_ATTEMPT_PROBLEM")


def _participant_value(body: Json, system: str) -> str | None:
    for participant in body.get("participant") or []:
        if dig(participant, "actor", "identifier", "system") == system:
            value = dig(participant, "actor", "identifier", "value")
            return value if isinstance(value, str) else None
    return None


def _other_participants(body: Json) -> list[Json]:
    """Participants beyond the service and patient (e.g. a named clinician), echoed back."""
    known = (SERVICE_SYSTEM, NHS_NUMBER_SYSTEM)
    return [
        participant
        for participant in body.get("participant") or []
        if isinstance(participant, dict)
        and dig(participant, "actor", "identifier", "system") not in known
    ]


def _referral_at_version(store: SandboxState, body: Json) -> Referral:
    reference = dig(body, "incomingReferral", 0, "reference")
    if reference is None:
        raise unprocessable("MISSING_VALUE", "'incomingReferral' is required.")
    match = _INCOMING_REFERRAL.match(reference) if isinstance(reference, str) else None
    if match is None:
        raise unprocessable(
            "INVALID_VALUE",
            f"'incomingReferral' ({reference}) must be ReferralRequest/<ubrn>/_history/<version>.",
        )
    ubrn, version = match.group(1), int(match.group(2))
    referral = store.referrals.get(ubrn)
    if referral is None:
        raise unprocessable("REFERENCE_NOT_FOUND", f"ReferralRequest ({ubrn}) not found.")
    if version != referral.version:
        raise ErsError(
            409,
            "CONFLICT",
            f"Version {version} does not match the current version ({referral.version}).",
        )
    return referral


def _shortlisted_service(store: SandboxState, body: Json, referral: Referral) -> Service:
    service_id = _participant_value(body, SERVICE_SYSTEM)
    if service_id is None:
        raise unprocessable("MISSING_VALUE", "A service participant is required.")
    service = store.catalogue.get(service_id)
    if service is None or service_id not in referral.service_ids:
        raise unprocessable(
            "INAPPROPRIATE_VALUE",
            f"Service ({service_id}) is not on the shortlist of referral {referral.ubrn}.",
        )
    return service


def _require_bookable(service: Service, action: str) -> None:
    if not service.directly_bookable or not service.supports(APPOINTMENT_REQUEST):
        raise unprocessable(
            "INAPPROPRIATE_VALUE",
            f"Service ({service.id}) is not a directly bookable service; cannot {action}.",
        )


def _reason_code(body: Json) -> str | None:
    code = dig(body, "reason", 0, "coding", 0, "code")
    return code if isinstance(code, str) else None


def _slot_to_book(store: SandboxState, body: Json, service: Service) -> Slot:
    reference = dig(body, "slot", 0, "reference")
    if reference is None:
        raise unprocessable("MISSING_VALUE", "'slot' is required when booking.")
    match = _SLOT_REFERENCE.match(reference) if isinstance(reference, str) else None
    if match is None:
        raise unprocessable("INVALID_VALUE", f"'slot' ({reference}) must be Slot/<id>.")
    slot = store.slot_index.get(match.group(1))
    if slot is None or slot.service_id != service.id or not slot.bookable(store.clock()):
        raise unprocessable("SLOT_NOT_AVAILABLE", f"Slot ({match.group(1)}) is not available.")
    return slot


async def book_or_defer(request: web.Request) -> web.Response:
    """A016: POST /STU3/Appointment"""
    raw: Any = await read_fhir_json(request)
    if not isinstance(raw, dict) or raw.get("resourceType") != "Appointment":
        raise unprocessable("INVALID_FHIR_STRUCTURE", "Request body must be a FHIR Appointment.")
    body: Json = raw
    store = state(request)
    referral = _referral_at_version(store, body)
    service = _shortlisted_service(store, body, referral)
    patient = _participant_value(body, NHS_NUMBER_SYSTEM)
    if patient is not None and patient != referral.nhs_number:
        raise unprocessable("INAPPROPRIATE_VALUE", "The patient is not the referral's patient.")
    if referral.state != "NOT_BOOKED":
        raise unprocessable(
            "INVALID_REQUEST_STATE",
            f"Referral {referral.ubrn} is {referral.state}; only NOT_BOOKED referrals can be "
            "booked or deferred.",
        )

    status = body.get("status")
    reason: str | None = None
    slot: Slot | None = None
    if status == "booked":
        _require_bookable(service, "book")
        slot = _slot_to_book(store, body, service)
        new_state = "BOOKED"
    elif status == "proposed":
        reason = _reason_code(body)
        if reason is None:
            raise unprocessable("MISSING_VALUE", "'reason' is required when deferring.")
        if reason == "TRIAGE":
            if not service.supports(TRIAGE_REQUEST):
                raise unprocessable(
                    "INAPPROPRIATE_VALUE",
                    f"Service ({service.id}) does not accept triage requests.",
                )
            new_state = "AWAITING_TRIAGE"
        elif reason in DEFERRAL_REASONS:
            _require_bookable(service, "defer to it")
            if reason == "NO_SLOTS_AT_SERVICE" and store.bookable_slots(service.id, store.clock()):
                raise unprocessable(
                    "SLOTS_CURRENTLY_AVAILABLE",
                    f"Service ({service.id}) has slots available; booking cannot be deferred.",
                )
            new_state = "DEFERRED_TO_PROVIDER"
        else:
            raise unprocessable("INVALID_CODE", f"'reason' ({reason}) is not a valid code.")
    else:
        raise unprocessable("INVALID_CODE", f"'status' ({status}) must be booked or proposed.")

    comment = body.get("comment")
    # A deferral may name the slot that could not be booked; keep it without touching the slot.
    slot_reference = dig(body, "slot", 0, "reference")
    named = _SLOT_REFERENCE.match(slot_reference) if isinstance(slot_reference, str) else None
    deferred_slot = named.group(1) if named is not None and slot is None else None
    referral.version += 1
    # Booking or deferring sends the referral to the provider: the RTT clock starts, and e-RS
    # derives the pathway start unless one was given at creation.
    referral.pathway_start = referral.pathway_start or instant(store.clock())
    appointment = Appointment(
        id=store.new_appointment_id(),
        ubrn=referral.ubrn,
        service_id=service.id,
        status="booked" if slot is not None else "proposed",
        reason=reason,
        slot_id=slot.id if slot is not None else deferred_slot,
        start=slot.start if slot is not None else None,
        end=slot.end if slot is not None else None,
        comment=comment if isinstance(comment, str) else None,
        created=store.clock(),
        referral_version=referral.version,
        extra_participants=_other_participants(body),
    )
    if slot is not None:
        slot.status = "busy"
    store.appointments[appointment.id] = appointment
    referral.appointment_id = appointment.id
    referral.state = new_state
    referral.state_reason = None if slot is not None else reason
    return fhir_response(
        appointment_resource(store, appointment, referral.nhs_number),
        201,
        etag(appointment.version),
    )
