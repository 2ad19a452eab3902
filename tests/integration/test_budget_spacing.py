"""Calls spaced where e-RS counts them: a call that needs a new connection reaches the wire
late, and must not arrive too close to the pooled calls permitted after it.

The real parts: ``CallBudget`` and ``AiohttpWire`` as the client uses them, over real TCP to
an HTTP server admitting through the sandbox's strict limiter (``sandbox.budget.Budget``).
What makes the first call late is what made it late in the budget bench's start-up: the
event loop, busy with other work (there: the first prefetch of sagas), runs 150 ms of it
while the call waits for its new connection (a TLS handshake to e-RS waits longer).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import pytest
from aiohttp import web

from sandbox.budget import Budget, most_in_one_second
from schemas.referral_request import Priority
from worker.ers.budget import CallBudget
from worker.ers.transport import AiohttpWire
from worker.observability.metrics import Metrics
from worker.saga.priority import turn

PER_SECOND = 5  # the strict limiter's
# The client's budget: a permit every 215 ms (4.75 x SPEND), so that five intervals leave
# 74 ms for a noisy machine's jitter, where 5/s would leave 20 ms.
CLIENT_PER_SECOND = 4.75
BUSY_SECONDS = 0.15  # beyond those 74 ms: without the fix, a 429


class Strict:
    def __init__(self) -> None:
        self.budget = Budget(PER_SECOND, clock=time.time)
        self.arrivals: list[float] = []
        self.url = ""


@pytest.fixture
async def strict() -> AsyncIterator[Strict]:
    server = Strict()

    async def handle(request: web.Request) -> web.Response:
        server.arrivals.append(time.time())
        if server.budget.admit() is not None:
            return web.Response(status=429, headers={"Retry-After": "1"})
        return web.Response(body=b"{}")

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handle)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    server.url = f"http://127.0.0.1:{site._server.sockets[0].getsockname()[1]}"  # type: ignore[union-attr]
    try:
        yield server
    finally:
        await runner.cleanup()


async def calls(strict: Strict, count: int, *, with_ready: bool) -> tuple[list[int], Metrics]:
    metrics = Metrics()
    async with (
        CallBudget(CLIENT_PER_SECOND, metrics=metrics, key="spacing") as budget,
        AiohttpWire(max_connections=4, timeout_seconds=5.0, connect_timeout_seconds=1.0) as wire,
    ):
        statuses: list[int] = []
        for _ in range(count):
            permit = await budget.permit(Priority.ROUTINE, turn(Priority.ROUTINE, time.time()))
            ready = permit.at_the_wire if with_ready else None
            if not statuses:
                # Other work on the loop, run while the first call opens its connection (a
                # pooled call is written before the loop runs anything else).
                asyncio.get_running_loop().call_soon(time.sleep, BUSY_SECONDS)
            answer = await wire.send("GET", f"{strict.url}/STU3/x", {}, None, ready=ready)
            statuses.append(answer.status)
    return statuses, metrics


async def test_a_call_on_a_new_connection_does_not_crowd_the_calls_after_it(
    strict: Strict,
) -> None:
    statuses, metrics = await calls(strict, PER_SECOND + 2, with_ready=True)
    assert statuses == [200] * (PER_SECOND + 2)
    assert strict.budget.refused == 0
    assert most_in_one_second(strict.arrivals) <= PER_SECOND
    late = metrics.registry.get_sample_value("ers_worker_rate_limit_late_permits_total")
    assert late is not None and late >= 1  # the first call's, on the one new connection


async def test_without_the_last_word_the_strict_limiter_refuses(strict: Strict) -> None:
    """The control: the same calls, each written whenever its connection is ready. The first
    arrives 150 ms after its permit, and the sixth within the same second: a 429."""
    statuses, _ = await calls(strict, PER_SECOND + 2, with_ready=False)
    assert 429 in statuses
    assert strict.budget.refused >= 1
