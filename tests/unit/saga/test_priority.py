"""``worker.saga.priority``: turns (first sight plus the priority's allowance), the priority a
raw value names, and ``Turns``, the semaphore that admits its waiters earliest turn first."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import pytest

from schemas.referral_request import Priority
from worker.saga.priority import (
    ALLOWANCE_SECONDS,
    MOST_URGENT_FIRST,
    Turns,
    priority_of,
    turn,
)

SEEN = 1_750_000_000.0  # epoch seconds


async def wait_until(condition: Callable[[], bool], timeout: float = 2.0) -> None:
    """Let the loop run until ``condition`` holds (each check after one loop iteration)."""
    async with asyncio.timeout(timeout):
        while True:
            if condition():
                return
            await asyncio.sleep(0)


async def queue(turns: Turns, at: float, admitted: list[str], name: str) -> asyncio.Task[None]:
    """A task that waits in ``turns`` at ``at`` and notes its name once admitted; returned
    once it is parked, so that arrival order is the order of these calls."""
    waiting = turns.waiting

    async def take() -> None:
        await turns.acquire(at)
        admitted.append(name)

    task = asyncio.create_task(take(), name=name)
    await wait_until(lambda: turns.waiting == waiting + 1)
    return task


async def admitted_count(admitted: list[str], count: int) -> None:
    await wait_until(lambda: len(admitted) == count)


# --- turns and priorities ---


def test_a_two_week_wait_referral_goes_before_an_urgent_one_before_a_routine_one() -> None:
    turns = [turn(priority, SEEN) for priority in MOST_URGENT_FIRST]
    assert turns == sorted(turns) and len(set(turns)) == 3
    assert turn(Priority.TWO_WEEK_WAIT, SEEN) == SEEN


def test_a_routine_referral_seen_ten_minutes_before_a_two_week_wait_one_ties_with_it() -> None:
    assert ALLOWANCE_SECONDS[Priority.ROUTINE] == 600.0
    assert turn(Priority.ROUTINE, SEEN) == turn(Priority.TWO_WEEK_WAIT, SEEN + 600.0)
    # A second longer waiting and it is served first; a second less and it is not.
    assert turn(Priority.ROUTINE, SEEN - 1) < turn(Priority.TWO_WEEK_WAIT, SEEN + 600.0)
    assert turn(Priority.ROUTINE, SEEN + 1) > turn(Priority.TWO_WEEK_WAIT, SEEN + 600.0)


def test_an_urgent_referral_seen_two_minutes_early_ties_with_a_two_week_wait_one() -> None:
    assert turn(Priority.URGENT, SEEN) == turn(Priority.TWO_WEEK_WAIT, SEEN + 120.0)


def test_every_priority_has_an_allowance() -> None:
    assert set(ALLOWANCE_SECONDS) == set(Priority) == set(MOST_URGENT_FIRST)


@pytest.mark.parametrize("priority", list(Priority))
def test_a_valid_priority_names_itself_as_enum_or_as_text(priority: Priority) -> None:
    assert priority_of(priority) is priority
    assert priority_of(priority.value) is priority


@pytest.mark.parametrize(
    "value",
    [
        None,
        "",
        "urgent",
        "Two_Week_Wait",
        " URGENT",
        "URGENT ",
        "EMERGENCY",
        1,
        2.0,
        True,
    ],
)
def test_a_value_that_names_no_valid_priority_is_routine(value: object) -> None:
    assert priority_of(value) is Priority.ROUTINE


@pytest.mark.parametrize("value", [b"URGENT", ["URGENT"], {"priority": "URGENT"}])
def test_a_container_of_a_valid_priority_is_not_that_priority(value: object) -> None:
    assert priority_of(value) is Priority.ROUTINE


# --- Turns ---


async def test_waiters_with_turns_out_of_order_are_admitted_earliest_turn_first() -> None:
    turns = Turns(1)
    await turns.acquire(0.0)
    admitted: list[str] = []
    tasks = [
        await queue(turns, SEEN + 30, admitted, "late"),
        await queue(turns, SEEN + 10, admitted, "early"),
        await queue(turns, SEEN + 20, admitted, "middle"),
    ]
    assert admitted == []
    for count in range(1, 4):
        turns.release()
        await admitted_count(admitted, count)
    assert admitted == ["early", "middle", "late"]
    await asyncio.gather(*tasks)
    assert turns.waiting == 0


async def test_waiters_with_equal_turns_are_admitted_in_arrival_order() -> None:
    turns = Turns(1)
    await turns.acquire(0.0)
    admitted: list[str] = []
    names = ["first", "second", "third", "fourth"]
    tasks = [await queue(turns, SEEN, admitted, name) for name in names]
    for count in range(1, len(names) + 1):
        turns.release()
        await admitted_count(admitted, count)
    assert admitted == names
    await asyncio.gather(*tasks)


async def test_a_later_arrival_with_an_earlier_turn_overtakes_the_waiters() -> None:
    turns = Turns(1)
    await turns.acquire(0.0)
    admitted: list[str] = []
    routine = turn(Priority.ROUTINE, SEEN)
    tasks = [await queue(turns, routine, admitted, f"routine-{i}") for i in range(3)]
    tasks.append(await queue(turns, turn(Priority.TWO_WEEK_WAIT, SEEN), admitted, "2ww"))
    for count in range(1, 5):
        turns.release()
        await admitted_count(admitted, count)
    assert admitted == ["2ww", "routine-0", "routine-1", "routine-2"]
    await asyncio.gather(*tasks)


async def test_capacity_places_are_given_at_once_and_the_next_caller_waits() -> None:
    turns = Turns(3)
    for _ in range(3):
        await asyncio.wait_for(turns.acquire(SEEN), timeout=1)
    admitted: list[str] = []
    tasks = [
        await queue(turns, SEEN + 2, admitted, "b"),
        await queue(turns, SEEN + 1, admitted, "a"),
    ]
    assert admitted == [] and turns.waiting == 2
    turns.release()
    await wait_until(lambda: admitted == ["a"])
    assert not tasks[0].done()
    turns.release()
    await wait_until(lambda: admitted == ["a", "b"])
    await asyncio.gather(*tasks)


async def test_a_caller_arriving_while_others_wait_queues_even_if_a_place_was_freed() -> None:
    """A freed place goes to the earliest waiter, never to whoever asks next."""
    turns = Turns(1)
    await turns.acquire(0.0)
    admitted: list[str] = []
    waiter = await queue(turns, SEEN + 100, admitted, "waiter")
    turns.release()
    newcomer = await asyncio.wait_for(queue(turns, SEEN, admitted, "newcomer"), timeout=1)
    await wait_until(lambda: admitted == ["waiter"])
    assert not newcomer.done()
    turns.release()
    await wait_until(lambda: admitted == ["waiter", "newcomer"])
    await asyncio.gather(waiter, newcomer)


async def test_release_with_no_waiters_frees_exactly_one_place() -> None:
    turns = Turns(1)
    await turns.acquire(SEEN)
    turns.release()
    await asyncio.wait_for(turns.acquire(SEEN), timeout=1)  # the place is free again
    admitted: list[str] = []
    blocked = await queue(turns, SEEN, admitted, "blocked")  # and there was only one
    assert not blocked.done() and admitted == []
    turns.release()
    await wait_until(lambda: admitted == ["blocked"])
    await blocked


async def test_a_waiter_cancelled_while_waiting_leaks_no_place_and_is_skipped() -> None:
    turns = Turns(2)
    await turns.acquire(SEEN)
    await turns.acquire(SEEN)
    admitted: list[str] = []
    cancelled = await queue(turns, SEEN - 100, admitted, "cancelled")  # the earliest turn
    later = await queue(turns, SEEN + 100, admitted, "later")
    cancelled.cancel()
    with pytest.raises(asyncio.CancelledError):
        await cancelled
    turns.release()
    await wait_until(lambda: admitted == ["later"])  # the place skipped the cancelled one
    await later
    # Holders now: one original and "later". Both give back: two places, no more, no less.
    turns.release()
    turns.release()
    for _ in range(2):
        await asyncio.wait_for(turns.acquire(SEEN), timeout=1)
    third = await queue(turns, SEEN, admitted, "third")
    assert not third.done()
    turns.release()
    await wait_until(lambda: admitted == ["later", "third"])
    await third


async def test_a_waiter_cancelled_right_after_being_admitted_passes_its_place_on() -> None:
    turns = Turns(1)
    await turns.acquire(SEEN)
    admitted: list[str] = []
    first = await queue(turns, SEEN + 1, admitted, "first")
    second = await queue(turns, SEEN + 2, admitted, "second")
    turns.release()  # admits "first" ...
    first.cancel()  # ... which is cancelled before it runs again
    with pytest.raises(asyncio.CancelledError):
        await first
    await wait_until(lambda: admitted == ["second"])  # the place went on, not lost
    await second
    turns.release()
    await asyncio.wait_for(turns.acquire(SEEN), timeout=1)  # one place, still exactly one
    blocked = await queue(turns, SEEN, admitted, "blocked")
    assert not blocked.done()
    turns.release()
    await wait_until(lambda: admitted == ["second", "blocked"])
    await blocked


async def test_an_admitted_waiter_cancelled_with_nobody_behind_frees_the_place() -> None:
    turns = Turns(1)
    await turns.acquire(SEEN)
    admitted: list[str] = []
    only = await queue(turns, SEEN, admitted, "only")
    turns.release()
    only.cancel()
    with pytest.raises(asyncio.CancelledError):
        await only
    await asyncio.wait_for(turns.acquire(SEEN), timeout=1)
    blocked = await queue(turns, SEEN, admitted, "blocked")
    assert not blocked.done()
    turns.release()
    await wait_until(lambda: admitted == ["blocked"])
    await blocked
