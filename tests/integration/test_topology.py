"""deploy/rabbitmq/definitions.json declares what the worker declares, with the same arguments
(RabbitMQ refuses a redeclaration whose arguments differ, so a drift would stop the worker).
Regenerate with `ers-worker definitions > deploy/rabbitmq/definitions.json`."""

from __future__ import annotations

from pathlib import Path

import orjson

from worker.messaging.topology import Names, definitions
from worker.ops.settings import Settings

DEFINITIONS = Path(__file__).resolve().parents[2] / "deploy" / "rabbitmq" / "definitions.json"


def test_definitions_file_is_what_the_worker_declares() -> None:
    settings = Settings()
    expected = definitions(
        Names(settings.topology_prefix),
        delivery_limit=settings.delivery_limit,
        delays=settings.retry_delays,
    )
    assert orjson.loads(DEFINITIONS.read_bytes()) == expected
