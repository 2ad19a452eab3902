"""When a paused message comes back: the delay-queue tier for its attempt, within a budget.

Rules:
1. The n-th trip through a delay queue waits ``delays[n]``; past the last tier, the last;
   never less than e-RS asked for (Retry-After), as far as the tiers allow.
2. No trip may end past ``first_seen + budget_seconds``: then the message stops waiting and
   its request ends (FAILED, retryable, parked for a person).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class RetrySchedule:
    delays: tuple[float, ...]
    budget_seconds: float

    def delay_for(self, attempt: int, at_least: float | None = None) -> float:
        """The attempt's tier; if e-RS asked for longer (``at_least``), the first tier that
        is as long (else the longest): never back sooner than asked."""
        tier = self.delays[min(max(attempt, 0), len(self.delays) - 1)]
        if at_least is None or tier >= at_least:
            return tier
        return next((d for d in sorted(self.delays) if d >= at_least), max(self.delays))

    def next_delay(
        self, attempt: int, first_seen: float, now: float, at_least: float | None = None
    ) -> float | None:
        """The delay before the next attempt, or None when it would end past the budget."""
        delay = self.delay_for(attempt, at_least)
        if now + delay > first_seen + self.budget_seconds:
            return None
        return delay
