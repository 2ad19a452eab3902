"""Working-day arithmetic for e-RS contact dates.

A004 gives ``deferToProviderContactDays`` and ``triageContactDays`` as working days that
exclude weekends; e-RS' own worked example (created Monday 03/01/2022 + 2 days = on or
before Wednesday 05/01/2022) counts from the appointment's creation date. e-RS does not
say bank holidays are excluded, so they are not.
"""

from __future__ import annotations

from datetime import date, timedelta

_SATURDAY = 5


def add_working_days(start: date, days: int) -> date:
    """The date ``days`` working days (Monday to Friday) after ``start``."""
    if days < 0:
        raise ValueError("days must not be negative")
    current = start
    remaining = days
    while remaining:
        current += timedelta(days=1)
        if current.weekday() < _SATURDAY:
            remaining -= 1
    return current
