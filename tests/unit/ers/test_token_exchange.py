"""The token exchange at the seam (httpx.MockTransport): the client assertion's claims, the
form the API platform expects, the cache's expiry arithmetic, and what each answer means."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from urllib.parse import parse_qs

import httpx
import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from pydantic import SecretStr

from worker.ers.client import RetryPolicy
from worker.ers.keys import KeyProblem, SigningKey, SigningKeys, load_keys
from worker.ers.token_exchange import (
    ASSERTION_TYPE,
    GRANT_TYPE,
    SUBJECT_TOKEN_TYPE,
    ExchangeRefused,
    IdTokenExpired,
    TokenCache,
    TokenExchanger,
    cache_key,
    client_assertion,
    token_url_for,
)
from worker.observability.metrics import TOKEN_EXCHANGE_RESULTS, Metrics
from worker.saga.errors import Disposition, ErsRateLimited, ErsTransientError, ErsUnexpected
from worker.saga.ports import AccessToken

URL = "https://int.api.service.nhs.uk/oauth2/token"
API_KEY = "test-api-key-0123"
ID_TOKEN = SecretStr("eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiIxMjMifQ.c2lnbmF0dXJl")
NO_WAIT = RetryPolicy(max_attempts=3, initial_wait=0, max_wait=0)


def _key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


KEY = _key()
OTHER_KEY = _key()
KEYS = SigningKeys({"kid-1": SigningKey("kid-1", KEY)}, "kid-1")


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


# --- the client assertion ---


def test_the_assertion_carries_the_claims_the_platform_checks() -> None:
    now = time.time()
    assertion = client_assertion(KEYS, api_key=API_KEY, audience=URL, now=now)

    header = jwt.get_unverified_header(assertion)
    claims = jwt.decode(assertion, KEY.public_key(), algorithms=["RS512"], audience=URL)

    assert header == {"alg": "RS512", "kid": "kid-1", "typ": "JWT"}
    assert claims["iss"] == claims["sub"] == API_KEY
    assert claims["aud"] == URL
    assert 0 < claims["exp"] - now <= 300
    assert len(claims["jti"]) >= 32


def test_each_assertion_has_its_own_jti() -> None:
    now = time.time()
    jtis = {
        jwt.decode(
            client_assertion(KEYS, api_key=API_KEY, audience=URL, now=now),
            options={"verify_signature": False},
        )["jti"]
        for _ in range(20)
    }
    assert len(jtis) == 20


def test_an_assertion_never_lives_beyond_five_minutes() -> None:
    with pytest.raises(ValueError, match="300"):
        client_assertion(KEYS, api_key=API_KEY, audience=URL, now=0, lifetime=301)


def test_an_assertion_is_not_verified_by_another_key() -> None:
    assertion = client_assertion(KEYS, api_key=API_KEY, audience=URL, now=time.time())
    with pytest.raises(jwt.InvalidSignatureError):
        jwt.decode(assertion, OTHER_KEY.public_key(), algorithms=["RS512"], audience=URL)


def test_the_token_url_is_next_to_the_ers_base_url() -> None:
    assert token_url_for("https://int.api.service.nhs.uk/referrals/FHIR") == URL
    assert token_url_for("http://127.0.0.1:8765/referrals/FHIR/") == (
        "http://127.0.0.1:8765/oauth2/token"
    )


# --- keys ---


def _pem(key: rsa.RSAPrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def test_keys_load_from_a_directory_by_kid_and_all_are_published(tmp_path) -> None:  # type: ignore[no-untyped-def]
    (tmp_path / "old-1.pem").write_bytes(_pem(KEY))
    (tmp_path / "new-2.pem").write_bytes(_pem(OTHER_KEY))
    (tmp_path / ".hidden.pem").write_bytes(b"not a key")

    keys = load_keys(directory=tmp_path, pem=None, kid="new-2")

    assert keys.current.kid == "new-2"
    jwks = keys.jwks()
    assert [k["kid"] for k in jwks["keys"]] == ["new-2", "old-1"]
    assert all(k["kty"] == "RSA" and k["alg"] == "RS512" and "d" not in k for k in jwks["keys"])


def test_a_published_key_holds_the_members_of_the_platforms_example_jwks_only() -> None:
    keys = load_keys(directory=None, pem=SecretStr(_pem(KEY).decode()), kid="env-1")
    (jwk,) = keys.jwks()["keys"]
    public = KEY.public_key().public_numbers()

    assert list(jwk) == ["kty", "n", "e", "alg", "kid", "use"]  # no key_ops beside use
    assert {k: jwk[k] for k in ("kty", "alg", "kid", "use")} == {
        "kty": "RSA",
        "alg": "RS512",
        "kid": "env-1",
        "use": "sig",
    }
    assert jwt.PyJWK(jwk).key.public_numbers() == public  # n and e are the key's own


def test_a_key_from_the_environment_signs_under_its_kid() -> None:
    keys = load_keys(directory=None, pem=SecretStr(_pem(KEY).decode()), kid="env-1")
    assert keys.current.kid == "env-1" and keys.jwks()["keys"][0]["kid"] == "env-1"


@pytest.mark.parametrize(
    ("pem", "kid", "why"),
    [
        (None, "k", "no signing key"),
        ("not a pem", "k", "APIM_PRIVATE_KEY is not an unencrypted PEM"),
    ],
)
def test_a_key_problem_names_what_is_wrong(pem: str | None, kid: str, why: str) -> None:
    with pytest.raises(KeyProblem, match=why) as raised:
        load_keys(directory=None, pem=SecretStr(pem) if pem else None, kid=kid)
    assert "BEGIN" not in str(raised.value)


def test_the_signing_kid_must_name_a_loaded_key(tmp_path) -> None:  # type: ignore[no-untyped-def]
    (tmp_path / "a.pem").write_bytes(_pem(KEY))
    with pytest.raises(KeyProblem, match="APIM_KEY_ID b names no loaded key"):
        load_keys(directory=tmp_path, pem=None, kid="b")


# --- the cache's arithmetic ---


def test_a_cached_token_is_used_until_expires_in_minus_the_margin() -> None:
    clock = Clock(1000.0)
    cache = TokenCache(60, clock=clock)
    token = AccessToken(SecretStr("at"))
    cache.put("k", token, sent_at=1000.0, expires_in=599)

    assert cache.valid_until(1000.0, 599) == 1000 + 599 - 60
    clock.now = 1538.9
    assert cache.get("k") is token
    clock.now = 1539.0
    assert cache.get("k") is None
    assert len(cache) == 0


def test_a_short_lived_token_is_used_for_half_its_life() -> None:
    cache = TokenCache(60, clock=Clock(0))
    assert cache.valid_until(100.0, 30) == 115.0


def test_a_refused_token_is_dropped_but_not_a_newer_one() -> None:
    cache = TokenCache(60, clock=Clock(0))
    old, new = AccessToken(SecretStr("old")), AccessToken(SecretStr("new"))
    cache.put("k", new, sent_at=0, expires_in=599)
    cache.drop("k", old)
    assert cache.get("k") is new
    cache.drop("k", new)
    assert cache.get("k") is None


def test_the_cache_stays_bounded() -> None:
    clock = Clock(0)
    cache = TokenCache(60, clock=clock, max_entries=3)
    for i in range(10):
        cache.put(str(i), AccessToken(SecretStr(str(i))), sent_at=0, expires_in=599)
    assert len(cache) == 3 and cache.get("9") is not None


def test_the_cache_is_keyed_by_a_hash_not_the_id_token() -> None:
    key = cache_key(ID_TOKEN)
    assert ID_TOKEN.get_secret_value() not in key and len(key) == 64


# --- the exchange over HTTP ---

Handler = Callable[[httpx.Request], httpx.Response]


def _ok(token: str = "access-1", expires_in: int | str = 599) -> httpx.Response:
    return httpx.Response(
        200,
        json={
            "access_token": token,
            "expires_in": expires_in,
            "token_type": "Bearer",
            "issued_token_type": "urn:ietf:params:oauth:token-type:access_token",
        },
    )


def _exchanger(
    handler: Handler, clock: Clock | None = None, metrics: Metrics | None = None
) -> tuple[TokenExchanger, list[httpx.Request]]:
    sent: list[httpx.Request] = []

    def record(request: httpx.Request) -> httpx.Response:
        sent.append(request)
        return handler(request)

    clock = clock or Clock(time.time())
    http = httpx.AsyncClient(transport=httpx.MockTransport(record))
    exchanger = TokenExchanger(
        http,
        token_url=URL,
        api_key=API_KEY,
        keys=KEYS,
        cache=TokenCache(60, clock=clock),
        budget=None,
        retry=NO_WAIT,
        metrics=metrics or Metrics(),
        clock=clock,
    )
    return exchanger, sent


def _form(request: httpx.Request) -> dict[str, str]:
    return {k: v[0] for k, v in parse_qs(request.content.decode()).items()}


async def test_the_exchange_posts_the_form_the_platform_expects() -> None:
    clock = Clock(time.time())
    exchanger, sent = _exchanger(lambda _: _ok(), clock)

    token = await exchanger.access_token(ID_TOKEN)

    assert token.value.get_secret_value() == "access-1"
    assert token.expires_at == datetime.fromtimestamp(clock.now + 599, UTC)
    (request,) = sent
    assert request.method == "POST" and str(request.url) == URL
    assert request.headers["Content-Type"] == "application/x-www-form-urlencoded"
    form = _form(request)
    assert form["grant_type"] == GRANT_TYPE
    assert form["subject_token_type"] == SUBJECT_TOKEN_TYPE
    assert form["subject_token"] == ID_TOKEN.get_secret_value()
    assert form["client_assertion_type"] == ASSERTION_TYPE
    claims = jwt.decode(
        form["client_assertion"], KEY.public_key(), algorithms=["RS512"], audience=URL
    )
    assert claims["iss"] == API_KEY


async def test_a_cached_token_saves_an_exchange_until_it_nears_expiry() -> None:
    clock = Clock(10_000.0)
    answers = iter(["access-1", "access-2"])
    metrics = Metrics()
    exchanger, sent = _exchanger(lambda _: _ok(next(answers)), clock, metrics)

    first = await exchanger.access_token(ID_TOKEN)
    clock.now += 538
    again = await exchanger.access_token(ID_TOKEN)
    clock.now += 1  # 539 s after the exchange: within the 60 s margin of its 599 s
    renewed = await exchanger.access_token(ID_TOKEN)

    assert first is again
    assert renewed.value.get_secret_value() == "access-2"
    assert len(sent) == 2
    assert metrics.token_exchange_cache.labels("hit")._value.get() == 1
    assert metrics.token_exchange_cache.labels("miss")._value.get() == 2
    assert metrics.token_exchange_attempts.labels("ok")._value.get() == 2


async def test_a_token_refused_by_ers_is_exchanged_again() -> None:
    answers = iter(["access-1", "access-2"])
    exchanger, sent = _exchanger(lambda _: _ok(next(answers)))
    first = await exchanger.access_token(ID_TOKEN)

    second = await exchanger.access_token(ID_TOKEN, refused=first)

    assert second.value.get_secret_value() == "access-2" and len(sent) == 2


async def test_sagas_of_one_clinician_share_one_exchange() -> None:
    exchanger, sent = _exchanger(lambda _: _ok())
    tokens = await asyncio.gather(*(exchanger.access_token(ID_TOKEN) for _ in range(5)))
    assert len(sent) == 1 and len({t.value.get_secret_value() for t in tokens}) == 1


async def test_a_429_is_retried_then_answered() -> None:
    answers = iter([httpx.Response(429, headers={"Retry-After": "0"}), httpx.Response(503), _ok()])
    metrics = Metrics()
    exchanger, sent = _exchanger(lambda _: next(answers), metrics=metrics)

    token = await exchanger.access_token(ID_TOKEN)

    assert token.value.get_secret_value() == "access-1" and len(sent) == 3
    attempts = metrics.token_exchange_attempts
    assert attempts.labels("rate_limited")._value.get() == 1
    assert attempts.labels("unavailable")._value.get() == 1


@pytest.mark.parametrize(
    ("answer", "kind"),
    [
        (lambda _: httpx.Response(429), ErsRateLimited),
        (lambda _: httpx.Response(500), ErsTransientError),
    ],
)
async def test_a_fault_retries_do_not_cure_makes_the_saga_wait(
    answer: Handler, kind: type[Exception]
) -> None:
    exchanger, sent = _exchanger(answer)
    with pytest.raises(kind) as raised:
        await exchanger.access_token(ID_TOKEN)
    assert len(sent) == NO_WAIT.max_attempts
    assert raised.value.disposition is Disposition.RETRY_NOW  # type: ignore[attr-defined]


async def test_a_network_fault_is_transient() -> None:
    def fail(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("refused", request=request)

    exchanger, _ = _exchanger(fail)
    with pytest.raises(ErsTransientError) as raised:
        await exchanger.access_token(ID_TOKEN)
    assert raised.value.code == "CONNECTION_ERROR"


ASSERTION_NAMED = "client assertion"
ID_TOKEN_NAMED = "the CIS2 ID token was not accepted"
# The platform's answers to an ID token it refuses (NHSDigital/identity-service-api: the
# e2e tests e2e/tests/oauth/test_token_exchange.py and the proxy's policies
# proxies/live/apiproxy/policies/AssignMessage.*SubjectToken*.xml): invalid_request, the
# description naming the subject_token.
ID_TOKEN_REFUSALS = [
    (400, "Invalid 'exp' claim in subject_token JWT - JWT has expired"),
    (400, "Missing or non-matching 'iss' claim in subject_token JWT"),
    (401, "Invalid 'kid' header in subject_token JWT - no matching public key"),
    (401, "Missing 'aud' claim in subject_token JWT"),
    (400, "Malformed JWT in subject_token"),
    (400, "subject_token is invalid"),
]


@pytest.mark.parametrize(
    ("status", "error", "description", "code", "which", "label"),
    [
        (
            400,
            "invalid_grant",
            "ID token has expired",
            "TOKEN_EXCHANGE_INVALID_GRANT",
            ID_TOKEN_NAMED,
            "invalid_grant",
        ),
        (
            401,
            "invalid_client",
            "Invalid signature",
            "TOKEN_EXCHANGE_INVALID_CLIENT",
            ASSERTION_NAMED,
            "invalid_client",
        ),
        # invalid_request is about either: the part the platform's answer names decides,
        # and an ID token's is counted apart (invalid_id_token), being upstream's to cure.
        (
            400,
            "invalid_request",
            "Non-unique 'jti' claim in client_assertion JWT",
            "TOKEN_EXCHANGE_INVALID_REQUEST",
            ASSERTION_NAMED,
            "invalid_request",
        ),
        *[
            (
                status,
                "invalid_request",
                description,
                "TOKEN_EXCHANGE_INVALID_REQUEST",
                ID_TOKEN_NAMED,
                "invalid_id_token",
            )
            for status, description in ID_TOKEN_REFUSALS
        ],
        # subject_token_type is a constant of the worker's form, not the ID token.
        (
            400,
            "invalid_request",
            "missing or invalid subject_token_type - must be "
            "'urn:ietf:params:oauth:token-type:id_token'",
            "TOKEN_EXCHANGE_INVALID_REQUEST",
            # The worker's own form, not the ID token: the text says so, as the metric does.
            ASSERTION_NAMED,
            "invalid_request",
        ),
        (
            400,
            "invalid_request",
            "Missing or invalid client_assertion_type - must be "
            "'urn:ietf:params:oauth:client-assertion-type:jwt-bearer'",
            "TOKEN_EXCHANGE_INVALID_REQUEST",
            ASSERTION_NAMED,
            "invalid_request",
        ),
        (
            400,
            "invalid_request",
            "",
            "TOKEN_EXCHANGE_INVALID_REQUEST",
            ASSERTION_NAMED,
            "invalid_request",
        ),
        (400, "made_up_error", "", "TOKEN_EXCHANGE_OTHER", ASSERTION_NAMED, "other"),
        # Unnamed, only invalid_grant is the ID token's.
        (400, "invalid_grant", "", "TOKEN_EXCHANGE_INVALID_GRANT", ID_TOKEN_NAMED, "invalid_grant"),
        # The platform's answers to an unknown kid and to a key that does not verify.
        (
            401,
            "invalid_request",
            "Invalid 'kid' header in client_assertion JWT - no matching public key",
            "TOKEN_EXCHANGE_INVALID_REQUEST",
            ASSERTION_NAMED,
            "invalid_request",
        ),
        (
            401,
            "public_key error",
            "JWT signature verification failed",
            "TOKEN_EXCHANGE_PUBLIC_KEY_ERROR",
            ASSERTION_NAMED,
            "public_key_error",
        ),
        # ...and to an application with no JWKS registered.
        (
            403,
            "public_key error",
            "You need to register a public key to use this authentication method",
            "TOKEN_EXCHANGE_PUBLIC_KEY_ERROR",
            ASSERTION_NAMED,
            "public_key_error",
        ),
    ],
)
async def test_a_refusal_asks_for_reauthentication_naming_the_token_and_why(
    status: int, error: str, description: str, code: str, which: str, label: str
) -> None:
    echo = f"{description} echo {ID_TOKEN.get_secret_value()}"
    body = {"error": error, "error_description": echo}
    metrics = Metrics()
    exchanger, sent = _exchanger(lambda _: httpx.Response(status, json=body), metrics=metrics)

    with pytest.raises(ExchangeRefused) as raised:
        await exchanger.access_token(ID_TOKEN)

    exc = raised.value
    assert exc.disposition is Disposition.REAUTHENTICATE
    assert exc.code == code and which in exc.diagnostics
    assert len(sent) == 1  # a refusal is not retried
    # The platform's free text is never carried: it could echo what it was sent.
    assert ID_TOKEN.get_secret_value() not in f"{exc} {exc.diagnostics}"
    # Counted once, under its own result and no other.
    counted = {
        result: metrics.token_exchange_attempts.labels(result)._value.get()
        for result in TOKEN_EXCHANGE_RESULTS
    }
    assert {r: n for r, n in counted.items() if n} == {label: 1}


@pytest.mark.parametrize(
    "body", [{"error": "access_denied", "error_description": "no"}, {"fault": "policy"}]
)
async def test_a_403_other_than_the_platforms_public_key_error_is_unexpected(
    body: dict[str, str],
) -> None:
    exchanger, sent = _exchanger(lambda _: httpx.Response(403, json=body))
    with pytest.raises(ErsUnexpected) as raised:
        await exchanger.access_token(ID_TOKEN)
    assert (raised.value.status, raised.value.code, len(sent)) == (403, "HTTP_403", 1)


@pytest.mark.parametrize(
    "answer",
    [
        httpx.Response(200, content=b"<html>"),
        httpx.Response(200, json={"access_token": "", "expires_in": 599}),
        httpx.Response(200, json={"access_token": "a"}),
    ],
)
async def test_an_unreadable_answer_is_unexpected(answer: httpx.Response) -> None:
    exchanger, _ = _exchanger(lambda _: answer)
    with pytest.raises(ErsUnexpected):
        await exchanger.access_token(ID_TOKEN)


async def test_expires_in_as_a_string_is_read() -> None:
    exchanger, _ = _exchanger(lambda _: _ok(expires_in="599"))
    token = await exchanger.access_token(ID_TOKEN)
    assert token.expires_at is not None


async def test_an_expired_id_token_is_not_sent() -> None:
    clock = Clock(time.time())
    exchanger, sent = _exchanger(lambda _: _ok(), clock)
    expired = datetime.fromtimestamp(clock.now, UTC) - timedelta(seconds=1)

    with pytest.raises(IdTokenExpired) as raised:
        await exchanger.access_token(ID_TOKEN, id_token_expires_at=expired)

    assert raised.value.disposition is Disposition.REAUTHENTICATE
    assert raised.value.code == "ID_TOKEN_EXPIRED" and sent == []
