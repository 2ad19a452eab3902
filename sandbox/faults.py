"""Injected failures: queued answers that replace (or follow) the real handling of an endpoint."""

from __future__ import annotations

import re
from collections import deque
from dataclasses import asdict, dataclass
from typing import Any

from aiohttp import web

from sandbox.outcomes import STATUS_DEFAULT_CODE, ErsError

_ERROR_CODE = re.compile(r"^[A-Z][A-Z0-9_]*$")
ENDPOINT_IDS = (
    "A004",
    "A005",
    "A008",
    "A010",
    "A011",
    "A012",
    "A015",
    "A016",
    "A019",
    "A020",
    "A021",
)


class FaultSpecError(ValueError):
    pass


@dataclass
class Fault:
    endpoint: str
    status: int | None
    times: int = 1
    retry_after: int | None = None
    delay_seconds: float = 0.0
    after_effect: bool = False
    code: str | None = None
    # Act on the request, then close the connection without answering: a real ambiguous
    # write (the caller sees the connection drop after sending).
    drop: bool = False
    # How many times the operation happens before the answer is lost (after_effect or drop):
    # 2 acts out a gateway that retried the request behind the caller's back.
    effects: int = 1

    @classmethod
    def from_json(cls, raw: Any) -> Fault:
        if not isinstance(raw, dict):
            raise FaultSpecError("fault must be a JSON object")
        endpoint = raw.get("endpoint")
        if endpoint not in ENDPOINT_IDS:
            raise FaultSpecError(f"endpoint must be one of {', '.join(ENDPOINT_IDS)}")
        status = raw.get("status")
        if status is not None and (not _is_int(status) or not 400 <= status <= 599):
            raise FaultSpecError("status must be an HTTP error status (400-599) or null")
        times = raw.get("times", 1)
        if not _is_int(times) or times < 1:
            raise FaultSpecError("times must be a positive integer")
        retry_after = raw.get("retry_after")
        if retry_after is not None and (not _is_int(retry_after) or retry_after < 0):
            raise FaultSpecError("retry_after must be a non-negative integer or null")
        delay = raw.get("delay_seconds", 0)
        if isinstance(delay, bool) or not isinstance(delay, int | float) or delay < 0:
            raise FaultSpecError("delay_seconds must be a non-negative number")
        after_effect = raw.get("after_effect", False)
        if not isinstance(after_effect, bool):
            raise FaultSpecError("after_effect must be a boolean")
        if status is None and after_effect:
            raise FaultSpecError("after_effect needs a status to answer with")
        drop = raw.get("drop", False)
        if not isinstance(drop, bool):
            raise FaultSpecError("drop must be a boolean")
        effects = raw.get("effects", 1)
        if not _is_int(effects) or not 1 <= effects <= 5:
            raise FaultSpecError("effects must be an integer from 1 to 5")
        code = raw.get("code")
        if code is not None and (not isinstance(code, str) or not _ERROR_CODE.match(code)):
            raise FaultSpecError("code must be an e-RS error code such as SLOT_NOT_AVAILABLE")
        return cls(
            endpoint, status, times, retry_after, float(delay), after_effect, code, drop, effects
        )

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    def response(self) -> web.Response:
        assert self.status is not None
        code = self.code or STATUS_DEFAULT_CODE.get(self.status, "INTERNAL_SERVER_ERROR")
        headers = {"Retry-After": str(self.retry_after)} if self.retry_after is not None else {}
        # The specification's 503 example carries no diagnostics; keep injected 503s identical.
        diagnostics = None if code == "SYSTEM_UNAVAILABLE" else "Injected by the e-RS sandbox."
        return ErsError(self.status, code, diagnostics, headers).response()


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


class FaultQueue:
    def __init__(self) -> None:
        self._queue: deque[Fault] = deque()

    def add(self, fault: Fault) -> None:
        self._queue.append(fault)

    def clear(self) -> None:
        self._queue.clear()

    def pending(self) -> list[Fault]:
        return list(self._queue)

    def take(self, endpoint: str) -> Fault | None:
        """Consume one use of the oldest fault queued for `endpoint`."""
        for fault in self._queue:
            if fault.endpoint == endpoint:
                fault.times -= 1
                if fault.times == 0:
                    self._queue.remove(fault)
                return fault
        return None
