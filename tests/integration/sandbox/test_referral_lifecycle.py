"""State the sandbox keeps between calls: search results, versions, slots, letters, bookings."""

from __future__ import annotations

import asyncio
import hashlib
import io
import re
from typing import Any

import httpx
import pypdf
import pytest

from sandbox.testing import SandboxAdmin
from tests.integration.sandbox.flows import (
    FHIR_JSON,
    PATIENT,
    RC,
    appointment_body,
    base_url,
    create_body,
    create_referral,
    error_code,
    ers_headers,
    free_slots,
    post_appointment,
    recent_instant,
    search,
)


async def _new_referral(ers: httpx.AsyncClient, service_ids: list[str], **options: Any) -> str:
    response = await create_referral(ers, service_ids, **options)
    assert response.status_code == 201, response.text
    ubrn: str = response.json()["id"]
    return ubrn


async def _upload(
    ers: httpx.AsyncClient,
    name: str,
    referral_id: str | None,
    content: bytes = b"%PDF-1.4 letter",
    content_type: str = "application/pdf",
) -> httpx.Response:
    extra = {"Content-Type": content_type, "NHSD-eRS-File-Name": name}
    if referral_id is not None:
        extra["NHSD-eRS-Referral-ID"] = referral_id
    return await ers.post("/STU3/Binary", content=content, headers=ers_headers(RC, extra=extra))


async def _link_letters(
    ers: httpx.AsyncClient, ubrn: str, version: int, binary_ids: list[str]
) -> httpx.Response:
    body = {
        "resourceType": "Parameters",
        "parameter": [
            {
                "name": "referralLetterFile",
                "resource": {
                    "resourceType": "DocumentReference",
                    "status": "current",
                    "content": [{"attachment": {"url": f"Binary/{binary_id}"}}],
                },
            }
            for binary_id in binary_ids
        ],
    }
    return await ers.post(
        f"/STU3/ReferralRequest/{ubrn}/$ers.maintainReferralLetter",
        json=body,
        headers={**ers_headers(RC, extra={"If-Match": f'W/"{version}"'}), **FHIR_JSON},
    )


async def test_ubrns_count_up_from_000000100000(ers: httpx.AsyncClient) -> None:
    assert await _new_referral(ers, ["11002"]) == "000000100000"
    assert await _new_referral(ers, ["11002", "11000"]) == "000000100001"


async def test_booked_slot_leaves_the_search_and_cannot_be_booked_twice(
    ers: httpx.AsyncClient, admin: SandboxAdmin
) -> None:
    first = await _new_referral(ers, ["11002"])
    second = await _new_referral(ers, ["11002"])
    slot = (await free_slots(ers, "11002"))[0]

    booked = await post_appointment(ers, appointment_body(first, 1, "11002", slot_id=slot))
    again = await post_appointment(ers, appointment_body(second, 1, "11002", slot_id=slot))

    assert booked.status_code == 201, booked.text
    assert booked.headers["ETag"] == 'W/"1"'
    assert (
        booked.json()["incomingReferral"][0]["reference"] == f"ReferralRequest/{first}/_history/2"
    )
    assert slot not in await free_slots(ers, "11002")
    assert {s["id"]: s["status"] for s in await admin.slots("11002")}[slot] == "busy"
    assert again.status_code == 422
    assert error_code(again) == "SLOT_NOT_AVAILABLE"

    summary = await admin.referral(first)
    assert summary["state"] == "BOOKED"
    assert summary["version"] == 2
    assert summary["appointment"]["slot_id"] == slot
    assert summary["appointment"]["status"] == "booked"
    referral = await ers.get(f"/STU3/ReferralRequest/{first}", headers=ers_headers(RC))
    assert referral.headers["ETag"] == 'W/"2"'
    assert f"Appointment/{booked.json()['id']}" in referral.text


async def test_concurrent_bookings_of_one_slot_succeed_once(ers: httpx.AsyncClient) -> None:
    ubrns = [await _new_referral(ers, ["11002"]) for _ in range(8)]
    slot = (await free_slots(ers, "11002"))[0]

    responses = await asyncio.gather(
        *(post_appointment(ers, appointment_body(u, 1, "11002", slot_id=slot)) for u in ubrns)
    )

    statuses = sorted(r.status_code for r in responses)
    assert statuses == [201] + [422] * 7


async def test_booking_rules(ers: httpx.AsyncClient) -> None:
    ubrn = await _new_referral(ers, ["11002", "11003", "50001"])
    slot = (await free_slots(ers, "11002"))[0]
    other_service_slot = (await free_slots(ers, "12000"))[0]

    stale = await post_appointment(ers, appointment_body(ubrn, 7, "11002", slot_id=slot))
    unknown = await post_appointment(
        ers, appointment_body("000000999999", 1, "11002", slot_id=slot)
    )
    not_shortlisted = await post_appointment(ers, appointment_body(ubrn, 1, "11000", slot_id=slot))
    indirect = await post_appointment(
        ers, appointment_body(ubrn, 1, "11003", reason="SLOT_NOT_AVAILABLE")
    )
    wrong_slot = await post_appointment(
        ers, appointment_body(ubrn, 1, "11002", slot_id=other_service_slot)
    )
    triage_to_dbs = await post_appointment(ers, appointment_body(ubrn, 1, "11002", reason="TRIAGE"))
    book_triage = await post_appointment(ers, appointment_body(ubrn, 1, "50001", slot_id=slot))

    assert stale.status_code == 409
    assert (unknown.status_code, error_code(unknown)) == (422, "REFERENCE_NOT_FOUND")
    assert (not_shortlisted.status_code, error_code(not_shortlisted)) == (
        422,
        "INAPPROPRIATE_VALUE",
    )
    assert (indirect.status_code, error_code(indirect)) == (422, "INAPPROPRIATE_VALUE")
    assert (wrong_slot.status_code, error_code(wrong_slot)) == (422, "SLOT_NOT_AVAILABLE")
    assert (triage_to_dbs.status_code, error_code(triage_to_dbs)) == (422, "INAPPROPRIATE_VALUE")
    assert (book_triage.status_code, error_code(book_triage)) == (422, "INAPPROPRIATE_VALUE")

    triage = await post_appointment(ers, appointment_body(ubrn, 1, "50001", reason="TRIAGE"))
    assert triage.status_code == 201, triage.text
    rebook = await post_appointment(ers, appointment_body(ubrn, 2, "11002", slot_id=slot))
    assert (rebook.status_code, error_code(rebook)) == (422, "INVALID_REQUEST_STATE")


async def test_deferral_needs_the_service_to_have_no_free_slots(
    ers: httpx.AsyncClient, admin: SandboxAdmin
) -> None:
    ubrn = await _new_referral(ers, ["11002", "11021"])

    with_slots = await post_appointment(
        ers, appointment_body(ubrn, 1, "11002", reason="NO_SLOTS_AT_SERVICE")
    )
    assert with_slots.status_code == 422
    assert error_code(with_slots) == "SLOTS_CURRENTLY_AVAILABLE"

    deferred = await post_appointment(
        ers, appointment_body(ubrn, 1, "11021", reason="NO_SLOTS_AT_SERVICE")
    )
    assert deferred.status_code == 201, deferred.text
    summary = await admin.referral(ubrn)
    assert summary["state"] == "DEFERRED_TO_PROVIDER"
    assert summary["appointment"]["reason"] == "NO_SLOTS_AT_SERVICE"


async def test_booking_attempt_problem_defers_even_with_free_slots(
    ers: httpx.AsyncClient, admin: SandboxAdmin
) -> None:
    ubrn = await _new_referral(ers, ["11002"])

    response = await post_appointment(
        ers, appointment_body(ubrn, 1, "11002", reason="BOOKING_ATTEMPT_PROBLEM")
    )

    assert response.status_code == 201, response.text
    assert (await admin.referral(ubrn))["state"] == "DEFERRED_TO_PROVIDER"


async def test_shortlist_must_come_from_the_latest_search(ers: httpx.AsyncClient) -> None:
    await search(ers, specialty="GASTROENTEROLOGY")
    not_in_results = await create_referral(ers, ["11002"], search_first=False)
    other_patient = await create_referral(ers, ["20001"], search_first=False, patient="9912003889")
    other_ods = await create_referral(
        ers, ["20001"], search_first=False, headers=ers_headers(RC, ods="A99999")
    )
    in_results = await create_referral(
        ers, ["20001"], search_first=False, specialty="GASTROENTEROLOGY"
    )

    for rejected in (not_in_results, other_patient, other_ods):
        assert rejected.status_code == 422
        assert error_code(rejected) == "SHORTLISTED_SERVICE_NOT_IN_RESULTS"
    assert in_results.status_code == 201, in_results.text


async def test_create_referral_validation(ers: httpx.AsyncClient) -> None:
    await search(ers, specialty=None)
    too_many = await create_referral(ers, [str(11000 + n) for n in range(21)], search_first=False)
    duplicate = await create_referral(ers, ["11002", "11002"], search_first=False)
    future = await create_referral(
        ers, ["11002"], search_first=False, pathway_start=recent_instant(-1)
    )
    too_old = await create_referral(
        ers, ["11002"], search_first=False, pathway_start=recent_instant(366)
    )
    recent = await create_referral(
        ers, ["11002"], search_first=False, pathway_start=recent_instant(364)
    )

    assert error_code(too_many) == "TOO_MANY_ITEMS"
    assert error_code(duplicate) == "DUPLICATE_SERVICE"
    assert error_code(future) == "INVALID_VALUE"
    assert error_code(too_old) == "INVALID_VALUE"
    assert recent.status_code == 201, recent.text
    assert all(r.status_code == 422 for r in (too_many, duplicate, future, too_old))


async def test_specialty_must_use_the_sandbox_code_system(ers: httpx.AsyncClient) -> None:
    await search(ers, specialty=None)
    body = create_body("https://api.service.nhs.uk/referrals/FHIR", ["11002"])
    response = await ers.post(
        "/STU3/ReferralRequest/$ers.createReferral",
        json=body,
        headers={**ers_headers(RC), **FHIR_JSON},
    )
    assert response.status_code == 422
    assert error_code(response) == "INVALID_CODE"


async def test_missing_required_parameter_is_missing_value(ers: httpx.AsyncClient) -> None:
    body = create_body(base_url(ers), ["11002"])
    body["parameter"] = [
        p for p in body["parameter"] if p["name"] != "intentionToAddReferralLetter"
    ]
    response = await ers.post(
        "/STU3/ReferralRequest/$ers.createReferral",
        json=body,
        headers={**ers_headers(RC), **FHIR_JSON},
    )

    assert response.status_code == 422
    assert error_code(response) == "MISSING_VALUE"


async def test_send_for_triage_needs_exactly_one_triage_service(
    ers: httpx.AsyncClient, admin: SandboxAdmin
) -> None:
    to_dbs = await create_referral(ers, ["11002"], triage=True)
    two = await create_referral(ers, ["11004", "50001"], triage=True)
    ok = await create_referral(ers, ["11004"], triage=True)

    assert error_code(to_dbs) == "INAPPROPRIATE_VALUE"
    assert error_code(two) == "INAPPROPRIATE_VALUE"
    assert ok.status_code == 201, ok.text
    summary = await admin.referral(ok.json()["id"])
    assert summary["state"] == "AWAITING_TRIAGE"
    assert summary["created_via"] == "A021"
    assert summary["appointment"]["reason"] == "TRIAGE"


async def test_referral_letters_are_replaced_as_a_set(
    ers: httpx.AsyncClient, admin: SandboxAdmin
) -> None:
    ubrn = await _new_referral(ers, ["11002"])
    a = (await _upload(ers, "a.pdf", ubrn)).headers["Location"].removeprefix("Binary/")
    b = (await _upload(ers, "b.pdf", ubrn)).headers["Location"].removeprefix("Binary/")
    a_again = (await _upload(ers, "a.pdf", ubrn)).headers["Location"].removeprefix("Binary/")
    elsewhere = (
        (await _upload(ers, "c.pdf", "000000070000")).headers["Location"].removeprefix("Binary/")
    )
    unassigned = (await _upload(ers, "d.pdf", None)).headers["Location"].removeprefix("Binary/")

    first = await _link_letters(ers, ubrn, 1, [a, b])
    assert first.status_code == 200, first.text
    assert first.headers["ETag"] == 'W/"2"'
    assert len(first.json()["supportingInfo"]) == 2

    stale = await _link_letters(ers, ubrn, 1, [a])
    missing_if_match = await ers.post(
        f"/STU3/ReferralRequest/{ubrn}/$ers.maintainReferralLetter",
        json={"resourceType": "Parameters", "parameter": []},
        headers={**ers_headers(RC), **FHIR_JSON},
    )
    unchanged = await _link_letters(ers, ubrn, 2, [b, a])
    same_name = await _link_letters(ers, ubrn, 2, [a, b, a_again])
    foreign = await _link_letters(ers, ubrn, 2, [a, elsewhere])
    not_assigned = await _link_letters(ers, ubrn, 2, [unassigned])
    empty = await _link_letters(ers, ubrn, 2, [])

    assert stale.status_code == 409
    assert missing_if_match.status_code == 412
    assert error_code(unchanged) == "NO_CHANGES_DETECTED"
    assert error_code(same_name) == "DUPLICATE_FILENAME"
    assert error_code(foreign) == "INAPPROPRIATE_VALUE"
    assert error_code(not_assigned) == "INAPPROPRIATE_VALUE"
    assert error_code(empty) == "MISSING_VALUE"

    removed = await _link_letters(ers, ubrn, 2, [b])
    assert removed.status_code == 200, removed.text
    summary = await admin.referral(ubrn)
    assert summary["version"] == 3
    assert [att["file_name"] for att in summary["attachments"]] == ["b.pdf"]
    assert summary["attachments"][0]["size"] == len(b"%PDF-1.4 letter")


@pytest.mark.parametrize(
    ("name", "content_type", "content", "status", "code"),
    [
        ("tool.exe", "text/plain", b"MZ", 422, "INVALID_VALUE"),
        ("tool.exe", "application/octet-stream", b"MZ", 415, None),
        ("big.pdf", "application/pdf", b"x" * (5 * 1024 * 1024 + 1), 422, "FILE_SIZE_ERROR"),
        ("empty.txt", "text/plain", b"", 422, "FILE_SIZE_ERROR"),
        ("letter.pdf", "text/plain", b"x", 422, "CONFLICTING_VALUES"),
        ("", "text/plain", b"x", 422, "MISSING_VALUE"),
    ],
)
async def test_upload_rejections(
    ers: httpx.AsyncClient,
    name: str,
    content_type: str,
    content: bytes,
    status: int,
    code: str | None,
) -> None:
    response = await _upload(ers, name, "000000070000", content, content_type)

    assert response.status_code == status, response.text
    if code is not None:
        assert error_code(response) == code


async def test_upload_of_exactly_five_megabytes_is_accepted(
    ers: httpx.AsyncClient, admin: SandboxAdmin
) -> None:
    content = b"\x89PNG" + b"\0" * (5 * 1024 * 1024 - 4)
    response = await _upload(ers, "scan.PNG", "000000070000", content, "image/png")

    assert response.status_code == 201, response.text
    binary_id = response.headers["Location"].removeprefix("Binary/")
    stored = {b["binary_id"]: b for b in await admin.binaries()}[binary_id]
    assert stored["size"] == len(content)
    assert stored["sha256"] == hashlib.sha256(content).hexdigest()


async def test_patient_letter_describes_a_booked_referral(ers: httpx.AsyncClient) -> None:
    ubrn = await _new_referral(ers, ["11002", "11000"])
    slot = (await free_slots(ers, "11002"))[0]
    booked = await post_appointment(ers, appointment_body(ubrn, 1, "11002", slot_id=slot))
    assert booked.status_code == 201

    response = await ers.post(
        f"/STU3/ReferralRequest/{ubrn}/$ers.generatePatientLetter", headers=ers_headers(RC)
    )

    assert response.status_code == 200
    assert re.fullmatch(
        rf'attachment; filename="{ubrn}_Appointment_Confirmation_Summary_\d{{14}}\.pdf"',
        response.headers["Content-Disposition"],
    )
    text = "".join(
        page.extract_text() for page in pypdf.PdfReader(io.BytesIO(response.content)).pages
    )
    assert ubrn in text
    assert "BOOKED" in text
    assert "Good Cardiology Business Service" in text
    assert "Forthright Cardiology Business Service" in text
    assert booked.json()["start"] in text


async def test_patient_letter_for_unknown_referral_is_404(ers: httpx.AsyncClient) -> None:
    response = await ers.post(
        "/STU3/ReferralRequest/000000099999/$ers.generatePatientLetter", headers=ers_headers(RC)
    )

    assert response.status_code == 404


async def test_versioned_read_serves_only_the_current_version(ers: httpx.AsyncClient) -> None:
    current = await ers.get(
        "/STU3/ReferralRequest/000000070000/_history/6", headers=ers_headers(RC)
    )
    old = await ers.get("/STU3/ReferralRequest/000000070000/_history/5", headers=ers_headers(RC))

    assert current.status_code == 200
    assert old.status_code == 404


async def test_reset_restores_the_seed(ers: httpx.AsyncClient, admin: SandboxAdmin) -> None:
    ubrn = await _new_referral(ers, ["11002"])
    slot = (await free_slots(ers, "11002"))[0]
    await post_appointment(ers, appointment_body(ubrn, 1, "11002", slot_id=slot))

    await admin.reset()

    assert await admin.requests() == []
    assert [r["ubrn"] for r in await admin.referrals()] == ["000000070000", "000000070001"]
    assert slot in await free_slots(ers, "11002")
    seeded = await admin.referral("000000070000")
    assert seeded["version"] == 6
    assert seeded["service_ids"] == ["11000", "11002", "11021", "50001"]
    assert seeded["created_via"] == "seed"
    assert seeded["nhs_number"] == PATIENT
