"""One e-RS call as the session builds it, once, and as the client sends it."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Protocol

from schemas.referral_request import Priority
from worker.fhir.vocabulary import Endpoint
from worker.saga.ports import AccessToken, BeforeCall, BeforeWrite, ErsCall, ErsReply, NotTaken

FHIR_JSON = "application/fhir+json"


@dataclass(frozen=True, slots=True)
class ErsRequest:
    """Everything of one call but the bearer token, which the client adds per attempt."""

    endpoint: Endpoint
    method: str
    path: str  # below the FHIR base, e.g. "ReferralRequest/000049003844"
    headers: dict[str, str]
    body: bytes | None = None
    params: dict[str, str | int] | None = None
    long_running: bool = False
    """A016: e-RS waits up to 2 minutes for the provider's PAS, so the client's booking
    timeout applies instead of the default."""


@dataclass(slots=True)
class Caller:
    """Who a call is made for: one saga's token and clock, its journal's hooks (write-ahead),
    its place in the queue for the e-RS budget, and the list its call history goes to."""

    token: AccessToken
    now: Callable[[], datetime]
    before_write: BeforeWrite | None = None
    not_taken: NotTaken | None = None
    before_call: BeforeCall | None = None
    priority: Priority = Priority.ROUTINE
    turn: float | None = None  # ``worker.saga.priority.turn``; None: the time of each call
    calls: list[ErsCall] = field(default_factory=list)


class Sender(Protocol):
    """What a session hands its calls to: ``worker.ers.client.ErsClient``."""

    async def call(self, request: ErsRequest, caller: Caller) -> ErsReply: ...
