"""Publishing a referral request as an interface engine would: the one way the CLI, the demo,
the benchmarks and the tests send requests to the worker."""

from __future__ import annotations

import uuid
from typing import Any

import aio_pika
import orjson
from aio_pika.abc import AbstractChannel, AbstractConnection, AbstractExchange

from worker.messaging.headers import ID_TOKEN_HEADER, REQUEST_ROUTING_KEY, TOKEN_HEADER


async def confirmed_channel(connection: AbstractConnection) -> AbstractChannel:
    """A channel on which each publish waits for the broker's confirm, and a mandatory
    publish that no queue takes raises: aio-pika otherwise returns it as if delivered, and
    the caller would acknowledge a message it never passed on."""
    return await connection.channel(publisher_confirms=True, on_return_raises=True)


def with_tokens(
    headers: dict[str, Any], *, token: str | None, id_token: str | None
) -> dict[str, Any]:
    """``headers`` with the user's access token (x-ers-access-token) and CIS2 ID token
    (x-ers-id-token), each where given (an empty one is none): what every sender of a
    request, or of a parked one replayed, puts on it."""
    if token:
        headers[TOKEN_HEADER] = token
    if id_token:
        headers[ID_TOKEN_HEADER] = id_token
    return headers


def request_message(
    body: bytes | dict[str, Any],
    *,
    reply_to: str | None,
    correlation_id: str,
    token: str | None = None,
    id_token: str | None = None,
    headers: dict[str, Any] | None = None,
    message_id: str | None = None,
) -> aio_pika.Message:
    """A persistent request message with its reply queue and, if given, the user's access
    token (x-ers-access-token) and CIS2 ID token (x-ers-id-token): the worker reads the one
    its ERS_TOKEN_PROVIDER names."""
    all_headers = with_tokens(dict(headers or {}), token=token, id_token=id_token)
    return aio_pika.Message(
        body=body if isinstance(body, bytes) else orjson.dumps(body),
        content_type="application/json",
        delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
        correlation_id=correlation_id,
        message_id=message_id or str(uuid.uuid4()),
        reply_to=reply_to,
        headers=all_headers,
    )


async def publish_request(
    exchange: AbstractExchange,
    body: bytes | dict[str, Any],
    *,
    reply_to: str | None,
    correlation_id: str | None = None,
    token: str | None = None,
    id_token: str | None = None,
    headers: dict[str, Any] | None = None,
) -> str:
    """Publish one request to the requests exchange; returns its correlation id."""
    correlation_id = correlation_id or f"req-{uuid.uuid4().hex}"
    message = request_message(
        body,
        reply_to=reply_to,
        correlation_id=correlation_id,
        token=token,
        id_token=id_token,
        headers=headers,
    )
    await exchange.publish(message, routing_key=REQUEST_ROUTING_KEY)
    return correlation_id
