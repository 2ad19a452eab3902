"""The application's e-RS budget across replicas, against the sandbox's strict limiter.

Two worker processes share one budget through Redis; with Redis unreachable each spends its
local share; a 429 with Retry-After pauses both; and through the real broker a two-week-
wait request published behind routine ones is served before them.
"""

from __future__ import annotations

import re
import socket
import uuid
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import httpx
import pytest

from sandbox.budget import most_in_one_second
from schemas.referral_request import Priority
from tests.harness import Harness, eventually, mixed_batch
from tests.integration.test_saga_store import POSTGRES_DSN
from tests.processes import WorkerProcess
from worker.messaging.headers import work_routing_key
from worker.ops.settings import Settings

CHEAP = ["05-shortlist-only.json"]  # a search and a create: few calls per request
REDIS_URL = "redis://127.0.0.1:6379/0"
NO_REDIS = "redis://127.0.0.1:1/0"  # nothing listens on port 1


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
async def replicas_settings(settings: Settings) -> AsyncIterator[Settings]:
    """Settings for replicas: PostgreSQL (SQLite serves one replica only), own schema."""
    schema = f"t_{uuid.uuid4().hex[:12]}"
    yield settings.model_copy(update={"saga_store": "postgres", "postgres_schema": schema})
    conn = await asyncpg.connect(POSTGRES_DSN)
    await conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
    await conn.close()


class Replicas:
    """Worker processes, each with a metrics port of its own so that each can be read."""

    def __init__(self) -> None:
        self.processes: list[WorkerProcess] = []
        self.ports: list[int] = []

    async def start(self, settings: Settings, count: int, **env: str) -> None:
        for i in range(count):
            port = free_port()
            process = await WorkerProcess.start(
                settings, METRICS_PORT=str(port), REPLICA_NAME=f"budget-{i}", **env
            )
            self.processes.append(process)
            self.ports.append(port)

    async def metric(self, name: str) -> list[float]:
        """One sample of ``name`` (summed over its labels) from each replica's /metrics."""
        values = []
        async with httpx.AsyncClient() as client:
            for port in self.ports:
                text = (await client.get(f"http://127.0.0.1:{port}/metrics")).text
                samples = re.findall(rf"^{name}(?:{{[^}}]*}})? (\S+)$", text, re.MULTILINE)
                values.append(sum(float(v) for v in samples))
        return values

    async def stop(self) -> None:
        for process in self.processes:
            code, log = await process.stop()
            assert code == 0, log[-2000:]


@pytest.fixture
async def replicas(harness: Harness) -> AsyncIterator[Replicas]:
    await harness.worker.stop(grace_seconds=1)  # only the replicas consume
    group = Replicas()
    try:
        yield group
    finally:
        for process in group.processes:
            await process.kill()


async def run_batch(harness: Harness, count: int, timeout: float = 120) -> list[dict[str, Any]]:
    batch = mixed_batch(count, CHEAP)
    cids = [await harness.publish(r) for r in batch]
    await harness.wait_until(lambda: all(harness.outcomes(c) for c in cids), timeout=timeout)
    return [harness.outcomes(c)[0] for c in cids]


async def consuming(replicas: Replicas) -> bool:
    try:
        return all(v == 1 for v in await replicas.metric("ers_worker_consumer_attached"))
    except httpx.TransportError:
        return False  # not listening yet


async def calls(harness: Harness) -> list[dict[str, Any]]:
    return [c for c in await harness.sandbox.requests() if c["endpoint"] != "A004"]


# --- one budget across replicas ---------------------------------------------------------


async def test_two_replicas_share_one_budget_through_redis(
    harness: Harness, replicas_settings: Settings, replicas: Replicas
) -> None:
    # The sandbox answers a 6th call in any second with 429. It runs in this test's process,
    # whose other work delays its clock by tens of milliseconds, so the replicas' budget has
    # 10 % headroom here; two budgets that were not shared would spend 9 calls a second.
    await harness.sandbox.set_budget(5)
    await replicas.start(
        replicas_settings, 2, ERS_RATE_LIMIT_PER_SECOND="4.5", RATE_LIMIT_REDIS_URL=REDIS_URL
    )
    await eventually(lambda: consuming(replicas))

    outcomes = await run_batch(harness, 16)

    assert [o["status"] for o in outcomes] == ["COMPLETED"] * 16
    log = await harness.sandbox.requests()
    assert [c for c in log if c["status"] == 429] == []
    assert most_in_one_second([c["at"] for c in log]) <= 5
    per_replica = await replicas.metric("ers_worker_api_requests_total")
    assert all(n > 0 for n in per_replica), per_replica  # both spent the one budget
    assert await replicas.metric("ers_worker_rate_limit_shared_store_unreachable") == [0, 0]
    await replicas.stop()


async def test_with_redis_unreachable_each_replica_spends_its_local_share(
    harness: Harness, replicas_settings: Settings, replicas: Replicas
) -> None:
    await harness.sandbox.set_budget(6)
    await replicas.start(
        replicas_settings,
        2,
        ERS_RATE_LIMIT_PER_SECOND="5.4",  # 10 % headroom, as above
        RATE_LIMIT_REDIS_URL=NO_REDIS,
        ERS_RATE_LIMIT_MAX_REPLICAS="2",
    )
    await eventually(lambda: consuming(replicas))

    outcomes = await run_batch(harness, 16)

    assert [o["status"] for o in outcomes] == ["COMPLETED"] * 16
    log = await harness.sandbox.requests()
    assert [c for c in log if c["status"] == 429] == []
    assert most_in_one_second([c["at"] for c in log]) <= 6
    assert await replicas.metric("ers_worker_rate_limit_shared_store_unreachable") == [1, 1]
    assert await replicas.metric("ers_worker_rate_limit_fallbacks_total") == [1, 1]
    # Each may spend half of 98 % of the budget (worker.ers.budget.SPEND).
    assert await replicas.metric("ers_worker_rate_limit_per_second") == [2.646, 2.646]
    await replicas.stop()


async def test_a_429_with_retry_after_pauses_every_replica(
    harness: Harness, replicas_settings: Settings, replicas: Replicas
) -> None:
    await replicas.start(
        replicas_settings, 2, ERS_RATE_LIMIT_PER_SECOND="10", RATE_LIMIT_REDIS_URL=REDIS_URL
    )
    await eventually(lambda: consuming(replicas))
    # The first create is refused as over e-RS' limit, asking for 2 seconds.
    await harness.sandbox.add_fault("A011", status=429, times=1, retry_after=2)

    outcomes = await run_batch(harness, 12)

    assert [o["status"] for o in outcomes] == ["COMPLETED"] * 12
    log = sorted(await harness.sandbox.requests(), key=lambda c: c["at"])
    (refused,) = [c for c in log if c["status"] == 429]
    after = [c["at"] - refused["at"] for c in log if c["at"] > refused["at"]]
    # A call already sent when the 429 came back may still arrive (at 10/s, at most one
    # within 0.1 s); then neither replica calls until the 2 seconds are over.
    assert [d for d in after if 0.15 < d < 1.9] == [], after[:5]
    assert len([d for d in after if d >= 1.9]) > 10
    assert sum(await replicas.metric("ers_worker_api_rate_limited_total")) == 1
    await replicas.stop()


# --- clinical priority through the broker -----------------------------------------------


@pytest.mark.worker_settings(concurrency=1, prefetch=2, ers_rate_limit_per_second=20.0)
async def test_a_two_week_wait_request_published_last_is_served_before_the_routine_ones(
    harness: Harness,
) -> None:
    routine = mixed_batch(15, CHEAP)
    (urgent,) = mixed_batch(1, CHEAP)
    urgent["search"]["priority"] = "TWO_WEEK_WAIT"
    cids = [await harness.publish(r) for r in routine]
    urgent_cid = await harness.publish(urgent)

    await harness.wait_until(lambda: all(harness.outcomes(c) for c in [*cids, urgent_cid]))

    order = [
        r.correlation_id for r in harness.replies if r.body["event_type"] == "referral.outcome"
    ]
    # One saga runs at a time: at most the routine ones already taken (one running, one per
    # prefetch place) finish before it; without priority it would finish last.
    assert order.index(urgent_cid) <= 3, order.index(urgent_cid)
    assert harness.worker.metrics.sorted.labels("two_week_wait")._value.get() == 1


@pytest.mark.worker_settings(delivery_limit=2)
async def test_a_request_whose_work_queue_cannot_be_reached_is_dead_lettered_not_lost(
    harness: Harness,
) -> None:
    names = harness.names
    channel = await harness.worker.topology.work[Priority.ROUTINE].channel.get_underlay_channel()
    await channel.queue_unbind(
        names.work_queue(Priority.ROUTINE),
        names.requests_exchange,
        routing_key=work_routing_key(Priority.ROUTINE),
    )
    (request,) = mixed_batch(1, CHEAP)

    await harness.publish(request)

    # The copy comes back unroutable, the intake copy goes back unacknowledged, and the
    # broker dead-letters it after the delivery limit: parked for a person, never dropped.
    await harness.wait_for_parked(1, timeout=60)
    await harness.poll()
    (parked,) = harness.parked
    assert parked.body["request_id"] == request["request_id"]
    assert harness.worker.metrics.sorted.labels("routine")._value.get() == 0
