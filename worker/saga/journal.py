"""Checkpoints one running saga in the store, under this replica's lease.

The runner checkpoints after every step; the e-RS client calls ``before_write`` before each
attempt at a state-changing call, so a crash between a call and its record leaves the call
marked pending, and the saga checks e-RS before going on when it resumes. When an attempt's
answer proves e-RS did not act on it (503, 429, refused before sending), the client calls
``not_taken`` and the mark goes: a crash while waiting to retry then sends again.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import datetime

from worker.saga.ports import NO_FAILPOINTS, Failpoints
from worker.saga.state import PendingWrite, SagaState
from worker.saga.store import SagaStore


class Journal:
    def __init__(
        self,
        store: SagaStore,
        state: SagaState,
        *,
        owner: str,
        lease_seconds: float,
        now: Callable[[], datetime],
        clock: Callable[[], float] = time.time,
        failpoints: Failpoints = NO_FAILPOINTS,
    ) -> None:
        self._failpoints = failpoints
        self.current = state
        self._store = store
        self._owner = owner
        self._lease = lease_seconds
        self._now = now
        self._clock = clock

    async def checkpoint(self, state: SagaState) -> None:
        await self._store.checkpoint(state, self._owner, self._lease, self._clock())
        self.current = state
        self._failpoints.hit(f"after_checkpoint:{state.step.value}")

    async def not_taken(self, endpoint: str) -> None:
        """The attempt at ``endpoint`` had no effect: store the saga as it was before the mark,
        so that a crash from here on resumes by running the step again."""
        await self._store.checkpoint(self.current, self._owner, self._lease, self._clock())

    async def before_write(self, endpoint: str) -> None:
        pending = PendingWrite(step=self.current.step, endpoint=endpoint, at=self._now())
        marked = self.current.model_copy(update={"pending": pending})
        await self._store.checkpoint(marked, self._owner, self._lease, self._clock())
