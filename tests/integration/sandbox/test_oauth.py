"""The sandbox as the API platform: /oauth2/token checks the client assertion against the
registered JWKS (signature, kid, aud, exp at most 5 minutes ahead, jti never replayed) and the
CIS2 ID token, refusing each as the platform does; e-RS endpoints then take only its access
tokens, answer 401 (the spec's body) to unknown or expired ones and 403 to a role profile the
user does not hold."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest

from sandbox.testing import SandboxHandle, running_sandbox
from tests.platform import (
    API_KEY,
    KID,
    admin,
    exchanges,
    forged_id_token,
    id_token,
    private_key,
    registered_application,
)

GRANT = "urn:ietf:params:oauth:grant-type:token-exchange"
ID_TOKEN_TYPE = "urn:ietf:params:oauth:token-type:id_token"
JWT_BEARER = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
RC = {"NHSD-End-User-Organisation-ODS": "R69", "NHSD-eRS-Business-Function": "REFERRING_CLINICIAN"}


@pytest.fixture(scope="module")
def platform_sandbox() -> Iterator[SandboxHandle]:
    with running_sandbox() as handle:
        yield handle


@pytest.fixture
async def http(platform_sandbox: SandboxHandle, tmp_path: Path) -> AsyncIterator[httpx.AsyncClient]:
    async with (
        registered_application(platform_sandbox.root_url, tmp_path),
        httpx.AsyncClient(base_url=platform_sandbox.root_url) as client,
    ):
        yield client


def assertion(audience: str, **changes: Any) -> str:
    headers = {"kid": changes.pop("kid", KID), **changes.pop("headers", {})}
    key = changes.pop("key", private_key())
    algorithm = changes.pop("algorithm", "RS512")
    claims = {
        "iss": API_KEY,
        "sub": API_KEY,
        "aud": audience,
        "jti": str(uuid.uuid4()),
        "exp": int(time.time()) + 240,
        **changes,
    }
    claims = {k: v for k, v in claims.items() if v is not None}
    return jwt.encode(claims, key, algorithm=algorithm, headers=headers)


async def exchange(
    http: httpx.AsyncClient, subject: str, client_assertion: str | None = None
) -> httpx.Response:
    audience = f"{http.base_url}".rstrip("/") + "/oauth2/token"
    return await http.post(
        "/oauth2/token",
        data={
            "grant_type": GRANT,
            "subject_token_type": ID_TOKEN_TYPE,
            "subject_token": subject,
            "client_assertion_type": JWT_BEARER,
            "client_assertion": client_assertion or assertion(audience),
        },
    )


def audience_of(http: httpx.AsyncClient) -> str:
    return f"{http.base_url}".rstrip("/") + "/oauth2/token"


async def a004(http: httpx.AsyncClient, token: str, headers: dict[str, str] = RC) -> httpx.Response:
    return await http.get(
        "/referrals/FHIR/STU3/CodeSystem/SPECIALTY",
        headers={"Authorization": f"Bearer {token}", "Accept": "application/fhir+json", **headers},
    )


async def test_an_id_token_is_exchanged_for_an_access_token_e_rs_takes(
    http: httpx.AsyncClient, platform_sandbox: SandboxHandle
) -> None:
    answer = await exchange(http, await id_token(platform_sandbox.root_url))

    assert answer.status_code == 200
    body = answer.json()
    assert body["token_type"] == "Bearer"
    assert body["issued_token_type"] == "urn:ietf:params:oauth:token-type:access_token"
    assert int(body["expires_in"]) == 599
    assert (await a004(http, body["access_token"])).status_code == 200


async def test_a_replayed_jti_is_refused(
    http: httpx.AsyncClient, platform_sandbox: SandboxHandle
) -> None:
    subject = await id_token(platform_sandbox.root_url)
    once = assertion(audience_of(http))
    assert (await exchange(http, subject, once)).status_code == 200

    again = await exchange(http, subject, once)

    assert again.status_code == 400
    assert again.json() == {
        "error": "invalid_request",
        "error_description": "Non-unique 'jti' claim in client_assertion JWT",
    }


def _constant(value: str) -> Callable[[str], Awaitable[str]]:
    async def make(_: str) -> str:
        return value

    return make


def _in_assertion(what: str) -> str:
    return f"{what} in client_assertion JWT"


# The platform's answers to each check, as its own token-exchange tests assert them
# (NHSDigital/identity-service-api, e2e/tests/oauth/test_token_exchange.py): invalid_request
# throughout, 400 for the assertion's form, 401 for an API key, kid or aud it does not know;
# a key that does not verify the signature is its "public_key error".
BAD_ASSERTIONS = {
    "iss and sub not the API key": (
        {"iss": "someone-else", "sub": "someone-else"},
        401,
        "invalid_request",
        _in_assertion("Invalid 'iss'/'sub' claims"),
    ),
    "sub not the iss": (
        {"sub": "not-the-iss"},
        400,
        "invalid_request",
        _in_assertion("Missing or non-matching 'iss'/'sub' claims"),
    ),
    "no iss": (
        {"iss": None},
        400,
        "invalid_request",
        _in_assertion("Missing or non-matching 'iss'/'sub' claims"),
    ),
    "aud another URL": (
        {"aud": "https://elsewhere/oauth2/token"},
        401,
        "invalid_request",
        _in_assertion("Missing or invalid 'aud' claim"),
    ),
    "no aud": (
        {"aud": None},
        401,
        "invalid_request",
        _in_assertion("Missing or invalid 'aud' claim"),
    ),
    "exp over 5 minutes ahead": (
        {"exp": int(time.time()) + 400},
        400,
        "invalid_request",
        _in_assertion("Invalid 'exp' claim") + " - more than 5 minutes in future",
    ),
    "exp past": (
        {"exp": int(time.time()) - 10},
        400,
        "invalid_request",
        _in_assertion("Invalid 'exp' claim") + " - JWT has expired",
    ),
    "exp a string": (
        {"exp": str(int(time.time()) + 240)},
        400,
        "invalid_request",
        _in_assertion("Invalid 'exp' claim") + " - must be an integer",
    ),
    "no exp": ({"exp": None}, 400, "invalid_request", _in_assertion("Missing 'exp' claim")),
    "no jti": ({"jti": None}, 400, "invalid_request", _in_assertion("Missing 'jti' claim")),
    "jti a number": (
        {"jti": 1234567890},
        400,
        "invalid_request",
        _in_assertion("Invalid 'jti' claim") + " - must be a unique string value such as a GUID",
    ),
    "another key": (
        {"key": private_key("other")},
        401,
        "public_key error",
        "JWT signature verification failed",
    ),
    "kid not in the JWKS": (
        {"kid": "unknown-kid"},
        401,
        "invalid_request",
        _in_assertion("Invalid 'kid' header") + " - no matching public key",
    ),
    "no kid": ({"kid": ""}, 400, "invalid_request", _in_assertion("Missing 'kid' header")),
    "typ not JWT": (
        {"headers": {"typ": "at+jwt"}},
        400,
        "invalid_request",
        _in_assertion("Invalid 'typ' header") + " - must be 'JWT'",
    ),
    "alg RS256": (
        {"algorithm": "RS256"},
        400,
        "invalid_request",
        _in_assertion("Invalid 'alg' header") + " - unsupported JWT algorithm - must be 'RS512'",
    ),
}


@pytest.mark.parametrize(
    ("changes", "status", "error", "description"),
    list(BAD_ASSERTIONS.values()),
    ids=list(BAD_ASSERTIONS),
)
async def test_a_bad_client_assertion_is_refused_as_the_platform_does(
    http: httpx.AsyncClient,
    platform_sandbox: SandboxHandle,
    changes: dict[str, Any],
    status: int,
    error: str,
    description: str,
) -> None:
    subject = await id_token(platform_sandbox.root_url)
    answer = await exchange(http, subject, assertion(audience_of(http), **changes))

    assert answer.status_code == status
    assert answer.json() == {"error": error, "error_description": description}
    assert await exchanges(platform_sandbox.root_url) == [{"status": status, "error": error}]


async def test_a_refused_assertion_does_not_use_up_its_jti(
    http: httpx.AsyncClient, platform_sandbox: SandboxHandle
) -> None:
    # Only an accepted assertion's jti is remembered: the same jti, sent again rightly
    # signed, is taken.
    subject, jti = await id_token(platform_sandbox.root_url), str(uuid.uuid4())
    forged = assertion(audience_of(http), jti=jti, key=private_key("other"))
    assert (await exchange(http, subject, forged)).status_code == 401

    assert (await exchange(http, subject, assertion(audience_of(http), jti=jti))).status_code == 200


def _in_subject_token(what: str) -> str:
    return f"{what} in subject_token JWT"


async def _tampered(root_url: str) -> str:
    """A real ID token of the issuer's with another user in its claims: its signature no
    longer verifies."""
    real = await id_token(root_url)
    header, _, signature = real.split(".")
    claims = jwt.decode(real, options={"verify_signature": False})
    body = jwt.utils.base64url_encode(json.dumps({**claims, "sub": "999999999999"}).encode())
    return f"{header}.{body.decode()}.{signature}"


# The platform's answers to an ID token it refuses (sandbox/oauth.py, rule 3, cites them):
# invalid_request throughout, naming the subject_token, never invalid_grant.
BAD_ID_TOKENS: dict[str, tuple[Callable[[str], Awaitable[str]], int, str]] = {
    "expired": (
        lambda root: id_token(root, lifetime_seconds=-5),
        400,
        _in_subject_token("Invalid 'exp' claim") + " - JWT has expired",
    ),
    "another issuer": (
        lambda root: forged_id_token(root, iss="https://elsewhere.example/NHSIdentity"),
        400,
        _in_subject_token("Missing or non-matching 'iss' claim"),
    ),
    "signed by another key": (forged_id_token, 400, "subject_token is invalid"),
    "tampered with": (_tampered, 400, "subject_token is invalid"),
    "kid not the issuer's": (
        lambda root: forged_id_token(root, headers={"kid": "unknown-kid"}),
        401,
        _in_subject_token("Invalid 'kid' header") + " - no matching public key",
    ),
    "not a JWT": (_constant("9SrRLS-XxM65UGJRlXR_6lqf604"), 400, "Malformed JWT in subject_token"),
    "no kid": (
        lambda root: forged_id_token(root, headers={"kid": ""}),
        400,
        _in_subject_token("Missing 'kid' header"),
    ),
    "typ not JWT": (
        lambda root: forged_id_token(root, headers={"typ": "at+jwt"}),
        400,
        _in_subject_token("Invalid 'typ' header") + " - must be 'JWT'",
    ),
    "no exp": (
        lambda root: forged_id_token(root, exp=None),
        400,
        _in_subject_token("Missing 'exp' claim"),
    ),
    "exp a string": (
        lambda root: forged_id_token(root, exp=str(int(time.time()) + 300)),
        400,
        _in_subject_token("Invalid 'exp' claim") + " - must be an integer",
    ),
    "no iss": (
        lambda root: forged_id_token(root, iss=None),
        400,
        _in_subject_token("Missing 'iss' claim"),
    ),
    "no aud": (
        lambda root: forged_id_token(root, aud=None),
        401,
        _in_subject_token("Missing 'aud' claim"),
    ),
}


@pytest.mark.parametrize(
    ("make", "status", "description"), list(BAD_ID_TOKENS.values()), ids=list(BAD_ID_TOKENS)
)
async def test_a_bad_id_token_is_refused_as_the_platform_does(
    http: httpx.AsyncClient,
    platform_sandbox: SandboxHandle,
    make: Callable[[str], Awaitable[str]],
    status: int,
    description: str,
) -> None:
    answer = await exchange(http, await make(platform_sandbox.root_url))

    assert answer.status_code == status
    assert answer.json() == {"error": "invalid_request", "error_description": description}
    assert await exchanges(platform_sandbox.root_url) == [
        {"status": status, "error": "invalid_request"}
    ]


async def test_an_id_token_is_checked_after_the_client_assertion(
    http: httpx.AsyncClient, platform_sandbox: SandboxHandle
) -> None:
    expired = await id_token(platform_sandbox.root_url, lifetime_seconds=-5)
    forged = assertion(audience_of(http), key=private_key("other"))

    answer = await exchange(http, expired, forged)

    assert (answer.status_code, answer.json()["error"]) == (401, "public_key error")


async def test_a_subject_token_type_other_than_id_token_is_refused_as_the_platform_does(
    http: httpx.AsyncClient, platform_sandbox: SandboxHandle
) -> None:
    answer = await http.post(
        "/oauth2/token",
        data={
            "grant_type": GRANT,
            "subject_token_type": "urn:ietf:params:oauth:token-type:access_token",
            "subject_token": await id_token(platform_sandbox.root_url),
            "client_assertion_type": JWT_BEARER,
            "client_assertion": assertion(audience_of(http)),
        },
    )

    assert answer.status_code == 400
    assert answer.json() == {
        "error": "invalid_request",
        "error_description": f"missing or invalid subject_token_type - must be '{ID_TOKEN_TYPE}'",
    }


async def test_e_rs_answers_401_with_the_spec_body_to_an_unknown_or_expired_token(
    http: httpx.AsyncClient, platform_sandbox: SandboxHandle
) -> None:
    unknown = await a004(http, "made-up-token")
    body = (await exchange(http, await id_token(platform_sandbox.root_url))).json()
    await admin(platform_sandbox.root_url, "POST", "oauth/expire-access-tokens")
    expired = await a004(http, body["access_token"])

    for answer in (unknown, expired):
        assert answer.status_code == 401
        issue = answer.json()["issue"][0]
        assert issue["code"] == "login"
        assert issue["details"]["coding"][0]["code"] == "NO_ACCESS"
    assert "expired" in expired.json()["issue"][0]["diagnostics"]


async def test_access_tokens_expire_after_their_lifetime(
    http: httpx.AsyncClient, platform_sandbox: SandboxHandle
) -> None:
    await admin(
        platform_sandbox.root_url, "POST", "oauth/settings", {"access_token_lifetime_seconds": 1}
    )
    body = (await exchange(http, await id_token(platform_sandbox.root_url))).json()
    assert body["expires_in"] == "1"
    assert (await a004(http, body["access_token"])).status_code == 200
    deadline = time.monotonic() + 5
    while (await a004(http, body["access_token"])).status_code != 401:
        assert time.monotonic() < deadline, "the access token never expired"


@pytest.mark.parametrize(
    "headers",
    [
        {**RC, "NHSD-eRS-Business-Function": "REFERRING_CLINICIAN_ADMIN"},
        {**RC, "NHSD-End-User-Organisation-ODS": "RA9"},
    ],
)
async def test_a_role_profile_the_user_does_not_hold_is_403(
    http: httpx.AsyncClient, platform_sandbox: SandboxHandle, headers: dict[str, str]
) -> None:
    body = (await exchange(http, await id_token(platform_sandbox.root_url))).json()

    answer = await a004(http, body["access_token"], headers)

    assert answer.status_code == 403
    assert answer.json()["issue"][0]["details"]["coding"][0]["code"] == "FORBIDDEN"


async def test_without_a_registered_application_any_bearer_token_is_taken(
    platform_sandbox: SandboxHandle,
) -> None:
    await admin(platform_sandbox.root_url, "POST", "oauth/reset")
    async with httpx.AsyncClient(base_url=platform_sandbox.root_url) as client:
        assert (await a004(client, "any-token")).status_code == 200
