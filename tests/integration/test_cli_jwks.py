"""`ers-worker jwks` as an operator runs it: the public JWKS of the configured signing keys,
which verifies what the private keys sign and holds nothing private; a key it cannot use is
one line and exit 2, as it is for `ers-worker run`."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jwt
import orjson
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from jwt.algorithms import RSAAlgorithm

from tests.integration.test_cli_exits import one_line, run
from tests.platform import key_dir, pem, private_key
from worker.ops.settings import DEFAULT_PATIENT_KEY_SECRET, ENV_FILE_ENV

PRIVATE_MEMBERS = ("d", "p", "q", "dp", "dq", "qi")


def env(**apim: str) -> dict[str, str]:
    """The environment without any APIM_* setting of the machine's own, plus ``apim``."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith("APIM_")}
    return {**clean, "ERS_ENVIRONMENT": "sandbox", **apim}


def private_members(key: rsa.RSAPrivateKey) -> list[str]:
    """The base64url values of the key's private members, as a JWK would spell them."""
    full: dict[str, Any] = RSAAlgorithm.to_jwk(key, as_dict=True)
    return [full[m] for m in PRIVATE_MEMBERS]


def assert_round_trip(
    jwk: dict[str, Any], key: rsa.RSAPrivateKey, other: rsa.RSAPrivateKey
) -> None:
    """What ``key`` signs (RS512, as a client assertion is) verifies with the published JWK;
    what another key signs does not."""
    public = jwt.PyJWK(jwk).key
    claims = {"iss": "app", "sub": "app", "jti": "1"}
    signed = jwt.encode(claims, key, algorithm="RS512", headers={"kid": jwk["kid"]})
    assert jwt.decode(signed, public, algorithms=["RS512"]) == claims
    forged = jwt.encode(claims, other, algorithm="RS512", headers={"kid": jwk["kid"]})
    with pytest.raises(jwt.InvalidSignatureError):
        jwt.decode(forged, public, algorithms=["RS512"])


async def test_jwks_publishes_every_key_of_the_directory_and_nothing_private(
    tmp_path: Path,
) -> None:
    old, new = private_key("old"), private_key("new")
    directory = key_dir(tmp_path, "old-1", old)
    key_dir(tmp_path, "new-2", new)

    code, out, err = await run(
        "jwks", env=env(APIM_PRIVATE_KEY_DIR=str(directory), APIM_KEY_ID="new-2")
    )

    assert (code, err) == (0, "")
    jwks = orjson.loads(out)
    assert [k["kid"] for k in jwks["keys"]] == ["new-2", "old-1"]  # both, during a rotation
    for jwk in jwks["keys"]:
        # The members of the API platform's example JWKS, in its order: no key_ops beside
        # use (RFC 7517 section 4.3), nothing private.
        assert list(jwk) == ["kty", "n", "e", "alg", "kid", "use"]
        assert (jwk["kty"], jwk["e"], jwk["alg"], jwk["use"]) == ("RSA", "AQAB", "RS512", "sig")
    by_kid = {k["kid"]: k for k in jwks["keys"]}
    assert_round_trip(by_kid["new-2"], new, old)
    assert_round_trip(by_kid["old-1"], old, new)
    for key in (old, new):
        assert all(value not in out for value in private_members(key))
    assert "PRIVATE KEY" not in out


async def test_jwks_publishes_the_key_from_the_environment_under_its_kid() -> None:
    key = private_key("env")
    code, out, err = await run(
        "jwks", env=env(APIM_PRIVATE_KEY=pem(key).decode(), APIM_KEY_ID="env-1")
    )

    assert (code, err) == (0, "")
    (jwk,) = orjson.loads(out)["keys"]
    assert jwk["kid"] == "env-1"
    assert_round_trip(jwk, key, private_key("other"))
    assert not set(PRIVATE_MEMBERS) & set(jwk)
    assert all(value not in out for value in private_members(key))


async def test_jwks_needs_no_signing_kid_for_a_key_directory(tmp_path: Path) -> None:
    # Before the application is registered, the worker need not be told which key signs.
    directory = key_dir(tmp_path, "first-1", private_key("first"))
    code, out, err = await run("jwks", env=env(APIM_PRIVATE_KEY_DIR=str(directory)))
    assert (code, err) == (0, "")
    assert [k["kid"] for k in orjson.loads(out)["keys"]] == ["first-1"]


def id_token_worker(tmp_path: Path, kid: str, keys: str) -> dict[str, str]:
    """`run`'s settings in message-id-token mode, signing with ``kid`` from the directory
    ``keys``; no broker on port 9 (start-up stops before it would connect)."""
    return {
        "ERS_TOKEN_PROVIDER": "message-id-token",
        "APIM_API_KEY": "app",
        "APIM_KEY_ID": kid,
        "APIM_PRIVATE_KEY_DIR": keys,
        "SAGA_STORE_PATH": str(tmp_path / "sagas.db"),
        "METRICS_PORT": "0",
        "AMQP_URL": "amqp://guest:guest@127.0.0.1:9/",
    }


def production(**apim: str) -> dict[str, str]:
    """``env(**apim)`` for production, with the shipped PATIENT_KEY_SECRET (none set)."""
    shipped = {
        k: v for k, v in env(**apim).items() if k not in ("PATIENT_KEY_SECRET", ENV_FILE_ENV)
    }
    return {**shipped, "ERS_ENVIRONMENT": "production"}


async def test_jwks_needs_no_patient_key_secret_as_it_touches_no_patient_data(
    tmp_path: Path,
) -> None:
    # The operator registering the application may not have the worker's secret yet.
    key = private_key("first")
    directory = key_dir(tmp_path, "first-1", key)

    code, out, err = await run("jwks", env=production(APIM_PRIVATE_KEY_DIR=str(directory)))

    assert (code, err) == (0, "")
    (jwk,) = orjson.loads(out)["keys"]
    assert jwk["kid"] == "first-1"
    assert_round_trip(jwk, key, private_key("other"))


async def test_run_still_refuses_the_default_patient_key_secret(tmp_path: Path) -> None:
    # The same environment the jwks was printed in: the worker keys patients, and will not
    # with a secret anyone can read in the repository.
    directory = key_dir(tmp_path, "first-1", private_key("first"))
    code, out, err = await run(
        "run", env=production(**id_token_worker(tmp_path, "first-1", str(directory)))
    )

    assert (code, out) == (2, "")
    record = orjson.loads(one_line(err))
    assert record["msg"] == "exiting on an error"
    assert record["why"].startswith("PATIENT_KEY_SECRET is the shipped default")
    assert DEFAULT_PATIENT_KEY_SECRET not in err
    assert not (tmp_path / "sagas.db").exists()  # refused before it opened anything


def ec_pem() -> bytes:
    return ec.generate_private_key(ec.SECP256R1()).private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def keys_of(tmp_path: Path, files: dict[str, bytes | None]) -> str:
    """A key directory with these files (None: a directory of that name, which no one can
    read as a file, as root cannot be kept from reading a chmod 000 one)."""
    directory = tmp_path / "keys"
    directory.mkdir()
    for name, content in files.items():
        if content is None:
            (directory / name).mkdir()
        else:
            (directory / name).write_bytes(content)
    return str(directory)


@pytest.mark.parametrize(
    ("case", "line"),
    [
        ("nothing", "no signing key: set APIM_PRIVATE_KEY_DIR or APIM_PRIVATE_KEY"),
        ("empty directory", "no signing key: set APIM_PRIVATE_KEY_DIR or APIM_PRIVATE_KEY"),
        ("no such directory", "is not a directory"),
        ("unreadable", "k-1.pem in APIM_PRIVATE_KEY_DIR cannot be read (Is a directory)"),
        ("not RSA", "ec-1.pem is not an RSA key (RS512 needs one)"),
        ("not a key", "junk-1.pem is not an unencrypted PEM private key"),
        ("env key without kid", "APIM_PRIVATE_KEY is set but APIM_KEY_ID, its kid, is not"),
        ("kid not loaded", "APIM_KEY_ID gone-9 names no loaded key (loaded: k-1)"),
    ],
)
async def test_a_key_it_cannot_publish_is_one_line_and_exit_2(
    tmp_path: Path, case: str, line: str
) -> None:
    rsa_pem = pem(private_key())
    settings: dict[str, Callable[[], dict[str, str]]] = {
        "nothing": dict,
        "empty directory": lambda: {"APIM_PRIVATE_KEY_DIR": keys_of(tmp_path, {})},
        "no such directory": lambda: {"APIM_PRIVATE_KEY_DIR": str(tmp_path / "absent")},
        "unreadable": lambda: {"APIM_PRIVATE_KEY_DIR": keys_of(tmp_path, {"k-1.pem": None})},
        "not RSA": lambda: {"APIM_PRIVATE_KEY_DIR": keys_of(tmp_path, {"ec-1.pem": ec_pem()})},
        "not a key": lambda: {"APIM_PRIVATE_KEY_DIR": keys_of(tmp_path, {"junk-1.pem": b"junk"})},
        "env key without kid": lambda: {"APIM_PRIVATE_KEY": rsa_pem.decode()},
        "kid not loaded": lambda: {
            "APIM_PRIVATE_KEY_DIR": keys_of(tmp_path, {"k-1.pem": rsa_pem}),
            "APIM_KEY_ID": "gone-9",
        },
    }

    code, out, err = await run("jwks", env=env(**settings[case]()))

    assert (code, out) == (2, "")
    said = one_line(err)
    assert line in said
    assert said.endswith("fix it and run again (docs/security.md: Keys and rotation).")
    assert "BEGIN" not in said and rsa_pem.decode().splitlines()[1] not in said


async def test_jwks_help_says_what_it_reads_and_that_nothing_private_is_printed() -> None:
    code, out, _ = await run("jwks", "--help")
    assert code == 0
    text = " ".join(out.split())
    assert "APIM_PRIVATE_KEY_DIR" in text and "APIM_PRIVATE_KEY under the kid APIM_KEY_ID" in text
    assert "never private key material" in text


async def test_run_with_no_usable_key_says_so_in_one_log_line_and_exits_2(tmp_path: Path) -> None:
    # The worker itself fails to start on the same problem, with the same line (no broker
    # is needed to get there: the keys are loaded before it connects).
    keys = keys_of(tmp_path, {"k-1.pem": ec_pem()})
    code, out, err = await run("run", env=env(**id_token_worker(tmp_path, "k-1", keys)))
    assert (code, out) == (2, "")
    record = orjson.loads(one_line(err))
    assert record["msg"] == "exiting on an error" and record["error"] == "KeyProblem"
    assert record["why"].startswith("k-1.pem is not an RSA key (RS512 needs one)")
