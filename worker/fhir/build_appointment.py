"""A016's Appointment bodies: book a slot, defer to the provider, send for triage.

Pure, like ``worker.fhir.build``; checked against the specification's examples.
"""

from __future__ import annotations

from worker.fhir.build import _CS, _SD, ERS_SERVICE, NHS_NUMBER, SDS_USER_ID, Json
from worker.fhir.vocabulary import APPOINTMENT_BOOKED, REVIEW_REASON_TRIAGE


def _appointment(*, ubrn: str, version: str, service_id: str, nhs_number: str, status: str) -> Json:
    return {
        "id": "appointment",
        "meta": {
            "profile": [
                f"{_SD}eRS-Appointment-1",
                "https://fhir.hl7.org.uk/STU3/StructureDefinition/CareConnect-Appointment-1",
            ]
        },
        "language": "en",
        "resourceType": "Appointment",
        "status": status,
        "description": "e-Referral Appointment",
        "incomingReferral": [{"reference": f"ReferralRequest/{ubrn}/_history/{version}"}],
        "participant": [
            {
                "actor": {"identifier": {"system": ERS_SERVICE, "value": service_id}},
                "status": "accepted",
            },
            {
                "actor": {"identifier": {"system": NHS_NUMBER, "value": nhs_number}},
                "status": "accepted",
            },
        ],
    }


def book_appointment(
    *,
    ubrn: str,
    version: str,
    service_id: str,
    nhs_number: str,
    slot_id: str,
    start: str,
    end: str,
    clinician: str | None = None,
) -> Json:
    """A016 booking into a free slot of a directly bookable service.

    A slot with a named clinician must be booked with that clinician as a participant
    (A016: "Important note when booking slots").
    """
    body = _appointment(
        ubrn=ubrn,
        version=version,
        service_id=service_id,
        nhs_number=nhs_number,
        status=APPOINTMENT_BOOKED,
    )
    body.update({"start": start, "end": end, "slot": [{"reference": f"Slot/{slot_id}"}]})
    if clinician is not None:
        body["participant"].append(
            {
                # e-RS maps type as a single object, not an array (A016 known issue 1).
                "type": {
                    "coding": [
                        {
                            "system": "http://hl7.org/fhir/ValueSet/encounter-participant-type",
                            "code": "CON",
                        }
                    ]
                },
                "actor": {"identifier": {"system": SDS_USER_ID, "value": clinician}},
                "status": "accepted",
            }
        )
    return body


DEFERRAL_COMMENTS = {
    "NO_SLOTS_AT_SERVICE": "There are no slots",
    "SLOT_NOT_AVAILABLE": "The slot is no longer available",
    "BOOKING_ATTEMPT_PROBLEM": "Booking failed",
}


def defer_appointment(
    *,
    ubrn: str,
    version: str,
    service_id: str,
    nhs_number: str,
    reason: str,
    comment: str | None = None,
    slot_id: str | None = None,
) -> Json:
    """A016 deferral of booking to the provider (reason NO_SLOTS_AT_SERVICE and the like).

    ``comment`` is the clinician's own, in place of the reason's stock text; ``slot_id`` the
    slot the patient asked about (A016's "Deferral with slot reference" example).
    """
    body = _appointment(
        ubrn=ubrn, version=version, service_id=service_id, nhs_number=nhs_number, status="proposed"
    )
    body["reason"] = [{"coding": [{"system": f"{_CS}eRS-ReviewReason-1", "code": reason}]}]
    body["comment"] = comment if comment is not None else DEFERRAL_COMMENTS[reason]
    if slot_id is not None:
        body["slot"] = [{"reference": f"Slot/{slot_id}"}]
    return body


def send_for_triage(*, ubrn: str, version: str, service_id: str, nhs_number: str) -> Json:
    """A016 referral into a triage (RAS) service on the shortlist."""
    body = _appointment(
        ubrn=ubrn, version=version, service_id=service_id, nhs_number=nhs_number, status="proposed"
    )
    body["reason"] = [
        {"coding": [{"system": f"{_CS}eRS-ReviewReason-1", "code": REVIEW_REASON_TRIAGE}]}
    ]
    return body
