"""The event loop the worker's long-running commands run on (``EVENT_LOOP``), and the
threshold of Python's cycle collector under it.

uvloop by default: measured side by side (docs/performance.md), asyncio's own loop spent a
sixth of the worker's CPU in Python-level handles, selectors and transports, which uvloop
does in C. ``asyncio`` stays one setting away, for a fault ever suspected of the loop, and is
what the tests' fixtures run on, so both loops are exercised.
"""

from __future__ import annotations

import asyncio
import gc
from collections.abc import Callable, Coroutine
from typing import Any, Literal, TypeVar

T = TypeVar("T")
LoopName = Literal["uvloop", "asyncio"]

# Python looks for cyclic garbage after every 700 container objects allocated and not yet
# freed. Nearly all of the worker's die by reference counting (a saga's dicts, models, its
# answers), so at 700 the collector ran ~440 times per 1,000 DBS referrals, for 0.5-0.9 ms of
# CPU per referral (~8 %), and found next to nothing. At 10,000 it ran once or twice per
# 1,000 (measured in bench.suite's cpu runs); what cycles there are wait longer, not for
# ever, and the memory benchmark's RSS says what they cost.
GC_THRESHOLD = 10_000


def loop_factory(name: LoopName) -> Callable[[], asyncio.AbstractEventLoop] | None:
    """What ``asyncio.Runner`` makes its loop with (None: asyncio's default)."""
    if name == "asyncio":
        return None
    import uvloop  # only where it is asked for; a platform without it can still run asyncio

    return uvloop.new_event_loop


def run(main: Coroutine[Any, Any, T], name: LoopName) -> T:
    _, older, oldest = gc.get_threshold()
    gc.set_threshold(GC_THRESHOLD, older, oldest)
    with asyncio.Runner(loop_factory=loop_factory(name)) as runner:
        return runner.run(main)
