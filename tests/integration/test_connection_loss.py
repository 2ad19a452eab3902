"""The broker drops the worker's connections twice during a run of 200 requests: every
request completes, none is duplicated, none is lost."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import aio_pika
import pytest

from schemas.referral_request import Priority
from tests.broker import drop_connections
from tests.conftest import ReliabilityFigures
from tests.harness import Harness, mixed_batch, sample
from worker.messaging.topology import Names
from worker.ops.settings import Settings

SAMPLES = ["01-dbs-booked.json", "03-ibs-shortlisted.json", "05-shortlist-only.json"]


async def queued(amqp_url: str, settings: Settings) -> int:
    names = Names(settings.topology_prefix)
    connection = await aio_pika.connect(amqp_url)
    async with connection:
        channel = await connection.channel()
        total = 0
        for name in (names.requests_queue, *(names.delay_queue(d) for d in settings.retry_delays)):
            queue = await channel.declare_queue(name, passive=True)
            total += queue.declaration_result.message_count or 0
        return total


@pytest.mark.worker_settings(concurrency=20, prefetch=20)
async def test_connections_dropped_mid_run(
    harness: Harness, settings: Settings, reliability: ReliabilityFigures
) -> None:
    start = datetime.now(UTC).replace(minute=0, second=0, microsecond=0) + timedelta(days=2)
    await harness.sandbox.set_slots(
        "11002",
        [
            {
                "start": (start + timedelta(minutes=10 * i)).isoformat(),
                "end": (start + timedelta(minutes=10 * (i + 1))).isoformat(),
            }
            for i in range(120)
        ],
    )
    batch = mixed_batch(200, SAMPLES)
    cids = [await harness.publish(r) for r in batch]

    drops = 0
    for done in (40, 110):
        await harness.wait_until(
            lambda n=done: sum(1 for c in cids if harness.outcomes(c)) >= n, timeout=120
        )
        drops += await drop_connections("ers-worker")
    await harness.wait_until(lambda: all(harness.outcomes(c) for c in cids), timeout=180)
    await harness.settle()

    assert drops >= 2
    distinct = [{o["event_id"] for o in harness.outcomes(c)} for c in cids]
    assert all(len(ids) == 1 for ids in distinct), "a request got two different outcomes"
    outcomes = [harness.outcomes(c)[0] for c in cids]
    not_completed = [o["error"] for o in outcomes if o["status"] != "COMPLETED"]
    assert not_completed == []
    referrals = await harness.sandbox.referrals()
    per_patient: dict[str, int] = {}
    for referral in referrals:
        per_patient[referral["nhs_number"]] = per_patient.get(referral["nhs_number"], 0) + 1
    duplicates = sum(per_patient.get(r["patient"]["nhs_number"], 0) - 1 for r in batch)
    assert duplicates == 0
    busy = [s for s in await harness.sandbox.slots("11002") if s["status"] == "busy"]
    assert len(busy) == sum(1 for o in outcomes if o["path"] == "DBS_BOOKED")
    lost = await queued(harness.amqp_url, settings)
    assert lost == 0
    reliability.requests += len(batch)
    reliability.connection_drops += drops
    reliability.duplicates += duplicates
    reliability.lost += lost


async def test_a_consumer_lost_across_a_reconnect_is_restored(harness: Harness) -> None:
    # The known failure of robust connections: the connection comes back, the consumer does
    # not. Simulated by cancelling ours before the broker drops the connection.
    worker = harness.worker
    name = "03-ibs-shortlisted.json"
    queues = [
        worker.topology.requests,
        worker.topology.work[Priority(sample(name)["search"]["priority"])],
    ]
    for queue in queues:  # the intake queue's sorter and the sample's work queue
        await queue.cancel(worker._consumer_tags[queue.name])
    assert await drop_connections("ers-worker") == 1
    await harness.wait_until(lambda: worker.reconnects >= 1 and not worker._checks, timeout=60)

    cid = await harness.publish(mixed_batch(1, [name])[0])
    outcome = await harness.outcome(cid)

    assert outcome["status"] == "COMPLETED"
    assert not worker.failed.is_set()
