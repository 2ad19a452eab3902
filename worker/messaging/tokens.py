"""Where a saga's e-RS access token comes from.

Every endpoint of the referrer flow is user-restricted (NHS CIS2), so by default the acting
user's token travels with each request in an AMQP header. Both providers implement
``worker.saga.ports.TokenProvider``; the token is an ``AccessToken`` (a SecretStr inside).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from pydantic import SecretStr

from worker.messaging.headers import EXPIRES_HEADER, TOKEN_HEADER
from worker.saga.ports import AccessToken, MalformedToken


def _as_text(value: Any) -> str | None:
    if isinstance(value, bytes):
        value = value.decode("utf-8", "replace")
    return value if isinstance(value, str) and value else None


_UNREADABLE = datetime.min.replace(tzinfo=UTC)


def _expiry(value: Any) -> datetime | None:
    """The token's expiry from the header: ISO 8601, epoch seconds, or an AMQP timestamp.

    An expiry that is present but unreadable counts as expired: it must never make a token
    look valid for ever.
    """
    if value is None:
        return None
    if isinstance(value, datetime):
        return value if value.tzinfo else value.replace(tzinfo=UTC)
    if isinstance(value, int | float | Decimal) and not isinstance(value, bool):
        try:
            return datetime.fromtimestamp(float(value), UTC)
        except (OverflowError, OSError, ValueError):
            return _UNREADABLE  # e.g. epoch milliseconds
    text = _as_text(value)
    if text is None:
        return _UNREADABLE
    try:
        parsed = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return _UNREADABLE
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


# A bearer token is printable ASCII without spaces (RFC 6750's b64token is narrower still).
# Anything else makes httpx refuse to send the header, which is no outage to retry for hours.
_VISIBLE = re.compile(r"[\x21-\x7e]+")
# The longest token intake lets through. APIM's access tokens are 28 characters and a CIS2
# JWT a few KB; "Authorization: Bearer " and 8,000 characters stay under 8 KiB, the
# smallest header-line limit on the way (Apache's 8,190 bytes, nginx's 8k buffers), past
# which e-RS answers a bare HTTP 400.
MAX_TOKEN_LENGTH = 8_000
_BEARER = "bearer "


def too_long(value: Any) -> bool:
    """Whether a token header's value holds a token over ``MAX_TOKEN_LENGTH`` characters
    (a "Bearer " prefix aside). Measured without decoding or copying the value."""
    if not isinstance(value, str | bytes):
        return False
    head = value[: len(_BEARER)]
    prefixed = (head.decode("latin-1") if isinstance(head, bytes) else head).lower() == _BEARER
    return len(value) - (len(_BEARER) if prefixed else 0) > MAX_TOKEN_LENGTH


def check_shape(token: str) -> None:
    """Raise ``MalformedToken`` saying why, if the token could never be sent."""
    if len(token) > MAX_TOKEN_LENGTH:
        raise MalformedToken(f"{TOKEN_HEADER} is longer than {MAX_TOKEN_LENGTH} characters")
    if "\r" in token or "\n" in token:
        raise MalformedToken(f"{TOKEN_HEADER} holds a line break (CR or LF)")
    if not _VISIBLE.fullmatch(token):
        raise MalformedToken(
            f"{TOKEN_HEADER} holds characters other than visible ASCII (spaces, control "
            "characters or non-ASCII)"
        )


class MessageHeaderTokenProvider:
    """The production provider: the token upstream put in the message's headers."""

    def token_for(self, headers: Mapping[str, Any]) -> AccessToken | None:
        raw = _as_text(headers.get(TOKEN_HEADER))
        if raw is None:
            return None
        if raw.lower().startswith(_BEARER):
            raw = raw[len(_BEARER) :]
        check_shape(raw)
        return AccessToken(SecretStr(raw), _expiry(headers.get(EXPIRES_HEADER)))


class StaticTokenProvider:
    """One fixed token for every message: for the sandbox and local runs only."""

    def __init__(self, token: SecretStr) -> None:
        self._token = AccessToken(token)

    def token_for(self, headers: Mapping[str, Any]) -> AccessToken | None:
        return self._token
