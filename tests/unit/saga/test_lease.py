"""The lease heartbeat: renews while the saga runs, never writes its state, stops when the
lease is gone."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from worker.saga.lease import _beat, heartbeat
from worker.saga.store import LeaseLost

LEASE = 0.03  # a beat every 10 ms


class RenewingStore:
    """Records renewals; ``lose_after`` renewals later, the lease is another owner's."""

    def __init__(self, lose_after: int | None = None) -> None:
        self.renewals: list[tuple[str, str, float, float]] = []
        self.lose_after = lose_after
        self.beats = asyncio.Event()
        self.writes = 0
        self.attempts = 0

    async def renew(self, request_id: str, owner: str, lease_seconds: float, now: float) -> None:
        self.attempts += 1
        if self.lose_after is not None and len(self.renewals) >= self.lose_after:
            raise LeaseLost("another owner")
        self.renewals.append((request_id, owner, lease_seconds, now))
        if len(self.renewals) >= 3:
            self.beats.set()

    async def checkpoint(self, *args: Any) -> None:
        self.writes += 1


async def test_the_lease_is_renewed_while_the_saga_runs() -> None:
    store = RenewingStore()

    async with heartbeat(store, "req-1", "replica-a", LEASE, lambda: 100.0):  # type: ignore[arg-type]
        await asyncio.wait_for(store.beats.wait(), timeout=5)

    assert store.renewals[0] == ("req-1", "replica-a", LEASE, 100.0)
    assert store.writes == 0  # the state is never written: a write-ahead mark stays


async def test_a_lost_lease_stops_the_heartbeat() -> None:
    store = RenewingStore(lose_after=1)

    # The beat returns by itself once it finds the lease gone (else wait_for times out).
    await asyncio.wait_for(_beat(store, "req-1", "replica-a", LEASE, lambda: 100.0), timeout=5)  # type: ignore[arg-type]

    assert store.attempts == 2 and len(store.renewals) == 1


async def test_a_lost_lease_cancels_the_run() -> None:
    # Another replica may take the saga over now: a call still in flight must not go on.
    store = RenewingStore(lose_after=0)

    with pytest.raises(asyncio.CancelledError):
        async with heartbeat(store, "req-1", "replica-a", LEASE, lambda: 100.0):  # type: ignore[arg-type]
            await asyncio.wait_for(asyncio.Event().wait(), timeout=5)  # the saga, running

    assert store.attempts == 1


class FailingStore(RenewingStore):
    async def renew(self, request_id: str, owner: str, lease_seconds: float, now: float) -> None:
        self.attempts += 1
        raise ConnectionError("the store is down")


async def test_a_lease_that_cannot_be_renewed_for_a_whole_lease_cancels_the_run() -> None:
    store = FailingStore()
    clock = iter(float(t) for t in range(100, 10_000))  # each reading a second later

    with pytest.raises(asyncio.CancelledError):
        async with heartbeat(store, "req-1", "replica-a", 1.0, lambda: next(clock)):  # type: ignore[arg-type]
            await asyncio.wait_for(asyncio.Event().wait(), timeout=5)

    assert store.attempts >= 1
