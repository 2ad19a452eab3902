"""Keeping a running saga's lease alive between checkpoints.

Rules:
1. A lease is short (``SAGA_LEASE_SECONDS``, 30 s by default) so a dead replica's sagas are
   taken over in seconds; while a saga runs, a heartbeat renews it every third of the lease,
   so a long call (A016 may wait two minutes for the provider's PAS) never loses it.
2. The heartbeat renews the lease only; it never writes the saga's state, so it cannot undo
   a write-ahead mark.
3. A heartbeat that finds the lease gone stops. It does not stop the saga: the next
   checkpoint or write-ahead mark raises ``LeaseLost`` before anything more is sent.
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
    task = asyncio.create_task(_beat(store, request_id, owner, lease_seconds, clock))
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
) -> None:
    interval = lease_seconds / 3
    while True:
        await asyncio.sleep(interval)
        try:
            await store.renew(request_id, owner, lease_seconds, clock())
        except LeaseLost:
            log.warning("lease lost", extra={"request_id": request_id})
            return
        except Exception as exc:  # a store hiccup: try again at the next beat
            log.warning("lease renewal failed", extra={"error": type(exc).__name__})
