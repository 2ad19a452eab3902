"""e-RS misbehaving for a while: a 429 storm, and a 60-second outage. Every request completes
once e-RS is back, exactly once, with the retries it took visible."""

from __future__ import annotations

import asyncio
import logging

import pytest

from tests.conftest import ReliabilityFigures
from tests.harness import Harness, mixed_batch

ENDPOINTS = ["A004", "A010", "A011", "A012", "A015", "A016", "A019", "A020"]
MIXED = ["01-dbs-booked.json", "03-ibs-shortlisted.json", "05-shortlist-only.json"]


def requests(count: int) -> list[dict[str, object]]:
    return mixed_batch(count, MIXED)


async def run_batch(
    harness: Harness, batch: list[dict[str, object]], timeout: float
) -> list[dict[str, object]]:
    cids = [await harness.publish(r) for r in batch]
    await harness.wait_until(lambda: all(harness.outcomes(c) for c in cids), timeout=timeout)
    await harness.settle()
    return [harness.outcomes(c)[0] for c in cids]


async def assert_exactly_once(
    harness: Harness, batch: list[dict[str, object]], outcomes: list[dict[str, object]]
) -> None:
    assert [o["status"] for o in outcomes] == ["COMPLETED"] * len(batch), [
        o["error"] for o in outcomes if o["status"] != "COMPLETED"
    ]
    referrals = await harness.sandbox.referrals()
    per_patient: dict[str, int] = {}
    for referral in referrals:
        per_patient[referral["nhs_number"]] = per_patient.get(referral["nhs_number"], 0) + 1
    for request in batch:
        assert per_patient.get(request["patient"]["nhs_number"]) == 1  # type: ignore[index]
    busy = [s for s in await harness.sandbox.slots("11002") if s["status"] == "busy"]
    bookings = sum(1 for o in outcomes if o["path"] == "DBS_BOOKED")
    assert len(busy) == bookings


@pytest.mark.worker_settings(ers_max_attempts=6, concurrency=10)
async def test_a_429_storm_is_ridden_out(harness: Harness, reliability: ReliabilityFigures) -> None:
    for endpoint in ENDPOINTS:
        await harness.sandbox.add_fault(endpoint=endpoint, status=429, times=15, retry_after=0)
    batch = requests(30)

    outcomes = await run_batch(harness, batch, timeout=120)

    await assert_exactly_once(harness, batch, outcomes)
    calls = await harness.sandbox.requests()
    throttled = sum(1 for c in calls if c["status"] == 429)
    assert throttled == 15 * len(ENDPOINTS)
    reliability.requests += len(batch)
    reliability.retries += throttled


@pytest.mark.worker_settings(retry_delays_seconds="1,2,4", concurrency=10)
async def test_a_60_second_outage_then_everything_completes(
    harness: Harness, reliability: ReliabilityFigures, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="worker.messaging.handler")
    for endpoint in ENDPOINTS:
        await harness.sandbox.add_fault(endpoint=endpoint, status=503, times=1_000_000)
    batch = requests(20)
    cids = [await harness.publish(r) for r in batch]
    await asyncio.sleep(60)  # the outage itself, not a wait for a result
    await harness.poll()
    assert not any(harness.outcomes(c) for c in cids), "nothing can complete while e-RS is down"
    await harness.sandbox.clear_faults()

    await harness.wait_until(lambda: all(harness.outcomes(c) for c in cids), timeout=120)
    await harness.settle()
    outcomes = [harness.outcomes(c)[0] for c in cids]

    await assert_exactly_once(harness, batch, outcomes)
    unavailable = sum(1 for c in await harness.sandbox.requests() if c["status"] == 503)
    trips = sum(1 for r in caplog.records if r.getMessage() == "saga waiting")
    assert unavailable > len(batch)
    assert trips >= len(batch)
    reliability.requests += len(batch)
    reliability.retries += unavailable
    reliability.delayed += trips
