"""A saga's slot, through the real broker and sandbox: held for the saga's work, which ends
with its outcome stored, not while its events are confirmed and its message acknowledged;
and only sagas holding a slot count as in flight."""

from __future__ import annotations

import asyncio

import pytest

from tests.harness import Harness, mixed_batch
from worker.messaging.fate import Handled, Incoming

CHEAP = ["05-shortlist-only.json"]


@pytest.mark.worker_settings(concurrency=1, prefetch=3)
async def test_the_next_saga_runs_while_the_last_ones_events_are_being_confirmed(
    harness: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    worker = harness.worker
    handle, settle = worker._handler.handle, worker._settle
    started: list[float] = []  # sagas_in_flight as each saga started
    second_started = asyncio.Event()

    async def counted(msg: Incoming) -> Handled:
        started.append(worker.metrics.in_flight._value.get())
        if len(started) == 2:
            second_started.set()
        return await handle(msg)

    async def held(message: object, handled: Handled) -> None:
        # The first message's events wait until the second saga has started: with one slot,
        # that happens only if the slot was given up before settling (else a 10 s timeout).
        if len(started) == 1:
            await asyncio.wait_for(second_started.wait(), timeout=10)
        await settle(message, handled)  # type: ignore[arg-type]

    monkeypatch.setattr(worker._handler, "handle", counted)
    monkeypatch.setattr(worker, "_settle", held)
    cids = [await harness.publish(r) for r in mixed_batch(3, CHEAP)]

    await harness.wait_until(lambda: all(len(harness.outcomes(c)) == 1 for c in cids))

    assert len(started) == 3
    # Three messages were delivered at once, one slot: the waiting ones were not counted,
    # nor was the first while its events went out.
    assert max(started) == 1.0, started
    assert all(harness.outcomes(c)[0]["status"] == "COMPLETED" for c in cids)
