"""``worker.messaging.sorter``: the priority a raw request body names (ROUTINE unless it names
a valid one) and the headers of the copy moved to its priority's work queue."""

from __future__ import annotations

from typing import Any

import orjson
import pytest
from pydantic import ValidationError

from schemas.referral_request import Priority
from tests.unit.fakes import sample_request
from worker.messaging.headers import (
    ATTEMPT_HEADER,
    DELIVERY_COUNT_HEADER,
    FIRST_SEEN_HEADER,
    FIRST_SEEN_MS_HEADER,
    TOKEN_HEADER,
    first_seen_of,
)
from worker.messaging.sorter import request_priority, sorted_headers

NOW = 1796163378.8  # not exact as a 32-bit float: the milliseconds header keeps it
EARLIER = 1796160000.25


def body(search: Any) -> bytes:
    return orjson.dumps({"request_id": "req-1", "search": search})


@pytest.mark.parametrize("priority", list(Priority))
def test_a_request_is_sorted_by_the_priority_its_search_names(priority: Priority) -> None:
    assert request_priority(body({"priority": priority.value, "sort_by": "DISTANCE"})) is priority


@pytest.mark.parametrize("priority", list(Priority))
def test_a_whole_valid_request_is_sorted_by_its_priority(priority: Priority) -> None:
    request = sample_request().model_dump(mode="json")
    request["search"]["priority"] = priority.value
    assert request_priority(orjson.dumps(request)) is priority


@pytest.mark.parametrize(
    "raw",
    [b"", b"not json", b'{"search": {"priority": "TWO_WEEK_WAIT"}', b"\xff\xfe", b"null"],
)
def test_a_body_that_is_not_json_or_not_an_object_is_routine(raw: bytes) -> None:
    assert request_priority(raw) is Priority.ROUTINE


@pytest.mark.parametrize(
    "raw",
    [
        orjson.dumps([{"search": {"priority": "TWO_WEEK_WAIT"}}]),
        orjson.dumps("TWO_WEEK_WAIT"),
        orjson.dumps({"priority": "TWO_WEEK_WAIT"}),  # not under search
        orjson.dumps({}),
        body(None),
        body("TWO_WEEK_WAIT"),
        body(["TWO_WEEK_WAIT"]),
        body({}),
        body({"priority": None}),
        body({"priority": "two_week_wait"}),
        body({"priority": "URGENT "}),
        body({"priority": 2}),
        body({"priority": {"value": "URGENT"}}),
    ],
)
def test_a_missing_or_invalid_search_priority_is_routine(raw: bytes) -> None:
    assert request_priority(raw) is Priority.ROUTINE


@pytest.mark.parametrize("value", ["two_week_wait", "URGENT ", "Urgent", "EMERGENCY", 2, None])
def test_what_is_sorted_as_routine_for_an_invalid_priority_intake_refuses(value: object) -> None:
    """Sorted as routine, such a request must not be a valid routine one: intake refuses it."""
    assert request_priority(body({"priority": value})) is Priority.ROUTINE
    with pytest.raises(ValidationError, match="priority"):
        sample_request(search={"priority": value})


def test_sorting_drops_the_delivery_count_and_stamps_first_sight_when_absent() -> None:
    headers: dict[str, Any] = {
        DELIVERY_COUNT_HEADER: 3,
        TOKEN_HEADER: "tok-1",
        ATTEMPT_HEADER: 0,
        "x-custom": b"kept",
    }
    moved = sorted_headers(headers, NOW)
    assert moved == {
        TOKEN_HEADER: "tok-1",
        ATTEMPT_HEADER: 0,
        "x-custom": b"kept",
        FIRST_SEEN_MS_HEADER: int(NOW * 1000),
        FIRST_SEEN_HEADER: NOW,
    }
    assert first_seen_of(moved, default=0.0) == pytest.approx(NOW, abs=0.001)
    assert DELIVERY_COUNT_HEADER in headers  # the message's own headers are left as they were
    assert FIRST_SEEN_MS_HEADER not in headers


def test_sorting_keeps_a_first_sight_in_milliseconds_already_stamped() -> None:
    stamped = int(EARLIER * 1000)
    moved = sorted_headers({FIRST_SEEN_MS_HEADER: stamped, DELIVERY_COUNT_HEADER: 1}, NOW)
    assert moved == {FIRST_SEEN_MS_HEADER: stamped}


def test_sorting_keeps_a_first_sight_in_seconds_from_the_version_before() -> None:
    moved = sorted_headers({FIRST_SEEN_HEADER: EARLIER, "x-other": "v"}, NOW)
    assert moved == {FIRST_SEEN_HEADER: EARLIER, "x-other": "v"}
    assert first_seen_of(moved, default=NOW) == EARLIER


def test_sorting_headers_without_a_delivery_count_keeps_them_all() -> None:
    headers: dict[str, Any] = {TOKEN_HEADER: "tok-1", FIRST_SEEN_MS_HEADER: 1, "x-a": [1, 2]}
    assert sorted_headers(headers, NOW) == headers


def test_sorting_empty_headers_stamps_only_first_sight() -> None:
    assert sorted_headers({}, NOW) == {
        FIRST_SEEN_MS_HEADER: int(NOW * 1000),
        FIRST_SEEN_HEADER: NOW,
    }
