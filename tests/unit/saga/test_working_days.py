from datetime import UTC, date, datetime

import pytest

from worker.saga.appointment import contact_by
from worker.saga.context import SagaOptions
from worker.saga.working_days import HolidayRegion, add_working_days


@pytest.mark.parametrize(
    ("start", "days", "expected"),
    [
        (date(2022, 1, 3), 2, date(2022, 1, 5)),  # e-RS' own example in A004
        (date(2022, 1, 7), 1, date(2022, 1, 10)),  # Friday + 1 skips the weekend
        (date(2022, 1, 8), 1, date(2022, 1, 10)),  # from a Saturday
        (date(2022, 1, 3), 10, date(2022, 1, 17)),  # two whole weeks, no bank holiday
        (date(2022, 1, 3), 0, date(2022, 1, 3)),
    ],
)
def test_add_working_days(start: date, days: int, expected: date) -> None:
    assert add_working_days(start, days) == expected


def test_negative_days_refused() -> None:
    with pytest.raises(ValueError, match="negative"):
        add_working_days(date(2022, 1, 3), -1)


def test_a_contact_date_skips_christmas_and_boxing_day() -> None:
    # Wednesday 23 December 2026 + 2: Thursday 24, then Christmas (Fri) and the Boxing Day
    # substitute (Mon 28) are shut, so Tuesday 29.
    assert add_working_days(date(2026, 12, 23), 2) == date(2026, 12, 29)


def test_regions_keep_their_own_bank_holidays() -> None:
    # 2 January is a bank holiday in Scotland only; St Patrick's Day in Northern Ireland only.
    assert add_working_days(date(2026, 12, 31), 1, HolidayRegion.SCOTLAND) == date(2027, 1, 5)
    assert add_working_days(date(2026, 12, 31), 1) == date(2027, 1, 4)
    assert add_working_days(date(2027, 3, 16), 1, HolidayRegion.NORTHERN_IRELAND) == date(
        2027, 3, 18
    )
    assert add_working_days(date(2027, 3, 16), 1) == date(2027, 3, 17)


def test_easter_monday_is_not_a_working_day_in_england_and_wales() -> None:
    assert add_working_days(date(2026, 4, 2), 1) == date(2026, 4, 7)  # Good Fri, Easter Mon


def test_none_counts_weekends_only() -> None:
    assert add_working_days(date(2026, 12, 23), 2, HolidayRegion.NONE) == date(2026, 12, 25)


def test_the_one_off_bank_holiday_of_a_state_funeral_is_skipped() -> None:
    assert add_working_days(date(2022, 9, 16), 1) == date(2022, 9, 20)


def test_the_sagas_contact_by_counts_in_the_region_of_its_options() -> None:
    created = datetime(2026, 12, 23, 9, 30, tzinfo=UTC)
    assert contact_by(created, 2, HolidayRegion.ENGLAND_AND_WALES) == date(2026, 12, 29)
    assert contact_by(created, 2, HolidayRegion.NONE) == date(2026, 12, 25)
    assert contact_by(None, 2, HolidayRegion.NONE) is None
    # The default the worker runs with is England and Wales.
    assert SagaOptions(specialty_cs="x").holiday_region is HolidayRegion.ENGLAND_AND_WALES
