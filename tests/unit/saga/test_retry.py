"""``worker.saga.retry.RetrySchedule``: delay-queue tiers and the retry budget."""

from __future__ import annotations

import pytest

from worker.saga.retry import RetrySchedule

SCHEDULE = RetrySchedule(delays=(5.0, 30.0, 300.0), budget_seconds=3600.0)
FIRST_SEEN = 10_000.0


@pytest.mark.parametrize(("attempt", "delay"), [(0, 5.0), (1, 30.0), (2, 300.0)])
def test_each_attempt_waits_its_tier(attempt: int, delay: float) -> None:
    assert SCHEDULE.delay_for(attempt) == delay


@pytest.mark.parametrize("attempt", [3, 4, 50])
def test_past_the_last_tier_the_last_repeats(attempt: int) -> None:
    assert SCHEDULE.delay_for(attempt) == 300.0


@pytest.mark.parametrize("attempt", [-1, -7])
def test_a_negative_attempt_waits_the_first_tier(attempt: int) -> None:
    assert SCHEDULE.delay_for(attempt) == 5.0


def test_a_single_tier_serves_every_attempt() -> None:
    one = RetrySchedule(delays=(60.0,), budget_seconds=600.0)

    assert [one.delay_for(n) for n in (-1, 0, 1, 9)] == [60.0] * 4


def test_the_next_delay_is_the_attempts_tier_within_the_budget() -> None:
    assert SCHEDULE.next_delay(1, FIRST_SEEN, FIRST_SEEN + 100.0) == 30.0


def test_a_trip_ending_exactly_at_the_budget_is_allowed() -> None:
    now = FIRST_SEEN + 3600.0 - 300.0  # 300 s tier ends on the budget's last second

    assert SCHEDULE.next_delay(2, FIRST_SEEN, now) == 300.0


def test_a_trip_ending_past_the_budget_is_refused() -> None:
    now = FIRST_SEEN + 3600.0 - 300.0 + 0.5

    assert SCHEDULE.next_delay(2, FIRST_SEEN, now) is None


def test_the_budget_counts_from_first_seen_whatever_the_attempt() -> None:
    # The same moment allows a short tier and refuses a long one.
    now = FIRST_SEEN + 3500.0

    assert SCHEDULE.next_delay(0, FIRST_SEEN, now) == 5.0
    assert SCHEDULE.next_delay(1, FIRST_SEEN, now) == 30.0
    assert SCHEDULE.next_delay(2, FIRST_SEEN, now) is None


def test_a_message_already_past_its_budget_waits_no_more() -> None:
    assert SCHEDULE.next_delay(0, FIRST_SEEN, FIRST_SEEN + 4000.0) is None


# --- Retry-After: never back sooner than e-RS asked -------------------------------------------


@pytest.mark.parametrize(
    ("attempt", "asked", "delay"),
    [
        (0, None, 5.0),
        (0, 4.0, 5.0),  # the tier is long enough
        (0, 20.0, 30.0),  # the first tier that is
        (0, 90.0, 300.0),
        (2, 90.0, 300.0),
        (0, 5000.0, 300.0),  # longer than any tier: the longest
    ],
)
def test_a_retry_after_picks_the_first_tier_long_enough(
    attempt: int, asked: float | None, delay: float
) -> None:
    assert SCHEDULE.delay_for(attempt, asked) == delay
    assert SCHEDULE.next_delay(attempt, FIRST_SEEN, FIRST_SEEN, asked) == delay
