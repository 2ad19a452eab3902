"""A008 for referring organisations: referrals appear on and leave the worklists as their
state changes; a dropped answer leaves the effect in place."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from sandbox.testing import SandboxAdmin
from tests.integration.sandbox.flows import (
    FHIR_JSON,
    ODS,
    PATIENT,
    RC,
    appointment_body,
    create_referral,
    ers_headers,
    free_slots,
    post_appointment,
)
from tests.spec_examples import example

SELECTOR = "https://fhir.nhs.uk/STU3/CodeSystem/eRS-ReferralListSelector-1"


def worklist_body(list_type: str) -> dict[str, Any]:
    return {
        "resourceType": "Parameters",
        "parameter": [
            {
                "name": "listType",
                "valueCodeableConcept": {"coding": [{"system": SELECTOR, "code": list_type}]},
            }
        ],
    }


async def worklist(ers: httpx.AsyncClient, list_type: str, ods: str = ODS) -> list[dict[str, Any]]:
    response = await ers.post(
        "/STU3/ReferralRequest/$ers.fetchworklist",
        json=worklist_body(list_type),
        headers={**ers_headers(RC, ods=ods), **FHIR_JSON},
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert (body["resourceType"], body["status"], body["mode"]) == ("List", "current", "snapshot")
    entries: list[dict[str, Any]] = body["entry"]
    return entries


def ubrns(entries: list[dict[str, Any]]) -> list[str]:
    return [e["item"]["reference"].removeprefix("ReferralRequest/") for e in entries]


def fields(entry: dict[str, Any]) -> dict[str, Any]:
    return {part["url"]: part for part in entry["extension"][0]["extension"]}


async def test_a_new_referral_is_awaiting_booking_and_its_letter_outstanding(
    ers: httpx.AsyncClient,
) -> None:
    seeded = set(ubrns(await worklist(ers, "AWAITING_BOOKING")))
    created = await create_referral(ers, ["11002"])
    ubrn = created.json()["id"]

    awaiting = [e for e in await worklist(ers, "AWAITING_BOOKING") if ubrns([e]) == [ubrn]]
    letters = [e for e in await worklist(ers, "LETTERS_OUTSTANDING") if ubrns([e]) == [ubrn]]

    assert ubrn not in seeded
    assert len(awaiting) == 1 and len(letters) == 1
    item = fields(awaiting[0])
    assert item["patient"]["valueReference"]["identifier"]["value"] == PATIENT
    assert item["priority"]["valueCodeableConcept"]["coding"][0]["code"] == "ROUTINE"
    assert item["status"]["valueCodeableConcept"]["coding"][0]["code"] == "NOT_BOOKED"
    assert item["referralCreated"]["valueDateTime"].endswith("Z")
    # The same extensions, in the same order, as the specification's examples.
    for list_type, entry, name in (
        ("AWAITING_BOOKING", awaiting[0], "AwaitingBooking.json"),
        ("LETTERS_OUTSTANDING", letters[0], "LettersOutstanding.json"),
    ):
        shape = example(f"retrieveWorklist/responses/{name}")["entry"][0]["extension"][0]
        assert entry["extension"][0]["url"] == shape["url"], list_type
        expected = [p["url"] for p in shape["extension"] if p["url"] != "referrer"]
        assert [p["url"] for p in entry["extension"][0]["extension"]] == expected


async def test_a_booked_referral_leaves_awaiting_booking(ers: httpx.AsyncClient) -> None:
    created = await create_referral(ers, ["11002"])
    ubrn, version = created.json()["id"], created.headers["ETag"]
    slot = (await free_slots(ers, "11002"))[0]

    assert ubrn in ubrns(await worklist(ers, "AWAITING_BOOKING"))

    booked = await post_appointment(
        ers, appointment_body(ubrn, int(version.split('"')[1]), "11002", slot_id=slot)
    )

    assert booked.status_code == 201, booked.text
    assert ubrn not in ubrns(await worklist(ers, "AWAITING_BOOKING"))
    assert ubrn in ubrns(await worklist(ers, "LETTERS_OUTSTANDING"))  # still no letter


async def test_another_organisations_referrals_are_not_listed(ers: httpx.AsyncClient) -> None:
    await create_referral(ers, ["11002"])

    assert await worklist(ers, "AWAITING_BOOKING", ods="R68") == []


@pytest.mark.parametrize("list_type", ["REFERRALS_FOR_REVIEW", "REJECTED_TRIAGE_RESPONSE"])
async def test_other_lists_answer_empty(ers: httpx.AsyncClient, list_type: str) -> None:
    await create_referral(ers, ["11002"])

    assert await worklist(ers, list_type) == []


async def test_a_dropped_answer_leaves_the_referral_created(
    ers: httpx.AsyncClient, admin: SandboxAdmin
) -> None:
    before = {r["ubrn"] for r in await admin.referrals()}
    await admin.add_fault("A011", None, drop=True)

    with pytest.raises(httpx.RemoteProtocolError):
        await create_referral(ers, ["11002"])

    created = [r for r in await admin.referrals() if r["ubrn"] not in before]
    assert len(created) == 1
    assert created[0]["ubrn"] in ubrns(await worklist(ers, "AWAITING_BOOKING"))
