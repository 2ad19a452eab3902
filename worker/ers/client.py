"""The e-RS FHIR STU3 client: HTTP, headers, rate limit and in-process retries.

``ErsClient`` is shared by the process (one connection pool, one rate limiter, since e-RS
limits requests per application); ``ErsClient.session`` binds it to one saga's user, token
and correlation id, and implements ``worker.ports.ErsPort``.

Retries (tenacity) only repeat what is safe: answers ``ers_classify`` calls transient.
State-changing calls whose effect is unknown raise ``ErsOutcomeUnknown`` and are not repeated.
"""

from __future__ import annotations

import re
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import httpx
import orjson
from aiolimiter import AsyncLimiter
from tenacity import (
    AsyncRetrying,
    RetryCallState,
    retry_if_exception_type,
    stop_after_attempt,
    wait_exponential_jitter,
)

from schemas.referral_request import ActingUser
from worker.ers.classify import Endpoint, classify_status, classify_transport
from worker.messaging.tokens import AccessToken
from worker.observability.metrics import Metrics, status_class
from worker.observability.tracing import call_span
from worker.ops.failpoints import NONE, Failpoints
from worker.saga.errors import (
    ErsOutcomeUnknown,
    ErsRateLimited,
    ErsTransientError,
    ErsUnexpected,
    TokenExpired,
)
from worker.saga.ports import ErsCall, ErsReply

FHIR_JSON = "application/fhir+json"
BeforeWrite = Callable[[str], Awaitable[None]]
_FILENAME = re.compile(r'filename="?(?P<name>[^";]+)"?')


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    max_attempts: int = 4
    initial_wait: float = 1.0
    max_wait: float = 30.0


class ErsClient:
    def __init__(
        self,
        http: httpx.AsyncClient,
        *,
        base_url: str,
        rate_limit_per_second: float,
        retry: RetryPolicy,
        booking_timeout_seconds: float,
        metrics: Metrics,
        failpoints: Failpoints = NONE,
    ) -> None:
        self.failpoints = failpoints
        self.metrics = metrics
        self._http = http
        self._base = base_url.rstrip("/")
        self._limiter = AsyncLimiter(rate_limit_per_second, 1.0)
        self.booking_timeout = booking_timeout_seconds
        # Built once; each call runs on a copy, since a Retrying object holds per-run state.
        self.retrying = AsyncRetrying(
            retry=retry_if_exception_type(ErsTransientError),
            stop=stop_after_attempt(retry.max_attempts),
            wait=_wait(retry),
            before_sleep=self._count_retry,
            reraise=True,
        )

    def _count_retry(self, state: RetryCallState) -> None:
        exc = state.outcome.exception() if state.outcome else None
        if isinstance(exc, ErsTransientError):
            self.metrics.ers_retries.labels(exc.endpoint, retry_reason(exc)).inc()

    def session(
        self,
        user: ActingUser,
        token: AccessToken,
        correlation_id: str,
        *,
        now: Callable[[], datetime] = lambda: datetime.now(UTC),
        before_write: BeforeWrite | None = None,
    ) -> ErsSession:
        return ErsSession(self, user, token, correlation_id, now, before_write)

    def url(self, path: str) -> str:
        return f"{self._base}/STU3/{path}"

    @property
    def http(self) -> httpx.AsyncClient:
        return self._http

    @property
    def limiter(self) -> AsyncLimiter:
        return self._limiter


def retry_reason(exc: ErsTransientError) -> str:
    if isinstance(exc, ErsRateLimited):
        return "rate_limited"
    if exc.status == 503:
        return "unavailable"
    if exc.status:
        return "server_error"
    return exc.code.lower()  # timeout, connection_error


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


class ErsSession:
    """The e-RS port for one saga: one acting user, one token, one correlation id."""

    def __init__(
        self,
        client: ErsClient,
        user: ActingUser,
        token: AccessToken,
        correlation_id: str,
        now: Callable[[], datetime],
        before_write: BeforeWrite | None,
    ) -> None:
        self._client = client
        self._token = token
        self._now = now
        self._before_write = before_write
        self._headers = {
            "NHSD-End-User-Organisation-ODS": user.ods_code,
            "NHSD-eRS-Business-Function": user.business_function.value,
            "X-Correlation-ID": correlation_id,
            "Accept": FHIR_JSON,
        }
        self.calls: list[ErsCall] = []

    def drain_calls(self) -> list[ErsCall]:
        calls, self.calls = self.calls, []
        return calls

    async def _call(
        self,
        endpoint: Endpoint,
        method: str,
        path: str,
        *,
        json: Any = None,
        content: bytes | None = None,
        headers: dict[str, str] | None = None,
        params: dict[str, str | int] | None = None,
        timeout: float | None = None,
    ) -> ErsReply:
        if endpoint.changes_state and self._before_write is not None:
            await self._before_write(endpoint.value)
            self._client.failpoints.hit(f"before_send:{endpoint.value}")
        retrying = self._client.retrying.copy()
        body = orjson.dumps(json) if json is not None else content
        all_headers = {**self._headers, **(headers or {})}
        if json is not None:
            all_headers["Content-Type"] = FHIR_JSON
        async for attempt in retrying:
            with attempt:
                return await self._attempt(
                    endpoint, method, path, body, all_headers, params, timeout
                )
        raise AssertionError("unreachable: tenacity reraises the last error")

    async def _attempt(
        self,
        endpoint: Endpoint,
        method: str,
        path: str,
        body: bytes | None,
        headers: dict[str, str],
        params: dict[str, str | int] | None,
        timeout: float | None,
    ) -> ErsReply:
        if self._token.expired(self._now()):
            raise TokenExpired(f"access token expired before {endpoint}")
        headers["Authorization"] = f"Bearer {self._token.value.get_secret_value()}"
        with call_span(endpoint.value, headers):
            return await self._send(endpoint, method, path, body, headers, params, timeout)

    async def _send(
        self,
        endpoint: Endpoint,
        method: str,
        path: str,
        body: bytes | None,
        headers: dict[str, str],
        params: dict[str, str | int] | None,
        timeout: float | None,
    ) -> ErsReply:
        client = self._client
        async with client.limiter:
            started = time.perf_counter()
            at = self._now()
            try:
                response = await client.http.request(
                    method,
                    client.url(path),
                    content=body,
                    headers=headers,
                    params=params,
                    timeout=timeout if timeout is not None else httpx.USE_CLIENT_DEFAULT,
                )
            except httpx.TransportError as exc:
                error = classify_transport(endpoint, exc)
                self._record(endpoint, None, at, started, None, error.code)
                raise error from None
        client.failpoints.hit(f"after_send:{endpoint.value}")
        request_id = response.headers.get("X-Request-ID")
        if response.is_success:
            try:
                reply = self._reply(response, request_id)
            except orjson.JSONDecodeError:
                # A state-changing call that succeeded but cannot be read has had its effect
                # with facts we did not get: reconcile, never repeat.
                kind = ErsOutcomeUnknown if endpoint.changes_state else ErsUnexpected
                error = kind(endpoint, response.status_code, "UNREADABLE_BODY")
                self._record(endpoint, response.status_code, at, started, request_id, error.code)
                raise error from None
            self._record(endpoint, response.status_code, at, started, request_id, None)
            return reply
        parsed: Any = None
        if response.content:
            try:
                parsed = orjson.loads(response.content)
            except orjson.JSONDecodeError:
                parsed = None
        error = classify_status(
            endpoint,
            response.status_code,
            parsed,
            retry_after=response.headers.get("Retry-After"),
            request_id=request_id,
        )
        self._record(endpoint, response.status_code, at, started, request_id, error.code)
        raise error

    def _record(
        self,
        endpoint: Endpoint,
        status: int | None,
        at: datetime,
        started: float,
        request_id: str | None,
        error_code: str | None,
    ) -> None:
        seconds = time.perf_counter() - started
        metrics = self._client.metrics
        metrics.ers_requests.labels(endpoint.value, status_class(status)).inc()
        metrics.ers_latency.labels(endpoint.value).observe(seconds)
        if error_code is None:
            metrics.last_ers_success.set(time.time())
        self.calls.append(
            ErsCall(endpoint.value, status, at, int(seconds * 1000), request_id, error_code)
        )

    @staticmethod
    def _reply(response: httpx.Response, request_id: str | None) -> ErsReply:
        content_type = response.headers.get("Content-Type", "")
        body: Any = None
        content = b""
        if "json" in content_type and response.content:
            body = orjson.loads(response.content)  # a bad body raises JSONDecodeError
        else:
            content = response.content
        disposition = _FILENAME.search(response.headers.get("Content-Disposition", ""))
        return ErsReply(
            status=response.status_code,
            body=body,
            content=content,
            etag=response.headers.get("ETag"),
            location=response.headers.get("Location"),
            file_name=disposition.group("name") if disposition else None,
            request_id=request_id,
        )

    # --- the endpoints of the referrer flow (worker.ports.ErsPort) ---

    async def retrieve_reference_data(self, code_system: str) -> ErsReply:
        return await self._call(Endpoint.A004, "GET", f"CodeSystem/{code_system}")

    async def retrieve_referral(self, ubrn: str) -> ErsReply:
        return await self._call(Endpoint.A005, "GET", f"ReferralRequest/{ubrn}")

    async def search_services(self, body: dict[str, Any]) -> ErsReply:
        path = "HealthcareService/$ers.searchHealthcareServicesForPatient"
        return await self._call(Endpoint.A010, "POST", path, json=body)

    async def create_referral(self, body: dict[str, Any]) -> ErsReply:
        return await self._call(
            Endpoint.A011, "POST", "ReferralRequest/$ers.createReferral", json=body
        )

    async def maintain_referral_letter(
        self, ubrn: str, version: str, body: dict[str, Any]
    ) -> ErsReply:
        return await self._call(
            Endpoint.A012,
            "POST",
            f"ReferralRequest/{ubrn}/$ers.maintainReferralLetter",
            json=body,
            headers={"If-Match": f'W/"{version}"'},
        )

    async def retrieve_slots(
        self,
        *,
        service_id: str,
        priority: str,
        commissioning_rule_org: str,
        page: int,
        page_size: int,
        named_clinician: str | None = None,
    ) -> ErsReply:
        params: dict[str, str | int] = {
            "schedule.actor:HealthcareService": service_id,
            "appointmentType": priority,
            "_count": page_size,
            "status": "free",
            "page": page,
            "_include": "Slot:schedule",
        }
        if named_clinician:
            params["schedule.actor:Practitioner"] = named_clinician
        return await self._call(
            Endpoint.A015,
            "GET",
            "Slot",
            params=params,
            headers={"NHSD-eRS-Comm-Rule-Org": commissioning_rule_org},
        )

    async def book_or_defer(self, body: dict[str, Any]) -> ErsReply:
        # e-RS waits up to 2 minutes for the provider's PAS before answering a booking.
        return await self._call(
            Endpoint.A016, "POST", "Appointment", json=body, timeout=self._client.booking_timeout
        )

    async def generate_patient_letter(self, ubrn: str) -> ErsReply:
        return await self._call(
            Endpoint.A019,
            "POST",
            f"ReferralRequest/{ubrn}/$ers.generatePatientLetter",
            headers={"Accept": f"application/pdf, {FHIR_JSON}"},
        )

    async def upload_file(
        self, *, ubrn: str, file_name: str, media_type: str, content: bytes
    ) -> ErsReply:
        return await self._call(
            Endpoint.A020,
            "POST",
            "Binary",
            content=content,
            headers={
                "Content-Type": media_type,
                "NHSD-eRS-File-Name": file_name,
                "NHSD-eRS-Referral-ID": ubrn,
            },
        )

    async def create_referral_and_send_for_triage(self, body: dict[str, Any]) -> ErsReply:
        path = "ReferralRequest/$ers.createReferralAndSendForTriage"
        return await self._call(Endpoint.A021, "POST", path, json=body)
