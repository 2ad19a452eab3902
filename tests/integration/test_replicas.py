"""Two worker replicas sharing one PostgreSQL saga store and one queue; re-sends interleaved;
one replica dies mid-saga. Every request completes once; the dead replica's saga is taken
over when its lease runs out."""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator

import asyncpg
import pytest

from schemas.referral_request import Priority
from tests.conftest import ReliabilityFigures
from tests.harness import Harness, eventually, mixed_batch
from tests.integration.test_saga_store import POSTGRES_DSN
from tests.processes import WorkerProcess
from worker.ops.failpoints import ENV
from worker.ops.settings import Settings

SAMPLES = ["01-dbs-booked.json", "03-ibs-shortlisted.json"]


@pytest.fixture
async def postgres_settings(settings: Settings) -> AsyncIterator[Settings]:
    schema = f"t_{uuid.uuid4().hex[:12]}"
    yield settings.model_copy(
        update={"saga_store": "postgres", "postgres_schema": schema, "saga_lease_seconds": 3.0}
    )
    conn = await asyncpg.connect(POSTGRES_DSN)
    await conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
    await conn.close()


async def test_two_replicas_one_dies_everything_completes_once(
    harness: Harness, postgres_settings: Settings, reliability: ReliabilityFigures
) -> None:
    await harness.worker.stop(grace_seconds=1)  # only the replicas consume
    batch = mixed_batch(30, SAMPLES)
    # One saga at a time on the doomed replica, so the kill lands on exactly one saga at a
    # known point: its referral made (and, for DBS, booked) and stored, before its patient
    # letter. Both samples pass it (an IBS shortlist never reaches BOOK_OR_DEFER, so a point
    # there let the doomed replica run IBS sagas only and never die), so the first saga the
    # doomed replica takes kills it (tests/integration/test_crash_recovery.py covers kills in
    # the middle of e-RS calls).
    doomed = await WorkerProcess.start(
        postgres_settings,
        **{ENV: "after_checkpoint:PATIENT_LETTER", "WORKER_CONCURRENCY": "1", "AMQP_PREFETCH": "1"},
    )
    survivor = await WorkerProcess.start(postgres_settings)
    try:
        # Both consuming before the first publish: else the one that starts first can take
        # the whole batch (the survivor's prefetch, 40 a queue, covers all 40 requests) and
        # the doomed replica never gets a saga to die in.
        work_queue = harness.names.work_queue(Priority.ROUTINE)

        async def both_consuming() -> bool:
            return await harness.consumers(work_queue) == 2

        await eventually(both_consuming, timeout=60)
        cids = [await harness.publish(r) for r in batch]
        resent = [await harness.publish(r) for r in batch[:10]]  # upstream re-sends
        status = await doomed.killed(timeout=60)
        assert status == -9, await doomed.stderr_tail()
        await harness.wait_until(
            lambda: all(harness.outcomes(c) for c in cids + resent), timeout=120
        )
    finally:
        await doomed.kill()
        code, log = await survivor.stop()
    assert code == 0, log[-2000:]
    await harness.poll()

    for original, again in zip(cids[:10], resent, strict=True):
        assert {o["event_id"] for o in harness.outcomes(original) + harness.outcomes(again)} == {
            harness.outcomes(original)[0]["event_id"]
        }
    outcomes = [harness.outcomes(c)[0] for c in cids]
    assert [o["status"] for o in outcomes] == ["COMPLETED"] * len(batch)
    per_patient: dict[str, int] = {}
    for referral in await harness.sandbox.referrals():
        per_patient[referral["nhs_number"]] = per_patient.get(referral["nhs_number"], 0) + 1
    duplicates = sum(per_patient[r["patient"]["nhs_number"]] - 1 for r in batch)
    assert duplicates == 0
    busy = [s for s in await harness.sandbox.slots("11002") if s["status"] == "busy"]
    assert len(busy) == sum(1 for o in outcomes if o["path"] == "DBS_BOOKED")
    reliability.requests += len(batch) + len(resent)
    reliability.kills += 1
    reliability.duplicates += duplicates


async def kill_then_recover(
    harness: Harness,
    settings: Settings,
    reliability: ReliabilityFigures,
    doomed_env: dict[str, str],
    successor_env: dict[str, str],
) -> tuple[float, str]:
    """One request; its replica SIGKILLed once A010 has answered; a successor finishes it. Returns
    the seconds from the kill to the outcome, and the successor's log."""
    await harness.worker.stop(grace_seconds=1)
    (request,) = mixed_batch(1, ["01-dbs-booked.json"])
    doomed = await WorkerProcess.start(settings, **doomed_env, **{ENV: "after_send:A010"})
    try:
        cid = await harness.publish(request)
        assert await doomed.killed(timeout=60) == -9
    finally:
        await doomed.kill()
    killed_at = time.monotonic()
    successor = await WorkerProcess.start(settings, **successor_env)
    try:
        await harness.wait_until(lambda: bool(harness.outcomes(cid)), timeout=60)
        took = time.monotonic() - killed_at
    finally:
        code, log = await successor.stop()
    assert code == 0, log[-2000:]
    assert harness.outcomes(cid)[0]["status"] == "COMPLETED"
    reliability.requests += 1
    reliability.kills += 1
    reliability.restarts += 1
    return took, log


@pytest.mark.worker_settings(retry_delays_seconds="10,60,600,3600")
async def test_a_killed_replicas_saga_completes_within_lease_plus_15_seconds(
    harness: Harness, postgres_settings: Settings, reliability: ReliabilityFigures
) -> None:
    # The default lease and delay tiers; the survivor has a name of its own, so it must wait
    # out the dead replica's lease, polling at the first tier rather than climbing the tiers.
    settings = postgres_settings.model_copy(update={"saga_lease_seconds": 30.0})

    took, _ = await kill_then_recover(harness, settings, reliability, {}, {})

    assert took <= settings.saga_lease_seconds + 15, took


async def test_a_restarted_replica_with_a_stable_name_takes_its_saga_back_at_once(
    harness: Harness, postgres_settings: Settings, reliability: ReliabilityFigures
) -> None:
    settings = postgres_settings.model_copy(update={"saga_lease_seconds": 30.0})
    name = {"REPLICA_NAME": "ers-worker-0"}

    took, log = await kill_then_recover(harness, settings, reliability, name, name)

    assert took < settings.saga_lease_seconds / 2, took  # not waiting out its own lease
    assert "released leases of a previous run" in log
