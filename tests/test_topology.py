"""deploy/rabbitmq/definitions.json declares what the worker declares, with the same arguments
(RabbitMQ refuses a redeclaration whose arguments differ, so a drift would stop the worker)."""

from __future__ import annotations

from pathlib import Path

import orjson

from worker.settings import Settings
from worker.topology import (
    DEAD_LETTER_QUEUE_ARGUMENTS,
    REQUEST_ROUTING_KEY,
    Names,
    requests_queue_arguments,
)

DEFINITIONS = Path(__file__).resolve().parents[1] / "deploy" / "rabbitmq" / "definitions.json"


def test_definitions_match_the_declarations() -> None:
    definitions = orjson.loads(DEFINITIONS.read_bytes())
    settings = Settings()
    names = Names(settings.topology_prefix)
    queues = {q["name"]: q["arguments"] for q in definitions["queues"]}
    assert queues == {
        names.requests_queue: requests_queue_arguments(names, settings.delivery_limit),
        names.dead_letter_queue: DEAD_LETTER_QUEUE_ARGUMENTS,
    }
    exchanges = {e["name"]: e["type"] for e in definitions["exchanges"]}
    assert exchanges == {
        names.requests_exchange: "direct",
        names.events_exchange: "topic",
        names.dead_letter_exchange: "fanout",
    }
    bindings = {(b["source"], b["destination"], b["routing_key"]) for b in definitions["bindings"]}
    assert bindings == {
        (names.requests_exchange, names.requests_queue, REQUEST_ROUTING_KEY),
        (names.dead_letter_exchange, names.dead_letter_queue, ""),
    }
