"""The application's signing keys for the API platform, by key id (``kid``).

Rules:
1. Keys come from a directory with one ``<kid>.pem`` per key (a Kubernetes Secret mounted as
   a volume) and/or one PEM in the environment, for the kid ``APIM_KEY_ID`` names.
2. One key signs (``APIM_KEY_ID``); every loaded key is published in the JWKS, so a rotation
   registers the new key before it signs and removes the old one after (docs/security.md).
3. Errors name the file or the kid, never the key's contents; a JWKS holds public members
   only (``kty``, ``n``, ``e``, ``alg``, ``kid``, ``use``: those of the platform's example),
   never ``d``, ``p``, ``q``, ``dp``, ``dq`` or ``qi``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.rsa import RSAPrivateKey
from jwt.algorithms import RSAAlgorithm
from pydantic import SecretStr

ALGORITHM = "RS512"  # what the API platform's signed-JWT pattern asks for
MIN_KEY_BITS = 2048  # the platform's guide generates 4096-bit keys; below 2048 is refused
_KID = re.compile(r"^[A-Za-z0-9._-]{1,64}$")


class KeyProblem(ValueError):
    """A key that cannot be loaded or used: the message names the file or kid."""


@dataclass(frozen=True, slots=True)
class SigningKey:
    kid: str
    private: RSAPrivateKey

    def public_jwk(self) -> dict[str, Any]:
        """The members of the API platform's example JWKS, in its order, and no others: PyJWT
        adds ``key_ops: ["verify"]``, which RFC 7517 section 4.3 says SHOULD NOT stand beside
        ``use``. The example: the JWKS of Step 2 of
        https://digital.nhs.uk/developer/guides-and-documentation/security-and-authorisation/application-restricted-restful-apis-signed-jwt-authentication
        """
        jwk: dict[str, Any] = RSAAlgorithm.to_jwk(self.private.public_key(), as_dict=True)
        return {
            "kty": jwk["kty"],
            "n": jwk["n"],
            "e": jwk["e"],
            "alg": ALGORITHM,
            "kid": self.kid,
            "use": "sig",
        }


@dataclass(frozen=True, slots=True)
class SigningKeys:
    """Every configured key; ``current`` signs."""

    keys: dict[str, SigningKey]
    current_kid: str

    @property
    def current(self) -> SigningKey:
        return self.keys[self.current_kid]

    def jwks(self) -> dict[str, Any]:
        """The public JWKS to register with the API platform (every key, sorted by kid)."""
        return _jwks(self.keys)


def _private_key(pem: bytes, where: str) -> RSAPrivateKey:
    try:
        key = serialization.load_pem_private_key(pem, password=None)
    except (ValueError, TypeError):
        raise KeyProblem(f"{where} is not an unencrypted PEM private key") from None
    if not isinstance(key, RSAPrivateKey):
        raise KeyProblem(f"{where} is not an RSA key ({ALGORITHM} needs one)")
    if key.key_size < MIN_KEY_BITS:
        raise KeyProblem(f"{where} is a {key.key_size}-bit key; at least {MIN_KEY_BITS} needed")
    return key


def _loaded(
    directory: Path | None, pem: SecretStr | None, kid: str | None
) -> dict[str, SigningKey]:
    """Every key of rule 1, by kid; ``kid`` is the one APIM_PRIVATE_KEY is for."""
    keys: dict[str, SigningKey] = {}
    if directory is not None:
        if not directory.is_dir():
            raise KeyProblem(f"APIM_PRIVATE_KEY_DIR {directory} is not a directory")
        try:
            names = sorted(p for p in directory.iterdir() if p.suffix == ".pem")
        except OSError as exc:
            raise KeyProblem(
                f"APIM_PRIVATE_KEY_DIR {directory} cannot be listed ({_why(exc)})"
            ) from None
        # Kubernetes mounts a Secret's keys next to hidden ..data links: skip dotfiles.
        for path in names:
            if path.name.startswith("."):
                continue
            if not _KID.match(path.stem):
                raise KeyProblem(f"{path.name}: a key file is named <kid>.pem, kid [A-Za-z0-9._-]")
            try:
                content = path.read_bytes()
            except OSError as exc:
                raise KeyProblem(
                    f"{path.name} in APIM_PRIVATE_KEY_DIR cannot be read ({_why(exc)})"
                ) from None
            keys[path.stem] = SigningKey(path.stem, _private_key(content, path.name))
    if pem is not None and pem.get_secret_value().strip():
        if not kid:
            raise KeyProblem("APIM_PRIVATE_KEY is set but APIM_KEY_ID, its kid, is not")
        if kid in keys:
            raise KeyProblem(f"kid {kid} is both in APIM_PRIVATE_KEY and in the key directory")
        where = "APIM_PRIVATE_KEY"
        keys[kid] = SigningKey(kid, _private_key(pem.get_secret_value().encode(), where))
    if not keys:
        raise KeyProblem("no signing key: set APIM_PRIVATE_KEY_DIR or APIM_PRIVATE_KEY")
    if kid and kid not in keys:
        raise KeyProblem(f"APIM_KEY_ID {kid} names no loaded key (loaded: {', '.join(keys)})")
    return keys


def _why(exc: OSError) -> str:
    return exc.strerror or type(exc).__name__


def load_keys(*, directory: Path | None, pem: SecretStr | None, kid: str) -> SigningKeys:
    """The keys of rule 1; ``kid`` names the one that signs (rule 2)."""
    if not kid:
        raise KeyProblem("APIM_KEY_ID is not set: it names the key that signs")
    return SigningKeys(_loaded(directory, pem, kid), kid)


def public_jwks(
    *, directory: Path | None, pem: SecretStr | None, kid: str | None
) -> dict[str, Any]:
    """The JWKS of every configured key (rule 2), for ``ers-worker jwks``: before the worker
    is set to sign with one, ``kid`` may be unset (then only a key directory serves)."""
    return _jwks(_loaded(directory, pem, kid))


def _jwks(keys: dict[str, SigningKey]) -> dict[str, Any]:
    # Public members only: SigningKey.public_jwk converts the public half of each key.
    return {"keys": [keys[kid].public_jwk() for kid in sorted(keys)]}
