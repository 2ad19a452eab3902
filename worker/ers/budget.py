"""The application's e-RS budget: call permits shared by every replica, most urgent first.

e-RS limits requests per *application*, however many replicas run, and a strict limiter
answers a burst with 429. So:

1. **One budget, smooth.** Every replica takes each call's permit from one GCRA limiter
   (throttled-py) in Redis: calls leave evenly spaced, at most one per emission interval
   across the application, and a replica that dies leaves its share to the others at once.
   GCRA keeps its clock in Redis (``TIME``), so replicas' clocks do not matter to it.
2. **Without a shared store** (none configured, or Redis unreachable), a replica spends
   ``1 / max_replicas`` of the budget from a local limiter, so that all of them together
   never exceed it; one replica alone on SQLite (``make run``) spends the whole budget.
3. **A 429 is everybody's problem.** e-RS' Retry-After is written to Redis and every
   replica waits it out before its next permit, not only the one that got it.
4. **Spaced where e-RS counts them.** e-RS counts a call when it arrives, and a call that
   needs a new connection (TCP and TLS: tens of ms to e-RS, ~10 ms here on a busy loop)
   reaches the wire that much after its permit, so the next, pooled, calls arrive closer
   behind it than the spacing allows: 11 in one second, one 429 (the budget bench's start-up,
   three replicas each opening their first connections). So a call that reaches the wire
   late gives its permit up and takes the next (``Permit.at_the_wire``).
5. **Most urgent first.** Within a replica, sagas waiting for a permit are served earliest
   turn first (``worker.saga.priority``): one of them at a time asks the shared limiter.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Callable
from datetime import timedelta
from typing import Any

from throttled.asyncio import (
    MemoryStore,
    Quota,
    Rate,
    RateLimiterType,
    RedisStore,
    Throttled,
)
from throttled.exceptions import BaseThrottledError

from schemas.referral_request import Priority
from worker.observability.metrics import Metrics
from worker.saga.priority import Turns

log = logging.getLogger("worker.ers.budget")

# The share of the budget we spend: e-RS counts a call when it arrives, and calls we send
# evenly spaced can arrive closer together by the network's and the event loop's jitter.
SPEND = 0.98
# How long a replica stays on its local share after the shared store failed before it
# tries the store again.
SHARED_RETRY_SECONDS = 5.0
# Ask again this much before the limiter said: waking exactly on time and then asking loses
# a sleep's overshoot and a round trip per call (about 1 % of the budget at 10/s). Asking a
# little early costs at most one more round trip, answered with the rest of the wait.
EARLY_SECONDS = 0.002
# A call written this long after its permit gives it up and takes the next: a pooled
# connection is ready in microseconds, a new one takes milliseconds; the spending margin
# (``SPEND``: ~20 ms in each second at 10/s) is for the jitter of every call, not for one.
LATE_SECONDS = 0.005
# The longest pause a 429 imposes on every replica; a call asked to wait longer waits in a
# delay queue (worker.ers.client), so no replica sleeps on a wild Retry-After.
MAX_PAUSE_SECONDS = 300.0
# A Redis that answers slower than this is treated as unreachable (the call would wait on it).
STORE_TIMEOUT_SECONDS = 0.5
_RATE_PERIOD = 100  # seconds: throttled-py takes integer rates, so 9.8/s is 980 per 100 s


def _raise_if_cancelled() -> None:
    """Raise a cancellation that a Redis command swallowed: with a socket timeout redis-py
    waits through ``asyncio.wait_for``, which on Python 3.11 can return the command's result
    to a task already cancelled. A cancelled saga must not go on to send its call."""
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError


def _gcra(per_second: float, store: Any, key: str) -> Throttled:
    limit = max(1, round(per_second * _RATE_PERIOD))
    quota = Quota(Rate(period=timedelta(seconds=_RATE_PERIOD), limit=limit), burst=1)
    return Throttled(key=key, using=RateLimiterType.GCRA.value, quota=quota, store=store)


class Permit:
    """One call's permit, granted now; ``at_the_wire`` is awaited just before the call is
    written (``worker.ers.transport``: once its connection is ready)."""

    __slots__ = ("_budget", "_granted", "_turn")

    def __init__(self, budget: CallBudget, turn: float) -> None:
        self._budget = budget
        self._turn = turn
        self._granted = time.perf_counter()

    async def at_the_wire(self) -> None:
        """A call that got here late (a new connection, a loop kept busy) would arrive too
        close to the calls permitted after it: it spends a fresh permit instead, at its own
        turn (earliest among this replica's waiting calls, so it waits about one interval).
        The late permit goes unused: one call's worth of budget per new connection."""
        if time.perf_counter() - self._granted < LATE_SECONDS:
            return
        self._budget._metrics.late_permits.inc()
        await self._budget._grant(self._turn)
        self._granted = time.perf_counter()


class CallBudget:
    def __init__(
        self,
        per_second: float,
        *,
        metrics: Metrics,
        key: str,
        redis_url: str | None = None,
        local_share: int = 1,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._metrics = metrics
        self._clock = clock
        self._pause_key = f"{key}:paused-until-ms"
        self._redis: RedisStore | None = None
        self._shared: Throttled | None = None
        if redis_url is not None:
            self._redis = RedisStore(
                server=redis_url,
                options={
                    "SOCKET_TIMEOUT": STORE_TIMEOUT_SECONDS,
                    "SOCKET_CONNECT_TIMEOUT": STORE_TIMEOUT_SECONDS,
                },
            )
            self._shared = _gcra(per_second * SPEND, self._redis, key)
        # ``local_share``: how many replicas may share the budget when this one cannot reach
        # the shared store (1: it runs alone, and is the whole application).
        self._local_per_second = per_second * SPEND / local_share
        self._local = _gcra(self._local_per_second, MemoryStore(), key)
        self._shared_per_second = per_second * SPEND
        self._fallback = False
        self._retry_shared_at = 0.0
        self._paused_until = 0.0
        self._turns = Turns(1)
        self._show_mode(shared=self._shared is not None)

    async def permit(self, priority: Priority, turn: float) -> Permit:
        """Wait until this call may go: its turn among this replica's waiting calls, any
        pause that a 429 anywhere asked for, and a permit from the budget."""
        started = time.perf_counter()
        await self._grant(turn)
        self._metrics.permit_wait.labels(priority.value.lower()).observe(
            time.perf_counter() - started
        )
        return Permit(self, turn)

    async def _grant(self, turn: float) -> None:
        await self._turns.acquire(turn)
        try:
            while True:
                await self._take()
                # A 429 here or at another replica asked everybody to wait: this permit is
                # spent unused, and the call waits for the pause, then a permit after it.
                wait = await self._pause_ends() - self._clock()
                if wait <= 0:
                    break
                await asyncio.sleep(wait)
        finally:
            self._turns.release()

    async def rate_limited(self, retry_after: float | None) -> None:
        """e-RS answered 429: counted, and when it asks us to wait, every replica waits (at
        most ``MAX_PAUSE_SECONDS``: a wait beyond it is the delay queues' to keep)."""
        self._metrics.rate_limited.inc()
        if retry_after is not None and math.isfinite(retry_after) and retry_after > 0:
            await self._pause(min(retry_after, MAX_PAUSE_SECONDS))

    async def _pause(self, seconds: float) -> None:
        until = self._clock() + seconds
        self._paused_until = max(self._paused_until, until)
        if self._redis is None or not self._shared_up():
            return
        try:
            shared = await self._shared_pause()
            if until > shared:
                await self._redis.set(self._pause_key, int(until * 1000), math.ceil(seconds) + 1)
        except BaseThrottledError as exc:
            self._shared_failed(exc)

    async def _pause_ends(self) -> float:
        """When the latest pause that a 429 asked for ends (epoch seconds; past if none)."""
        until = self._paused_until
        if self._redis is not None and self._shared_up():
            try:
                until = max(until, await self._shared_pause())
                self._shared_back()
            except BaseThrottledError as exc:
                self._shared_failed(exc)
            _raise_if_cancelled()
        return until

    async def _shared_pause(self) -> float:
        assert self._redis is not None
        value = await self._redis.get(self._pause_key)
        return int(value) / 1000 if value is not None else 0.0

    async def _take(self) -> None:
        while True:
            shared = self._shared is not None and self._shared_up()
            limiter = self._shared if shared and self._shared is not None else self._local
            try:
                result = await limiter.limit()
            except BaseThrottledError as exc:
                self._shared_failed(exc)
                continue
            _raise_if_cancelled()
            if shared:
                self._shared_back()
            if not result.limited:
                return
            await asyncio.sleep(max(result.state.retry_after - EARLY_SECONDS, 0.0))

    def _shared_up(self) -> bool:
        """Whether to use the shared store: yes unless it failed within the last few seconds."""
        return not self._fallback or time.monotonic() >= self._retry_shared_at

    def _shared_failed(self, exc: BaseException) -> None:
        self._retry_shared_at = time.monotonic() + SHARED_RETRY_SECONDS
        if self._fallback:
            return
        self._fallback = True
        log.warning(
            "shared e-RS budget unreachable: spending this replica's local share",
            extra={
                "error": type(exc.__cause__ or exc).__name__,
                "local_per_second": round(self._local_per_second, 3),
            },
        )
        self._metrics.rate_limit_fallbacks.inc()
        self._show_mode(shared=False)

    def _shared_back(self) -> None:
        if self._fallback:
            self._fallback = False
            log.info("shared e-RS budget reachable again")
            self._show_mode(shared=True)

    def _show_mode(self, *, shared: bool) -> None:
        self._metrics.rate_limit_shared_unreachable.set(
            1 if self._shared is not None and not shared else 0
        )
        self._metrics.rate_limit_per_second.set(
            self._shared_per_second if shared and self._shared else self._local_per_second
        )

    async def __aenter__(self) -> CallBudget:
        return self

    async def __aexit__(self, *_: object) -> None:
        if self._redis is not None:
            # throttled-py's store owns the Redis client; closing it ends the connection
            # pool, which belongs to this event loop.
            client: Any = self._redis._backend.get_client()
            # The client was handed its pool, so it does not close it unless told to.
            await client.aclose(close_connection_pool=True)
