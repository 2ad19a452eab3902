"""Upstream re-sends of one request id never refer twice; same-patient requests take turns."""

from __future__ import annotations

import orjson
import pytest

from tests.harness import Harness, sample


async def test_resend_after_it_finished_returns_the_same_outcome(harness: Harness) -> None:
    request = sample("01-dbs-booked.json")
    first = await harness.publish(request)
    original = await harness.outcome(first)
    again = await harness.publish(request)
    replayed = await harness.outcome(again)
    await harness.settle()

    assert replayed == original  # the stored event itself, event_id included
    referrals = [
        r
        for r in await harness.sandbox.referrals()
        if r["nhs_number"] == request["patient"]["nhs_number"]
    ]
    assert len(referrals) == 1
    assert len(harness.letters(first)) == 1
    assert harness.letters(again) == []


async def test_a_resend_reserialised_by_the_engine_gets_the_same_outcome(
    harness: Harness,
) -> None:
    # The interface engine re-serialised the request: other key order, no whitespace, a
    # number written as a float. Same content, so the same request: its original outcome.
    request = sample("03-ibs-shortlisted.json")
    pretty = orjson.dumps(request, option=orjson.OPT_INDENT_2)
    first = await harness.publish(pretty)
    original = await harness.outcome(first)
    reordered = dict(reversed(list(request.items())))
    reordered["referral"] = {**request["referral"], "first_reminder_letter_follow_up_days": 0.0}
    compact = orjson.dumps(reordered)
    assert compact != pretty
    again = await harness.publish(compact)
    replayed = await harness.outcome(again)
    await harness.settle()

    assert original["status"] == "COMPLETED"
    assert replayed == original  # the stored event itself, event_id included
    nhs_number = request["patient"]["nhs_number"]
    referrals = [r for r in await harness.sandbox.referrals() if r["nhs_number"] == nhs_number]
    assert len(referrals) == 1


async def test_a_different_request_under_a_used_id_is_still_refused(harness: Harness) -> None:
    request = sample("03-ibs-shortlisted.json")
    first = await harness.publish(request)
    assert (await harness.outcome(first))["status"] == "COMPLETED"
    changed = {**request, "search": {**request["search"], "priority": "URGENT"}}
    again = await harness.publish(changed)
    refused = await harness.outcome(again)
    await harness.settle()

    assert refused["status"] == "REJECTED"
    assert [e["field"] for e in refused["validation_errors"]] == ["request_id"]


async def test_resends_while_in_flight_make_one_referral(harness: Harness) -> None:
    # A slow e-RS keeps the first delivery in flight while the copies arrive.
    await harness.sandbox.add_fault(endpoint="A010", status=None, times=1, delay_seconds=1.0)
    request = sample("03-ibs-shortlisted.json")
    cids = [await harness.publish(request) for _ in range(4)]
    await harness.wait_until(lambda: all(harness.outcomes(c) for c in cids), timeout=60)
    await harness.settle()

    events = [harness.outcomes(c)[0] for c in cids]
    assert {e["event_id"] for e in events} == {events[0]["event_id"]}
    assert events[0]["status"] == "COMPLETED"
    calls = [c["endpoint"] for c in await harness.sandbox.requests()]
    assert calls.count("A011") == 1
    nhs_number = request["patient"]["nhs_number"]
    referrals = [r for r in await harness.sandbox.referrals() if r["nhs_number"] == nhs_number]
    assert len(referrals) == 1


@pytest.mark.worker_settings(concurrency=8)
async def test_requests_for_one_patient_take_turns_others_do_not_wait(
    harness: Harness,
) -> None:
    await harness.sandbox.add_fault(endpoint="A010", status=None, times=2, delay_seconds=0.5)
    same_patient = [sample("03-ibs-shortlisted.json") for _ in range(2)]
    other = sample("05-shortlist-only.json")
    cids = [await harness.publish(r) for r in (*same_patient, other)]
    await harness.wait_until(lambda: all(harness.outcomes(c) for c in cids), timeout=60)
    await harness.settle()

    calls = await harness.sandbox.requests()
    by_cid: dict[str, list[str]] = {}
    for call in calls:
        by_cid.setdefault(call["correlation_id"], []).append(call["endpoint"])
    # The second request for the patient starts (A004/A010) only after the first finished.
    order = [c["correlation_id"] for c in calls]
    first, second = cids[0], cids[1]
    if order.index(second) < order.index(first):
        first, second = second, first
    last_of_first = max(i for i, c in enumerate(order) if c == first)
    first_of_second = min(i for i, c in enumerate(order) if c == second)
    assert last_of_first < first_of_second
    # The other patient's request ran alongside.
    first_of_other = min(i for i, c in enumerate(order) if c == cids[2])
    assert first_of_other < last_of_first
    assert all(harness.outcomes(c)[0]["status"] == "COMPLETED" for c in cids)


async def test_a_request_id_reused_for_another_patient_is_refused(harness: Harness) -> None:
    first = sample("03-ibs-shortlisted.json")
    other = sample("03-ibs-shortlisted.json", request_id=first["request_id"])
    other["patient"] = {"nhs_number": "9434765919"}
    cid_first = await harness.publish(first)
    cid_other = await harness.publish(other)
    await harness.wait_until(
        lambda: bool(harness.outcomes(cid_first) and harness.outcomes(cid_other))
    )
    await harness.settle()

    assert harness.outcomes(cid_first)[0]["status"] == "COMPLETED"
    refused = harness.outcomes(cid_other)[0]
    assert refused["status"] == "REJECTED"
    assert [e["field"] for e in refused["validation_errors"]] == ["request_id"]
    assert [p.headers["x-ers-reason"] for p in harness.parked] == ["REQUEST_ID_REUSED"]
    referred = {r["nhs_number"] for r in await harness.sandbox.referrals()}
    assert "9434765919" not in referred


async def test_a_finished_request_is_answered_again_without_a_token(harness: Harness) -> None:
    request = sample("03-ibs-shortlisted.json")
    original = await harness.outcome(await harness.publish(request))
    again = await harness.outcome(await harness.publish(request, token=None))
    assert again == original
