"""ERS_TOKEN_PROVIDER=message-id-token: the acting user's CIS2 ID token travels in the
``x-ers-id-token`` header and the worker exchanges it for the access token.

The worker does not verify the ID token (the API platform does, at the exchange); it reads
only its ``exp``, so that an expired one ends REAUTHENTICATION_NEEDED at once and a saga stops
waiting in delay queues once a re-send is the only cure. The returned ``AccessToken`` has no
value of its own: ``renew`` gets the access token for each call (``worker.saga.ports``).
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any, Protocol

import jwt
from pydantic import SecretStr

from schemas.referral_request import Priority
from worker.messaging.headers import ID_TOKEN_HEADER
from worker.messaging.tokens import MAX_TOKEN_LENGTH
from worker.saga.ports import AccessToken, TokenUnusable


class Exchanger(Protocol):
    """``worker.ers.token_exchange.TokenExchanger``, as this provider uses it."""

    async def access_token(
        self,
        id_token: SecretStr,
        *,
        refused: AccessToken | None = None,
        priority: Priority = Priority.ROUTINE,
        turn: float | None = None,
        id_token_expires_at: datetime | None = None,
    ) -> AccessToken: ...


def _text(value: Any) -> str | None:
    if isinstance(value, bytes):
        value = value.decode("utf-8", "replace")
    return value.strip() if isinstance(value, str) and value.strip() else None


def id_token_expiry(raw: str) -> datetime | None:
    """The ID token's ``exp``, read without verifying it; raises ``TokenUnusable`` for a value
    that is no JWT (the message names the header, never the value)."""
    if len(raw) > MAX_TOKEN_LENGTH:
        raise TokenUnusable(
            "ID_TOKEN_MALFORMED", f"{ID_TOKEN_HEADER} is longer than {MAX_TOKEN_LENGTH} characters"
        )
    try:
        claims = jwt.decode(raw, options={"verify_signature": False, "verify_exp": False})
    except jwt.PyJWTError:
        raise TokenUnusable(
            "ID_TOKEN_MALFORMED", f"{ID_TOKEN_HEADER} is not a JWT (a CIS2 ID token is one)"
        ) from None
    exp = claims.get("exp")
    if exp is None:
        return None
    if not isinstance(exp, int | float) or isinstance(exp, bool):
        raise TokenUnusable("ID_TOKEN_MALFORMED", f"{ID_TOKEN_HEADER} has an unreadable exp")
    try:
        return datetime.fromtimestamp(exp, UTC)
    except (OverflowError, OSError, ValueError):
        raise TokenUnusable(
            "ID_TOKEN_MALFORMED", f"{ID_TOKEN_HEADER} has an unreadable exp"
        ) from None


class IdTokenProvider:
    """``worker.saga.ports.TokenProvider`` for the exchange pattern."""

    def __init__(self, exchanger: Exchanger, now: Any = None) -> None:
        self._exchanger = exchanger
        self._now = now or (lambda: datetime.now(UTC))

    def token_for(self, headers: Mapping[str, Any]) -> AccessToken | None:
        raw = _text(headers.get(ID_TOKEN_HEADER))
        if raw is None:
            raise TokenUnusable("ID_TOKEN_MISSING", f"no CIS2 ID token in {ID_TOKEN_HEADER}")
        expires_at = id_token_expiry(raw)
        if expires_at is not None and self._now() >= expires_at:
            raise TokenUnusable(
                "ID_TOKEN_EXPIRED", f"the CIS2 ID token in {ID_TOKEN_HEADER} expired"
            )
        id_token = SecretStr(raw)
        exchanger = self._exchanger

        async def renew(
            refused: AccessToken | None, priority: Priority, turn: float | None
        ) -> AccessToken:
            return await exchanger.access_token(
                id_token,
                refused=refused,
                priority=priority,
                turn=turn,
                id_token_expires_at=expires_at,
            )

        return AccessToken(SecretStr(""), expires_at, renew=renew)
