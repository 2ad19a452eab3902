"""Checkpoints one running saga in the store, under this replica's lease.

What a crash may leave is decided here, in one rule: **before any e-RS call, the store holds
everything a state-changing call has done to the saga, and before a state-changing call, the
call itself, marked pending** (write-ahead). So:

- the e-RS client calls ``before_write`` before each attempt at a state-changing call: the
  saga as it stands, the call marked pending, in one write; a crash between the call and its
  record leaves the mark, and the saga checks e-RS before going on when it resumes;
- when an attempt's answer proves e-RS did not act on it (503, 429, refused before sending),
  the client calls ``not_taken`` and the mark goes: a crash while waiting to retry sends again;
- the runner hands over the saga after every step (``checkpoint``). A step that changed
  e-RS (its state holds a UBRN, a Binary, a booking) is written before the next call is sent:
  with that call's mark if it is a write, on its own (``before_call``) if it is a read or
  a token exchange (which the session makes before a call, and a crash may interrupt). A
  step that only read is written with whatever is written next: a crash repeats its reads,
  which change nothing;
- a saga that stops running (finished, or waiting for a delay queue) is written by its
  handler, with its outcome (``SagaStore.finish``) or for a later run (``release``); a last
  step that wrote is stored first (``flush``), so a failure on the way there loses nothing;
- a write that fails raises ``NotStored``: the call is not sent, and the runner lets the
  error through, so the message goes back rather than the saga ending as a bug.

This keeps a saga's writes off its critical path where they guard nothing: a DBS saga with a
letter is written 6 times between its claim and its outcome, not 11, and the windows in which
a crash leaves a call's effect unknown are the same as when every step was written.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime

from worker.saga.ports import NO_FAILPOINTS, Failpoints
from worker.saga.state import PendingWrite, SagaState
from worker.saga.store import NotStored, SagaStore


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
        self._wrote = False  # a state-changing call was attempted since the last checkpoint
        self._owed = False  # ``current`` holds a state-changing call's effect not yet stored

    async def checkpoint(self, state: SagaState) -> None:
        """The runner's saga after a step; stored before the next call if the step wrote, or
        settled what an earlier write did (a reconciliation: the mark it cleared is stored)."""
        if self._wrote or self.current.pending is not None:
            self._wrote, self._owed = False, True
        self.current = state

    async def before_call(self, endpoint: str) -> None:
        """Before a read, or a token exchange: what earlier writes did, if not yet stored."""
        await self.flush()

    async def flush(self) -> None:
        """Store ``current`` if it holds a write's effect not yet stored. Also before the
        handler stores the outcome: if working that out fails, the write's effect is kept."""
        if self._owed:
            await self._write(self.current)
            self._failpoints.hit(f"after_checkpoint:{self.current.step.value}")

    async def before_write(self, endpoint: str) -> None:
        pending = PendingWrite(step=self.current.step, endpoint=endpoint, at=self._now())
        self._wrote = True
        await self._write(self.current.model_copy(update={"pending": pending}))

    async def not_taken(self, endpoint: str) -> None:
        """The attempt at ``endpoint`` had no effect: store the saga as it was before the mark,
        so that a crash from here on resumes by running the step again."""
        await self._write(self.current)

    async def ubrn_holder(self, ubrn: str) -> str | None:
        """The store's ``ubrn_holder``, for a step (a lost create's search), its failures
        made ``NotStored`` like the journal's own."""
        with _store_failures():
            return await self._store.ubrn_holder(ubrn)

    async def _write(self, state: SagaState) -> None:
        with _store_failures():
            await self._store.checkpoint(state, self._owner, self._lease, self._clock())
        self._owed = False


@contextmanager
def _store_failures() -> Iterator[None]:
    """The store failing under a running saga: raised inside a step, where any other error
    would end the saga as a bug, so made ``NotStored``, which the runner lets through."""
    try:
        yield
    except NotStored:
        raise
    except Exception as exc:
        # Only the type: a driver's message may quote the row.
        raise NotStored(f"the saga store failed ({type(exc).__name__})") from exc
