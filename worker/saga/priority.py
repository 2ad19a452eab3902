"""Clinical priority when e-RS' budget is scarce: who is served first, and how waiting ages.

One rule serves every place where referrals wait for something scarce (a saga slot in the
process, a permit for an e-RS call): **earliest turn first**, where a referral's turn is
the time it was first seen plus its priority's allowance. So a two-week-wait (suspected
cancer) referral goes before an urgent one, which goes before a routine one; and a routine
referral that has waited ``ROUTINE`` seconds longer than a new two-week-wait one stands
level with it, so a flood of urgent work delays routine work but never starves it.

The broker side is ordered by the same priority: each one has its own queue
(``worker.messaging.topology``), since RabbitMQ 3.x quorum queues have no priorities.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
from dataclasses import dataclass, field

from schemas.referral_request import Priority

# Seconds of waiting that each priority is worth less than a two-week-wait referral. A
# routine referral seen 10 minutes before a two-week-wait one is served before it.
ALLOWANCE_SECONDS: dict[Priority, float] = {
    Priority.TWO_WEEK_WAIT: 0.0,
    Priority.URGENT: 120.0,
    Priority.ROUTINE: 600.0,
}

# Most urgent first: the order in which the consumer declares and subscribes its queues.
MOST_URGENT_FIRST: tuple[Priority, ...] = (
    Priority.TWO_WEEK_WAIT,
    Priority.URGENT,
    Priority.ROUTINE,
)


def turn(priority: Priority, first_seen: float) -> float:
    """When this referral's turn comes, in epoch seconds: earlier turns are served first."""
    return first_seen + ALLOWANCE_SECONDS[priority]


def priority_of(value: object) -> Priority:
    """The priority a raw request names, ROUTINE when it names none that is valid (intake
    then refuses the request, naming the field: it must not jump the queue meanwhile)."""
    try:
        return Priority(str(value))
    except ValueError:
        return Priority.ROUTINE


@dataclass(order=True, slots=True)
class _Waiter:
    turn: float
    seq: int
    future: asyncio.Future[None] = field(compare=False)


class Turns:
    """A semaphore of ``capacity`` places that admits its waiters earliest turn first
    (``asyncio.Semaphore`` admits them in arrival order)."""

    def __init__(self, capacity: int) -> None:
        self._free = capacity
        self._waiting: list[_Waiter] = []
        self._seq = itertools.count()

    @property
    def waiting(self) -> int:
        return len(self._waiting)

    async def acquire(self, turn: float) -> None:
        if self._free > 0 and not self._waiting:
            self._free -= 1
            return
        waiter = _Waiter(turn, next(self._seq), asyncio.get_running_loop().create_future())
        heapq.heappush(self._waiting, waiter)
        try:
            await waiter.future
        except asyncio.CancelledError:
            if waiter.future.done() and not waiter.future.cancelled():
                self.release()  # admitted and cancelled at once: pass the place on
            raise

    def release(self) -> None:
        while self._waiting:
            waiter = heapq.heappop(self._waiting)
            if not waiter.future.done():
                waiter.future.set_result(None)
                return
        self._free += 1
