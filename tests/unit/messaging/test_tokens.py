"""The token from the message headers: a token that could never be sent is refused at once."""

from __future__ import annotations

import pytest

from worker.messaging.headers import TOKEN_HEADER
from worker.messaging.intake import header_problems
from worker.messaging.tokens import MAX_TOKEN_LENGTH, MessageHeaderTokenProvider, too_long
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


@pytest.mark.parametrize(
    ("value", "long"),
    [
        ("x" * MAX_TOKEN_LENGTH, False),
        ("Bearer " + "x" * MAX_TOKEN_LENGTH, False),
        (b"bearer " + b"x" * MAX_TOKEN_LENGTH, False),
        ("x" * (MAX_TOKEN_LENGTH + 1), True),
        ("Bearer " + "x" * (MAX_TOKEN_LENGTH + 1), True),
        (b"x" * 100_000, True),
        (None, False),
        (12345, False),
    ],
)
def test_too_long_measures_the_token_without_its_bearer_prefix(value: object, long: bool) -> None:
    assert too_long(value) is long


def test_intake_refuses_a_token_too_long_naming_the_header_not_the_value() -> None:
    [problem] = header_problems({TOKEN_HEADER: "secret-" + "x" * 100_000})
    assert problem.field == f"(headers).{TOKEN_HEADER}"
    assert str(MAX_TOKEN_LENGTH) in problem.problem
    assert "secret-" not in problem.problem
    assert header_problems({TOKEN_HEADER: "x" * MAX_TOKEN_LENGTH}) == []
    assert header_problems({}) == []
