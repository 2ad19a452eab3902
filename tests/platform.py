"""Test helpers for the API platform's side of the token exchange: an application's key pair
on disk (as a mounted Secret would hold it), its registration with the sandbox, and CIS2 ID
tokens from the sandbox's test issuer."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from functools import cache
from pathlib import Path
from typing import Any

import httpx
import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from sandbox.cis2 import ALGORITHM as CIS2_ALGORITHM
from sandbox.cis2 import AUDIENCE as CIS2_AUDIENCE
from sandbox.cis2 import ISSUER as CIS2_ISSUER
from worker.ers.keys import load_keys
from worker.ops.settings import Settings

API_KEY = "sandbox-api-key-0001"
KID = "test-kid-1"
SDS_USER_ID = "555254242106"
# The samples' acting user: a referring clinician at R69 (schemas/samples).
ROLES = [{"org_code": "R69", "business_function": "REFERRING_CLINICIAN"}]


@cache
def private_key(name: str = "main") -> rsa.RSAPrivateKey:
    """One 2048-bit key per name for the whole run (the platform asks for 4096 in
    production; generating those per test would only slow the suite)."""
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def pem(key: rsa.RSAPrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def key_dir(root: Path, kid: str = KID, key: rsa.RSAPrivateKey | None = None) -> Path:
    directory = root / "apim-keys"
    directory.mkdir(exist_ok=True)
    (directory / f"{kid}.pem").write_bytes(pem(key or private_key()))
    return directory


def jwks_of(directory: Path, kid: str = KID) -> dict[str, Any]:
    return load_keys(directory=directory, pem=None, kid=kid).jwks()


async def register(root_url: str, jwks: dict[str, Any], api_key: str = API_KEY) -> None:
    async with httpx.AsyncClient() as http:
        answer = await http.post(
            f"{root_url}/_sandbox/oauth/applications", json={"api_key": api_key, "jwks": jwks}
        )
        answer.raise_for_status()


async def reset_platform(root_url: str) -> None:
    async with httpx.AsyncClient() as http:
        (await http.post(f"{root_url}/_sandbox/oauth/reset")).raise_for_status()


@asynccontextmanager
async def registered_application(root_url: str, root: Path) -> AsyncIterator[Path]:
    """An application (API_KEY, its key KID in a directory under ``root``) registered with
    the sandbox's API platform, which then enforces its tokens on every e-RS call; the key
    directory. The platform is reset before and after."""
    keys = key_dir(root)
    await reset_platform(root_url)
    await register(root_url, jwks_of(keys))
    try:
        yield keys
    finally:
        await reset_platform(root_url)


def id_token_mode(settings: Settings, keys: Path, kid: str = KID) -> Settings:
    """``settings`` for ERS_TOKEN_PROVIDER=message-id-token, signing with key ``kid`` in
    ``keys`` (by default the key of ``registered_application``)."""
    return settings.model_copy(
        update={
            "ers_token_provider": "message-id-token",
            "apim_api_key": API_KEY,
            "apim_key_id": kid,
            "apim_private_key_dir": keys,
        }
    )


async def id_token(
    root_url: str,
    *,
    lifetime_seconds: float = 3600,
    roles: list[dict[str, str]] | None = None,
    sds_user_id: str = SDS_USER_ID,
) -> str:
    async with httpx.AsyncClient() as http:
        answer = await http.post(
            f"{root_url}/_sandbox/cis2/id-token",
            json={
                "sds_user_id": sds_user_id,
                "roles": ROLES if roles is None else roles,
                "lifetime_seconds": lifetime_seconds,
            },
        )
        answer.raise_for_status()
        token: str = answer.json()["id_token"]
        return token


async def forged_id_token(
    root_url: str,
    *,
    key: rsa.RSAPrivateKey | None = None,
    headers: dict[str, Any] | None = None,
    **changes: Any,
) -> str:
    """An ID token shaped as the sandbox's CIS2 issuer signs them (its ``iss``, ``aud`` and
    ``kid``, an ``exp`` an hour ahead), but signed by ``key`` (one the issuer does not hold,
    by default), with ``changes`` to its claims (None drops one) and ``headers``."""
    jwks = await admin(root_url, "GET", "cis2/jwks")
    claims = {
        "iss": CIS2_ISSUER,
        "aud": CIS2_AUDIENCE,
        "sub": SDS_USER_ID,
        "nhsid_nrbac_roles": ROLES,
        "exp": int(time.time()) + 3600,
        **changes,
    }
    return jwt.encode(
        {k: v for k, v in claims.items() if v is not None},
        key or private_key("not-the-cis2-issuer"),
        algorithm=CIS2_ALGORITHM,
        headers={"kid": jwks["keys"][0]["kid"], **(headers or {})},
    )


async def admin(root_url: str, method: str, path: str, body: Any = None) -> Any:
    async with httpx.AsyncClient() as http:
        answer = await http.request(method, f"{root_url}/_sandbox/{path}", json=body)
        answer.raise_for_status()
        return answer.json()


async def exchanges(root_url: str) -> list[dict[str, Any]]:
    """Every token exchange the platform has answered since its reset, oldest first: its
    status and OAuth error (None when it issued a token)."""
    found: list[dict[str, Any]] = (await admin(root_url, "GET", "oauth/exchanges"))["exchanges"]
    return found
