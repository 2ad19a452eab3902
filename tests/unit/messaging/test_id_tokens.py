"""ERS_TOKEN_PROVIDER=message-id-token: the ID token from its header, refused at once when it
cannot be exchanged, and the session asking for the access token before each call and once
more after a 401."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import jwt
import pytest
from pydantic import SecretStr

from schemas.referral_request import ActingUser, BusinessFunction, Priority
from worker.ers.request import Caller, ErsRequest
from worker.ers.session import ErsSession
from worker.messaging.headers import ID_TOKEN_HEADER, SECRET_HEADERS
from worker.messaging.id_tokens import IdTokenProvider
from worker.saga.errors import ErsAuthError
from worker.saga.ports import AccessToken, ErsReply, TokenUnusable

NOW = datetime(2026, 12, 2, 12, 0, tzinfo=UTC)


def id_token(exp: datetime | None) -> str:
    claims: dict[str, Any] = {"sub": "555254242106", "iss": "https://cis2.test"}
    if exp is not None:
        claims["exp"] = int(exp.timestamp())
    return jwt.encode(claims, "not-checked-by-the-worker-0123456789abcdef", algorithm="HS256")


class FakeExchanger:
    def __init__(self) -> None:
        self.calls: list[tuple[str, AccessToken | None, datetime | None]] = []
        self.issued = 0

    async def access_token(
        self,
        id_token: SecretStr,
        *,
        refused: AccessToken | None = None,
        priority: Priority = Priority.ROUTINE,
        turn: float | None = None,
        id_token_expires_at: datetime | None = None,
    ) -> AccessToken:
        self.calls.append((id_token.get_secret_value(), refused, id_token_expires_at))
        if refused is None and self.issued:
            return AccessToken(SecretStr(f"access-{self.issued}"))
        self.issued += 1
        return AccessToken(SecretStr(f"access-{self.issued}"))


def provider(exchanger: FakeExchanger | None = None) -> IdTokenProvider:
    return IdTokenProvider(exchanger or FakeExchanger(), now=lambda: NOW)


def test_the_id_token_header_is_a_secret_header() -> None:
    assert ID_TOKEN_HEADER in SECRET_HEADERS


def test_a_valid_id_token_gives_a_token_to_renew_with_its_expiry() -> None:
    exp = NOW + timedelta(hours=8)
    token = provider().token_for({ID_TOKEN_HEADER: id_token(exp).encode()})

    assert token is not None
    assert token.value.get_secret_value() == ""
    assert token.expires_at == exp and token.renew is not None


@pytest.mark.parametrize(
    ("headers", "code"),
    [
        ({}, "ID_TOKEN_MISSING"),
        ({ID_TOKEN_HEADER: "  "}, "ID_TOKEN_MISSING"),
        ({ID_TOKEN_HEADER: "not-a-jwt"}, "ID_TOKEN_MALFORMED"),
        ({ID_TOKEN_HEADER: "x" * 20_000}, "ID_TOKEN_MALFORMED"),
        ({ID_TOKEN_HEADER: id_token(NOW - timedelta(seconds=1))}, "ID_TOKEN_EXPIRED"),
        ({ID_TOKEN_HEADER: id_token(NOW)}, "ID_TOKEN_EXPIRED"),
    ],
)
def test_an_id_token_that_cannot_be_exchanged_is_refused_naming_why(
    headers: dict[str, Any], code: str
) -> None:
    with pytest.raises(TokenUnusable) as raised:
        provider().token_for(headers)
    assert raised.value.code == code
    assert ID_TOKEN_HEADER in str(raised.value)
    for value in headers.values():
        assert value.strip() == "" or value not in str(raised.value)


# --- the session: renew before each call, and once more after a 401 ---


class FakeSender:
    def __init__(self, refuse: set[str]) -> None:
        self.refuse = refuse
        self.sent: list[str] = []

    async def call(self, request: ErsRequest, caller: Caller) -> ErsReply:
        value = caller.token.value.get_secret_value()
        self.sent.append(value)
        if value in self.refuse:
            raise ErsAuthError(request.endpoint, 401, "NO_ACCESS")
        return ErsReply(status=200, body={})


USER = ActingUser(ods_code="R69", business_function=BusinessFunction.REFERRING_CLINICIAN)


def session(sender: FakeSender, token: AccessToken) -> ErsSession:
    return ErsSession(sender, USER, token, "corr-1", now=lambda: NOW)


async def test_each_call_goes_with_the_token_renew_gives() -> None:
    exchanger = FakeExchanger()
    exp = NOW + timedelta(hours=1)
    token = provider(exchanger).token_for({ID_TOKEN_HEADER: id_token(exp)})
    assert token is not None
    sender = FakeSender(refuse=set())

    await session(sender, token).retrieve_reference_data("SPECIALTY")
    await session(sender, token).retrieve_referral("000049003844")

    assert sender.sent == ["access-1", "access-1"]
    assert all(expiry == exp for _, _, expiry in exchanger.calls)


async def test_a_401_is_exchanged_again_once_and_the_call_repeated() -> None:
    exchanger = FakeExchanger()
    token = provider(exchanger).token_for({ID_TOKEN_HEADER: id_token(None)})
    assert token is not None
    sender = FakeSender(refuse={"access-1"})

    reply = await session(sender, token).retrieve_reference_data("SPECIALTY")

    assert reply.status == 200
    assert sender.sent == ["access-1", "access-2"]
    assert [refused.value.get_secret_value() if refused else None for _, refused, _ in
            exchanger.calls] == [None, "access-1"]  # fmt: skip


async def test_a_second_401_is_the_users_to_cure() -> None:
    exchanger = FakeExchanger()
    token = provider(exchanger).token_for({ID_TOKEN_HEADER: id_token(None)})
    assert token is not None
    sender = FakeSender(refuse={"access-1", "access-2"})

    with pytest.raises(ErsAuthError):
        await session(sender, token).retrieve_reference_data("SPECIALTY")
    assert len(sender.sent) == 2


async def test_a_token_without_renew_is_sent_as_it_is() -> None:
    sender = FakeSender(refuse={"plain"})
    with pytest.raises(ErsAuthError):
        await session(sender, AccessToken(SecretStr("plain"))).retrieve_referral("1")
    assert sender.sent == ["plain"]
