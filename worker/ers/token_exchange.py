"""The API platform's token exchange: a CIS2 ID token in, an e-RS access token out.

The "NHS CIS2 separate authentication and authorisation" pattern: ``POST {APIM}/oauth2/token``,
form-encoded, with the ID token as ``subject_token`` and a client assertion (a JWT signed RS512
with the application's key, ``kid`` in its header, ``iss`` = ``sub`` = the API key, ``aud`` =
the token URL, a unique ``jti``, ``exp`` at most 5 minutes ahead). The answer holds
``access_token`` and ``expires_in`` (about 599 s); refusals are OAuth error JSON.

Rules:
1. Access tokens live in memory only (``TokenCache``), keyed by a hash of the ID token, until
   ``expires_in`` minus a margin; never logged, stored, put in an event or a parked message.
2. Exchanges share the e-RS budget and its handling of faults: 429 (Retry-After), 5xx and
   network faults are retried in process like an e-RS read, then raised as
   ``ErsTransientError`` so the saga waits in a delay queue; a refusal raises
   ``ExchangeRefused`` (REAUTHENTICATION_NEEDED) naming which token and the OAuth error.
3. One exchange at a time per ID token: sagas of the same clinician share its answer.
"""

from __future__ import annotations

import asyncio
import hashlib
import re
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime

import httpx
import jwt
import orjson
from pydantic import SecretStr
from tenacity import AsyncRetrying, retry_if_exception, stop_after_attempt

from schemas.referral_request import Priority
from worker.ers.budget import CallBudget
from worker.ers.classify import _retry_after
from worker.ers.client import RetryPolicy, _wait
from worker.ers.keys import ALGORITHM, SigningKeys
from worker.observability.metrics import TOKEN_EXCHANGE_RESULTS, Metrics
from worker.saga.errors import (
    CLIENT_ASSERTION,
    SUBJECT_TOKEN,
    Disposition,
    ErsRateLimited,
    ErsTransientError,
    ErsUnexpected,
    ExchangeRefused,
    IdTokenExpired,
)
from worker.saga.errors import (
    TOKEN_EXCHANGE as ENDPOINT,
)
from worker.saga.ports import AccessToken

GRANT_TYPE = "urn:ietf:params:oauth:grant-type:token-exchange"
SUBJECT_TOKEN_TYPE = "urn:ietf:params:oauth:token-type:id_token"
ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
# The platform refuses an assertion whose exp is more than 5 minutes ahead; a minute less
# leaves room for our clock running ahead of the platform's.
ASSERTION_LIFETIME_SECONDS = 240
MAX_ASSERTION_LIFETIME_SECONDS = 300
PUBLIC_KEY_ERROR = "public_key_error"  # the platform's "public_key error", as a label
# The label of an invalid_request whose description names the subject_token: the platform's
# answer to an ID token it refuses (expired by its clock, another issuer, a key or signature
# it does not verify, not a JWT), upstream's to cure, unlike the assertion's invalid_request.
INVALID_ID_TOKEN = "invalid_id_token"
# The form fields a refusal's description may name, as words: "subject_token_type" (a
# constant the worker sends) is not the ID token. "client_assertion" is matched anywhere:
# its "client_assertion_type" is the worker's own too.
_NAMES_SUBJECT_TOKEN = re.compile(r"\bsubject_token\b")


def token_url_for(ers_base_url: str) -> str:
    """The platform's token endpoint next to an e-RS base URL: the same origin's
    ``/oauth2/token`` (``https://int.api.service.nhs.uk/referrals/FHIR`` gives
    ``https://int.api.service.nhs.uk/oauth2/token``)."""
    url = httpx.URL(ers_base_url)
    return str(url.copy_with(path="/oauth2/token", query=None, fragment=None))


def client_assertion(
    keys: SigningKeys,
    *,
    api_key: str,
    audience: str,
    now: float,
    lifetime: int = ASSERTION_LIFETIME_SECONDS,
) -> str:
    """The signed JWT that authenticates the application to the token endpoint."""
    if not 0 < lifetime <= MAX_ASSERTION_LIFETIME_SECONDS:
        raise ValueError(f"an assertion lives 1..{MAX_ASSERTION_LIFETIME_SECONDS} s")
    key = keys.current
    claims = {
        "iss": api_key,
        "sub": api_key,
        "aud": audience,
        "jti": str(uuid.uuid4()),
        "exp": int(now) + lifetime,
    }
    # typ JWT said, not left to the library's default: the platform refuses any other typ.
    headers = {"kid": key.kid, "typ": "JWT"}
    return jwt.encode(claims, key.private, algorithm=ALGORITHM, headers=headers)


def cache_key(id_token: SecretStr) -> str:
    """What the cache is keyed by: a hash, so the map holds no ID token."""
    return hashlib.sha256(id_token.get_secret_value().encode()).hexdigest()


@dataclass(frozen=True, slots=True)
class _Entry:
    token: AccessToken
    valid_until: float


class TokenCache:
    """Access tokens by ID-token hash, in memory only (rule 1).

    An entry is used until ``expires_in - margin`` after the exchange was sent: the margin
    covers the call's own retries, so a token never expires between lookup and use. A token
    shorter-lived than twice the margin is used for half its life."""

    def __init__(
        self,
        margin_seconds: float,
        *,
        clock: Callable[[], float] = time.time,
        max_entries: int = 10_000,
    ) -> None:
        self._margin = margin_seconds
        self._clock = clock
        self._max = max_entries
        self._entries: dict[str, _Entry] = {}

    def valid_until(self, sent_at: float, expires_in: float) -> float:
        return sent_at + expires_in - min(self._margin, expires_in / 2)

    def get(self, key: str) -> AccessToken | None:
        entry = self._entries.get(key)
        if entry is None:
            return None
        if self._clock() >= entry.valid_until:
            del self._entries[key]
            return None
        return entry.token

    def put(self, key: str, token: AccessToken, *, sent_at: float, expires_in: float) -> None:
        if len(self._entries) >= self._max:
            self._prune()
        self._entries[key] = _Entry(token, self.valid_until(sent_at, expires_in))

    def drop(self, key: str, token: AccessToken) -> None:
        """Forget ``token`` (e-RS refused it), unless a newer one has replaced it."""
        entry = self._entries.get(key)
        if entry is not None and entry.token.value == token.value:
            del self._entries[key]

    def _prune(self) -> None:
        now = self._clock()
        self._entries = {k: e for k, e in self._entries.items() if e.valid_until > now}
        while len(self._entries) >= self._max:  # all still valid: drop the oldest inserted
            del self._entries[next(iter(self._entries))]

    def __len__(self) -> int:
        return len(self._entries)


def _refusal(content: bytes) -> tuple[str, str | None]:
    """The OAuth ``error`` of a refusal, as a closed label value, and which form field its
    description names (the platform's say "... in client_assertion JWT", "... in
    subject_token JWT", "Malformed JWT in subject_token"), if any. The description itself is
    never kept: it could echo what it was sent."""
    try:
        body = orjson.loads(content)
    except orjson.JSONDecodeError:
        return "other", None
    error = body.get("error") if isinstance(body, dict) else None
    # The platform spells one error with a space ("public_key error"): a label has none.
    error = error.replace(" ", "_") if isinstance(error, str) else None
    label = error if error is not None and error in TOKEN_EXCHANGE_RESULTS else "other"
    description = body.get("error_description") if isinstance(body, dict) else None
    text = description if isinstance(description, str) else ""
    if CLIENT_ASSERTION in text:
        return label, CLIENT_ASSERTION
    return label, SUBJECT_TOKEN if _NAMES_SUBJECT_TOKEN.search(text) else None


def _result_of(exc: BaseException) -> str:
    if isinstance(exc, ExchangeRefused):
        if exc.error == "invalid_request" and exc.id_token_at_fault:
            return INVALID_ID_TOKEN
        return exc.error
    if isinstance(exc, ErsRateLimited):
        return "rate_limited"
    if isinstance(exc, ErsTransientError):
        if exc.status == 503:
            return "unavailable"
        if exc.status:
            return "server_error"
        return exc.code.lower()
    if isinstance(exc, ErsUnexpected):
        return "unreadable" if exc.code == "UNREADABLE_BODY" else "other"
    return "other"


def _retry_now(exc: BaseException) -> bool:
    return isinstance(exc, ErsTransientError) and exc.disposition is Disposition.RETRY_NOW


class TokenExchanger:
    """Exchanges CIS2 ID tokens for access tokens, caching them (rules 1-3)."""

    def __init__(
        self,
        http: httpx.AsyncClient,
        *,
        token_url: str,
        api_key: str,
        keys: SigningKeys,
        cache: TokenCache,
        budget: CallBudget | None,
        retry: RetryPolicy,
        metrics: Metrics,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._http = http
        self._url = token_url
        self._api_key = api_key
        self._keys = keys
        self._cache = cache
        self._budget = budget
        self._metrics = metrics
        self._clock = clock
        self._locks: dict[str, asyncio.Lock] = {}
        self._retrying = AsyncRetrying(
            retry=retry_if_exception(_retry_now),
            stop=stop_after_attempt(retry.max_attempts),
            wait=_wait(retry),
            reraise=True,
        )

    async def access_token(
        self,
        id_token: SecretStr,
        *,
        refused: AccessToken | None = None,
        priority: Priority = Priority.ROUTINE,
        turn: float | None = None,
        id_token_expires_at: datetime | None = None,
    ) -> AccessToken:
        """A valid access token for the ID token's user: cached, or exchanged now. An ID token
        past ``id_token_expires_at`` is not sent: ``IdTokenExpired`` says so."""
        key = cache_key(id_token)
        if refused is not None:
            self._cache.drop(key, refused)
        cached = self._cache.get(key)
        if cached is not None:
            self._metrics.token_exchange_cache.labels("hit").inc()
            return cached
        self._metrics.token_exchange_cache.labels("miss").inc()
        if id_token_expires_at is not None and self._clock() >= id_token_expires_at.timestamp():
            raise IdTokenExpired("the CIS2 ID token expired: re-send with a fresh one")
        lock = self._locks.setdefault(key, asyncio.Lock())
        try:
            async with lock:
                cached = self._cache.get(key)  # exchanged while we waited (rule 3)
                if cached is not None:
                    return cached
                async for attempt in self._retrying.copy():
                    with attempt:
                        return await self._exchange(key, id_token, priority, turn)
                raise AssertionError("unreachable: tenacity reraises the last error")
        finally:
            if not lock.locked():
                self._locks.pop(key, None)

    async def _exchange(
        self, key: str, id_token: SecretStr, priority: Priority, turn: float | None
    ) -> AccessToken:
        started = time.perf_counter()
        try:
            token = await self._attempt(key, id_token, priority, turn)
        except BaseException as exc:
            self._metrics.token_exchange_attempts.labels(_result_of(exc)).inc()
            raise
        finally:
            self._metrics.token_exchange_latency.observe(time.perf_counter() - started)
        self._metrics.token_exchange_attempts.labels("ok").inc()
        return token

    async def _attempt(
        self, key: str, id_token: SecretStr, priority: Priority, turn: float | None
    ) -> AccessToken:
        if self._budget is not None:
            await self._budget.permit(priority, turn if turn is not None else time.time())
        sent_at = self._clock()
        form = {
            "grant_type": GRANT_TYPE,
            "subject_token_type": SUBJECT_TOKEN_TYPE,
            "subject_token": id_token.get_secret_value(),
            "client_assertion_type": ASSERTION_TYPE,
            "client_assertion": client_assertion(
                self._keys, api_key=self._api_key, audience=self._url, now=sent_at
            ),
        }
        try:
            response = await self._http.post(self._url, data=form)
        except httpx.TransportError as exc:
            code = "TIMEOUT" if isinstance(exc, httpx.TimeoutException) else "CONNECTION_ERROR"
            # An exchange changes nothing: safe to send again whatever happened.
            raise ErsTransientError(ENDPOINT, None, code, diagnostics=type(exc).__name__) from None
        status = response.status_code
        if status == 200:
            return self._answer(key, response.content, sent_at)
        if status == 429:
            asked = _retry_after(response.headers.get("Retry-After"), datetime.now(UTC))
            if self._budget is not None:
                await self._budget.rate_limited(asked)
            raise ErsRateLimited(ENDPOINT, asked)
        if status >= 500:
            raise ErsTransientError(ENDPOINT, status, f"HTTP_{status}")
        if status in (400, 401, 403):
            error, about = _refusal(response.content)
            # A 403 is a refusal when the platform says its public_key error (no JWKS for the
            # application, or one it cannot reach); any other 403 nobody expected.
            if status != 403 or error == PUBLIC_KEY_ERROR:
                raise ExchangeRefused(status, error, about)
        raise ErsUnexpected(ENDPOINT, status, f"HTTP_{status}")

    def _answer(self, key: str, content: bytes, sent_at: float) -> AccessToken:
        try:
            body = orjson.loads(content)
        except orjson.JSONDecodeError:
            body = None
        value = body.get("access_token") if isinstance(body, dict) else None
        expires_in = body.get("expires_in") if isinstance(body, dict) else None
        if isinstance(expires_in, str) and expires_in.isdigit():
            expires_in = int(expires_in)  # some OAuth servers send it as a string
        if not isinstance(value, str) or not value or not isinstance(expires_in, int):
            raise ErsUnexpected(ENDPOINT, 200, "UNREADABLE_BODY")
        token = AccessToken(SecretStr(value), datetime.fromtimestamp(sent_at + expires_in, UTC))
        self._cache.put(key, token, sent_at=sent_at, expires_in=expires_in)
        return token
