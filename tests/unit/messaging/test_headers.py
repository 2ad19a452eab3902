"""The messaging headers' values: the first-seen time survives the broker exactly, and both
versions of the worker read what the other writes."""

from __future__ import annotations

import pytest

from worker.messaging.headers import (
    ATTEMPT_HEADER,
    FIRST_SEEN_HEADER,
    FIRST_SEEN_MS_HEADER,
    attempt_of,
    first_seen_headers,
    first_seen_of,
)

# The chaos test's value: as a 32-bit float it came back 50.8 s early.
SEEN = 1796163378.8


def test_first_seen_is_written_in_milliseconds_and_reads_back_exactly() -> None:
    headers = first_seen_headers(SEEN)

    assert headers[FIRST_SEEN_MS_HEADER] == 1_796_163_378_800
    assert isinstance(headers[FIRST_SEEN_MS_HEADER], int)
    # A 32-bit float in the seconds header (as the broker hands it back) does not matter.
    headers[FIRST_SEEN_HEADER] = 1796163328.0
    assert first_seen_of(headers, default=0.0) == pytest.approx(SEEN, abs=1e-3)


def test_the_seconds_header_is_still_written_for_the_version_before() -> None:
    assert first_seen_headers(SEEN)[FIRST_SEEN_HEADER] == SEEN


def test_a_message_delayed_by_the_version_before_reads_its_seconds() -> None:
    assert first_seen_of({FIRST_SEEN_HEADER: 1796163328.0}, default=0.0) == 1796163328.0


@pytest.mark.parametrize("value", [None, "1796163378", True, b"x"])
def test_an_unreadable_first_seen_counts_from_now(value: object) -> None:
    assert first_seen_of({FIRST_SEEN_HEADER: value}, default=42.0) == 42.0
    assert first_seen_of({FIRST_SEEN_MS_HEADER: value}, default=42.0) == 42.0


@pytest.mark.parametrize(("value", "attempt"), [(3, 3), (-1, 0), ("2", 0), (None, 0)])
def test_attempt_of(value: object, attempt: int) -> None:
    assert attempt_of({ATTEMPT_HEADER: value}) == attempt
