"""EVENT_LOOP: the loop worker.ops.loop.run makes is the one named."""

from __future__ import annotations

import asyncio

import uvloop

from worker.ops import loop


async def running_loop() -> asyncio.AbstractEventLoop:
    return asyncio.get_running_loop()


def test_uvloop_runs_on_uvloop() -> None:
    assert isinstance(loop.run(running_loop(), "uvloop"), uvloop.Loop)


def test_asyncio_runs_on_asyncios_own_loop() -> None:
    assert not isinstance(loop.run(running_loop(), "asyncio"), uvloop.Loop)
