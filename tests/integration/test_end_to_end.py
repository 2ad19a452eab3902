"""Every path of the referral saga through the real broker and the sandbox over real HTTP.

Each test asserts the events published (count and content, on the reply queue and the topic
exchange) and the sandbox's resulting state.
"""

from __future__ import annotations

import hashlib
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import pypdf
import pytest

from tests.harness import SAMPLES, TEST_TOKEN, Harness, mixed_batch, sample
from worker.saga.state import TriageRoute
from worker.saga.working_days import add_working_days


async def run_one(
    harness: Harness, request: dict[str, Any] | bytes, **kw: Any
) -> tuple[str, dict[str, Any]]:
    cid = await harness.publish(request, **kw)
    outcome = await harness.outcome(cid)
    await harness.settle()
    return cid, outcome


def assert_one_outcome_each_way(harness: Harness, cid: str, letters: int) -> None:
    assert len(harness.outcomes(cid)) == 1
    assert len(harness.outcomes(cid, harness.topic)) == 1
    assert len(harness.letters(cid)) == letters
    assert len(harness.letters(cid, harness.topic)) == letters


def pdf_text(path: str) -> str:
    return "\n".join(page.extract_text() for page in pypdf.PdfReader(path).pages)


def assert_letter(harness: Harness, cid: str, outcome: dict[str, Any], state: str) -> None:
    (ready,) = harness.letters(cid)
    letter = outcome["letter"]
    assert ready["letter"] == letter and ready["ubrn"] == outcome["ubrn"]
    content = Path(letter["location"]).read_bytes()
    assert content.startswith(b"%PDF")
    assert letter["size_bytes"] == len(content)
    assert letter["sha256"] == hashlib.sha256(content).hexdigest()
    text = pdf_text(letter["location"])
    assert outcome["ubrn"] in text
    assert state in text


async def only_referral_for(harness: Harness, nhs_number: str) -> dict[str, Any]:
    referrals = [r for r in await harness.sandbox.referrals() if r["nhs_number"] == nhs_number]
    assert len(referrals) == 1, f"expected one referral for the patient, found {len(referrals)}"
    return referrals[0]


def created_today_plus(working_days: int, appointment_day: date | None = None) -> date:
    return add_working_days(appointment_day or datetime.now(UTC).date(), working_days)


async def test_dbs_booked_with_letter_attached(harness: Harness) -> None:
    request = sample("01-dbs-booked.json")
    free_before = [s for s in await harness.sandbox.slots("11002") if s["status"] == "free"]

    cid, outcome = await run_one(harness, request)

    assert_one_outcome_each_way(harness, cid, letters=1)
    # The letter-ready event comes before its outcome, on the reply queue and the topic alike
    # (their confirms are awaited together, so this is the channel's order at work).
    for received in (harness.replies, harness.topic):
        kinds = [r.body["event_type"] for r in received if r.correlation_id == cid]
        assert kinds == ["referral.letter_ready", "referral.outcome"]
    assert outcome["status"] == "COMPLETED", outcome["error"]
    assert outcome["path"] == "DBS_BOOKED"
    assert outcome["referral_state"] == "BOOKED"
    assert outcome["request_id"] == request["request_id"]
    assert outcome["service_ids"] == ["11002"]
    assert outcome["attachments_linked"] == 1
    appointment = outcome["appointment"]
    earliest = min(free_before, key=lambda s: s["start"])
    assert appointment["slot_id"] == earliest["id"]
    assert appointment["status"] == "booked"

    referral = await only_referral_for(harness, request["patient"]["nhs_number"])
    assert referral["ubrn"] == outcome["ubrn"]
    assert referral["state"] == "BOOKED"
    assert referral["created_via"] == "A011"
    assert [a["file_name"] for a in referral["attachments"]] == ["referral-letter.txt"]
    slots = {s["id"]: s["status"] for s in await harness.sandbox.slots("11002")}
    assert slots[earliest["id"]] == "busy"
    assert sum(1 for s in slots.values() if s == "busy") == 1
    assert_letter(harness, cid, outcome, "BOOKED")

    calls = await harness.sandbox.requests()
    assert [c["endpoint"] for c in calls] == [
        "A004",
        "A010",
        "A011",
        "A020",
        "A012",
        "A015",
        "A016",
        "A019",
    ]
    assert {c["correlation_id"] for c in calls} == {cid}
    assert {c["business_function"] for c in calls} == {"REFERRING_CLINICIAN"}


async def test_dbs_without_slots_is_deferred_to_the_provider(harness: Harness) -> None:
    request = sample("02-dbs-deferred-no-slots.json")

    cid, outcome = await run_one(harness, request)

    assert_one_outcome_each_way(harness, cid, letters=1)
    assert outcome["status"] == "COMPLETED", outcome["error"]
    assert outcome["path"] == "DBS_DEFERRED"
    assert outcome["referral_state"] == "DEFERRED_TO_PROVIDER"
    assert outcome["appointment"]["reason"] == "NO_SLOTS_AT_SERVICE"
    referral = await only_referral_for(harness, request["patient"]["nhs_number"])
    assert referral["state"] == "DEFERRED_TO_PROVIDER"
    assert referral["appointment"]["reason"] == "NO_SLOTS_AT_SERVICE"
    # ROUTINE: A004 deferToProviderContactDays = 40 working days from the appointment.
    assert outcome["contact_by"] == created_today_plus(40).isoformat()
    assert_letter(harness, cid, outcome, "DEFERRED_TO_PROVIDER")


async def test_slot_taken_between_search_and_booking_moves_to_the_next(harness: Harness) -> None:
    await harness.sandbox.add_fault(endpoint="A016", status=422, times=1, code="SLOT_NOT_AVAILABLE")
    request = sample("01-dbs-booked.json")
    free = sorted(
        (s for s in await harness.sandbox.slots("11002") if s["status"] == "free"),
        key=lambda s: s["start"],
    )

    _, outcome = await run_one(harness, request)

    assert outcome["path"] == "DBS_BOOKED"
    assert outcome["appointment"]["slot_id"] == free[1]["id"]


async def test_a_booking_whose_answer_was_lost_is_confirmed_through_a005_with_its_slot(
    harness: Harness,
) -> None:
    # e-RS books the slot, then the answer is lost (504): the worker reads the referral back
    # and reports the booking with the slot it holds, booked once.
    await harness.sandbox.add_fault(endpoint="A016", status=504, times=1, after_effect=True)
    request = sample("01-dbs-booked.json")
    earliest = min(
        (s for s in await harness.sandbox.slots("11002") if s["status"] == "free"),
        key=lambda s: s["start"],
    )

    _, outcome = await run_one(harness, request)

    assert outcome["status"] == "COMPLETED", outcome["error"]
    assert outcome["path"] == "DBS_BOOKED"
    assert outcome["appointment"]["slot_id"] == earliest["id"]
    busy = [s for s in await harness.sandbox.slots("11002") if s["status"] == "busy"]
    assert [s["id"] for s in busy] == [earliest["id"]]
    calls = [c["endpoint"] for c in await harness.sandbox.requests()]
    assert calls.count("A016") == 1 and "A005" in calls


async def test_an_upload_whose_answer_was_lost_is_uploaded_again_and_linked_once(
    harness: Harness,
) -> None:
    # e-RS stores the file, then the answer is lost (504): the orphan Binary is inert, so the
    # worker uploads again and links only the upload it heard about.
    await harness.sandbox.add_fault(endpoint="A020", status=504, times=1, after_effect=True)
    request = sample("01-dbs-booked.json")

    _, outcome = await run_one(harness, request)

    assert outcome["status"] == "COMPLETED", outcome["error"]
    assert outcome["attachments_linked"] == 1
    referral = await only_referral_for(harness, request["patient"]["nhs_number"])
    assert len(referral["attachments"]) == 1
    calls = [c["endpoint"] for c in await harness.sandbox.requests()]
    assert calls.count("A020") == 2 and calls.count("A012") == 1
    assert harness.parked == []


async def test_ibs_is_shortlisted_and_the_letter_tells_the_patient(harness: Harness) -> None:
    request = sample("03-ibs-shortlisted.json")

    cid, outcome = await run_one(harness, request)

    assert_one_outcome_each_way(harness, cid, letters=1)
    assert outcome["status"] == "COMPLETED", outcome["error"]
    assert outcome["path"] == "IBS_SHORTLISTED"
    assert outcome["referral_state"] == "NOT_BOOKED"
    assert outcome["appointment"] is None
    referral = await only_referral_for(harness, request["patient"]["nhs_number"])
    assert referral["service_ids"] == ["11003"]
    assert referral["appointment"] is None
    assert "A016" not in [c["endpoint"] for c in await harness.sandbox.requests()]
    assert_letter(harness, cid, outcome, "NOT_BOOKED")


@pytest.mark.parametrize(
    ("route", "create_endpoint"),
    [
        pytest.param(
            route, endpoint, marks=pytest.mark.worker_settings(ers_triage_route=TriageRoute(route))
        )
        for route, endpoint in [("A021", "A021"), ("A011_A016", "A011")]
    ],
)
async def test_ras_referral_is_sent_for_triage(
    harness: Harness, route: str, create_endpoint: str
) -> None:
    request = sample("04-ras-triage.json")

    cid, outcome = await run_one(harness, request)

    assert_one_outcome_each_way(harness, cid, letters=1)
    assert outcome["status"] == "COMPLETED", outcome["error"]
    assert outcome["path"] == "RAS_TRIAGE"
    assert outcome["referral_state"] == "AWAITING_TRIAGE"
    assert outcome["attachments_linked"] == 1
    referral = await only_referral_for(harness, request["patient"]["nhs_number"])
    assert referral["state"] == "AWAITING_TRIAGE"
    assert referral["service_ids"] == ["11004"]
    assert referral["created_via"] == create_endpoint
    assert len(referral["attachments"]) == 1
    # ROUTINE: A004 triageContactDays = 40 working days.
    assert outcome["contact_by"] == created_today_plus(40).isoformat()
    endpoints = [c["endpoint"] for c in await harness.sandbox.requests()]
    assert endpoints.count(create_endpoint) == 1
    assert ("A016" in endpoints) is (route == "A011_A016")


async def test_shortlist_only_takes_the_first_suitable_services(harness: Harness) -> None:
    request = sample("05-shortlist-only.json")

    cid, outcome = await run_one(harness, request)

    assert_one_outcome_each_way(harness, cid, letters=1)
    assert outcome["status"] == "COMPLETED", outcome["error"]
    assert outcome["path"] == "SHORTLIST_ONLY"
    assert outcome["referral_state"] == "NOT_BOOKED"
    assert len(outcome["service_ids"]) == 3
    referral = await only_referral_for(harness, request["patient"]["nhs_number"])
    assert referral["service_ids"] == outcome["service_ids"]


async def test_a_service_not_returned_by_the_search_fails_without_a_referral(
    harness: Harness,
) -> None:
    request = sample("01-dbs-booked.json", shortlist={"mode": "explicit", "service_ids": ["20001"]})

    cid, outcome = await run_one(harness, request)

    assert_one_outcome_each_way(harness, cid, letters=0)
    assert outcome["status"] == "FAILED"
    assert outcome["error"]["step"] == "SEARCH"
    assert outcome["error"]["code"] == "SERVICE_NOT_IN_SEARCH_RESULTS"
    assert "20001" in outcome["error"]["text"]
    assert outcome["error"]["retryable"] is False
    assert outcome["ubrn"] is None
    assert [
        r
        for r in await harness.sandbox.referrals()
        if r["nhs_number"] == request["patient"]["nhs_number"]
    ] == []
    assert harness.parked == []


async def test_invalid_message_is_rejected_dead_lettered_and_the_worker_goes_on(
    harness: Harness,
) -> None:
    bad = (SAMPLES / "06-invalid-nhs-number.json").read_bytes()
    bad_cid = await harness.publish(bad)
    good = sample("03-ibs-shortlisted.json")
    good_cid = await harness.publish(good)
    await harness.wait_until(lambda: bool(harness.outcomes(bad_cid) and harness.outcomes(good_cid)))
    await harness.settle()

    assert_one_outcome_each_way(harness, bad_cid, letters=0)
    (rejected,) = harness.outcomes(bad_cid)
    assert rejected["status"] == "REJECTED"
    assert rejected["request_id"] == "demo-invalid"
    assert {e["field"] for e in rejected["validation_errors"]} == {
        "patient.nhs_number",
        "search.priority",
    }
    assert "9990010006" not in str(rejected)
    (parked,) = harness.parked
    assert parked.correlation_id == bad_cid
    assert parked.headers["x-ers-reason"] == "INVALID_MESSAGE"
    assert "x-ers-access-token" not in parked.headers
    assert TEST_TOKEN not in str(parked.headers)
    assert harness.outcomes(good_cid)[0]["status"] == "COMPLETED"
    assert (
        len(await harness.sandbox.referrals()) == 2 + 1
    )  # the two seeded referrals + the good one


async def test_missing_reply_to_and_garbage_are_rejected(harness: Harness) -> None:
    cid_garbage = await harness.publish(b"\x00not json")
    cid_no_reply = await harness.publish(sample("03-ibs-shortlisted.json"), reply=False)
    await harness.wait_until(
        lambda: (
            bool(harness.outcomes(cid_garbage))
            and bool(harness.outcomes(cid_no_reply, harness.topic))
        )
    )
    await harness.settle()

    (garbage,) = harness.outcomes(cid_garbage)
    assert garbage["validation_errors"][0]["field"] == "(body)"
    (no_reply,) = harness.outcomes(cid_no_reply, harness.topic)
    assert no_reply["status"] == "REJECTED"
    assert [e["field"] for e in no_reply["validation_errors"]] == ["(properties).reply_to"]
    assert {p.correlation_id for p in harness.parked} == {cid_garbage, cid_no_reply}
    assert len(await harness.sandbox.requests()) == 0


@pytest.mark.parametrize(
    ("token", "code", "calls"),
    [(None, "TOKEN_MISSING", 0), ("expired-cis2-token", "NO_ACCESS", 1)],
)
async def test_no_valid_token_asks_for_reauthentication(
    harness: Harness, token: str | None, code: str, calls: int
) -> None:
    cid, outcome = await run_one(harness, sample("01-dbs-booked.json"), token=token)

    assert_one_outcome_each_way(harness, cid, letters=0)
    assert outcome["status"] == "REAUTHENTICATION_NEEDED"
    assert outcome["error"]["code"] == code
    assert outcome["error"]["retryable"] is True
    assert len(await harness.sandbox.requests()) == calls
    assert harness.parked == []


@pytest.mark.parametrize(
    ("token", "why"),
    [
        ("abc\r\nX-Injected: 1", "line break"),
        ("t\u00f6ken", "visible ASCII"),
        ("a b", "visible ASCII"),
    ],
    # A token too long for any is refused at intake: tests/integration/test_bad_inputs.py.
    ids=["crlf", "non-ascii", "space"],
)
async def test_a_malformed_token_asks_for_reauthentication_with_no_e_rs_call(
    harness: Harness, token: str, why: str
) -> None:
    cid, outcome = await run_one(harness, sample("01-dbs-booked.json"), token=token)

    assert_one_outcome_each_way(harness, cid, letters=0)
    assert outcome["status"] == "REAUTHENTICATION_NEEDED"
    assert outcome["error"]["code"] == "TOKEN_MALFORMED"
    assert "x-ers-access-token" in outcome["error"]["text"] and why in outcome["error"]["text"]
    assert token not in str(outcome)
    assert await harness.sandbox.requests() == []
    assert harness.parked == []


async def test_transient_e_rs_faults_are_retried(harness: Harness) -> None:
    await harness.sandbox.add_fault(endpoint="A010", status=503, times=2)
    await harness.sandbox.add_fault(endpoint="A019", status=429, times=1, retry_after=0)

    _, outcome = await run_one(harness, sample("03-ibs-shortlisted.json"))

    assert outcome["status"] == "COMPLETED", outcome["error"]
    statuses = [(c["endpoint"], c["status"]) for c in await harness.sandbox.requests()]
    assert statuses.count(("A010", 503)) == 2
    assert statuses.count(("A010", 200)) == 1
    assert statuses.count(("A019", 429)) == 1


@pytest.mark.worker_settings(retry_delays_seconds="0.2,0.5,3", ers_retry_max_seconds=0.1)
async def test_a_retry_after_longer_than_in_process_waits_is_honoured_from_a_delay_queue(
    harness: Harness,
) -> None:
    # Issue 9: e-RS asks for 2 s, more than the worker waits in process (0.1 s here; 30 s by
    # default against a Retry-After of 90): it is asked again no sooner, from the 3 s tier.
    await harness.sandbox.add_fault(endpoint="A010", status=429, times=1, retry_after=2)
    request = sample("05-shortlist-only.json")

    _, outcome = await run_one(harness, request)

    assert outcome["status"] == "COMPLETED", outcome["error"]
    searches = [c for c in await harness.sandbox.requests() if c["endpoint"] == "A010"]
    assert [c["status"] for c in searches] == [429, 200]  # not retried in process
    metrics = harness.worker.metrics.registry
    trips = metrics.get_sample_value(
        "ers_worker_delayed_messages_total",
        {"delay_seconds": "3", "reason": "too_many_requests"},
    )
    assert trips == 1


async def test_defer_to_provider_with_free_slots_leaves_the_referral_unbooked(
    harness: Harness,
) -> None:
    request = sample("01-dbs-booked.json", action={"kind": "DEFER_TO_PROVIDER"})

    _, outcome = await run_one(harness, request)

    assert outcome["status"] == "COMPLETED", outcome["error"]
    assert outcome["path"] == "DBS_NOT_BOOKED"
    assert outcome["path_reason"] == "SLOTS_AVAILABLE_DEFERRAL_NOT_ALLOWED"
    assert outcome["referral_state"] == "NOT_BOOKED"
    referral = await only_referral_for(harness, request["patient"]["nhs_number"])
    assert referral["state"] == "NOT_BOOKED"
    assert "A016" not in [c["endpoint"] for c in await harness.sandbox.requests()]


async def test_defer_to_provider_without_slots_defers(harness: Harness) -> None:
    request = sample("02-dbs-deferred-no-slots.json", action={"kind": "DEFER_TO_PROVIDER"})

    _, outcome = await run_one(harness, request)

    assert outcome["path"] == "DBS_DEFERRED"
    assert outcome["appointment"]["reason"] == "NO_SLOTS_AT_SERVICE"


async def test_defer_for_a_slot_the_patient_asked_about_references_it(harness: Harness) -> None:
    request = sample(
        "01-dbs-booked.json",
        action={
            "kind": "DEFER_TO_PROVIDER",
            "comment": "Patient asked for an evening clinic",
            "requested_slot_id": "99999999",
        },
    )

    _, outcome = await run_one(harness, request)

    assert outcome["status"] == "COMPLETED", outcome["error"]
    assert outcome["path"] == "DBS_DEFERRED"
    assert outcome["appointment"]["reason"] == "SLOT_NOT_AVAILABLE"
    referral = await only_referral_for(harness, request["patient"]["nhs_number"])
    assert referral["state"] == "DEFERRED_TO_PROVIDER"
    assert referral["appointment"]["slot_id"] == "99999999"
    assert referral["appointment"]["reason"] == "SLOT_NOT_AVAILABLE"
    assert referral["appointment"]["comment"] == "Patient asked for an evening clinic"


async def test_no_slot_in_the_booking_window_leaves_the_referral_unbooked(
    harness: Harness,
) -> None:
    request = sample(
        "01-dbs-booked.json",
        action={"kind": "BOOK_EARLIEST", "booking_window": {"not_after": "2020-01-01"}},
    )

    _, outcome = await run_one(harness, request)

    assert outcome["path"] == "DBS_NOT_BOOKED"
    assert outcome["path_reason"] == "NO_SLOT_IN_WINDOW"
    assert all(s["status"] == "free" for s in await harness.sandbox.slots("11002"))


async def test_a_named_clinician_slot_is_booked_with_the_clinician(harness: Harness) -> None:
    request = sample("01-dbs-booked.json", shortlist={"mode": "explicit", "service_ids": ["14000"]})
    request["search"]["named_clinician_sds_user_id"] = "921600556514"

    _, outcome = await run_one(harness, request)

    assert outcome["path"] == "DBS_BOOKED", outcome["error"]
    slots = {s["id"]: s for s in await harness.sandbox.slots("14000")}
    booked = slots[outcome["appointment"]["slot_id"]]
    assert booked["status"] == "busy"
    assert booked["clinician"] == "921600556514"


@pytest.mark.worker_settings(concurrency=8)
async def test_concurrent_bookings_into_one_service_each_get_a_slot(harness: Harness) -> None:
    free = [s for s in await harness.sandbox.slots("11002") if s["status"] == "free"]
    batch = mixed_batch(len(free), ["01-dbs-booked.json"])
    cids = [await harness.publish(r) for r in batch]
    await harness.wait_until(lambda: all(harness.outcomes(c) for c in cids), timeout=60)
    await harness.settle()

    outcomes = [harness.outcomes(c)[0] for c in cids]
    assert [o["path"] for o in outcomes] == ["DBS_BOOKED"] * len(free)
    assert len({o["appointment"]["slot_id"] for o in outcomes}) == len(free)
    assert all(s["status"] == "busy" for s in await harness.sandbox.slots("11002"))


@pytest.mark.worker_settings(slot_page_size=2)
async def test_slot_pages_that_vanish_while_paging_end_the_list(harness: Harness) -> None:
    # Page 2 of the slot list existed when page 1 was read, then went (others booked): e-RS
    # refuses the page as out of range, and the worker books from what it had read.
    await harness.sandbox.add_fault(endpoint="A015", status=None, times=1)  # page 1 as is
    await harness.sandbox.add_fault(endpoint="A015", status=400, times=1, code="INVALID_VALUE")

    _, outcome = await run_one(harness, sample("01-dbs-booked.json"))

    assert outcome["status"] == "COMPLETED", outcome["error"]
    assert outcome["path"] == "DBS_BOOKED"
    calls = [(c["endpoint"], c["status"]) for c in await harness.sandbox.requests()]
    assert calls.count(("A015", 400)) == 1
