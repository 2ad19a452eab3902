"""The token from the message headers: a token that could never be sent is refused at once."""

from __future__ import annotations

import pytest

from worker.messaging.headers import TOKEN_HEADER
from worker.messaging.tokens import MAX_TOKEN_LENGTH, MessageHeaderTokenProvider
from worker.saga.ports import MalformedToken

PROVIDER = MessageHeaderTokenProvider()


@pytest.mark.parametrize(
    "token",
    ["eyJhbGciOiJSUzUxMiJ9.e30.c2ln", "Bearer abc-123_~+/=", "x" * MAX_TOKEN_LENGTH],
)
def test_a_well_formed_token_is_taken(token: str) -> None:
    found = PROVIDER.token_for({TOKEN_HEADER: token})

    assert found is not None
    assert found.value.get_secret_value() == token.removeprefix("Bearer ")


@pytest.mark.parametrize(
    ("token", "why"),
    [
        ("abc\r\ndef", "line break"),
        ("abc\ndef", "line break"),
        ("abc\x00def", "visible ASCII"),
        ("tök", "visible ASCII"),
        ("a b", "visible ASCII"),
        ("x" * (MAX_TOKEN_LENGTH + 1), "longer than"),
    ],
)
def test_a_token_that_could_never_be_sent_is_malformed(token: str, why: str) -> None:
    with pytest.raises(MalformedToken) as raised:
        PROVIDER.token_for({TOKEN_HEADER: token})

    message = str(raised.value)
    assert TOKEN_HEADER in message and why in message
    assert token not in message  # the reason, never the value


def test_no_token_is_none() -> None:
    assert PROVIDER.token_for({}) is None
