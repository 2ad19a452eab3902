"""Every example request in the e-RS specification, sent to a freshly reset sandbox, succeeds and
answers with a body shaped like the specification's example response."""

from __future__ import annotations

import io
import re
from pathlib import Path
from typing import Any

import httpx
import pypdf
import pytest

from sandbox.testing import SandboxAdmin
from tests.integration.sandbox.flows import (
    FHIR_JSON,
    RC,
    base_url,
    ers_headers,
    recent_instant,
    search,
)
from tests.integration.sandbox.shapes import assert_same_shape
from tests.integration.sandbox.spec import (
    EXAMPLES,
    RESPONSES,
    business_function_for,
    example_files,
    example_summaries,
    load,
    requires_spec,
    scenario_rows,
    with_base_url,
)

pytestmark = requires_spec


def _ids(paths: list[Path]) -> list[str]:
    return [path.stem for path in paths]


def _code_system_examples() -> dict[str, Path]:
    return {load(path)["id"]: path for path in example_files("getCodeSystem/responses")}


@pytest.mark.parametrize(
    "code_system_type",
    [params["codeSystemType"] for _, params in scenario_rows("a004-retrieve-reference-data.yaml")],
)
async def test_a004_reference_data(ers: httpx.AsyncClient, code_system_type: str) -> None:
    response = await ers.get(f"/STU3/CodeSystem/{code_system_type}", headers=ers_headers(RC))

    assert response.status_code == 200, response.text
    assert response.headers["Content-Type"].startswith("application/fhir+json")
    body = response.json()
    assert body["url"] == f"{base_url(ers)}/STU3/CodeSystem/{code_system_type}"
    example = load(_code_system_examples()[code_system_type])
    assert_same_shape(body, with_base_url(example, base_url(ers)))


SEARCH_REQUESTS = example_files("patientServiceSearch/requests")


@pytest.mark.parametrize("request_path", SEARCH_REQUESTS, ids=_ids(SEARCH_REQUESTS))
async def test_a010_patient_service_search(ers: httpx.AsyncClient, request_path: Path) -> None:
    business_function = business_function_for("a010-patient-service-search.yaml", request_path.name)
    response = await ers.post(
        "/STU3/HealthcareService/$ers.searchHealthcareServicesForPatient",
        json=with_base_url(load(request_path), base_url(ers)),
        headers={**ers_headers(business_function), **FHIR_JSON},
    )

    assert response.status_code == 200, response.text
    body = response.json()
    assert body["entry"], "every example search matches some sandbox service"
    # The specification documents one 200 response with several example bodies; each varies
    # only the list items (wait time as a number or a code, extra request flow types, ...).
    examples = [load(path) for path in example_files("patientServiceSearch/responses")]
    assert_same_shape(body, *[with_base_url(example, base_url(ers)) for example in examples])


def _with_recent_pathway_start(body: dict[str, Any]) -> dict[str, Any]:
    # The examples' eReferralPathwayStart (2024-05-01) is now over the 365 days e-RS allows.
    for parameter in body["parameter"]:
        if parameter["name"] == "eReferralPathwayStart":
            parameter["valueInstant"] = recent_instant(days_ago=3)
    return body


async def _search_as_in_the_examples(ers: httpx.AsyncClient, business_function: str) -> None:
    # A011/A021 accept only services from the caller's latest search for the patient.
    search_example = EXAMPLES / "patientServiceSearch/requests/RcMinimal.json"
    response = await ers.post(
        "/STU3/HealthcareService/$ers.searchHealthcareServicesForPatient",
        json=with_base_url(load(search_example), base_url(ers)),
        headers={**ers_headers(business_function), **FHIR_JSON},
    )
    assert response.status_code == 200, response.text


CREATE_REQUESTS = example_files("createReferral/requests")


@pytest.mark.parametrize("request_path", CREATE_REQUESTS, ids=_ids(CREATE_REQUESTS))
async def test_a011_create_referral(ers: httpx.AsyncClient, request_path: Path) -> None:
    business_function = business_function_for("a011-create-referral.yaml", request_path.name)
    await _search_as_in_the_examples(ers, business_function)
    body = _with_recent_pathway_start(with_base_url(load(request_path), base_url(ers)))

    response = await ers.post(
        "/STU3/ReferralRequest/$ers.createReferral",
        json=body,
        headers={**ers_headers(business_function), **FHIR_JSON},
    )

    assert response.status_code == 201, response.text
    assert response.headers["ETag"] == 'W/"1"'
    created = response.json()
    assert created["id"] == "000000100000"
    assert created["meta"]["versionId"] == "1"
    example = load(EXAMPLES / "createReferral/responses/ReferralRequest.json")
    assert_same_shape(created, with_base_url(example, base_url(ers)))


TRIAGE_REQUESTS = example_files("createReferralAndSendForTriage/requests")


@pytest.mark.parametrize("request_path", TRIAGE_REQUESTS, ids=_ids(TRIAGE_REQUESTS))
async def test_a021_create_referral_and_send_for_triage(
    ers: httpx.AsyncClient, request_path: Path
) -> None:
    yaml_name = "a021-create-referral-request-and-send-for-triage.yaml"
    business_function = business_function_for(yaml_name, request_path.name)
    await _search_as_in_the_examples(ers, business_function)
    body = _with_recent_pathway_start(with_base_url(load(request_path), base_url(ers)))

    response = await ers.post(
        "/STU3/ReferralRequest/$ers.createReferralAndSendForTriage",
        json=body,
        headers={**ers_headers(business_function), **FHIR_JSON},
    )

    assert response.status_code == 201, response.text
    assert response.headers["ETag"] == 'W/"1"'
    example = load(EXAMPLES / "createReferralAndSendForTriage/responses/ReferralRequest.json")
    assert_same_shape(response.json(), with_base_url(example, base_url(ers)))


# The scenario table runs 'Update clinical information' against 000000070001 after the two-file
# example, which is not among the examples we have; the binary UpdateClinicalInfo.json names
# was uploaded for 000000070000, so that is the referral it can be linked to.
LETTER_EXAMPLES = {
    "SingleDocumentReference.json": "ReferralRequestWithSingleDocumentReference.json",
    "UpdateClinicalInfo.json": "ReferralRequestWithUpdatedDocumentReferences.json",
}
LETTER_REQUESTS = [
    path
    for path in example_files("maintainReferralLetter/requests")
    if path.name in LETTER_EXAMPLES
]


@pytest.mark.parametrize("request_path", LETTER_REQUESTS, ids=_ids(LETTER_REQUESTS))
async def test_a012_maintain_referral_letter(ers: httpx.AsyncClient, request_path: Path) -> None:
    ubrn = "000000070000"
    current = await ers.get(f"/STU3/ReferralRequest/{ubrn}", headers=ers_headers(RC))
    etag = current.headers["ETag"]
    business_function = business_function_for(
        "a012-maintain-referral-letter.yaml", request_path.name
    )

    response = await ers.post(
        f"/STU3/ReferralRequest/{ubrn}/$ers.maintainReferralLetter",
        json=with_base_url(load(request_path), base_url(ers)),
        headers={**ers_headers(business_function, extra={"If-Match": etag}), **FHIR_JSON},
    )

    assert response.status_code == 200, response.text
    updated = response.json()
    assert response.headers["ETag"] == f'W/"{updated["meta"]["versionId"]}"'
    assert int(updated["meta"]["versionId"]) == int(etag[3:-1]) + 1
    example = load(
        EXAMPLES / "maintainReferralLetter/responses" / LETTER_EXAMPLES[request_path.name]
    )
    assert_same_shape(updated, with_base_url(example, base_url(ers)))


def _schedule_count(bundle: dict[str, Any]) -> int:
    return sum(1 for entry in bundle["entry"] if entry["resource"]["resourceType"] == "Schedule")


SLOT_SCENARIOS = scenario_rows("a015-retrieve-appointment-slots.yaml")


@pytest.mark.parametrize(
    ("scenario", "query"), SLOT_SCENARIOS, ids=[name for name, _ in SLOT_SCENARIOS]
)
async def test_a015_retrieve_slots(
    ers: httpx.AsyncClient, scenario: str, query: dict[str, str]
) -> None:
    response = await ers.get(
        "/STU3/Slot",
        params=query,
        headers=ers_headers(RC, extra={"NHSD-eRS-Comm-Rule-Org": "R69"}),
    )

    success_examples = example_summaries(RESPONSES / "retrieveAppointmentSlots/200Response.yaml")
    by_summary = {summary: name for name, summary in success_examples.items()}
    if scenario in by_summary:
        assert response.status_code == 200, response.text
        example = load(EXAMPLES / "retrieveAppointmentSlots/responses" / by_summary[scenario])
        bundle = response.json()
        assert [link["relation"] for link in bundle["link"]] == [
            link["relation"] for link in example["link"]
        ]
        assert _schedule_count(bundle) == _schedule_count(example)
        assert (bundle["total"] == 0) == (example["total"] == 0)
    else:
        assert response.status_code == 400, response.text
        example = load(EXAMPLES / "retrieveAppointmentSlots/responses/ErrorPage5.json")
    assert_same_shape(response.json(), with_base_url(example, base_url(ers)))


BOOKING_REQUESTS = example_files("bookOrDeferAppointment/requests")


@pytest.mark.parametrize("request_path", BOOKING_REQUESTS, ids=_ids(BOOKING_REQUESTS))
async def test_a016_book_or_defer(ers: httpx.AsyncClient, request_path: Path) -> None:
    business_function = business_function_for(
        "a016-book-or-defer-appointment.yaml", request_path.name
    )
    response = await ers.post(
        "/STU3/Appointment",
        json=with_base_url(load(request_path), base_url(ers)),
        headers={**ers_headers(business_function), **FHIR_JSON},
    )

    assert response.status_code == 201, response.text
    appointment = response.json()
    assert response.headers["ETag"] == f'W/"{appointment["meta"]["versionId"]}"'
    assert (
        appointment["incomingReferral"][0]["reference"] == "ReferralRequest/000000070000/_history/7"
    )
    example = load(EXAMPLES / "bookOrDeferAppointment/responses" / request_path.name)
    assert_same_shape(appointment, with_base_url(example, base_url(ers)))


async def test_a019_generate_patient_letter(ers: httpx.AsyncClient) -> None:
    response = await ers.post(
        "/STU3/ReferralRequest/000000070000/$ers.generatePatientLetter", headers=ers_headers(RC)
    )

    assert response.status_code == 200, response.text
    assert response.headers["Content-Type"] == "application/pdf"
    assert int(response.headers["Content-Length"]) == len(response.content)
    assert re.fullmatch(
        r'attachment; filename="000000070000_Appointment_Request_Summary_\d{14}\.pdf"',
        response.headers["Content-Disposition"],
    )
    text = pypdf.PdfReader(io.BytesIO(response.content)).pages[0].extract_text()
    assert "000000070000" in text
    assert "NOT_BOOKED" in text


async def test_a020_upload_file(ers: httpx.AsyncClient, admin: SandboxAdmin) -> None:
    upload = EXAMPLES / "uploadFileToDocumentStore/requests/upload.txt"
    if not upload.exists():
        pytest.skip("upload.txt example not present")
    content = upload.read_bytes()

    response = await ers.post(
        "/STU3/Binary",
        content=content,
        headers=ers_headers(
            RC,
            extra={
                "Content-Type": "text/plain",
                "NHSD-eRS-File-Name": "upload.txt",
                "NHSD-eRS-Referral-ID": "000000070000",
            },
        ),
    )

    assert response.status_code == 201, response.text
    assert response.content == b""
    location = response.headers["Location"]
    assert re.fullmatch(r"Binary/[0-9a-f-]{36}", location)
    stored = {b["binary_id"]: b for b in await admin.binaries()}[location.removeprefix("Binary/")]
    assert stored["file_name"] == "upload.txt"
    assert stored["size"] == len(content)
    assert stored["referral_id"] == "000000070000"


async def test_a005_reflects_linked_letters_like_the_unbooked_example(
    ers: httpx.AsyncClient,
) -> None:
    letter = EXAMPLES / "maintainReferralLetter/requests/SingleDocumentReference.json"
    linked = await ers.post(
        "/STU3/ReferralRequest/000000070000/$ers.maintainReferralLetter",
        json=load(letter),
        headers={**ers_headers(RC, extra={"If-Match": 'W/"6"'}), **FHIR_JSON},
    )
    assert linked.status_code == 200, linked.text

    response = await ers.get("/STU3/ReferralRequest/000000070000", headers=ers_headers(RC))

    assert response.status_code == 200, response.text
    assert response.headers["ETag"] == 'W/"7"'
    referral = response.json()
    assert referral["supportingInfo"] == linked.json()["supportingInfo"]
    example = load(EXAMPLES / "retrieveReferralRequest/responses/Unbooked.json")
    assert_same_shape(referral, with_base_url(example, base_url(ers)))


async def test_search_flow_helper_finds_the_example_services(ers: httpx.AsyncClient) -> None:
    found = await search(ers, clinic_type="LIPID_MANAGEMENT")
    assert {"11000", "11002", "11004", "11021", "50001"} <= set(found)


async def test_a010_clinical_term_example_finds_only_the_services_with_that_term(
    ers: httpx.AsyncClient, admin: SandboxAdmin
) -> None:
    request = load(EXAMPLES / "patientServiceSearch/requests/RcSearchByClinicalTerm.json")
    response = await ers.post(
        "/STU3/HealthcareService/$ers.searchHealthcareServicesForPatient",
        json=with_base_url(request, base_url(ers)),
        headers={**ers_headers(RC), **FHIR_JSON},
    )

    assert response.status_code == 200, response.text
    found = {entry["item"]["identifier"]["value"] for entry in response.json()["entry"]}
    # 1003 with a wait limit of 15 days, at R69: the services listing the term, within the limit.
    expected = {
        s["id"]
        for s in await admin.services()
        if "1003" in s["clinical_terms"]
        and s["indicative_wait_days"] is not None
        and s["indicative_wait_days"] <= 15
        and s["location"]["ods"] == "R69"
    }
    assert found == expected == {"11000", "11002", "11010"}


@pytest.mark.parametrize("request_path", BOOKING_REQUESTS, ids=_ids(BOOKING_REQUESTS))
async def test_a016_examples_are_taken_by_a_referral_seeded_through_the_admin_api(
    ers: httpx.AsyncClient, admin: SandboxAdmin, request_path: Path
) -> None:
    # The same UBRN and version the examples name, put there by the admin API (as an engineer
    # would for their own UBRNs) rather than by the reset's seed.
    await admin.put_referral(
        "000000070000",
        {
            "version": 6,
            "state": "NOT_BOOKED",
            "nhs_number": "9912003888",
            "ods_code": "R69",
            "priority": "URGENT",
            "specialty": "CARDIOLOGY",
            "service_ids": ["11000", "11002", "11021", "50001"],
        },
    )
    business_function = business_function_for(
        "a016-book-or-defer-appointment.yaml", request_path.name
    )
    response = await ers.post(
        "/STU3/Appointment",
        json=with_base_url(load(request_path), base_url(ers)),
        headers={**ers_headers(business_function), **FHIR_JSON},
    )

    assert response.status_code == 201, response.text
    assert (await admin.referral("000000070000"))["version"] == 7
    example = load(EXAMPLES / "bookOrDeferAppointment/responses" / request_path.name)
    assert_same_shape(response.json(), with_base_url(example, base_url(ers)))
