"""The API platform's side of the "CIS2 separate authentication and authorisation" pattern:
``POST /oauth2/token`` exchanges a CIS2 ID token (from ``sandbox.cis2``) for an access token,
for an application that authenticates with a client assertion signed by a key in its JWKS.

Rules:
1. The platform is enforced once an application is registered (``--app-api-key`` and
   ``--app-jwks``, or ``POST /_sandbox/oauth/applications``): e-RS endpoints then answer 401
   (the spec's NO_ACCESS body) to a token it did not issue or that has expired, and 403
   (FORBIDDEN) when the ODS and business-function headers name a role profile the token's
   user does not hold. Without one, any bearer token is taken, as before.
2. The client assertion is checked as the platform does: RS512, ``typ`` JWT, a ``kid`` in
   the JWKS of the application ``iss`` = ``sub`` names, ``aud`` = this token URL, ``exp``
   present and at most 5 minutes ahead, a ``jti`` never seen before. Errors are OAuth JSON
   (``error``, ``error_description``) with the platform's statuses and texts (see
   ``_check_assertion``): invalid_request, 400 for the assertion's form and 401 for an
   unknown API key, kid or ``aud``; 401 ``public_key error`` for a signature that does not
   verify.
3. The ID token (``subject_token``) is checked as the platform does, after the assertion:
   a JWT with ``kid``, ``typ`` JWT and ``alg`` in its header, an integer ``exp`` not past,
   ``iss`` and ``aud`` present, ``iss`` the CIS2 issuer's, ``kid`` its key's and the
   signature that key's. Every refusal is invalid_request, its description naming the
   subject_token (see ``_check_subject_token``), 400 but for a missing ``aud`` or an
   unknown ``kid`` (401); never invalid_grant.
4. Access tokens live ``access_token_lifetime_seconds`` (599 by default, like the platform's).
"""

from __future__ import annotations

import secrets
import time
from dataclasses import dataclass, field
from typing import Any, TypeGuard

import jwt
import orjson
from aiohttp import web

from sandbox.access import BUSINESS_FUNCTION_HEADER, ODS_HEADER, Endpoint
from sandbox.cis2 import ISSUER as CIS2_ISSUER
from sandbox.cis2 import Cis2User, Issuer, RoleProfile
from sandbox.outcomes import ErsError

TOKEN_PATH = "/oauth2/token"
GRANT_TYPE = "urn:ietf:params:oauth:grant-type:token-exchange"
SUBJECT_TOKEN_TYPE = "urn:ietf:params:oauth:token-type:id_token"
ISSUED_TOKEN_TYPE = "urn:ietf:params:oauth:token-type:access_token"
ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
ASSERTION_ALGORITHM = "RS512"
MAX_ASSERTION_SECONDS = 300


@dataclass
class Issued:
    user: Cis2User
    expires_at: float


@dataclass
class Platform:
    issuer: Issuer = field(default_factory=Issuer)
    applications: dict[str, dict[str, Any]] = field(default_factory=dict)  # api key -> kid -> JWK
    access_token_lifetime_seconds: int = 599
    tokens: dict[str, Issued] = field(default_factory=dict)
    seen_jtis: dict[str, float] = field(default_factory=dict)  # jti -> its exp
    exchanges: list[dict[str, Any]] = field(default_factory=list)  # results, never tokens
    # Every client assertion received, kept only for tests that grep the worker's outputs for
    # it (``GET /_sandbox/oauth/issued``); the platform's side of a leak check.
    assertions: list[str] = field(default_factory=list)

    @property
    def enforced(self) -> bool:
        return bool(self.applications)

    def register(self, api_key: str, jwks: dict[str, Any]) -> None:
        keys = jwks.get("keys") if isinstance(jwks, dict) else None
        if not api_key or not isinstance(keys, list) or not keys:
            raise ValueError("an application needs an api_key and a JWKS with keys")
        self.applications[api_key] = {
            str(k["kid"]): k for k in keys if isinstance(k, dict) and k.get("kid")
        }


PLATFORM = web.AppKey("platform", Platform)


class OAuthError(Exception):
    def __init__(self, status: int, error: str, description: str) -> None:
        super().__init__(description)
        self.status = status
        self.error = error
        self.description = description

    def response(self) -> web.Response:
        body = {"error": self.error, "error_description": self.description}
        return web.Response(
            status=self.status, body=orjson.dumps(body), content_type="application/json"
        )


def _json(body: Any, status: int = 200) -> web.Response:
    return web.Response(status=status, body=orjson.dumps(body), content_type="application/json")


def token_url(request: web.Request) -> str:
    return f"{request.scheme}://{request.host}{TOKEN_PATH}"


# What the platform answers to each check of a client assertion, in the order it checks:
# first the assertion's own form (400), then the application its iss names, that
# application's key for the kid and the signature (401). Error texts and statuses are the
# platform's own, as its token-exchange tests assert them (NHSDigital/identity-service-api,
# e2e/tests/oauth/test_token_exchange.py) and as a developer was answered for a bad iss/sub
# (https://developer.community.nhs.uk/t/invalid-iss-sub-claims-in-client-assertion-jwt/8080):
# invalid_request throughout, never invalid_client; a signature that does not verify is
# "public_key error". The guide the worker follows:
# https://digital.nhs.uk/developer/guides-and-documentation/security-and-authorisation/user-restricted-restful-apis-nhs-cis2-separate-authentication-and-authorisation
IN_ASSERTION = "in client_assertion JWT"


def _refused(status: int, description: str) -> OAuthError:
    return OAuthError(status, "invalid_request", description)


def _is_number(value: object) -> TypeGuard[float]:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _unverified(token: str, field: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """The header and claims of the JWT in form field ``field``, unverified; the platform
    refuses one it cannot decode as "Malformed JWT in <field>"."""
    try:
        header = jwt.get_unverified_header(token)
        claims = jwt.decode(token, options={"verify_signature": False})
    except jwt.PyJWTError:
        raise _refused(400, f"Malformed JWT in {field}") from None
    return header, claims


def _check_assertion(platform: Platform, assertion: str, audience: str, now: float) -> None:
    """Rule 2; raises the OAuthError the platform would answer with."""
    header, claims = _unverified(assertion, "client_assertion")
    exp, kid, typ = claims.get("exp"), header.get("kid"), header.get("typ")
    iss, sub, jti = claims.get("iss"), claims.get("sub"), claims.get("jti")
    if header.get("alg") != ASSERTION_ALGORITHM:
        raise _refused(
            400,
            f"Invalid 'alg' header {IN_ASSERTION} - unsupported JWT algorithm - must be 'RS512'",
        )
    if _is_number(exp) and exp < now:
        raise _refused(400, f"Invalid 'exp' claim {IN_ASSERTION} - JWT has expired")
    if not kid:
        raise _refused(400, f"Missing 'kid' header {IN_ASSERTION}")
    if not isinstance(typ, str) or typ.lower() != "jwt":
        raise _refused(400, f"Invalid 'typ' header {IN_ASSERTION} - must be 'JWT'")
    if exp is None:
        raise _refused(400, f"Missing 'exp' claim {IN_ASSERTION}")
    if not _is_number(exp):
        raise _refused(400, f"Invalid 'exp' claim {IN_ASSERTION} - must be an integer")
    if not iss or iss != sub:
        raise _refused(400, f"Missing or non-matching 'iss'/'sub' claims {IN_ASSERTION}")
    if not jti:
        raise _refused(400, f"Missing 'jti' claim {IN_ASSERTION}")
    if not isinstance(jti, str):
        raise _refused(
            400,
            f"Invalid 'jti' claim {IN_ASSERTION} - must be a unique string value such as a GUID",
        )
    platform.seen_jtis = {j: e for j, e in platform.seen_jtis.items() if e >= now}
    if jti in platform.seen_jtis:
        raise _refused(400, f"Non-unique 'jti' claim {IN_ASSERTION}")
    # The platform allows 10 s more; the sandbox holds to the 5 minutes its guide asks for.
    if exp > now + MAX_ASSERTION_SECONDS:
        raise _refused(400, f"Invalid 'exp' claim {IN_ASSERTION} - more than 5 minutes in future")
    if iss not in platform.applications:
        raise _refused(401, f"Invalid 'iss'/'sub' claims {IN_ASSERTION}")
    jwk = platform.applications[iss].get(kid)
    if jwk is None:
        raise _refused(401, f"Invalid 'kid' header {IN_ASSERTION} - no matching public key")
    try:
        jwt.api_jws.decode(
            assertion, jwt.PyJWK(jwk, ASSERTION_ALGORITHM).key, algorithms=[ASSERTION_ALGORITHM]
        )
    except jwt.PyJWTError:
        raise OAuthError(401, "public_key error", "JWT signature verification failed") from None
    if claims.get("aud") != audience:
        raise _refused(401, f"Missing or invalid 'aud' claim {IN_ASSERTION}")
    platform.seen_jtis[jti] = float(exp)


# What the platform answers to each check of the ID token, in the order it checks (rule 3),
# after the client assertion's. The texts and statuses are the platform's own
# (NHSDigital/identity-service-api): its e2e tests (e2e/tests/oauth/test_token_exchange.py:
# "Malformed JWT in subject_token" for a subject_token that is no JWT, and for the CIS2 ID
# token's header and claims "Missing 'kid' header", "Invalid 'typ' header ... - must be
# 'JWT'", "Missing 'iss' claim", "Missing 'aud' claim" (401), "Missing 'exp' claim",
# "Invalid 'exp' claim ... - must be an integer", "Invalid 'exp' claim ... - JWT has
# expired", each "in subject_token JWT"); the checks' script
# (proxies/live/apiproxy/resources/jsc/validate-subject-token-claims.js, the same texts and
# order, with "Missing 'alg' header"); and its policies
# (proxies/live/apiproxy/policies/AssignMessage.FailedToDecodeSubjectTokenJWTError.xml,
# AssignMessage.NoMatchingPublicKeySubjectToken.xml: 401 "Invalid 'kid' header in
# subject_token JWT - no matching public key", AssignMessage.InvalidSubjectToken.xml: 400
# "subject_token is invalid", here a signature the issuer's key does not verify, or no sub
# to name the user by: what in the flow raises it, the sources read do not show). An ID
# token from another issuer: "Missing or non-matching 'iss' claim in subject_token JWT", as
# a developer exchanging a CIS2 ID token for e-RS was answered
# (https://developer.community.nhs.uk/t/error-missing-or-non-matching-iss-claim-in-subject-token-jwt/11870)
# and as the platform's earlier script said it. Nothing shows the platform checking the ID
# token's aud against a value, so the sandbox does not either.
IN_SUBJECT_TOKEN = "in subject_token JWT"


def _check_subject_token(platform: Platform, subject: str, now: float) -> Cis2User:
    """Rule 3; the user the ID token names, or raises the OAuthError the platform would."""
    header, claims = _unverified(subject, "subject_token")
    kid, typ, exp = header.get("kid"), header.get("typ"), claims.get("exp")
    if not kid:
        raise _refused(400, f"Missing 'kid' header {IN_SUBJECT_TOKEN}")
    if not isinstance(typ, str) or typ.lower() != "jwt":
        raise _refused(400, f"Invalid 'typ' header {IN_SUBJECT_TOKEN} - must be 'JWT'")
    if not header.get("alg"):
        raise _refused(400, f"Missing 'alg' header {IN_SUBJECT_TOKEN}")
    if exp is None:
        raise _refused(400, f"Missing 'exp' claim {IN_SUBJECT_TOKEN}")
    if not _is_number(exp):
        raise _refused(400, f"Invalid 'exp' claim {IN_SUBJECT_TOKEN} - must be an integer")
    if now > exp:
        raise _refused(400, f"Invalid 'exp' claim {IN_SUBJECT_TOKEN} - JWT has expired")
    if not claims.get("iss"):
        raise _refused(400, f"Missing 'iss' claim {IN_SUBJECT_TOKEN}")
    if not claims.get("aud"):
        raise _refused(401, f"Missing 'aud' claim {IN_SUBJECT_TOKEN}")
    if claims["iss"] != CIS2_ISSUER:
        raise _refused(400, f"Missing or non-matching 'iss' claim {IN_SUBJECT_TOKEN}")
    if kid != platform.issuer.kid:
        raise _refused(401, f"Invalid 'kid' header {IN_SUBJECT_TOKEN} - no matching public key")
    if not platform.issuer.verifies(subject) or not claims.get("sub"):
        raise _refused(400, "subject_token is invalid")
    return Cis2User.of(claims)


async def token(request: web.Request) -> web.Response:
    platform = request.app[PLATFORM]
    try:
        answer = await _exchange(request, platform)
    except OAuthError as error:
        platform.exchanges.append({"status": error.status, "error": error.error})
        return error.response()
    platform.exchanges.append({"status": 200, "error": None})
    return answer


async def _exchange(request: web.Request, platform: Platform) -> web.Response:
    if request.content_type != "application/x-www-form-urlencoded":
        raise OAuthError(
            400, "invalid_request", "Content-Type must be application/x-www-form-urlencoded"
        )
    form = await request.post()
    if form.get("grant_type") != GRANT_TYPE:
        raise OAuthError(400, "unsupported_grant_type", "grant_type must be token-exchange")
    if form.get("client_assertion_type") != ASSERTION_TYPE:
        raise OAuthError(400, "invalid_request", "Missing or invalid client_assertion_type")
    assertion = form.get("client_assertion")
    if not isinstance(assertion, str) or not assertion:
        raise OAuthError(400, "invalid_request", "Missing client_assertion")
    platform.assertions.append(assertion)
    now = time.time()
    _check_assertion(platform, assertion, token_url(request), now)
    if form.get("subject_token_type") != SUBJECT_TOKEN_TYPE:
        raise _refused(
            400, f"missing or invalid subject_token_type - must be '{SUBJECT_TOKEN_TYPE}'"
        )
    subject = form.get("subject_token")
    if not isinstance(subject, str) or not subject:
        raise _refused(400, "Missing subject_token")
    user = _check_subject_token(platform, subject, now)
    value = secrets.token_urlsafe(32)
    lifetime = platform.access_token_lifetime_seconds
    platform.tokens[value] = Issued(user, now + lifetime)
    return _json(
        {
            "access_token": value,
            "expires_in": str(lifetime),
            "token_type": "Bearer",
            "issued_token_type": ISSUED_TOKEN_TYPE,
        }
    )


def check_token(endpoint: Endpoint, request: web.Request, bearer: str) -> None:
    """Rule 1 for an e-RS call whose headers passed ``sandbox.access.check_headers``."""
    platform = request.app[PLATFORM]
    if not platform.enforced:
        return
    issued = platform.tokens.get(bearer)
    if issued is None:
        raise ErsError(401, "NO_ACCESS", "Invalid access token.")
    if time.time() >= issued.expires_at:
        raise ErsError(401, "NO_ACCESS", "Access token has expired.")
    ods = request.headers.get(ODS_HEADER)
    business_function = request.headers.get(BUSINESS_FUNCTION_HEADER)
    if endpoint.user_headers_optional and ods is None and business_function is None:
        return
    if not issued.user.holds(str(ods), str(business_function)):
        raise ErsError(
            403,
            "FORBIDDEN",
            f"The user holds no role profile with business function '{business_function}' "
            f"at organisation '{ods}'.",
        )


# --- the admin API (/_sandbox/oauth, /_sandbox/cis2) ---


async def _register(request: web.Request) -> web.Response:
    body = await request.json()
    try:
        request.app[PLATFORM].register(str(body.get("api_key", "")), body.get("jwks"))
    except (ValueError, AttributeError) as exc:
        return _json({"error": str(exc)}, 400)
    return _json({"registered": True}, 201)


async def _settings(request: web.Request) -> web.Response:
    body = await request.json()
    platform = request.app[PLATFORM]
    lifetime = body.get("access_token_lifetime_seconds")
    if lifetime is not None:
        if not isinstance(lifetime, int) or lifetime < 1:
            return _json({"error": "access_token_lifetime_seconds: a positive integer"}, 400)
        platform.access_token_lifetime_seconds = lifetime
    return _json({"access_token_lifetime_seconds": platform.access_token_lifetime_seconds})


async def _expire_tokens(request: web.Request) -> web.Response:
    """Every access token issued so far expires now (a saga's token expiring mid-flight)."""
    platform = request.app[PLATFORM]
    now = time.time()
    for issued in platform.tokens.values():
        issued.expires_at = min(issued.expires_at, now)
    return _json({"expired": len(platform.tokens)})


async def _exchanges(request: web.Request) -> web.Response:
    return _json({"exchanges": request.app[PLATFORM].exchanges})


async def _issued(request: web.Request) -> web.Response:
    """The raw values, for tests only: every access token issued and client assertion
    received since the last reset, so a test can look for each in what the worker wrote."""
    platform = request.app[PLATFORM]
    return _json({"access_tokens": list(platform.tokens), "client_assertions": platform.assertions})


async def _id_token(request: web.Request) -> web.Response:
    body = await request.json()
    try:
        user = Cis2User(
            str(body["sds_user_id"]),
            tuple(
                RoleProfile(str(r["org_code"]), str(r["business_function"])) for r in body["roles"]
            ),
        )
        lifetime = float(body.get("lifetime_seconds", 3600))
    except (KeyError, TypeError, ValueError):
        return _json({"error": "needs sds_user_id and roles [{org_code, business_function}]"}, 400)
    return _json({"id_token": request.app[PLATFORM].issuer.id_token(user, lifetime)})


async def _reset(request: web.Request) -> web.Response:
    """Back to no application (rule 1 off), no tokens, no jtis; the CIS2 key is kept."""
    old = request.app[PLATFORM]
    request.app[PLATFORM].__init__(issuer=old.issuer)  # type: ignore[misc]
    return _json({"reset": True})


async def _cis2_jwks(request: web.Request) -> web.Response:
    return _json(request.app[PLATFORM].issuer.jwks())


def add_routes(app: web.Application, platform: Platform | None = None) -> None:
    app[PLATFORM] = platform or Platform()
    app.router.add_post(TOKEN_PATH, token)
    app.router.add_post("/_sandbox/oauth/applications", _register)
    app.router.add_post("/_sandbox/oauth/settings", _settings)
    app.router.add_post("/_sandbox/oauth/expire-access-tokens", _expire_tokens)
    app.router.add_get("/_sandbox/oauth/exchanges", _exchanges)
    app.router.add_get("/_sandbox/oauth/issued", _issued)
    app.router.add_post("/_sandbox/oauth/reset", _reset)
    app.router.add_post("/_sandbox/cis2/id-token", _id_token)
    app.router.add_get("/_sandbox/cis2/jwks", _cis2_jwks)
