"""``CallBudget``, the application's e-RS budget, against a real Redis (and a Redis that is not
there): permits evenly spaced at the spent rate, one budget shared by every budget on a key,
the local share when the store is unreachable, a 429's pause for every replica, and permits
handed out earliest turn first.

Spacing is asserted from elapsed time, with bounds loose enough for a busy 2-core machine.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack
from typing import Any

import pytest
import redis.asyncio as aioredis

from schemas.referral_request import Priority
from worker.ers import budget as budget_module
from worker.ers.budget import SPEND, CallBudget
from worker.observability.metrics import Metrics
from worker.saga.priority import turn

REDIS_URL = "redis://127.0.0.1:6379/0"
NO_REDIS = "redis://127.0.0.1:1/0"  # nothing listens on port 1
PER_SECOND = 20.0
SPENT = PER_SECOND * SPEND  # 19.6 permits/s
SEEN = 1_750_000_000.0

Budgets = Callable[..., Awaitable[CallBudget]]


def sample(metrics: Metrics, name: str, **labels: str) -> float:
    value = metrics.registry.get_sample_value(f"ers_worker_{name}", labels)
    return 0.0 if value is None else value


def unreachable(metrics: Metrics) -> float:
    return sample(metrics, "rate_limit_shared_store_unreachable")


def fallbacks(metrics: Metrics) -> float:
    return sample(metrics, "rate_limit_fallbacks_total")


def spending(metrics: Metrics) -> float:
    return sample(metrics, "rate_limit_per_second")


def redis_client(budget: CallBudget) -> Any:
    """The Redis client of the budget's store (as ``CallBudget.__aexit__`` reaches it)."""
    assert budget._redis is not None
    return budget._redis._backend.get_client()


@pytest.fixture
def key() -> str:
    return f"test-budget-{uuid.uuid4().hex}"


@pytest.fixture
async def admin() -> AsyncIterator[aioredis.Redis]:
    client = aioredis.Redis.from_url(REDIS_URL)
    yield client
    await client.aclose()


@pytest.fixture
async def budgets() -> AsyncIterator[Budgets]:
    """Makes budgets, each entered as the application enters it (``async with``) and left at
    the end of the test. Their Redis connections are then closed as well, which leaving does
    not do (see ``test_leaving_the_budget_closes_its_redis_connections``)."""
    async with AsyncExitStack() as stack:

        async def make(per_second: float = PER_SECOND, **kwargs: Any) -> CallBudget:
            kwargs.setdefault("metrics", Metrics())
            budget = CallBudget(per_second, **kwargs)
            if budget._redis is not None:
                stack.push_async_callback(redis_client(budget).connection_pool.disconnect)
            return await stack.enter_async_context(budget)

        yield make


async def permits(budget: CallBudget, count: int, priority: Priority = Priority.ROUTINE) -> None:
    for _ in range(count):
        await budget.permit(priority, turn(priority, SEEN))


async def eventually(condition: Callable[[], bool], timeout: float = 2.0) -> None:
    """Let the loop run until ``condition`` holds (each check after one loop iteration)."""
    async with asyncio.timeout(timeout):
        while True:
            if condition():
                return
            await asyncio.sleep(0)


async def timed(work: Awaitable[object]) -> float:
    started = time.perf_counter()
    await asyncio.wait_for(work, timeout=30)
    return time.perf_counter() - started


# --- one replica, no shared store ---


async def test_local_permits_are_evenly_spaced_at_the_spent_rate(budgets: Budgets) -> None:
    metrics = Metrics()
    budget = await budgets(metrics=metrics, key="local")
    elapsed = await timed(permits(budget, 10))
    assert 0.4 <= elapsed <= 9 / SPENT + 0.5  # 9 / 19.6 = 0.46 s
    assert unreachable(metrics) == 0
    assert spending(metrics) == pytest.approx(SPENT)


async def test_the_first_permit_comes_at_once(budgets: Budgets) -> None:
    budget = await budgets(key="first")
    assert await timed(permits(budget, 1)) < 0.2


async def test_local_budgets_do_not_share_even_on_one_key(budgets: Budgets) -> None:
    """Without a shared store each budget is its own: the control for the shared tests."""
    one, two = await budgets(key="same"), await budgets(key="same")
    elapsed = await timed(asyncio.gather(permits(one, 8), permits(two, 8)))
    assert 0.3 <= elapsed < 0.7  # each 7 / 19.6 = 0.36 s, side by side


async def test_a_local_share_spends_its_fraction_of_the_budget(budgets: Budgets) -> None:
    metrics = Metrics()
    budget = await budgets(metrics=metrics, key="share", local_share=2)
    elapsed = await timed(permits(budget, 6))
    assert elapsed >= 0.4  # 5 / 9.8 = 0.51 s; the whole budget would take 0.26 s
    assert spending(metrics) == pytest.approx(SPENT / 2)


# --- shared through Redis ---


async def test_two_budgets_on_one_redis_key_share_one_budget(budgets: Budgets, key: str) -> None:
    metrics = Metrics()
    one = await budgets(metrics=metrics, key=key, redis_url=REDIS_URL)
    two = await budgets(key=key, redis_url=REDIS_URL)
    elapsed = await timed(asyncio.gather(permits(one, 8), permits(two, 8)))
    # 16 permits, one budget: 15 / 19.6 = 0.77 s; two budgets would take 0.36 s.
    assert elapsed >= 0.65
    assert (unreachable(metrics), fallbacks(metrics)) == (0, 0)
    assert spending(metrics) == pytest.approx(SPENT)


async def test_budgets_on_different_redis_keys_do_not_share(budgets: Budgets, key: str) -> None:
    one = await budgets(key=f"{key}-a", redis_url=REDIS_URL)
    two = await budgets(key=f"{key}-b", redis_url=REDIS_URL)
    elapsed = await timed(asyncio.gather(permits(one, 8), permits(two, 8)))
    assert 0.3 <= elapsed < 0.7


async def test_a_shared_budget_spaces_its_permits_at_the_spent_rate(
    budgets: Budgets, key: str
) -> None:
    budget = await budgets(key=key, redis_url=REDIS_URL)
    elapsed = await timed(permits(budget, 10))
    assert 0.4 <= elapsed <= 9 / SPENT + 0.5


# --- the shared store unreachable ---


async def test_with_redis_unreachable_a_budget_spends_its_local_share(
    budgets: Budgets, key: str
) -> None:
    metrics = Metrics()
    budget = await budgets(metrics=metrics, key=key, redis_url=NO_REDIS, local_share=2)
    assert unreachable(metrics) == 0
    assert spending(metrics) == pytest.approx(SPENT)
    elapsed = await timed(permits(budget, 6))
    assert elapsed >= 0.4  # 5 / 9.8 = 0.51 s: the share's rate, not the whole budget's
    assert elapsed <= 5 / (SPENT / 2) + 1.0  # and each try of the store costs no wait
    assert unreachable(metrics) == 1
    assert spending(metrics) == pytest.approx(SPENT / 2)
    assert fallbacks(metrics) == 1  # the loss is counted once, not once per permit


class FlakyRedis:
    """A TCP proxy to the real Redis that can be taken down: while down it closes every
    connection, open or new, as a Redis that went away does. Counts connections refused."""

    def __init__(self) -> None:
        self.up = True
        self.refused = 0
        self._open: set[asyncio.StreamWriter] = set()
        self._server: asyncio.Server | None = None

    @property
    def url(self) -> str:
        assert self._server is not None
        port = self._server.sockets[0].getsockname()[1]
        return f"redis://127.0.0.1:{port}/0"

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)

    async def stop(self) -> None:
        self.down()
        assert self._server is not None
        self._server.close()
        await self._server.wait_closed()

    def down(self) -> None:
        self.up = False
        for writer in list(self._open):
            writer.close()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if not self.up:
            self.refused += 1
            writer.close()
            return
        upstream_reader, upstream_writer = await asyncio.open_connection("127.0.0.1", 6379)
        self._open.update((writer, upstream_writer))

        async def pipe(source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
            try:
                while data := await source.read(65536):
                    sink.write(data)
                    await sink.drain()
            except ConnectionError:
                pass
            finally:
                sink.close()

        try:
            await asyncio.gather(pipe(reader, upstream_writer), pipe(upstream_reader, writer))
        finally:
            self._open.difference_update((writer, upstream_writer))


@pytest.fixture
async def flaky_redis() -> AsyncIterator[FlakyRedis]:
    proxy = FlakyRedis()
    await proxy.start()
    yield proxy
    await proxy.stop()


async def test_a_budget_tries_the_lost_store_again_and_counts_the_loss_once(
    budgets: Budgets, key: str, flaky_redis: FlakyRedis, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(budget_module, "SHARED_RETRY_SECONDS", 0.05)  # < 1 / 9.8 s
    metrics = Metrics()
    budget = await budgets(metrics=metrics, key=key, redis_url=flaky_redis.url, local_share=2)
    await permits(budget, 2)
    assert (unreachable(metrics), fallbacks(metrics)) == (0, 0)

    flaky_redis.down()
    elapsed = await timed(permits(budget, 6))
    assert flaky_redis.refused >= 4  # the store was tried again for (nearly) every permit
    assert (unreachable(metrics), fallbacks(metrics)) == (1, 1)
    assert spending(metrics) == pytest.approx(SPENT / 2)
    assert elapsed >= 0.4  # at the share's rate: 5 / 9.8 = 0.51 s or more

    flaky_redis.up = True
    await asyncio.wait_for(permits_until(budget, lambda: unreachable(metrics) == 0), timeout=5)
    assert spending(metrics) == pytest.approx(SPENT)
    assert fallbacks(metrics) == 1

    flaky_redis.down()  # lost again: a second fallback
    await permits(budget, 2)
    assert (unreachable(metrics), fallbacks(metrics)) == (1, 2)


async def permits_until(budget: CallBudget, condition: Callable[[], bool]) -> None:
    while not condition():
        await permits(budget, 1)


# --- 429s ---


async def test_a_429_with_retry_after_pauses_every_budget_on_the_key(
    budgets: Budgets, key: str
) -> None:
    hit, other = Metrics(), Metrics()
    one = await budgets(metrics=hit, key=key, redis_url=REDIS_URL)
    two = await budgets(metrics=other, key=key, redis_url=REDIS_URL)
    await permits(two, 1)
    await one.rate_limited(2.0)
    assert sample(hit, "api_rate_limited_total") == 1
    assert sample(other, "api_rate_limited_total") == 0
    waited = await asyncio.gather(timed(permits(two, 1)), timed(permits(one, 1)))
    assert all(1.8 <= seconds <= 3.5 for seconds in waited), waited
    # The pause is over: permits come at the budget's pace again.
    assert await timed(permits(two, 1)) < 0.5


async def test_a_429_without_retry_after_is_counted_but_pauses_nobody(
    budgets: Budgets, key: str, admin: aioredis.Redis
) -> None:
    metrics = Metrics()
    one = await budgets(metrics=metrics, key=key, redis_url=REDIS_URL)
    two = await budgets(key=key, redis_url=REDIS_URL)
    await permits(one, 1)
    await one.rate_limited(None)
    await one.rate_limited(0.0)
    assert sample(metrics, "api_rate_limited_total") == 2
    assert await admin.get(f"{key}:paused-until-ms") is None
    assert await timed(asyncio.gather(permits(one, 1), permits(two, 1))) < 0.5


async def test_a_429_pauses_a_budget_without_a_shared_store(budgets: Budgets) -> None:
    metrics = Metrics()
    budget = await budgets(metrics=metrics, key="alone")
    await permits(budget, 1)
    await budget.rate_limited(0.6)
    assert 0.5 <= await timed(permits(budget, 1)) <= 2.0
    assert sample(metrics, "api_rate_limited_total") == 1


async def test_a_429_with_redis_unreachable_still_pauses_this_replica(
    budgets: Budgets, key: str
) -> None:
    metrics = Metrics()
    budget = await budgets(metrics=metrics, key=key, redis_url=NO_REDIS)
    await permits(budget, 1)
    await budget.rate_limited(0.6)
    assert 0.5 <= await timed(permits(budget, 1)) <= 2.0
    assert sample(metrics, "api_rate_limited_total") == 1


async def test_a_retry_after_that_is_not_finite_is_counted_and_does_not_raise(
    budgets: Budgets, key: str
) -> None:
    metrics = Metrics()
    budget = await budgets(metrics=metrics, key=key, redis_url=REDIS_URL)
    await budget.rate_limited(math.inf)
    assert sample(metrics, "api_rate_limited_total") == 1


# --- a call that reaches the wire late ---


def late_permits(metrics: Metrics) -> float:
    return sample(metrics, "rate_limit_late_permits_total")


# Late here is 30 ms, not 5: the on-time checks below must not count a busy machine's
# preemption between two lines as a late call. (An interval is 51 ms.)
LATE = 0.03


@pytest.fixture
def late(monkeypatch: pytest.MonkeyPatch) -> float:
    monkeypatch.setattr(budget_module, "LATE_SECONDS", LATE)
    return LATE


@pytest.mark.parametrize("shared", [False, True])
async def test_a_call_at_the_wire_late_takes_the_next_permit(
    budgets: Budgets, key: str, shared: bool, late: float
) -> None:
    """A call that needed a new connection reaches the wire after its permit: it gives the
    permit up and waits for the next one (one interval: 1 / 19.6 = 51 ms), so the calls
    permitted after it stay spaced behind it where e-RS counts them."""
    metrics = Metrics()
    budget = await budgets(metrics=metrics, key=key, redis_url=REDIS_URL if shared else None)
    permit = await budget.permit(Priority.ROUTINE, turn(Priority.ROUTINE, SEEN))
    started = time.perf_counter()
    await asyncio.sleep(late * 1.2)  # the new connection: late, and short of an interval
    await permit.at_the_wire()
    assert time.perf_counter() - started >= 0.9 / SPENT
    assert late_permits(metrics) == 1
    # Renewed: written at once now, it is on time and keeps its fresh permit.
    assert await timed(permit.at_the_wire()) < 0.5 / SPENT
    assert late_permits(metrics) == 1
    # The next call's permit is the one after the renewed one: two intervals after the first
    # (GCRA keeps its schedule, so it may come sooner than an interval after a late renewal).
    await permits(budget, 1)
    assert time.perf_counter() - started >= 1.9 / SPENT


async def test_a_call_at_the_wire_on_time_keeps_its_permit(budgets: Budgets, late: float) -> None:
    metrics = Metrics()
    budget = await budgets(metrics=metrics, key="on-time")
    permit = await budget.permit(Priority.ROUTINE, turn(Priority.ROUTINE, SEEN))
    assert await timed(permit.at_the_wire()) < 0.5 / SPENT
    assert late_permits(metrics) == 0


# --- most urgent first ---


@pytest.mark.parametrize("shared", [False, True], ids=["local", "redis"])
async def test_a_two_week_wait_call_waiting_beside_routine_ones_gets_the_next_permit(
    budgets: Budgets, key: str, shared: bool
) -> None:
    metrics = Metrics()
    budget = await budgets(10.0, metrics=metrics, key=key, redis_url=REDIS_URL if shared else None)
    await permits(budget, 1)  # the next permit is 0.1 s away: whoever asks now waits
    served: list[str] = []

    async def call(name: str, priority: Priority) -> None:
        await budget.permit(priority, turn(priority, SEEN))
        served.append(name)

    # Created in this order, they ask in this order: routine-0 first, holding the budget's
    # one turn while it waits for the limiter; the others queue behind it.
    asked = [
        ("routine-0", Priority.ROUTINE),
        ("routine-1", Priority.ROUTINE),
        ("routine-2", Priority.ROUTINE),
        ("urgent", Priority.URGENT),
        ("2ww", Priority.TWO_WEEK_WAIT),
    ]
    tasks = [asyncio.create_task(call(name, priority)) for name, priority in asked]
    await asyncio.wait_for(asyncio.gather(*tasks), timeout=10)
    assert served == ["routine-0", "2ww", "urgent", "routine-1", "routine-2"]
    count = "rate_limit_permit_wait_seconds_count"
    assert sample(metrics, count, priority="two_week_wait") == 1
    assert sample(metrics, count, priority="urgent") == 1
    assert sample(metrics, count, priority="routine") == 4


async def cancel_the_turns_holder(budget: CallBudget) -> tuple[bool, float]:
    """Two callers ask; the one holding the budget's turn (waiting for the limiter, or asking
    Redis) is cancelled. Whether it ended cancelled, and how long the other then waited."""
    await permits(budget, 1)  # the next permit is 0.5 s away
    holder = asyncio.create_task(permits(budget, 1))
    queued = asyncio.create_task(permits(budget, 1, Priority.TWO_WEEK_WAIT))
    await eventually(lambda: budget._turns.waiting == 1)  # the holder holds, the other waits
    holder.cancel()
    cancelled = True
    try:
        await holder
        cancelled = False
    except asyncio.CancelledError:
        pass
    return cancelled, await timed(queued)


async def test_a_caller_cancelled_while_holding_the_turn_leaves_it_to_the_next(
    budgets: Budgets,
) -> None:
    budget = await budgets(2.0, key="cancel")
    cancelled, waited = await cancel_the_turns_holder(budget)
    assert cancelled and waited < 2.0  # the turn was given on: 0.5 s expected


async def test_a_caller_cancelled_while_asking_redis_is_cancelled(
    budgets: Budgets, key: str
) -> None:
    budget = await budgets(2.0, key=key, redis_url=REDIS_URL)
    cancelled, waited = await cancel_the_turns_holder(budget)
    assert waited < 2.0  # the turn is given on either way
    assert cancelled


# --- closing ---


async def test_leaving_the_budget_closes_its_redis_connections(
    key: str, admin: aioredis.Redis
) -> None:
    budget = CallBudget(PER_SECOND, metrics=Metrics(), key=key, redis_url=REDIS_URL)
    client = redis_client(budget)
    try:
        async with budget:
            await permits(budget, 1)
            connection = await client.client_id()
            assert connection in await client_ids(admin)
        gone = False
        with contextlib.suppress(TimeoutError):  # the server sees the close soon after
            async with asyncio.timeout(2):
                while True:
                    if connection not in await client_ids(admin):
                        gone = True
                        break
                    await asyncio.sleep(0.02)
        assert gone, "the budget's Redis connection is still open after leaving it"
    finally:
        await client.connection_pool.disconnect()


async def client_ids(admin: aioredis.Redis) -> set[int]:
    return {int(client["id"]) for client in await admin.client_list()}
