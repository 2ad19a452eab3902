"""Working-day arithmetic for e-RS contact dates.

A004 gives ``deferToProviderContactDays`` and ``triageContactDays`` as "working days" that
"do not include weekends", counted from the appointment's creation date (created Monday
03/01/2022 + 2 days = on or before Wednesday 05/01/2022). e-RS hands the count to the
integrator and computes no date itself; its text says nothing of bank holidays. A provider's
booking office is shut on a bank holiday, so a date that lands on one (23 December + 2 =
Christmas Day) promises the patient a call nobody will make: bank holidays are skipped too,
for the region the providers are in (``BANK_HOLIDAY_REGION``; ``none`` counts weekends only,
as e-RS' text does).

The calendar is the ``holidays`` package: rules, not a fetched list, so any year is known
without I/O, and it keeps the UK's one-off days (a state funeral, a coronation).
"""

from __future__ import annotations

from collections.abc import Container
from datetime import date, timedelta
from enum import StrEnum
from functools import cache

import holidays

_SATURDAY = 5


class HolidayRegion(StrEnum):
    """The UK's three bank-holiday calendars (GOV.UK's divisions), or none."""

    ENGLAND_AND_WALES = "england-and-wales"
    SCOTLAND = "scotland"
    NORTHERN_IRELAND = "northern-ireland"
    NONE = "none"


# England's and Wales' bank holidays are the same days: ENG stands for both.
_SUBDIVISION = {
    HolidayRegion.ENGLAND_AND_WALES: "ENG",
    HolidayRegion.SCOTLAND: "SCT",
    HolidayRegion.NORTHERN_IRELAND: "NIR",
}


@cache
def bank_holidays(region: HolidayRegion) -> Container[date]:
    """The region's bank holidays (substitute days included), any year, computed on first use."""
    if region is HolidayRegion.NONE:
        return frozenset()
    return holidays.country_holidays("GB", subdiv=_SUBDIVISION[region])


def add_working_days(
    start: date, days: int, region: HolidayRegion = HolidayRegion.ENGLAND_AND_WALES
) -> date:
    """The date ``days`` working days (Monday to Friday, not a bank holiday) after ``start``."""
    if days < 0:
        raise ValueError("days must not be negative")
    closed = bank_holidays(region)
    current = start
    remaining = days
    while remaining:
        current += timedelta(days=1)
        if current.weekday() < _SATURDAY and current not in closed:
            remaining -= 1
    return current
