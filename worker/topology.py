"""The RabbitMQ topology the worker declares, named from one prefix.

    upstream ─► <p>.requests (direct) ─referral.request─► <p>.requests (quorum queue)
                                                              │ parked / delivery limit
    worker ─► <p>.events (topic): referral.outcome.<status>   ▼
                                  referral.letter_ready   <p>.dlx (fanout) ─► <p>.dead-letters
    worker ─► default exchange ─► the request's reply_to queue

``deploy/rabbitmq/definitions.json`` holds the same topology for ``rabbitmqctl
import_definitions``; declaring with the same arguments is idempotent.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import aio_pika
from aio_pika.abc import AbstractChannel, AbstractExchange, AbstractQueue

REQUEST_ROUTING_KEY = "referral.request"
OUTCOME_ROUTING_PREFIX = "referral.outcome"
LETTER_READY_ROUTING_KEY = "referral.letter_ready"


@dataclass(frozen=True, slots=True)
class Names:
    prefix: str

    @property
    def requests_exchange(self) -> str:
        return f"{self.prefix}.requests"

    @property
    def requests_queue(self) -> str:
        return f"{self.prefix}.requests"

    @property
    def events_exchange(self) -> str:
        return f"{self.prefix}.events"

    @property
    def dead_letter_exchange(self) -> str:
        return f"{self.prefix}.dlx"

    @property
    def dead_letter_queue(self) -> str:
        return f"{self.prefix}.dead-letters"


def requests_queue_arguments(names: Names, delivery_limit: int) -> dict[str, Any]:
    return {
        "x-queue-type": "quorum",
        "x-dead-letter-exchange": names.dead_letter_exchange,
        "x-delivery-limit": delivery_limit,
    }


DEAD_LETTER_QUEUE_ARGUMENTS: dict[str, Any] = {"x-queue-type": "quorum"}


@dataclass(frozen=True, slots=True)
class Topology:
    names: Names
    requests: AbstractQueue
    events: AbstractExchange
    dead_letters: AbstractExchange
    default: AbstractExchange


async def declare(channel: AbstractChannel, names: Names, *, delivery_limit: int) -> Topology:
    dlx = await channel.declare_exchange(
        names.dead_letter_exchange, aio_pika.ExchangeType.FANOUT, durable=True
    )
    dlq = await channel.declare_queue(
        names.dead_letter_queue, durable=True, arguments=DEAD_LETTER_QUEUE_ARGUMENTS
    )
    await dlq.bind(dlx, routing_key="")
    requests_exchange = await channel.declare_exchange(
        names.requests_exchange, aio_pika.ExchangeType.DIRECT, durable=True
    )
    requests = await channel.declare_queue(
        names.requests_queue,
        durable=True,
        arguments=requests_queue_arguments(names, delivery_limit),
    )
    await requests.bind(requests_exchange, routing_key=REQUEST_ROUTING_KEY)
    events = await channel.declare_exchange(
        names.events_exchange, aio_pika.ExchangeType.TOPIC, durable=True
    )
    return Topology(names, requests, events, dlx, channel.default_exchange)
