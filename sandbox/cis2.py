"""A test NHS CIS2 issuer: signs ID tokens for a named user (SDS user id, role profiles) with
an expiry, as the clinical system's CIS2 sign-in would give them.

The claims follow CIS2's shape where the sandbox needs them: ``sub`` and ``nhsid_useruid``
(the SDS user id), ``nhsid_nrbac_roles`` (role profiles: organisation ``org_code`` and, for
the sandbox, the e-RS ``business_function`` the role carries), ``iss``, ``aud``, ``iat``,
``exp``. Only the sandbox's token endpoint verifies them (``sandbox.oauth``, with the API
platform's checks and texts).
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass, field
from typing import Any

import jwt
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.hazmat.primitives.asymmetric.rsa import RSAPrivateKey
from jwt.algorithms import RSAAlgorithm

ISSUER = "https://sandbox.cis2.test/openam/oauth2/realms/root/realms/NHSIdentity/realms/Healthcare"
AUDIENCE = "ers-sandbox-clinical-system"
ALGORITHM = "RS256"  # CIS2 signs its ID tokens RS256


@dataclass(frozen=True)
class RoleProfile:
    org_code: str
    business_function: str


@dataclass(frozen=True)
class Cis2User:
    sds_user_id: str
    roles: tuple[RoleProfile, ...]

    def holds(self, org_code: str, business_function: str) -> bool:
        return any(
            r.org_code == org_code and r.business_function == business_function for r in self.roles
        )

    @classmethod
    def of(cls, claims: dict[str, Any]) -> Cis2User:
        """The user a verified ID token's claims name."""
        roles = tuple(
            RoleProfile(str(r.get("org_code")), str(r.get("business_function")))
            for r in claims.get("nhsid_nrbac_roles", [])
            if isinstance(r, dict)
        )
        return cls(str(claims["sub"]), roles)


@dataclass
class Issuer:
    key: RSAPrivateKey = field(
        default_factory=lambda: rsa.generate_private_key(public_exponent=65537, key_size=2048)
    )
    kid: str = field(default_factory=lambda: f"cis2-{uuid.uuid4().hex[:8]}")

    def id_token(self, user: Cis2User, lifetime_seconds: float, now: float | None = None) -> str:
        issued = time.time() if now is None else now
        claims: dict[str, Any] = {
            "iss": ISSUER,
            "aud": AUDIENCE,
            "sub": user.sds_user_id,
            "nhsid_useruid": user.sds_user_id,
            "nhsid_nrbac_roles": [
                {"org_code": r.org_code, "business_function": r.business_function}
                for r in user.roles
            ],
            "iat": int(issued),
            "exp": int(issued + lifetime_seconds),
            "jti": str(uuid.uuid4()),
        }
        return jwt.encode(claims, self.key, algorithm=ALGORITHM, headers={"kid": self.kid})

    def verifies(self, token: str) -> bool:
        """Whether this issuer's key verifies ``token``'s signature (its claims are the
        token endpoint's to check)."""
        try:
            jwt.api_jws.decode(token, self.key.public_key(), algorithms=[ALGORITHM])
        except jwt.PyJWTError:
            return False
        return True

    def jwks(self) -> dict[str, Any]:
        jwk: dict[str, Any] = RSAAlgorithm.to_jwk(self.key.public_key(), as_dict=True)
        return {"keys": [{**jwk, "kid": self.kid, "alg": ALGORITHM, "use": "sig"}]}
