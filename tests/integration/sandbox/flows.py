"""Request bodies and multi-step e-RS flows the sandbox tests share."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx

RC = "REFERRING_CLINICIAN"
RCA = "REFERRING_CLINICIAN_ADMIN"
ODS = "R69"
PATIENT = "9912003888"


def ers_headers(
    business_function: str | None = RC,
    *,
    ods: str | None = ODS,
    token: str | None = "sandbox-test-token",
    extra: Mapping[str, str] | None = None,
) -> dict[str, str]:
    headers: dict[str, str] = {}
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    if ods is not None:
        headers["NHSD-End-User-Organisation-ODS"] = ods
    if business_function is not None:
        headers["NHSD-eRS-Business-Function"] = business_function
    headers.update(extra or {})
    return headers


FHIR_JSON = {"Content-Type": "application/fhir+json"}
SERVICE_SYSTEM = "http://fhir.nhs.net/Id/ers-service"
NHS_NUMBER_SYSTEM = "http://fhir.nhs.net/Id/nhs-number"
ERROR_SYSTEM = "https://fhir.nhs.uk/STU3/CodeSystem/eRS-APIErrorCode-1"


def base_url(ers: httpx.AsyncClient) -> str:
    return str(ers.base_url).rstrip("/")


def error_code(response: httpx.Response) -> str:
    body = response.json()
    assert body["resourceType"] == "OperationOutcome"
    coding = body["issue"][0]["details"]["coding"][0]
    assert coding["system"] == ERROR_SYSTEM
    code: str = coding["code"]
    return code


def search_body(
    base: str,
    patient: str = PATIENT,
    specialty: str | None = "CARDIOLOGY",
    clinic_type: str | None = None,
) -> dict[str, Any]:
    criteria: list[dict[str, Any]] = [
        {
            "name": "priority",
            "valueCoding": {
                "system": "https://fhir.nhs.uk/STU3/CodeSystem/eRS-Priority-1",
                "code": "ROUTINE",
            },
        },
        {"name": "ageAndGenderAppropriate", "valueBoolean": True},
    ]
    if specialty is not None:
        criteria.append(
            {
                "name": "specialty",
                "valueCoding": {"system": f"{base}/STU3/CodeSystem/SPECIALTY", "code": specialty},
            }
        )
    if clinic_type is not None:
        criteria.append(
            {
                "name": "clinicType",
                "valueCoding": {
                    "system": "https://fhir.nhs.uk/STU3/CodeSystem/eRS-ClinicType-1",
                    "code": clinic_type,
                },
            }
        )
    return {
        "resourceType": "Parameters",
        "parameter": [
            {
                "name": "requestType",
                "valueCoding": {
                    "system": "https://fhir.nhs.uk/STU3/CodeSystem/eRS-RequestType-1",
                    "code": "APPOINTMENT_REQUEST",
                },
            },
            {
                "name": "sortBy",
                "valueCoding": {
                    "system": "https://fhir.nhs.uk/STU3/CodeSystem/eRS-SortBy-1",
                    "code": "DISTANCE",
                },
            },
            {"name": "patient", "valueIdentifier": {"system": NHS_NUMBER_SYSTEM, "value": patient}},
            {
                "name": "searchCriteria",
                "resource": {"resourceType": "Parameters", "id": "c", "parameter": criteria},
            },
        ],
    }


async def search(
    ers: httpx.AsyncClient,
    *,
    patient: str = PATIENT,
    specialty: str | None = "CARDIOLOGY",
    clinic_type: str | None = None,
    ods: str = ODS,
) -> list[str]:
    response = await ers.post(
        "/STU3/HealthcareService/$ers.searchHealthcareServicesForPatient",
        json=search_body(base_url(ers), patient, specialty, clinic_type),
        headers={**ers_headers(RC, ods=ods), **FHIR_JSON},
    )
    assert response.status_code == 200, response.text
    return [entry["item"]["identifier"]["value"] for entry in response.json()["entry"]]


def create_body(
    base: str,
    service_ids: list[str],
    *,
    patient: str = PATIENT,
    specialty: str | None = "CARDIOLOGY",
    pathway_start: str | None = None,
) -> dict[str, Any]:
    criteria = search_body(base, patient, specialty)["parameter"][3]["resource"]
    parameters: list[dict[str, Any]] = [
        {"name": "patient", "valueIdentifier": {"system": NHS_NUMBER_SYSTEM, "value": patient}},
        {
            "name": "intentionToAddReferralLetter",
            "valueCoding": {
                "system": "https://fhir.nhs.uk/STU3/CodeSystem/eRS-ReferralLetterIntention-1",
                "code": "NEED_TO_ADD_LATER",
            },
        },
        {"name": "firstReminderLetterFollowUpDays", "valueUnsignedInt": 0},
        {
            "name": "shortlist",
            "resource": {
                "resourceType": "List",
                "status": "current",
                "mode": "snapshot",
                "contained": [criteria],
                "entry": [
                    {"item": {"identifier": {"system": SERVICE_SYSTEM, "value": sid}}}
                    for sid in service_ids
                ],
                "extension": [
                    {
                        "url": "https://fhir.nhs.uk/STU3/StructureDefinition/Extension-eRS-Shortlist-SearchCriteria-1",
                        "valueReference": {"reference": "#c"},
                    }
                ],
            },
        },
    ]
    if pathway_start is not None:
        parameters.append({"name": "eReferralPathwayStart", "valueInstant": pathway_start})
    return {"resourceType": "Parameters", "parameter": parameters}


async def create_referral(
    ers: httpx.AsyncClient,
    service_ids: list[str],
    *,
    patient: str = PATIENT,
    search_first: bool = True,
    triage: bool = False,
    headers: dict[str, str] | None = None,
    **body_options: Any,
) -> httpx.Response:
    if search_first:
        await search(ers, patient=patient, specialty=None)
    operation = "createReferralAndSendForTriage" if triage else "createReferral"
    return await ers.post(
        f"/STU3/ReferralRequest/$ers.{operation}",
        json=create_body(base_url(ers), service_ids, patient=patient, **body_options),
        headers={**(headers or ers_headers(RC)), **FHIR_JSON},
    )


def appointment_body(
    ubrn: str,
    version: int,
    service_id: str,
    *,
    slot_id: str | None = None,
    reason: str | None = None,
    patient: str = PATIENT,
) -> dict[str, Any]:
    body: dict[str, Any] = {
        "resourceType": "Appointment",
        "status": "booked" if slot_id is not None and reason is None else "proposed",
        "description": "e-Referral Appointment",
        "incomingReferral": [{"reference": f"ReferralRequest/{ubrn}/_history/{version}"}],
        "participant": [
            {
                "actor": {"identifier": {"system": SERVICE_SYSTEM, "value": service_id}},
                "status": "accepted",
            },
            {
                "actor": {"identifier": {"system": NHS_NUMBER_SYSTEM, "value": patient}},
                "status": "accepted",
            },
        ],
    }
    if slot_id is not None:
        body["slot"] = [{"reference": f"Slot/{slot_id}"}]
    if reason is not None:
        body["reason"] = [
            {
                "coding": [
                    {
                        "system": "https://fhir.nhs.uk/STU3/CodeSystem/eRS-ReviewReason-1",
                        "code": reason,
                    }
                ]
            }
        ]
    return body


async def post_appointment(ers: httpx.AsyncClient, body: dict[str, Any]) -> httpx.Response:
    return await ers.post("/STU3/Appointment", json=body, headers={**ers_headers(RC), **FHIR_JSON})


async def free_slots(ers: httpx.AsyncClient, service_id: str, count: int = 100) -> list[str]:
    response = await ers.get(
        "/STU3/Slot",
        params={
            "schedule.actor:HealthcareService": service_id,
            "appointmentType": "ROUTINE",
            "_count": str(count),
            "status": "free",
            "page": "1",
        },
        headers=ers_headers(RC, extra={"NHSD-eRS-Comm-Rule-Org": "R69"}),
    )
    assert response.status_code == 200, response.text
    return [
        entry["resource"]["id"]
        for entry in response.json()["entry"]
        if entry["resource"]["resourceType"] == "Slot"
    ]


def recent_instant(days_ago: float = 1) -> str:
    return (datetime.now(UTC) - timedelta(days=days_ago)).strftime("%Y-%m-%dT%H:%M:%S.000Z")
