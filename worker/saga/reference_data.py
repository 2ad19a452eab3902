"""A004 reference data, fetched once per process and shared by every saga.

e-RS changes contact days rarely, and A004 costs a call against the rate limit, so the table
is cached for ``ttl_seconds``; concurrent sagas wait on one fetch instead of each making one.
"""

from __future__ import annotations

import asyncio
import time

from worker.fhir.read import ContactDays, priority_contact_days
from worker.saga.ports import ErsPort


class ReferenceData:
    def __init__(self, ttl_seconds: float = 3600.0) -> None:
        self._ttl = ttl_seconds
        self._lock = asyncio.Lock()
        self._priority: dict[str, ContactDays] | None = None
        self._fetched_at = 0.0

    async def priority_contact_days(self, ers: ErsPort) -> dict[str, ContactDays]:
        if self._priority is not None and time.monotonic() - self._fetched_at < self._ttl:
            return self._priority
        async with self._lock:
            if self._priority is None or time.monotonic() - self._fetched_at >= self._ttl:
                reply = await ers.retrieve_reference_data("PRIORITY")
                self._priority = priority_contact_days(reply.body)
                self._fetched_at = time.monotonic()
            return self._priority
