"""What becomes of one message: the events it leads to and its ``Fate`` with the broker.

The handler decides a ``Handled``; the consumer carries it out in one place (``_settle``).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from schemas.events import LetterReadyEventV1, OutcomeEventV1
from worker.messaging.headers import attempt_of, first_seen_of
from worker.observability.metrics import PROCESSED

Event = OutcomeEventV1 | LetterReadyEventV1


class Fate(StrEnum):
    ACK = "ack"
    DEAD_LETTER = "dead_letter"
    DELAY = "delay"
    REQUEUE = "requeue"


@dataclass(frozen=True, slots=True)
class Incoming:
    """A request message as the handler sees it: no broker objects."""

    body: bytes
    headers: Mapping[str, Any] = field(default_factory=dict)
    correlation_id: str | None = None
    message_id: str | None = None
    reply_to: str | None = None

    @property
    def attempt(self) -> int:
        return attempt_of(self.headers)

    def first_seen(self, default: float) -> float:
        return first_seen_of(self.headers, default)


@dataclass(frozen=True, slots=True)
class Handled:
    events: list[Event]
    fate: Fate
    outcome: OutcomeEventV1 | None = None
    reason: str = ""
    delay_seconds: float = 0.0
    result: str = PROCESSED
    trace_headers: dict[str, str] = field(default_factory=dict)
    counts_attempt: bool = True
    """For DELAY: whether the trip counts towards the next delay tier. A wait for another
    saga's lease does not: it polls at the first tier instead of climbing to hours."""
