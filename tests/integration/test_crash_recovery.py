"""SIGKILL wherever a saga is stored and around every e-RS call, then restart.

For each crash point a referral request (a DBS booking with a letter attached) goes to a
worker process that kills itself there; a fresh process takes the redelivered message over.
Whatever the point: exactly one terminal outcome, never two referrals or two bookings, and
nothing left in the queues; and since e-RS can tell the successor what happened at each of
these points, nobody is asked.
"""

from __future__ import annotations

from typing import Any

import aio_pika
import pytest

from tests.conftest import ReliabilityFigures
from tests.harness import Harness, sample
from tests.processes import WorkerProcess
from worker.messaging.topology import Names
from worker.ops.failpoints import ENV
from worker.ops.settings import Settings

# Where a DBS saga is stored on its own: before a read that follows a write (the journal's
# rule, worker.saga.journal). Every other step is stored with the next write's mark, so
# before_send below covers it; a step that only read is stored with nothing.
BOUNDARIES = ["BOOK_OR_DEFER", "PATIENT_LETTER"]
COMPLETES = (
    [f"after_checkpoint:{s}" for s in BOUNDARIES]
    # The outcome stored, its events not yet published: the successor answers with it.
    + ["after_finish"]
    # Reads answered by e-RS, the answer not yet read: repeating them is harmless.
    + [f"after_send:{endpoint}" for endpoint in ("A004", "A010", "A015", "A019")]
    + [
        f"{when}:{endpoint}"
        # A012 and A016 are read back from A005; A020 is uploaded again (an unlinked Binary
        # is inert), and linked once; A011 is looked for on e-RS' worklists: adopted when it
        # was made (after_send), sent again after the horizon when it was not (before_send).
        for endpoint in ("A011", "A012", "A016", "A020")
        for when in ("before_send", "after_send")
    ]
)
WRITES = ("A011", "A012", "A016", "A020", "A021")


async def queue_depths(amqp_url: str, settings: Settings) -> dict[str, int]:
    names = Names(settings.topology_prefix)
    connection = await aio_pika.connect(amqp_url)
    async with connection:
        channel = await connection.channel()
        depths = {}
        for name in (names.requests_queue, *(names.delay_queue(d) for d in settings.retry_delays)):
            queue = await channel.declare_queue(name, passive=True)
            depths[name] = queue.declaration_result.message_count or 0
        return depths


async def crash_then_recover(
    harness: Harness, settings: Settings, point: str, figures: ReliabilityFigures
) -> tuple[dict[str, Any], dict[str, Any]]:
    await harness.worker.stop(grace_seconds=1)  # only the worker processes consume
    request = sample("01-dbs-booked.json")
    doomed = await WorkerProcess.start(settings, **{ENV: point})
    try:
        cid = await harness.publish(request)
        status = await doomed.killed(timeout=60)
    finally:
        await doomed.kill()
    assert status == -9, f"the worker did not reach {point}"
    figures.requests += 1
    figures.kills += 1
    successor = await WorkerProcess.start(settings)
    figures.restarts += 1
    try:
        await harness.wait_until(lambda: bool(harness.outcomes(cid)), timeout=60)
    finally:
        code, log = await successor.stop()
    assert code == 0, log[-2000:]
    await harness.poll()
    outcomes = harness.outcomes(cid)
    when, _, endpoint = point.partition(":")
    if endpoint in WRITES and when in ("before_send", "after_send"):
        figures.ambiguous += 1
        figures.reconciliations += sum(o["status"] == "NEEDS_RECONCILIATION" for o in outcomes)
    figures.duplicates += max(0, len(outcomes) - 1)
    assert len(outcomes) == 1
    nhs_number = request["patient"]["nhs_number"]
    referrals = [r for r in await harness.sandbox.referrals() if r["nhs_number"] == nhs_number]
    figures.duplicates += max(0, len(referrals) - 1)
    assert len(referrals) <= 1
    busy = [s for s in await harness.sandbox.slots("11002") if s["status"] == "busy"]
    assert len(busy) <= 1
    depths = await queue_depths(harness.amqp_url, settings)
    figures.lost += sum(depths.values())
    assert set(depths.values()) == {0}, depths
    assert "x-ers-access-token" not in str([p.headers for p in harness.parked])
    return outcomes[0], (referrals[0] if referrals else {})


@pytest.mark.parametrize("point", COMPLETES)
async def test_crash_then_restart_completes_once(
    harness: Harness, settings: Settings, point: str, reliability: ReliabilityFigures
) -> None:
    outcome, referral = await crash_then_recover(harness, settings, point, reliability)

    assert outcome["status"] == "COMPLETED", outcome["error"]
    assert outcome["path"] == "DBS_BOOKED"
    assert referral["state"] == "BOOKED"
    assert len(referral["attachments"]) == 1
    assert outcome["ubrn"] == referral["ubrn"]
    assert harness.parked == []


async def test_a_crash_while_waiting_to_retry_a_refused_create_sends_it_again(
    harness: Harness, settings: Settings, reliability: ReliabilityFigures
) -> None:
    # e-RS answers the first A011 with 503 (it did not take the request on); the worker dies
    # while it waits to retry. The successor must send A011 again, not ask a person.
    await harness.sandbox.add_fault(endpoint="A011", status=503, times=1)

    outcome, referral = await crash_then_recover(harness, settings, "not_taken:A011", reliability)

    assert outcome["status"] == "COMPLETED", outcome["error"]
    assert outcome["path"] == "DBS_BOOKED"
    assert outcome["ubrn"] == referral["ubrn"]
    assert harness.parked == []
