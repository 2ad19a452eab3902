"""The messaging headers' values: the first-seen time survives the broker exactly."""

from __future__ import annotations

import pytest

from worker.messaging.headers import (
    ATTEMPT_HEADER,
    FIRST_SEEN_HEADER,
    attempt_of,
    first_seen_of,
    first_seen_value,
)

# The chaos test's value: as a 32-bit float it came back 50.8 s early.
SEEN = 1796163378.8


def test_first_seen_is_an_integer_of_milliseconds_that_reads_back_exactly() -> None:
    value = first_seen_value(SEEN)

    assert value == 1_796_163_378_800
    assert isinstance(value, int)
    assert first_seen_of({FIRST_SEEN_HEADER: value}, default=0.0) == pytest.approx(SEEN, abs=1e-3)


def test_a_first_seen_in_float_seconds_from_before_the_upgrade_still_reads() -> None:
    assert first_seen_of({FIRST_SEEN_HEADER: 1796163328.0}, default=0.0) == 1796163328.0


@pytest.mark.parametrize("value", [None, "1796163378", True, b"x"])
def test_an_unreadable_first_seen_counts_from_now(value: object) -> None:
    assert first_seen_of({FIRST_SEEN_HEADER: value}, default=42.0) == 42.0


@pytest.mark.parametrize(("value", "attempt"), [(3, 3), (-1, 0), ("2", 0), (None, 0)])
def test_attempt_of(value: object, attempt: int) -> None:
    assert attempt_of({ATTEMPT_HEADER: value}) == attempt
