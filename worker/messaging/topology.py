"""The RabbitMQ topology the worker declares, named from one prefix.

    upstream ─► <p>.requests (direct) ─referral.request─► <p>.requests (quorum: intake)
                  │     ▲                                       │ the worker sorts
                  │     │ TTL expired                           ▼
                  │  <p>.delay.<n>s (quorum, TTL n s) ◄─ worker
                  └─referral.request.<priority>─► <p>.requests.<priority> (quorum: work)
                                                        │ parked / delivery limit
                                                        ▼
                                         <p>.dlx (fanout) ─► <p>.dead-letters
    worker ─► <p>.events (topic): referral.outcome.<status>, referral.letter_ready
    worker ─► default exchange ─► the request's reply_to queue

Clinical priority in the broker: each priority has a work queue of its own, since RabbitMQ
3.x quorum queues have no message priorities (and classic queues, which do, have neither a
delivery limit nor replication). Upstream keeps publishing one routing key; the worker
moves each request from the intake queue to its priority's queue at once
(``worker.messaging.sorter``), so a two-week-wait referral never waits behind a backlog.

Dead-lettering is at-least-once (RabbitMQ 3.10+), so a message moving between these queues
is never dropped on the way.

``deploy/rabbitmq/definitions.json`` holds the same topology for ``rabbitmqctl
import_definitions``; declaring with the same arguments is idempotent.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import aio_pika
from aio_pika.abc import AbstractChannel, AbstractExchange, AbstractQueue

from schemas.referral_request import Priority
from worker.messaging.headers import REQUEST_ROUTING_KEY, work_routing_key
from worker.saga.priority import MOST_URGENT_FIRST

# The broker side's defaults; ``worker.ops.settings`` takes them as its own.
DEFAULT_PREFIX = "ers"
DEFAULT_DELIVERY_LIMIT = 5
DEFAULT_RETRY_DELAYS = "10,60,600,3600"  # seconds, one delay queue each


@dataclass(frozen=True, slots=True)
class Names:
    prefix: str

    @property
    def requests_exchange(self) -> str:
        return f"{self.prefix}.requests"

    @property
    def requests_queue(self) -> str:
        return f"{self.prefix}.requests"

    def work_queue(self, priority: Priority) -> str:
        """The queue of one clinical priority's requests, e.g. ``ers.requests.two-week-wait``."""
        return f"{self.prefix}.requests.{priority.value.lower().replace('_', '-')}"

    @property
    def events_exchange(self) -> str:
        return f"{self.prefix}.events"

    @property
    def dead_letter_exchange(self) -> str:
        return f"{self.prefix}.dlx"

    @property
    def dead_letter_queue(self) -> str:
        return f"{self.prefix}.dead-letters"

    def delay_queue(self, seconds: float) -> str:
        return f"{self.prefix}.delay.{seconds:g}s"


_AT_LEAST_ONCE = {"x-dead-letter-strategy": "at-least-once", "x-overflow": "reject-publish"}


def requests_queue_arguments(names: Names, delivery_limit: int) -> dict[str, Any]:
    return {
        "x-queue-type": "quorum",
        "x-dead-letter-exchange": names.dead_letter_exchange,
        "x-delivery-limit": delivery_limit,
        **_AT_LEAST_ONCE,
    }


def delay_queue_arguments(names: Names, seconds: float) -> dict[str, Any]:
    return {
        "x-queue-type": "quorum",
        "x-message-ttl": int(seconds * 1000),
        "x-dead-letter-exchange": names.requests_exchange,
        "x-dead-letter-routing-key": REQUEST_ROUTING_KEY,
        **_AT_LEAST_ONCE,
    }


DEAD_LETTER_QUEUE_ARGUMENTS: dict[str, Any] = {"x-queue-type": "quorum"}


def definitions(names: Names, *, delivery_limit: int, delays: tuple[float, ...]) -> dict[str, Any]:
    """The same topology as ``declare``, for ``rabbitmqctl import_definitions``."""

    def exchange(name: str, kind: str) -> dict[str, Any]:
        return {
            "name": name,
            "vhost": "/",
            "type": kind,
            "durable": True,
            "auto_delete": False,
            "internal": False,
            "arguments": {},
        }

    def queue(name: str, arguments: dict[str, Any]) -> dict[str, Any]:
        return {
            "name": name,
            "vhost": "/",
            "durable": True,
            "auto_delete": False,
            "arguments": arguments,
        }

    def binding(source: str, queue_name: str, key: str) -> dict[str, Any]:
        return {
            "source": source,
            "vhost": "/",
            "destination": queue_name,
            "destination_type": "queue",
            "routing_key": key,
            "arguments": {},
        }

    return {
        "exchanges": [
            exchange(names.requests_exchange, "direct"),
            exchange(names.events_exchange, "topic"),
            exchange(names.dead_letter_exchange, "fanout"),
        ],
        "queues": [
            queue(names.requests_queue, requests_queue_arguments(names, delivery_limit)),
            *(
                queue(names.work_queue(p), requests_queue_arguments(names, delivery_limit))
                for p in MOST_URGENT_FIRST
            ),
            queue(names.dead_letter_queue, DEAD_LETTER_QUEUE_ARGUMENTS),
            *(queue(names.delay_queue(d), delay_queue_arguments(names, d)) for d in delays),
        ],
        "bindings": [
            binding(names.requests_exchange, names.requests_queue, REQUEST_ROUTING_KEY),
            *(
                binding(names.requests_exchange, names.work_queue(p), work_routing_key(p))
                for p in MOST_URGENT_FIRST
            ),
            binding(names.dead_letter_exchange, names.dead_letter_queue, ""),
        ],
    }


@dataclass(frozen=True, slots=True)
class Topology:
    names: Names
    requests: AbstractQueue  # the intake queue upstream publishes to
    work: dict[Priority, AbstractQueue]  # most urgent first
    requests_exchange: AbstractExchange
    events: AbstractExchange
    dead_letters: AbstractExchange
    default: AbstractExchange


async def declare(
    channel: AbstractChannel, names: Names, *, delivery_limit: int, delays: tuple[float, ...]
) -> Topology:
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
    work: dict[Priority, AbstractQueue] = {}
    for priority in MOST_URGENT_FIRST:
        work[priority] = await channel.declare_queue(
            names.work_queue(priority),
            durable=True,
            arguments=requests_queue_arguments(names, delivery_limit),
        )
        await work[priority].bind(requests_exchange, routing_key=work_routing_key(priority))
    for seconds in delays:
        await channel.declare_queue(
            names.delay_queue(seconds),
            durable=True,
            arguments=delay_queue_arguments(names, seconds),
        )
    events = await channel.declare_exchange(
        names.events_exchange, aio_pika.ExchangeType.TOPIC, durable=True
    )
    return Topology(names, requests, work, requests_exchange, events, dlx, channel.default_exchange)


async def remove(amqp_url: str, names: Names, *, delays: tuple[float, ...]) -> None:
    """Delete everything ``declare`` made under these names (demo, tests and benchmarks only:
    a deployment's queues hold referrals and are never removed by the worker)."""
    connection = await aio_pika.connect(amqp_url)
    async with connection:
        channel = await connection.channel()
        for queue in (
            names.requests_queue,
            *(names.work_queue(p) for p in MOST_URGENT_FIRST),
            names.dead_letter_queue,
            *(names.delay_queue(d) for d in delays),
        ):
            await channel.queue_delete(queue)
        for exchange in (
            names.requests_exchange,
            names.events_exchange,
            names.dead_letter_exchange,
        ):
            await channel.exchange_delete(exchange)
