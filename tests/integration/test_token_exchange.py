"""ERS_TOKEN_PROVIDER=message-id-token through the broker and the sandbox as the API platform:
the worker exchanges the CIS2 ID token from x-ers-id-token; exchanges again when the access
token expires mid-saga or while the saga waits in a delay queue; ends REAUTHENTICATION_NEEDED
when the ID token has expired or the platform refuses the exchange, the ID token or the
worker's own assertion (a re-send with a fresh one resumes); takes a 403 for a role the user
does not hold as final; and no token reaches any output."""

from __future__ import annotations

import logging
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import asyncpg
import pytest
from prometheus_client import generate_latest

from sandbox.testing import SandboxHandle
from tests.harness import Harness, eventually, nhs_numbers, sample
from tests.integration.test_saga_store import POSTGRES_DSN
from tests.platform import (
    KID,
    admin,
    exchanges,
    forged_id_token,
    id_token,
    id_token_mode,
    key_dir,
    private_key,
    registered_application,
)
from worker.ers import token_exchange
from worker.messaging.headers import ID_TOKEN_HEADER
from worker.observability.logs import JsonFormatter
from worker.ops.app import guard_library_loggers
from worker.ops.settings import Settings


@pytest.fixture
async def platform(sandbox: SandboxHandle, tmp_path: Path) -> AsyncIterator[Path]:
    async with registered_application(sandbox.root_url, tmp_path) as keys:
        yield keys


UNREGISTERED_KID = "kid-never-registered"


@pytest.fixture
def worker_keys(request: pytest.FixtureRequest, platform: Path, tmp_path: Path) -> tuple[str, Path]:
    """The kid the worker signs with and its key directory: the registered key, unless a
    test asks (indirectly) for ``another_key`` under the registered kid, or a key under
    ``an_unknown_kid``."""
    which = getattr(request, "param", "registered")
    if which == "registered":
        return KID, platform
    (tmp_path / which).mkdir()
    if which == "another_key":
        return KID, key_dir(tmp_path / which, KID, private_key("another"))
    assert which == "an_unknown_kid", which
    return UNREGISTERED_KID, key_dir(tmp_path / which, UNREGISTERED_KID)


@pytest.fixture
async def store(request: pytest.FixtureRequest) -> AsyncIterator[str | None]:
    """The PostgreSQL schema of the worker's saga store when a test asks (indirectly) for
    ``postgres``; else None, the SQLite file of the shared settings."""
    if getattr(request, "param", "sqlite") == "sqlite":
        yield None
        return
    schema = f"t_{uuid.uuid4().hex[:12]}"
    yield schema
    conn = await asyncpg.connect(POSTGRES_DSN)
    await conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
    await conn.close()


@pytest.fixture
def settings(settings: Settings, worker_keys: tuple[str, Path], store: str | None) -> Settings:
    kid, keys = worker_keys
    if store is not None:
        settings = settings.model_copy(update={"saga_store": "postgres", "postgres_schema": store})
    return id_token_mode(settings, keys, kid)


async def saga_store_text(settings: Settings, schema: str | None) -> str:
    """Everything the saga store holds, as text: the SQLite file and its WAL, or every row
    of every table in the PostgreSQL schema."""
    if schema is None:
        path = settings.saga_store_path
        files = sorted(path.parent.glob(f"{path.name}*"))
        return b"".join(p.read_bytes() for p in files).decode("utf-8", "replace")
    conn = await asyncpg.connect(POSTGRES_DSN)
    try:
        tables = await conn.fetch(
            "SELECT table_name FROM information_schema.tables WHERE table_schema = $1", schema
        )
        assert tables, f"no tables in {schema}"
        rows = [
            str(row[0])
            for table in tables
            for row in await conn.fetch(
                f'SELECT row_to_json(t)::text FROM "{schema}"."{table[0]}" t'
            )
        ]
    finally:
        await conn.close()
    return "\n".join(rows)


async def test_a_full_saga_in_message_id_token_mode(
    harness: Harness, sandbox: SandboxHandle
) -> None:
    request = sample("01-dbs-booked.json")
    subject = await id_token(sandbox.root_url)

    cid = await harness.publish(request, token=None, headers={ID_TOKEN_HEADER: subject})
    outcome = await harness.outcome(cid)
    await harness.settle()

    assert outcome["status"] == "COMPLETED", outcome["error"]
    # One exchange, its access token cached for the whole saga.
    assert [e["status"] for e in await exchanges(sandbox.root_url)] == [200]
    assert subject not in str(outcome)


async def test_an_expired_id_token_ends_reauthentication_needed(
    harness: Harness, sandbox: SandboxHandle
) -> None:
    subject = await id_token(sandbox.root_url, lifetime_seconds=-5)

    cid = await harness.publish(
        sample("01-dbs-booked.json"), token=None, headers={ID_TOKEN_HEADER: subject}
    )
    outcome = await harness.outcome(cid)

    assert outcome["status"] == "REAUTHENTICATION_NEEDED"
    assert outcome["error"]["code"] == "ID_TOKEN_EXPIRED"
    assert await harness.sandbox.referrals() == [] or all(
        r["nhs_number"] != sample("01-dbs-booked.json")["patient"]["nhs_number"]
        for r in await harness.sandbox.referrals()
    )


# --- what the sandbox, as the API platform and e-RS, saw ---


async def calls(harness: Harness) -> list[tuple[str, int]]:
    return [(c["endpoint"], c["status"]) for c in await harness.sandbox.requests()]


async def referrals_of(harness: Harness, request: dict[str, Any]) -> list[dict[str, Any]]:
    nhs_number = request["patient"]["nhs_number"]
    return [r for r in await harness.sandbox.referrals() if r["nhs_number"] == nhs_number]


async def lifetime(sandbox: SandboxHandle, seconds: int) -> None:
    """Access tokens the platform issues from now on live ``seconds``."""
    await admin(
        sandbox.root_url, "POST", "oauth/settings", {"access_token_lifetime_seconds": seconds}
    )


async def expire_tokens_once_slowed(harness: Harness, sandbox: SandboxHandle) -> None:
    """Once the call slowed by a fault has arrived (its fault is taken after its token was
    checked), every access token issued so far expires: the saga's next call meets a 401."""

    async def taken() -> bool:
        return await harness.sandbox.faults() == []

    await eventually(taken, timeout=15)
    await admin(sandbox.root_url, "POST", "oauth/expire-access-tokens")


async def publish_with(harness: Harness, request: dict[str, Any], subject: str) -> str:
    return await harness.publish(request, token=None, headers={ID_TOKEN_HEADER: subject})


# --- an access token expires mid-saga, or while the saga waits ---


@pytest.mark.parametrize("how", ["refused_by_e_rs", "past_its_lifetime"])
async def test_an_access_token_that_expires_mid_saga_is_exchanged_again(
    harness: Harness, sandbox: SandboxHandle, how: str
) -> None:
    request = sample("01-dbs-booked.json")
    if how == "past_its_lifetime":
        # Tokens of 2 s, which the worker uses for half their life; A015 answers after 1.5 s,
        # so the booking after it needs a new one (asked for before e-RS could refuse it).
        await lifetime(sandbox, 2)
        await harness.sandbox.add_fault("A015", None, delay_seconds=1.5)
    else:
        await harness.sandbox.add_fault("A015", None, delay_seconds=2.0)

    cid = await publish_with(harness, request, await id_token(sandbox.root_url))
    if how == "refused_by_e_rs":
        await expire_tokens_once_slowed(harness, sandbox)
    outcome = await harness.outcome(cid)
    await harness.settle()

    assert outcome["status"] == "COMPLETED", outcome["error"]
    assert len(await referrals_of(harness, request)) == 1
    results = await exchanges(sandbox.root_url)
    assert len(results) >= 2 and all(r["status"] == 200 for r in results), results
    refused = [c for c in await calls(harness) if c[1] == 401]
    assert len(refused) == (1 if how == "refused_by_e_rs" else 0)


@pytest.mark.worker_settings(retry_delays_seconds="0.2,0.5,2")
async def test_a_saga_resumed_from_a_delay_queue_after_its_token_expired_exchanges_again(
    harness: Harness, sandbox: SandboxHandle
) -> None:
    # After the referral is made, e-RS asks for a second's pause on A015: longer than the
    # worker waits in process, so the saga waits in the 2 s delay queue. Its access token
    # expires meanwhile.
    await harness.sandbox.add_fault("A015", 429, retry_after=1)
    request = sample("01-dbs-booked.json")
    registry = harness.worker.metrics.registry

    async def delayed() -> bool:
        labels = {"delay_seconds": "2", "reason": "too_many_requests"}
        return registry.get_sample_value("ers_worker_delayed_messages_total", labels) == 1

    cid = await publish_with(harness, request, await id_token(sandbox.root_url))
    await eventually(delayed, timeout=15)
    await admin(sandbox.root_url, "POST", "oauth/expire-access-tokens")
    outcome = await harness.outcome(cid)
    await harness.settle()

    assert outcome["status"] == "COMPLETED", outcome["error"]
    assert len(await referrals_of(harness, request)) == 1
    seen = await calls(harness)
    assert [c for c in seen if c[0] == "A011"] == [("A011", 201)]
    # Resumed: the cached token is refused once, exchanged again, and A015 asked again.
    assert [status for endpoint, status in seen if endpoint == "A015"][:3] == [429, 401, 200]
    assert [r["status"] for r in await exchanges(sandbox.root_url)] == [200, 200]


# --- the ID token expires mid-saga: a re-send with a fresh one resumes ---


async def test_an_id_token_expiring_after_the_referral_is_made_resumes_with_a_fresh_one(
    harness: Harness, sandbox: SandboxHandle
) -> None:
    # Access tokens of 1 s (used for half a second) and an ID token of 3 s; A015, after the
    # referral is made, answers 3.5 s after it arrives: booking then needs an exchange the
    # expired ID token can no longer get.
    await lifetime(sandbox, 1)
    await harness.sandbox.add_fault("A015", None, delay_seconds=3.5)
    request = sample("01-dbs-booked.json")
    short_lived = await id_token(sandbox.root_url, lifetime_seconds=3)

    first = await harness.outcome(await publish_with(harness, request, short_lived))

    assert first["status"] == "REAUTHENTICATION_NEEDED", first["error"]
    assert first["error"]["code"] == "ID_TOKEN_EXPIRED"
    assert first["error"]["step"] == "BOOK_OR_DEFER"
    assert first["error"]["retryable"] is True
    made = await referrals_of(harness, request)
    assert len(made) == 1 and made[0]["appointment"] is None
    # The expired ID token was never sent to the platform.
    assert all(r["status"] == 200 for r in await exchanges(sandbox.root_url))

    fresh = await id_token(sandbox.root_url)
    second = await harness.outcome(await publish_with(harness, request, fresh))
    await harness.settle()

    assert second["status"] == "COMPLETED", second["error"]
    assert second["ubrn"] == made[0]["ubrn"]
    now_held = await referrals_of(harness, request)
    assert len(now_held) == 1 and now_held[0]["appointment"]["status"] == "booked"
    seen = await calls(harness)
    assert [c for c in seen if c[0] == "A011"] == [("A011", 201)]
    assert [c[0] for c in seen].count("A010") == 1  # resumed at booking, not searched again
    assert short_lived not in str(first) and fresh not in str(second)


# --- exchanges the platform refuses, through the broker ---


# What the platform answers (sandbox/oauth.py): a key its JWKS does not verify is its
# "public_key error"; a kid its JWKS lacks, invalid_request naming the client assertion.
@pytest.mark.parametrize(
    ("worker_keys", "oauth_error", "code"),
    [
        ("another_key", "public_key error", "TOKEN_EXCHANGE_PUBLIC_KEY_ERROR"),
        ("an_unknown_kid", "invalid_request", "TOKEN_EXCHANGE_INVALID_REQUEST"),
    ],
    indirect=["worker_keys"],
)
async def test_an_assertion_the_platform_cannot_verify_asks_for_reauthentication(
    harness: Harness, sandbox: SandboxHandle, oauth_error: str, code: str
) -> None:
    subject = await id_token(sandbox.root_url)

    outcome = await harness.outcome(
        await publish_with(harness, sample("01-dbs-booked.json"), subject)
    )
    await harness.settle()

    assert outcome["status"] == "REAUTHENTICATION_NEEDED"
    error = outcome["error"]
    assert error["code"] == code
    assert error["http_status"] == 401
    assert "client assertion" in error["text"]
    assert await exchanges(sandbox.root_url) == [{"status": 401, "error": oauth_error}]  # once
    assert await harness.sandbox.requests() == []  # e-RS never called without a token
    assert subject not in str(outcome)
    assert harness.parked == []


async def test_a_replayed_jti_is_refused_and_asks_for_reauthentication(
    harness: Harness, sandbox: SandboxHandle, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Acts out an assertion sent twice: the worker's jti is pinned to one value, so the
    # second clinician's exchange (not in the cache) carries the first one's jti again.
    pinned = SimpleNamespace(uuid4=lambda: "3f1d7c52-0000-4000-8000-000000000001")
    monkeypatch.setattr(token_exchange, "uuid", pinned)
    first, second = sample("01-dbs-booked.json"), sample("05-shortlist-only.json")

    accepted = await harness.outcome(
        await publish_with(harness, first, await id_token(sandbox.root_url))
    )
    other = await id_token(sandbox.root_url, sds_user_id="555254242107")
    replayed = await harness.outcome(await publish_with(harness, second, other))
    await harness.settle()

    assert accepted["status"] == "COMPLETED", accepted["error"]
    assert replayed["status"] == "REAUTHENTICATION_NEEDED"
    assert replayed["error"]["code"] == "TOKEN_EXCHANGE_INVALID_REQUEST"
    assert "client assertion" in replayed["error"]["text"]
    assert await exchanges(sandbox.root_url) == [
        {"status": 200, "error": None},
        {"status": 400, "error": "invalid_request"},
    ]
    assert await referrals_of(harness, second) == []


# An ID token the platform refuses (one it cannot verify: signed by a key CIS2 does not hold,
# which the worker, reading only its exp, cannot tell): invalid_request naming the
# subject_token. Upstream's to cure: counted as invalid_id_token, not as the worker's own
# invalid_request (ErsTokenExchangeClientRefused's), and a re-send with a good one resumes.
async def test_an_id_token_the_platform_refuses_is_upstreams_and_a_fresh_one_resumes(
    harness: Harness, sandbox: SandboxHandle
) -> None:
    request = sample("01-dbs-booked.json")
    forged = await forged_id_token(sandbox.root_url)
    registry = harness.worker.metrics.registry

    def attempts(result: str) -> float | None:
        return registry.get_sample_value(
            "ers_worker_token_exchange_attempts_total", {"result": result}
        )

    refused = await harness.outcome(await publish_with(harness, request, forged))

    assert refused["status"] == "REAUTHENTICATION_NEEDED"
    error = refused["error"]
    assert (error["code"], error["http_status"]) == ("TOKEN_EXCHANGE_INVALID_REQUEST", 400)
    assert "re-send with a fresh CIS2 ID token" in error["text"]
    assert await exchanges(sandbox.root_url) == [{"status": 400, "error": "invalid_request"}]
    assert (attempts("invalid_id_token"), attempts("invalid_request")) == (1, 0)
    assert await harness.sandbox.requests() == []  # e-RS never called without a token
    assert harness.parked == []

    fresh = await id_token(sandbox.root_url)
    resent = await harness.outcome(await publish_with(harness, request, fresh))
    await harness.settle()

    assert resent["status"] == "COMPLETED", resent["error"]
    assert len(await referrals_of(harness, request)) == 1
    assert (attempts("invalid_id_token"), attempts("ok")) == (1, 1)
    assert forged not in str(refused) and fresh not in str(resent)


# --- a role profile the user does not hold ---


@pytest.mark.parametrize(
    "roles",
    [
        [{"org_code": "R69", "business_function": "REFERRING_ADMIN"}],
        [{"org_code": "RA9", "business_function": "REFERRING_CLINICIAN"}],
    ],
    ids=["another_business_function", "another_organisation"],
)
async def test_a_role_the_user_does_not_hold_is_refused_403_and_the_outcome_is_final(
    harness: Harness, sandbox: SandboxHandle, roles: list[dict[str, str]]
) -> None:
    request = sample("01-dbs-booked.json")  # acting as REFERRING_CLINICIAN at R69
    subject = await id_token(sandbox.root_url, roles=roles)

    outcome = await harness.outcome(await publish_with(harness, request, subject))
    again = await harness.outcome(
        await publish_with(harness, request, await id_token(sandbox.root_url, roles=roles))
    )
    await harness.settle()

    assert outcome["status"] == "FAILED"
    error = outcome["error"]
    assert (error["code"], error["http_status"], error["retryable"]) == ("FORBIDDEN", 403, False)
    assert "REFERRING_CLINICIAN" in error["text"] and "R69" in error["text"]
    assert subject not in str(outcome)
    refused = await calls(harness)
    assert len(refused) == 1 and refused[0][1] == 403  # not retried, nothing after it
    assert again == outcome  # final: a re-send gets the stored outcome, e-RS is not asked
    assert [r["status"] for r in await exchanges(sandbox.root_url)] == [200]
    assert await referrals_of(harness, request) == []
    assert harness.parked == []  # the requester's to act on, not a person's at the worker


# --- no token in any output ---


def segments(token: str) -> list[str]:
    """The token and, for a JWT, each of its parts (header, payload, signature) alone."""
    parts = token.split(".")
    return [token, *parts] if len(parts) > 1 else [token]


@pytest.mark.parametrize("store", ["sqlite", "postgres"], indirect=True)
async def test_no_token_id_token_or_assertion_reaches_any_output(
    harness: Harness,
    sandbox: SandboxHandle,
    settings: Settings,
    store: str | None,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    guard_library_loggers()  # as the worker's logging set-up does
    booked, invalid = sample("01-dbs-booked.json"), sample("06-invalid-nhs-number.json")
    broken = sample("05-shortlist-only.json", patient={"nhs_number": nhs_numbers(1)[0]})
    subjects = {
        "booked": await id_token(sandbox.root_url),
        "invalid": await id_token(sandbox.root_url, sds_user_id="555254242108"),
        "broken": await id_token(sandbox.root_url, sds_user_id="555254242109"),
        "expired": await id_token(sandbox.root_url, lifetime_seconds=-5),
    }

    # A booking whose access token expires mid-saga (a 401, then a second exchange).
    await harness.sandbox.add_fault("A015", None, delay_seconds=2.0)
    booking = await publish_with(harness, booked, subjects["booked"])
    await expire_tokens_once_slowed(harness, sandbox)
    assert (await harness.outcome(booking))["status"] == "COMPLETED"
    # Parked: an invalid request, and an answer e-RS does not list (after an exchange).
    rejected = await publish_with(harness, invalid, subjects["invalid"])
    await harness.sandbox.add_fault("A010", 405)
    unexpected = await publish_with(harness, broken, subjects["broken"])
    expired = await publish_with(harness, sample("03-ibs-shortlisted.json"), subjects["expired"])
    for cid, status in [
        (rejected, "REJECTED"),
        (unexpected, "FAILED"),
        (expired, "REAUTHENTICATION_NEEDED"),
    ]:
        assert (await harness.outcome(cid))["status"] == status
    await harness.settle()

    issued = await admin(sandbox.root_url, "GET", "oauth/issued")
    secrets = {
        **{f"ID token ({name})": segments(value) for name, value in subjects.items()},
        **{f"access token {i}": [t] for i, t in enumerate(issued["access_tokens"])},
        **{f"client assertion {i}": segments(a) for i, a in enumerate(issued["client_assertions"])},
    }
    # The sandbox is e-RS' stand-in, not ours: what it logs is not the worker's to answer for.
    records = [r for r in caplog.records if not r.name.startswith("sandbox")]
    formatter = JsonFormatter()
    outputs = {
        "log lines": "\n".join(formatter.format(r) for r in records),
        "log records": "\n".join(f"{r.getMessage()} {r.__dict__}" for r in records),
        "metrics": generate_latest(harness.worker.metrics.registry).decode(),
        "saga store": await saga_store_text(settings, store),
        "replies": "\n".join(repr(r) for r in harness.replies),
        "events exchange": "\n".join(repr(r) for r in harness.topic),
        "parked messages": "\n".join(repr(r) for r in harness.parked),
    }

    # What is searched holds what it should, so the search can find something.
    assert len(issued["access_tokens"]) >= 3 and len(issued["client_assertions"]) >= 3
    assert [c for c in await calls(harness) if c[1] == 401], "no token expired mid-saga"
    assert records and 'token_exchange_attempts_total{result="ok"}' in outputs["metrics"]
    assert booked["request_id"] in outputs["saga store"]
    assert harness.letters(booking) and harness.letters(booking, harness.topic)
    assert {r.body.get("request_id") for r in harness.parked} >= {
        invalid["request_id"],
        broken["request_id"],
    }
    assert len(harness.topic) >= 4
    leaks = [
        (output, secret)
        for output, text in outputs.items()
        for secret, values in secrets.items()
        if any(value in text for value in values)
    ]
    assert leaks == [], "a token reached an output (output, token)"
