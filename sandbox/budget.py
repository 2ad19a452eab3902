"""An application-wide rate limit, enforced as e-RS enforces its own: beyond it, 429 with the
specification's body and a Retry-After. Off unless set (``ers-sandbox --rate-limit``, or
``PUT /_sandbox/budget``).

Strict: at most ``per_second`` requests in any 1-second window (a sliding window over the
times of the requests it admitted), so a client whose limiter bursts is caught.
"""

from __future__ import annotations

import math
import time
from collections import deque
from collections.abc import Callable


class Budget:
    def __init__(
        self, per_second: int | None = None, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._clock = clock
        self._admitted: deque[float] = deque()
        self.per_second = per_second
        self.refused = 0

    def set(self, per_second: int | None) -> None:
        self.per_second = per_second
        self._admitted.clear()
        self.refused = 0

    def admit(self) -> int | None:
        """None when the request may go on; else the whole seconds to wait (Retry-After)."""
        if self.per_second is None:
            return None
        now = self._clock()
        while self._admitted and self._admitted[0] <= now - 1.0:
            self._admitted.popleft()
        if len(self._admitted) < self.per_second:
            self._admitted.append(now)
            return None
        self.refused += 1
        return max(1, math.ceil(self._admitted[0] + 1.0 - now))


def most_in_one_second(times: list[float]) -> int:
    """The most of these calls (epoch seconds) in any 1-second window, as ``Budget`` counts:
    what the benchmarks and tests check a client's spacing against."""
    times = sorted(times)
    most, start = 0, 0
    for end, at in enumerate(times):
        while times[start] <= at - 1.0:
            start += 1
        most = max(most, end - start + 1)
    return most
