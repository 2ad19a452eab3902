"""When a paused message comes back: the delay-queue tier for its attempt, within a budget.

Rules:
1. The n-th trip through a delay queue waits ``delays[n]``; past the last tier, the last.
2. No trip may end past ``first_seen + budget_seconds``: then the message stops waiting and
   its request ends (FAILED, retryable, parked for a person).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class RetrySchedule:
    delays: tuple[float, ...]
    budget_seconds: float

    def delay_for(self, attempt: int) -> float:
        return self.delays[min(max(attempt, 0), len(self.delays) - 1)]

    def next_delay(self, attempt: int, first_seen: float, now: float) -> float | None:
        """The delay before the next attempt, or None when it would end past the budget."""
        delay = self.delay_for(attempt)
        if now + delay > first_seen + self.budget_seconds:
            return None
        return delay
