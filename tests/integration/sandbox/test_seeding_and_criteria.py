"""Seeding through the admin API, and the e-RS behaviour that depends on what was seeded: A010's
clinical term and named clinician, A021's pathway start, A012's descriptions, A016's deferral
comment and slot."""

from __future__ import annotations

from typing import Any

import httpx

from sandbox.testing import SandboxAdmin
from tests.integration.sandbox.flows import (
    FHIR_JSON,
    RC,
    appointment_body,
    base_url,
    create_referral,
    error_code,
    ers_headers,
    post_appointment,
    search_body,
)

SNOMED = "http://snomed.info/sct"
SDS = "http://fhir.nhs.net/Id/sds-user-id"
PATHWAY_START = "https://fhir.nhs.uk/STU3/StructureDefinition/Extension-eRS-eReferralPathwayStart-1"
CLINICIAN = "555000111222"


def _service(**overrides: Any) -> dict[str, Any]:
    service: dict[str, Any] = {
        "name": "Seeded Dermatology Clinic",
        "specialty": "DERMATOLOGY",
        "clinic_types": [],
        "clinical_terms": ["271807003"],
        "clinicians": [CLINICIAN],
        "bookable_type": "DIRECTLY_BOOKABLE",
        "request_flow_types": ["APPOINTMENT_REQUEST"],
        "location": {"ods": "R69", "display": "Skin Clinic"},
        "indicative_wait_days": 5,
        "slot_count": 3,
        "slot_clinicians": [CLINICIAN],
    }
    service.update(overrides)
    return service


async def _search(ers: httpx.AsyncClient, *extra: dict[str, Any]) -> httpx.Response:
    body = search_body(base_url(ers), specialty=None)
    body["parameter"][3]["resource"]["parameter"].extend(extra)
    return await ers.post(
        "/STU3/HealthcareService/$ers.searchHealthcareServicesForPatient",
        json=body,
        headers={**ers_headers(RC), **FHIR_JSON},
    )


def _ids(response: httpx.Response) -> list[str]:
    assert response.status_code == 200, response.text
    return [entry["item"]["identifier"]["value"] for entry in response.json()["entry"]]


def _term(code: str) -> dict[str, Any]:
    return {"name": "clinicalTerm", "valueCoding": {"system": SNOMED, "code": code}}


def _clinician(sds_id: str) -> dict[str, Any]:
    return {"name": "namedClinician", "valueIdentifier": {"system": SDS, "value": sds_id}}


async def test_a_seeded_service_is_found_by_clinical_term_alone(
    ers: httpx.AsyncClient, admin: SandboxAdmin
) -> None:
    await admin.put_service("77001", _service())

    assert _ids(await _search(ers, _term("271807003"))) == ["77001"]
    assert set(_ids(await _search(ers, _term("1003")))) == {"11000", "11002", "11010"}


async def test_a_search_by_named_clinician_alone_finds_only_the_clinicians_services(
    ers: httpx.AsyncClient, admin: SandboxAdmin
) -> None:
    await admin.put_service("77001", _service())

    assert _ids(await _search(ers, _clinician(CLINICIAN))) == ["77001"]
    assert set(_ids(await _search(ers, _clinician("921600556514")))) == {"12000", "13000", "14000"}


async def test_unknown_clinical_terms_and_clinicians_are_refused_as_e_rs_does(
    ers: httpx.AsyncClient,
) -> None:
    unknown_term = await _search(ers, _term("999999"))
    assert unknown_term.status_code == 422
    assert error_code(unknown_term) == "SNOMED_NOT_FOUND"

    unknown_clinician = await _search(ers, _clinician("000000000001"))
    assert unknown_clinician.status_code == 422
    assert error_code(unknown_clinician) == "REFERENCE_NOT_FOUND"


async def test_a_reset_forgets_seeded_services(ers: httpx.AsyncClient, admin: SandboxAdmin) -> None:
    await admin.put_service("77001", _service())
    assert "77001" in {s["id"] for s in await admin.services()}

    await admin.reset()

    assert "77001" not in {s["id"] for s in await admin.services()}
    assert (await _search(ers, _term("271807003"))).status_code == 422


async def test_services_of_each_type_are_seeded_with_their_slots(admin: SandboxAdmin) -> None:
    triage = await admin.put_service(
        "77002", _service(request_flow_types=["TRIAGE_REQUEST"], slot_count=0)
    )
    indirect = await admin.put_service(
        "77003", _service(bookable_type="INDIRECTLY_BOOKABLE", slot_count=0)
    )
    await admin.put_service("77001", _service())

    assert triage["request_flow_types"] == ["TRIAGE_REQUEST"]
    assert indirect["bookable_type"] == "INDIRECTLY_BOOKABLE"
    slots = await admin.slots("77001")
    assert [s["clinician"] for s in slots] == [CLINICIAN] * 3
    assert all(s["status"] == "free" for s in slots)


async def test_bad_seeds_are_refused_naming_the_field(admin: SandboxAdmin) -> None:
    client = admin._client  # the raw answers, not raise_for_status
    bad_type = await client.put("/services/1", json=_service(bookable_type="SOMETIMES"))
    assert bad_type.status_code == 400
    assert "bookable_type" in bad_type.json()["error"]
    no_name = _service()
    del no_name["name"]
    assert "name" in (await client.put("/services/1", json=no_name)).json()["error"]
    bad_state = await client.put(
        "/referrals/000000090000", json={"state": "LOST", "version": 1, "service_ids": []}
    )
    assert bad_state.status_code == 400
    assert "state" in bad_state.json()["error"]


async def _seed_referral(admin: SandboxAdmin, **overrides: Any) -> dict[str, Any]:
    await admin.add_binary(
        {
            "id": "0b1e2f30-0000-4000-8000-000000000001",
            "file_name": "letter.pdf",
            "content_type": "application/pdf",
            "referral_id": "000000090000",
            "content": "%PDF-1.4 seeded",
        }
    )
    referral: dict[str, Any] = {
        "version": 4,
        "state": "NOT_BOOKED",
        "nhs_number": "9912003888",
        "ods_code": "R69",
        "priority": "URGENT",
        "specialty": "CARDIOLOGY",
        "service_ids": ["11002"],
    }
    referral.update(overrides)
    return await admin.put_referral("000000090000", referral)


async def test_a_seeded_referral_is_retrieved_with_its_ubrn_version_and_state(
    ers: httpx.AsyncClient, admin: SandboxAdmin
) -> None:
    await _seed_referral(admin, state="DEFERRED_TO_PROVIDER")

    response = await ers.get("/STU3/ReferralRequest/000000090000", headers=ers_headers(RC))

    assert response.status_code == 200, response.text
    assert response.headers["ETag"] == 'W/"4"'
    state = response.json()["extension"][-1]["extension"][0]["valueCoding"]["code"]
    assert state == "DEFERRED_TO_PROVIDER"


def _letter(binary_id: str, description: str | None) -> dict[str, Any]:
    resource: dict[str, Any] = {
        "resourceType": "DocumentReference",
        "status": "current",
        "content": [{"attachment": {"url": f"Binary/{binary_id}"}}],
    }
    if description is not None:
        resource["description"] = description
    return {"name": "referralLetterFile", "resource": resource}


async def _maintain(
    ers: httpx.AsyncClient, version: int, description: str | None
) -> httpx.Response:
    return await ers.post(
        "/STU3/ReferralRequest/000000090000/$ers.maintainReferralLetter",
        json={
            "resourceType": "Parameters",
            "parameter": [_letter("0b1e2f30-0000-4000-8000-000000000001", description)],
        },
        headers={**ers_headers(RC, extra={"If-Match": f'W/"{version}"'}), **FHIR_JSON},
    )


async def test_a012_a_changed_description_is_a_change_and_the_same_one_is_not(
    ers: httpx.AsyncClient, admin: SandboxAdmin
) -> None:
    await _seed_referral(admin)
    first = await _maintain(ers, 4, "Referral letter")
    assert first.status_code == 200, first.text

    renamed = await _maintain(ers, 5, "Referral letter, corrected")
    assert renamed.status_code == 200, renamed.text
    described = [c for c in renamed.json()["contained"] if c["resourceType"] == "DocumentReference"]
    assert [d["description"] for d in described] == ["Referral letter, corrected"]

    for description in ("Referral letter, corrected", None):
        unchanged = await _maintain(ers, 6, description)
        assert unchanged.status_code == 422, unchanged.text
        assert error_code(unchanged) == "NO_CHANGES_DETECTED"


def _pathway_start(referral: dict[str, Any]) -> str | None:
    found = [e["valueInstant"] for e in referral["extension"] if e["url"] == PATHWAY_START]
    return found[0] if found else None


async def test_a021_answers_with_the_derived_pathway_start(ers: httpx.AsyncClient) -> None:
    response = await create_referral(ers, ["11004"], triage=True)

    assert response.status_code == 201, response.text
    start = _pathway_start(response.json())
    assert start is not None
    appointment = next(c for c in response.json()["contained"] if c["id"] == "appointment")
    assert start == appointment["created"]


async def test_a016_deferral_keeps_the_comment_and_the_slot_asked_about(
    ers: httpx.AsyncClient, admin: SandboxAdmin
) -> None:
    created = await create_referral(ers, ["11002"])
    ubrn = created.json()["id"]
    assert _pathway_start(created.json()) is None  # not sent to a provider yet
    body = appointment_body(ubrn, 1, "11002", slot_id="11002001", reason="SLOT_NOT_AVAILABLE")
    body["comment"] = "Patient asked for the Tuesday slot"

    response = await post_appointment(ers, body)

    assert response.status_code == 201, response.text
    assert response.json()["comment"] == "Patient asked for the Tuesday slot"
    assert response.json()["slot"] == [{"reference": "Slot/11002001"}]
    stored = (await admin.referral(ubrn))["appointment"]
    assert stored["slot_id"] == "11002001"
    assert stored["comment"] == "Patient asked for the Tuesday slot"
    assert {s["id"]: s["status"] for s in await admin.slots("11002")}["11002001"] == "free"
    referral = await ers.get(f"/STU3/ReferralRequest/{ubrn}", headers=ers_headers(RC))
    assert _pathway_start(referral.json()) is not None
