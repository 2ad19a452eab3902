"""The e-RS FHIR STU3 client: HTTP, headers, rate limit and in-process retries.

``ErsClient`` is shared by the process (one connection pool, one ``CallBudget``, since e-RS
limits requests per application); ``ErsClient.session`` binds it to one saga's user, token,
correlation id and clinical priority, and implements ``worker.ports.ErsPort``.

Retries (tenacity) only repeat what is safe: answers ``ers_classify`` calls transient.
State-changing calls whose effect is unknown raise ``ErsOutcomeUnknown`` and are not repeated.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from urllib.parse import quote, urlencode

import httpx
import orjson
from tenacity import (
    AsyncRetrying,
    RetryCallState,
    retry_if_exception,
    stop_after_attempt,
    wait_exponential_jitter,
)
from tenacity.stop import stop_base

from schemas.referral_request import ActingUser, Priority
from worker.ers.budget import CallBudget
from worker.ers.classify import classify_status, classify_transport
from worker.ers.request import Caller, ErsRequest
from worker.ers.session import ErsSession
from worker.ers.transport import Answer, Wire
from worker.fhir.vocabulary import Endpoint
from worker.observability.metrics import Metrics, status_class
from worker.observability.tracing import call_span
from worker.saga.errors import (
    Disposition,
    ErsOutcomeUnknown,
    ErsRateLimited,
    ErsTransientError,
    ErsUnexpected,
    SagaError,
    TokenExpired,
)
from worker.saga.ports import (
    NO_FAILPOINTS,
    AccessToken,
    BeforeCall,
    BeforeWrite,
    ErsCall,
    ErsReply,
    Failpoints,
    NotTaken,
)

_FILENAME = re.compile(r'filename="?(?P<name>[^";]+)"?')


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    max_attempts: int = 4
    initial_wait: float = 1.0
    max_wait: float = 30.0


class ErsClient:
    def __init__(
        self,
        wire: Wire,
        *,
        base_url: str,
        budget: CallBudget,
        retry: RetryPolicy,
        booking_timeout_seconds: float,
        metrics: Metrics,
        failpoints: Failpoints = NO_FAILPOINTS,
    ) -> None:
        self._failpoints = failpoints
        self._metrics = metrics
        self._wire = wire
        self._base = base_url.rstrip("/")
        self._budget = budget
        self._booking_timeout = booking_timeout_seconds
        # Built once; each call that needs a retry runs on a copy, since a Retrying object
        # holds per-run state.
        self._retrying = AsyncRetrying(
            retry=retry_if_exception(_retry_now),
            stop=stop_after_attempt(retry.max_attempts) | _AsksTooLong(retry.max_wait),
            wait=_wait(retry),
            before_sleep=self._count_retry,
            reraise=True,
        )

    def _count_retry(self, state: RetryCallState) -> None:
        exc = state.outcome.exception() if state.outcome else None
        if isinstance(exc, ErsTransientError):
            self._metrics.ers_retries.labels(exc.endpoint, retry_reason(exc)).inc()

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
    ) -> ErsSession:
        """The ``ErsPort`` of one saga run (``worker.saga.ports.ErsSessions``)."""
        return ErsSession(
            self, user, token, correlation_id, now, before_write, not_taken, before_call,
            priority, turn,
        )  # fmt: skip

    async def call(self, request: ErsRequest, caller: Caller) -> ErsReply:
        """Send one call, retrying what is safe; raise the error its answer stands for."""
        # The first attempt runs outside tenacity, whose machinery (a copy of the policy,
        # its attempt state and context managers) cost ~1 ms of CPU per DBS referral though
        # nearly every call succeeds at once. Once an attempt has failed, tenacity takes it
        # as its own first attempt, so the policy (what is retried, how often, how long it
        # waits, what is counted) has one home: ``self._retrying``.
        try:
            return await self._written_ahead(request, caller)
        except ErsTransientError as exc:
            if not _retry_now(exc):
                raise
            first: ErsTransientError | None = exc
        async for attempt in self._retrying.copy():
            with attempt:
                if first is not None:
                    failed, first = first, None
                    raise failed
                return await self._written_ahead(request, caller)
        raise AssertionError("unreachable: tenacity reraises the last error")

    async def _written_ahead(self, request: ErsRequest, caller: Caller) -> ErsReply:
        """One attempt, and for a state-changing call its write-ahead mark: set before the
        attempt, withdrawn when the answer proves e-RS did not act on it. So a crash while
        waiting to retry a 503 resumes by sending again, not by asking a person. Before a read,
        the journal stores what earlier writes did, if it has not yet."""
        endpoint = request.endpoint
        marked = endpoint.changes_state and caller.before_write is not None
        if marked and caller.before_write is not None:
            await caller.before_write(endpoint.value)
            self._failpoints.hit(f"before_send:{endpoint.value}")
        elif not endpoint.changes_state and caller.before_call is not None:
            await caller.before_call(endpoint.value)
        try:
            return await self._attempt(request, caller)
        except SagaError as exc:
            if marked and caller.not_taken is not None and exc.proves_not_taken:
                await caller.not_taken(endpoint.value)
                self._failpoints.hit(f"not_taken:{endpoint.value}")
            raise

    async def _attempt(self, request: ErsRequest, caller: Caller) -> ErsReply:
        endpoint = request.endpoint
        if caller.token.expired(caller.now()):
            raise TokenExpired(f"access token expired before {endpoint}")
        headers = {
            **request.headers,
            "Authorization": f"Bearer {caller.token.value.get_secret_value()}",
        }
        with call_span(endpoint.value, headers):
            return await self._send(request, headers, caller)

    async def _send(self, request: ErsRequest, headers: dict[str, str], caller: Caller) -> ErsReply:
        endpoint = request.endpoint
        timeout = self._booking_timeout if request.long_running else None
        url = f"{self._base}/STU3/{request.path}"
        if request.params:
            # As httpx encoded it: ``:`` in a parameter name (A015) as %3A, a space as %20.
            url = f"{url}?{urlencode(request.params, quote_via=quote)}"
        permit = await self._budget.permit(
            caller.priority, caller.turn if caller.turn is not None else time.time()
        )
        started = time.perf_counter()
        at = caller.now()
        try:
            response = await self._wire.send(
                request.method,
                url,
                headers,
                request.body,
                timeout=timeout,
                ready=permit.at_the_wire,
            )
        except httpx.TransportError as exc:
            error = classify_transport(endpoint, exc)
            error.sent_at = at
            self._record(caller, endpoint, None, at, started, None, error.code)
            raise error from None
        self._failpoints.hit(f"after_send:{endpoint.value}")
        request_id = response.headers.get("X-Request-ID")
        if response.is_success:
            try:
                reply = _reply(response, request_id, fhir=endpoint.answers_with_fhir)
            except (orjson.JSONDecodeError, _NoFhirBody):
                # A state-changing call that succeeded but cannot be read has had its effect
                # with facts we did not get: reconcile, never repeat. That includes a success
                # without the FHIR body the spec promises (an empty body, a proxy's HTML page).
                kind = ErsOutcomeUnknown if endpoint.changes_state else ErsUnexpected
                error = kind(endpoint, response.status, "UNREADABLE_BODY")
                error.sent_at = at
                self._record(caller, endpoint, response.status, at, started, request_id, error.code)
                raise error from None
            self._record(caller, endpoint, response.status, at, started, request_id, None)
            return reply
        parsed: Any = None
        if response.content:
            try:
                parsed = orjson.loads(response.content)
            except orjson.JSONDecodeError:
                parsed = None
        error = classify_status(
            endpoint,
            response.status,
            parsed,
            retry_after=response.headers.get("Retry-After"),
            request_id=request_id,
            now=caller.now(),
        )
        error.sent_at = at
        self._record(caller, endpoint, response.status, at, started, request_id, error.code)
        if isinstance(error, ErsRateLimited):
            # The budget is spent (or set too high): every replica holds off as long as e-RS
            # asks, not only us. Without a Retry-After this call backs off on its own.
            await self._budget.rate_limited(error.retry_after)
        raise error

    def _record(
        self,
        caller: Caller,
        endpoint: Endpoint,
        status: int | None,
        at: datetime,
        started: float,
        request_id: str | None,
        error_code: str | None,
    ) -> None:
        seconds = time.perf_counter() - started
        metrics = self._metrics
        metrics.ers_requests.labels(endpoint.value, status_class(status)).inc()
        metrics.ers_latency.labels(endpoint.value).observe(seconds)
        if error_code is None:
            metrics.last_ers_success.set(time.time())
        caller.calls.append(
            ErsCall(endpoint.value, status, at, int(seconds * 1000), request_id, error_code)
        )


def _retry_now(exc: BaseException) -> bool:
    return isinstance(exc, ErsTransientError) and exc.disposition is Disposition.RETRY_NOW


class _NoFhirBody(Exception):
    """A success without the FHIR resource its endpoint answers with."""


def _reply(response: Answer, request_id: str | None, *, fhir: bool) -> ErsReply:
    content_type = response.headers.get("Content-Type", "")
    body: Any = None
    content = b""
    if "json" in content_type and response.content:
        body = orjson.loads(response.content)  # a bad body raises JSONDecodeError
    elif fhir:
        raise _NoFhirBody
    else:
        content = response.content
    disposition = _FILENAME.search(response.headers.get("Content-Disposition", ""))
    return ErsReply(
        status=response.status,
        body=body,
        content=content,
        etag=response.headers.get("ETag"),
        location=response.headers.get("Location"),
        file_name=disposition.group("name") if disposition else None,
        request_id=request_id,
    )


def retry_reason(exc: ErsTransientError) -> str:
    if isinstance(exc, ErsRateLimited):
        return "rate_limited"
    if exc.status == 503:
        return "unavailable"
    if exc.status:
        return "server_error"
    return exc.code.lower()  # timeout, connection_error


class _AsksTooLong(stop_base):
    """Stop retrying in process when e-RS asks for a longer wait than we spend here: the
    saga then waits that long (at least) in a delay queue instead of asking too soon."""

    def __init__(self, max_wait: float) -> None:
        self._max_wait = max_wait

    def __call__(self, retry_state: RetryCallState) -> bool:
        exc = retry_state.outcome.exception() if retry_state.outcome else None
        return (
            isinstance(exc, ErsRateLimited)
            and exc.retry_after is not None
            and exc.retry_after > self._max_wait
        )


def _wait(policy: RetryPolicy) -> Callable[[RetryCallState], float]:
    backoff = wait_exponential_jitter(
        multiplier=policy.initial_wait, max=policy.max_wait, jitter=policy.initial_wait
    )

    def wait(state: RetryCallState) -> float:
        exc = state.outcome.exception() if state.outcome else None
        # The spec's TooManyRequests section: honour Retry-After, else back off exponentially.
        if isinstance(exc, ErsRateLimited) and exc.retry_after is not None:
            return min(exc.retry_after, policy.max_wait)
        return backoff(state)

    return wait
