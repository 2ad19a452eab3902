from datetime import date

import pytest

from worker.saga.working_days import add_working_days


@pytest.mark.parametrize(
    ("start", "days", "expected"),
    [
        (date(2022, 1, 3), 2, date(2022, 1, 5)),  # e-RS' own example in A004
        (date(2022, 1, 7), 1, date(2022, 1, 10)),  # Friday + 1 skips the weekend
        (date(2022, 1, 8), 1, date(2022, 1, 10)),  # from a Saturday
        (date(2022, 1, 3), 10, date(2022, 1, 17)),  # two whole weeks
        (date(2022, 1, 3), 0, date(2022, 1, 3)),
    ],
)
def test_add_working_days(start: date, days: int, expected: date) -> None:
    assert add_working_days(start, days) == expected


def test_negative_days_refused() -> None:
    with pytest.raises(ValueError, match="negative"):
        add_working_days(date(2022, 1, 3), -1)
