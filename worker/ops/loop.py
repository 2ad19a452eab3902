"""The event loop the worker's long-running commands run on (``EVENT_LOOP``).

uvloop by default: measured side by side (docs/performance.md), asyncio's own loop spent a
sixth of the worker's CPU in Python-level handles, selectors and transports, which uvloop
does in C. ``asyncio`` stays one setting away, for a fault ever suspected of the loop, and is
what the tests' fixtures run on, so both loops are exercised.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from typing import Any, Literal, TypeVar

T = TypeVar("T")
LoopName = Literal["uvloop", "asyncio"]


def loop_factory(name: LoopName) -> Callable[[], asyncio.AbstractEventLoop] | None:
    """What ``asyncio.Runner`` makes its loop with (None: asyncio's default)."""
    if name == "asyncio":
        return None
    import uvloop  # only where it is asked for; a platform without it can still run asyncio

    return uvloop.new_event_loop


def run(main: Coroutine[Any, Any, T], name: LoopName) -> T:
    with asyncio.Runner(loop_factory=loop_factory(name)) as runner:
        return runner.run(main)
