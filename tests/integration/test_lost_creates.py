"""Creates whose answer was lost, settled from e-RS' own worklists through the real broker and
the sandbox: adopted when e-RS shows exactly one, a person asked only when it shows several."""

from __future__ import annotations

from typing import Any

import pytest

from tests.conftest import ReliabilityFigures
from tests.harness import Harness, sample


async def referrals_of(harness: Harness, request: dict[str, Any]) -> list[dict[str, Any]]:
    nhs_number = request["patient"]["nhs_number"]
    return [r for r in await harness.sandbox.referrals() if r["nhs_number"] == nhs_number]


@pytest.mark.parametrize(
    ("name", "endpoint", "path", "state"),
    [
        ("01-dbs-booked.json", "A011", "DBS_BOOKED", "BOOKED"),
        ("04-ras-triage.json", "A021", "RAS_TRIAGE", "AWAITING_TRIAGE"),
    ],
)
async def test_a_create_acted_on_then_answered_with_a_dropped_connection_completes(
    harness: Harness,
    reliability: ReliabilityFigures,
    name: str,
    endpoint: str,
    path: str,
    state: str,
) -> None:
    await harness.sandbox.add_fault(endpoint=endpoint, status=None, drop=True)
    request = sample(name)

    cid = await harness.publish(request)
    outcome = await harness.outcome(cid)
    await harness.settle()

    assert outcome["status"] == "COMPLETED", outcome["error"]
    assert outcome["path"] == path
    (referral,) = await referrals_of(harness, request)  # one referral: the create not repeated
    assert outcome["ubrn"] == referral["ubrn"]
    assert referral["state"] == state
    calls = [c["endpoint"] for c in await harness.sandbox.requests()]
    assert calls.count(endpoint) == 1 and "A008" in calls
    assert harness.parked == []
    reliability.requests += 1
    reliability.ambiguous += 1


async def test_two_referrals_that_could_be_it_need_a_person_naming_both(
    harness: Harness, reliability: ReliabilityFigures
) -> None:
    # A gateway retried the create behind our back: e-RS made two referrals and the answer
    # was lost. e-RS itself cannot say which is this request's.
    await harness.sandbox.add_fault(endpoint="A011", status=None, drop=True, effects=2)
    request = sample("01-dbs-booked.json")

    cid = await harness.publish(request)
    outcome = await harness.outcome(cid)
    await harness.settle()

    made = await referrals_of(harness, request)
    assert len(made) == 2
    assert outcome["status"] == "NEEDS_RECONCILIATION"
    for referral in made:
        assert referral["ubrn"] in outcome["error"]["text"]
    assert request["patient"]["nhs_number"] not in outcome["error"]["text"]
    assert [p.headers["x-ers-reason"] for p in harness.parked] == ["NEEDS_RECONCILIATION"]
    calls = [c["endpoint"] for c in await harness.sandbox.requests()]
    assert calls.count("A011") == 1
    reliability.requests += 1
    reliability.ambiguous += 1
    reliability.reconciliations += 1
