"""Keeping a running saga's lease alive between checkpoints.

Rules:
1. A lease is short (``SAGA_LEASE_SECONDS``, 30 s by default) so a dead replica's sagas are
   taken over in seconds; while a saga runs, a heartbeat renews it every third of the lease,
   so a long call (A016 may wait two minutes for the provider's PAS) never loses it.
2. The heartbeat renews the lease only; it never writes the saga's state, so it cannot undo
   a write-ahead mark.
3. A heartbeat that finds the lease gone, or cannot renew it for a whole lease (a store
   outage), cancels the saga's run: another replica may take the saga over from then on,
   and a call still in flight (A016 waits up to two minutes) must not go on beside it.
   The message is handed back; the saga resumes, by checking, wherever it is next taken.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable

from worker.saga.store import LeaseLost, SagaStore

log = logging.getLogger("worker.saga.lease")


@contextlib.asynccontextmanager
async def heartbeat(
    store: SagaStore,
    request_id: str,
    owner: str,
    lease_seconds: float,
    clock: Callable[[], float],
) -> AsyncIterator[None]:
    running = asyncio.current_task()
    assert running is not None
    task = asyncio.create_task(
        _beat(store, request_id, owner, lease_seconds, clock, on_lost=running.cancel)
    )
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def _beat(
    store: SagaStore,
    request_id: str,
    owner: str,
    lease_seconds: float,
    clock: Callable[[], float],
    on_lost: Callable[[], object] = lambda: None,
) -> None:
    interval = lease_seconds / 3
    renewed = clock()
    while True:
        await asyncio.sleep(interval)
        try:
            await store.renew(request_id, owner, lease_seconds, clock())
            renewed = clock()
        except LeaseLost:
            log.warning("lease lost", extra={"request_id": request_id})
            on_lost()
            return
        except Exception as exc:  # a store hiccup: try again at the next beat...
            log.warning("lease renewal failed", extra={"error": type(exc).__name__})
            if clock() - renewed >= lease_seconds:  # ...unless the lease has run out
                log.warning("lease ran out unrenewed", extra={"request_id": request_id})
                on_lost()
                return
