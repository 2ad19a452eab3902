"""The /_sandbox admin API and injected faults."""

from __future__ import annotations

import time

import httpx

from sandbox.testing import SandboxAdmin, SandboxHandle
from tests.integration.sandbox.flows import (
    RC,
    appointment_body,
    create_referral,
    error_code,
    ers_headers,
    free_slots,
    post_appointment,
)


async def test_health(sandbox_server: SandboxHandle) -> None:
    async with httpx.AsyncClient() as client:
        response = await client.get(f"{sandbox_server.root_url}/_sandbox/health")

    assert response.json() == {"status": "ok"}


async def test_fault_after_effect_still_creates_the_referral(
    ers: httpx.AsyncClient, admin: SandboxAdmin
) -> None:
    await admin.add_fault("A011", 503, after_effect=True)
    headers = ers_headers(RC, extra={"X-Correlation-ID": "lost-response-1"})

    lost = await create_referral(ers, ["11002"], headers=headers)
    after = await create_referral(ers, ["11002"], search_first=False)

    assert lost.status_code == 503
    assert error_code(lost) == "SYSTEM_UNAVAILABLE"
    assert lost.headers["X-Correlation-ID"] == "lost-response-1"
    created = {r["ubrn"]: r for r in await admin.referrals()}
    assert created["000000100000"]["correlation_id"] == "lost-response-1"
    assert created["000000100000"]["created_via"] == "A011"
    assert after.status_code == 201
    assert after.json()["id"] == "000000100001"


async def test_fault_without_after_effect_changes_nothing(
    ers: httpx.AsyncClient, admin: SandboxAdmin
) -> None:
    await admin.add_fault("A011", 429, times=2, retry_after=7)

    first = await create_referral(ers, ["11002"])
    second = await create_referral(ers, ["11002"], search_first=False)
    third = await create_referral(ers, ["11002"], search_first=False)

    assert [first.status_code, second.status_code, third.status_code] == [429, 429, 201]
    assert first.headers["Retry-After"] == "7"
    assert error_code(first) == "TOO_MANY_REQUESTS"
    assert third.json()["id"] == "000000100000"
    log = await admin.requests()
    assert [(e["endpoint"], e["status"]) for e in log] == [
        ("A010", 200),
        ("A011", 429),
        ("A011", 429),
        ("A011", 201),
    ]


async def test_delay_only_fault_slows_the_real_answer(
    ers: httpx.AsyncClient, admin: SandboxAdmin
) -> None:
    await admin.add_fault("A005", None, delay_seconds=0.3)

    started = time.monotonic()
    response = await ers.get("/STU3/ReferralRequest/000000070000", headers=ers_headers(RC))

    assert response.status_code == 200
    assert time.monotonic() - started >= 0.3


async def test_faults_can_be_cleared_and_bad_specs_are_refused(
    ers: httpx.AsyncClient, admin: SandboxAdmin, sandbox_server: SandboxHandle
) -> None:
    await admin.add_fault("A016", 504)
    await admin.clear_faults()
    async with httpx.AsyncClient(base_url=f"{sandbox_server.root_url}/_sandbox") as raw:
        refused = await raw.post("/faults", json={"endpoint": "A999", "status": 503})
        pending = await raw.get("/faults")

    assert refused.status_code == 400
    assert pending.json() == []
    response = await ers.get("/STU3/ReferralRequest/000000070000", headers=ers_headers(RC))
    assert response.status_code == 200


async def test_set_slots_replaces_the_inventory(
    ers: httpx.AsyncClient, admin: SandboxAdmin
) -> None:
    slots = await admin.set_slots(
        "11021",
        [
            {"start": "2099-01-05T10:00:00Z", "end": "2099-01-05T10:30:00Z"},
            {"start": "2099-01-05T09:00:00+00:00", "end": "2099-01-05T09:30:00+00:00"},
        ],
    )

    assert [s["id"] for s in slots] == ["11021001", "11021002"]
    assert await free_slots(ers, "11021") == ["11021002", "11021001"]
    listed = await admin.slots("11021")
    assert listed[0] == {
        "id": "11021002",
        "start": "2099-01-05T09:00:00.000Z",
        "end": "2099-01-05T09:30:00.000Z",
        "status": "free",
        "clinician": None,
    }

    ubrn = (await create_referral(ers, ["11021"])).json()["id"]
    deferral = await post_appointment(
        ers, appointment_body(ubrn, 1, "11021", reason="NO_SLOTS_AT_SERVICE")
    )
    assert error_code(deferral) == "SLOTS_CURRENTLY_AVAILABLE"


async def test_referral_summary(ers: httpx.AsyncClient, admin: SandboxAdmin) -> None:
    response = await create_referral(
        ers, ["11002", "11000"], headers=ers_headers(RC, extra={"X-Correlation-ID": "c-1"})
    )
    created = response.json()
    slot = (await free_slots(ers, "11000"))[0]
    booked = await post_appointment(ers, appointment_body(created["id"], 1, "11000", slot_id=slot))

    summary = await admin.referral(created["id"])

    assert summary == {
        "ubrn": created["id"],
        "version": 2,
        "state": "BOOKED",
        "nhs_number": "9912003888",
        "ods_code": "R69",
        "service_ids": ["11002", "11000"],
        "attachments": [],
        "appointment": {
            "id": booked.json()["id"],
            "service_id": "11000",
            "slot_id": slot,
            "start": booked.json()["start"],
            "end": booked.json()["end"],
            "status": "booked",
            "reason": None,
            "comment": None,
        },
        "created_via": "A011",
        "request_id": created["identifier"][0]["value"],
        "correlation_id": "c-1",
    }


async def test_unknown_admin_resources_are_404(sandbox_server: SandboxHandle) -> None:
    async with httpx.AsyncClient(base_url=f"{sandbox_server.root_url}/_sandbox") as raw:
        assert (await raw.get("/referrals/000000000001")).status_code == 404
        assert (await raw.get("/slots/99999")).status_code == 404


async def test_fault_can_name_the_error_code(ers: httpx.AsyncClient, admin: SandboxAdmin) -> None:
    ubrn = (await create_referral(ers, ["11002"])).json()["id"]
    slot = (await free_slots(ers, "11002"))[0]
    await admin.add_fault("A016", 422, code="SLOT_NOT_AVAILABLE")

    refused = await post_appointment(ers, appointment_body(ubrn, 1, "11002", slot_id=slot))
    booked = await post_appointment(ers, appointment_body(ubrn, 1, "11002", slot_id=slot))

    assert (refused.status_code, error_code(refused)) == (422, "SLOT_NOT_AVAILABLE")
    assert booked.status_code == 201, booked.text
