"""The seams between the saga's pure logic and the I/O that serves it.

Steps talk only to these Protocols: ``worker.ers`` implements ``ErsPort`` over HTTP,
``worker.store`` implements ``LetterStore`` (and ``worker.saga.store.SagaStore``),
``worker.messaging`` provides the ``TokenProvider``, ``worker.observability`` the
``SagaObserver``; tests may supply their own.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol

from pydantic import SecretStr

from schemas.events import LetterInfo, Step
from schemas.referral_request import ActingUser, Priority


@dataclass(frozen=True, slots=True)
class ErsReply:
    """One successful e-RS answer: the parsed JSON body, or raw bytes for PDFs."""

    status: int
    body: Any = None
    content: bytes = b""
    etag: str | None = None
    location: str | None = None
    file_name: str | None = None
    request_id: str | None = None


@dataclass(frozen=True, slots=True)
class ErsCall:
    """One HTTP attempt, as the saga's history keeps it (no headers, no bodies)."""

    endpoint: str
    status: int | None
    at: datetime
    duration_ms: int
    x_request_id: str | None
    error_code: str | None


class ErsPort(Protocol):
    """The e-RS endpoints of the referrer flow, bound to one user and one correlation id."""

    def drain_calls(self) -> list[ErsCall]:
        """The HTTP attempts made since the last drain, for the saga's history."""
        ...

    async def retrieve_reference_data(self, code_system: str) -> ErsReply: ...  # A004

    async def retrieve_referral(self, ubrn: str) -> ErsReply: ...  # A005

    async def retrieve_worklist(self, body: dict[str, Any]) -> ErsReply: ...  # A008

    async def search_services(self, body: dict[str, Any]) -> ErsReply: ...  # A010

    async def create_referral(self, body: dict[str, Any]) -> ErsReply: ...  # A011

    async def maintain_referral_letter(
        self, ubrn: str, version: str, body: dict[str, Any]
    ) -> ErsReply: ...  # A012

    async def retrieve_slots(
        self,
        *,
        service_id: str,
        priority: str,
        commissioning_rule_org: str,
        page: int,
        page_size: int,
        named_clinician: str | None = None,
    ) -> ErsReply: ...  # A015

    async def book_or_defer(self, body: dict[str, Any]) -> ErsReply: ...  # A016

    async def generate_patient_letter(self, ubrn: str) -> ErsReply: ...  # A019

    async def upload_file(
        self, *, ubrn: str, file_name: str, media_type: str, content: bytes
    ) -> ErsReply: ...  # A020

    async def create_referral_and_send_for_triage(
        self, body: dict[str, Any]
    ) -> ErsReply: ...  # A021


class LetterStore(Protocol):
    async def save(
        self, *, ubrn: str, request_id: str, file_name: str | None, content: bytes
    ) -> LetterInfo: ...


@dataclass(frozen=True, slots=True)
class AccessToken:
    """The acting user's e-RS access token. A SecretStr: its repr is masked, so it cannot
    reach a log line or an exception message by accident.

    ``renew`` is set when the worker gets the access token itself, by exchanging the user's
    CIS2 ID token (``worker.ers.token_exchange``): ``value`` is then empty, ``expires_at`` is
    the ID token's expiry (after it, only a re-send helps), and the session asks ``renew``
    for the access token before each call, and once more after a 401."""

    value: SecretStr
    expires_at: datetime | None = None
    renew: Renew | None = field(default=None, compare=False, repr=False)

    def expired(self, now: datetime) -> bool:
        return self.expires_at is not None and now >= self.expires_at


Renew = Callable[["AccessToken | None", Priority, "float | None"], Awaitable[AccessToken]]
"""``renew(refused, priority, turn)``: a valid access token (cached, or exchanged now at the
budget's ``turn``); ``refused`` is one e-RS answered 401 to, dropped from the cache first.
Raises the ``SagaError`` an exchange failure stands for (transient: the saga waits; refused:
REAUTHENTICATION_NEEDED)."""


class MalformedToken(ValueError):
    """A token that could never be sent (control characters, not visible ASCII, absurd
    length). The message says why, never what the token was."""


class TokenUnusable(ValueError):
    """A token the worker cannot use (no CIS2 ID token, one that has expired or is no JWT):
    ``code`` and the message say which token and why, never its value."""

    def __init__(self, code: str, why: str) -> None:
        super().__init__(why)
        self.code = code


class TokenProvider(Protocol):
    def token_for(self, headers: Mapping[str, Any]) -> AccessToken | None:
        """The token for the message with these AMQP headers, or None when there is none;
        raises ``MalformedToken`` for one that cannot be sent, ``TokenUnusable`` for one
        the worker cannot use."""
        ...


class SagaObserver(Protocol):
    """What the runner tells the metrics: attempts and failures per step."""

    def step_started(self, step: Step) -> None: ...

    def step_failed(self, step: Step, reason: str) -> None:
        """``reason``: the error code, or OUTCOME_UNKNOWN for a call marked pending."""
        ...


class Failpoints(Protocol):
    """Named crash points for fault-injection tests; in production, ``NO_FAILPOINTS``."""

    def hit(self, point: str) -> None: ...


class _NoFailpoints:
    def hit(self, point: str) -> None:
        return None


NO_FAILPOINTS: Failpoints = _NoFailpoints()


BeforeWrite = Callable[[str], Awaitable[None]]
"""Called with the endpoint id before each attempt at a state-changing call (write-ahead)."""
BeforeCall = Callable[[str], Awaitable[None]]
"""Called with the endpoint id before anything is sent that is not itself written ahead: each
attempt at a call that changes nothing, and a token exchange before any call. What earlier
writes did to e-RS is stored first, if it is not yet (``worker.saga.journal``)."""
NotTaken = Callable[[str], Awaitable[None]]
"""Called with the endpoint id when an attempt's answer proves e-RS did not act on it (503,
429, refused before sending...): the write-ahead mark of that attempt is withdrawn."""


class ErsSessions(Protocol):
    """Where sagas get their ``ErsPort``: one session per saga run."""

    def session(
        self,
        user: ActingUser,
        token: AccessToken,
        correlation_id: str,
        *,
        now: Callable[[], datetime],
        before_write: BeforeWrite | None = None,
        not_taken: NotTaken | None = None,
        before_call: BeforeCall | None = None,
        priority: Priority = Priority.ROUTINE,
        turn: float | None = None,
    ) -> ErsPort: ...
