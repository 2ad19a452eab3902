"""EVENT_LOOP: the loop worker.ops.loop.run makes is the one named, and the collector's
threshold it runs under."""

from __future__ import annotations

import asyncio
import gc
from collections.abc import Iterator

import pytest
import uvloop

from worker.ops import loop


async def running_loop() -> asyncio.AbstractEventLoop:
    return asyncio.get_running_loop()


def test_uvloop_runs_on_uvloop() -> None:
    assert isinstance(loop.run(running_loop(), "uvloop"), uvloop.Loop)


def test_asyncio_runs_on_asyncios_own_loop() -> None:
    assert not isinstance(loop.run(running_loop(), "asyncio"), uvloop.Loop)


@pytest.fixture
def thresholds() -> Iterator[tuple[int, int, int]]:
    before = gc.get_threshold()
    gc.set_threshold(700, 10, 10)  # Python's defaults, whatever ran before
    yield gc.get_threshold()
    gc.set_threshold(*before)


def test_the_worker_looks_for_cyclic_garbage_less_often(
    thresholds: tuple[int, int, int],
) -> None:
    loop.run(running_loop(), "uvloop")

    # Only the youngest generation's: the older two still follow it as before.
    assert gc.get_threshold() == (loop.GC_THRESHOLD, *thresholds[1:])
    assert thresholds[0] < loop.GC_THRESHOLD
