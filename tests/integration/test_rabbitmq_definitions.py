"""deploy/rabbitmq/definitions.json, imported into the real broker, is what the worker declares.

RabbitMQ refuses a redeclaration whose arguments differ (PRECONDITION_FAILED), so importing the
file with ``rabbitmqctl import_definitions`` and then running the worker's own declarations on
the same names proves that a broker set up from the file lets the worker start. The file is
imported under a unique test prefix (every ``ers.`` name rewritten in a temporary copy), so the
real ``ers.*`` topology is never touched, and everything the test made is deleted after.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aio_pika
import pytest

from worker.messaging.headers import REQUEST_ROUTING_KEY
from worker.messaging.topology import Names, declare
from worker.ops.settings import Settings

DEFINITIONS = Path(__file__).resolve().parents[2] / "deploy" / "rabbitmq" / "definitions.json"
REAL_PREFIX = "ers."
IMPORT_WAIT_SECONDS = 30.0


def with_prefix(document: Any, prefix: str) -> Any:
    """A copy with every name ``ers.<rest>`` (exchanges, queues, bindings and arguments that
    name an exchange) renamed ``<prefix>.<rest>``."""
    if isinstance(document, dict):
        return {key: with_prefix(value, prefix) for key, value in document.items()}
    if isinstance(document, list):
        return [with_prefix(item, prefix) for item in document]
    if isinstance(document, str) and document.startswith(REAL_PREFIX):
        return f"{prefix}.{document.removeprefix(REAL_PREFIX)}"
    return document


async def rabbitmqctl(*args: str) -> str:
    executable = shutil.which("rabbitmqctl")
    if executable is None:
        pytest.fail("rabbitmqctl is not on PATH: the test imports definitions with it")
    process = await asyncio.create_subprocess_exec(
        executable,
        *args,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(process.communicate(), timeout=60)
    assert process.returncode == 0, f"rabbitmqctl {' '.join(args)}: {err.decode()}"
    return out.decode()


async def import_definitions(document: dict[str, Any]) -> None:
    """Import a copy of the document. rabbitmqctl may run as the rabbitmq user (Debian's
    wrapper switches to it), which cannot read pytest's private tmp_path, and RabbitMQ 3.10
    does not take "-" for standard input: so the copy goes in a world-readable directory."""
    with tempfile.TemporaryDirectory(prefix="ers-definitions-") as directory:
        os.chmod(directory, 0o755)
        copy = Path(directory) / "definitions.json"
        copy.write_text(json.dumps(document, indent=2))
        copy.chmod(0o644)
        await rabbitmqctl("import_definitions", str(copy))


async def list_json(command: str, *columns: str) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = json.loads(
        await rabbitmqctl("--quiet", command, "--formatter", "json", *columns)
    )
    return rows


async def queues() -> dict[str, dict[str, Any]]:
    """Every queue on the broker's default vhost, with its arguments as a plain dict."""
    rows = await list_json("list_queues", "name", "arguments")
    return {row["name"]: {key: value for key, _type, value in row["arguments"]} for row in rows}


async def exchanges() -> dict[str, str]:
    rows = await list_json("list_exchanges", "name", "type")
    return {row["name"]: row["type"] for row in rows}


async def bindings() -> set[tuple[str, str, str]]:
    rows = await list_json(
        "list_bindings", "source_name", "destination_name", "destination_kind", "routing_key"
    )
    return {
        (row["source_name"], row["destination_name"], row["routing_key"])
        for row in rows
        if row["destination_kind"] == "queue" and row["source_name"]
    }


def owned(names: dict[str, Any] | set[str], prefix: str) -> set[str]:
    return {name for name in names if name.startswith(f"{prefix}.")}


@pytest.fixture
async def channel(amqp_url: str, prefix: str) -> AsyncIterator[aio_pika.abc.AbstractChannel]:
    """A channel on the real broker; afterwards every queue and exchange named ``<prefix>.*``
    is deleted, whatever the test got to."""
    connection = await aio_pika.connect(amqp_url)
    try:
        yield await connection.channel()
    finally:
        cleanup = await connection.channel()
        for name in owned(await queues(), prefix):
            await cleanup.queue_delete(name)
        for name in owned(await exchanges(), prefix):
            await cleanup.exchange_delete(name)
        await connection.close()


async def test_definitions_import_then_worker_declares_the_same(
    channel: aio_pika.abc.AbstractChannel, prefix: str
) -> None:
    document = with_prefix(json.loads(DEFINITIONS.read_bytes()), prefix)
    names = (
        [item["name"] for item in document["exchanges"] + document["queues"]]
        + [binding["source"] for binding in document["bindings"]]
        + [binding["destination"] for binding in document["bindings"]]
    )
    assert names and all(name.startswith(f"{prefix}.") for name in names), names
    expected_queues = {q["name"]: q["arguments"] for q in document["queues"]}
    expected_exchanges = {e["name"]: e["type"] for e in document["exchanges"]}
    real_before = (owned(await queues(), "ers"), owned(await exchanges(), "ers"))

    await import_definitions(document)
    # The import runs asynchronously on the node: wait until every queue is there.
    deadline = asyncio.get_running_loop().time() + IMPORT_WAIT_SECONDS
    while not expected_queues.keys() <= (await queues()).keys():
        assert asyncio.get_running_loop().time() < deadline, "definitions import timed out"
        await asyncio.sleep(0.2)

    # The worker's own declarations: PRECONDITION_FAILED (an exception) if any argument differs.
    settings = Settings()
    topology = await declare(
        channel,
        Names(prefix),
        delivery_limit=settings.delivery_limit,
        delays=settings.retry_delays,
    )
    assert topology.requests.name == Names(prefix).requests_queue

    on_broker = await queues()
    assert {name: on_broker[name] for name in owned(on_broker, prefix)} == expected_queues
    assert {
        name: kind for name, kind in (await exchanges()).items() if name.startswith(f"{prefix}.")
    } == expected_exchanges
    expected_bindings = {
        (b["source"], b["destination"], b["routing_key"]) for b in document["bindings"]
    }
    assert {b for b in await bindings() if b[0].startswith(f"{prefix}.")} == expected_bindings
    assert (Names(prefix).requests_exchange, Names(prefix).requests_queue, REQUEST_ROUTING_KEY) in (
        expected_bindings
    )
    # Passive declares see the same queues the worker would consume from and delay into.
    for name in expected_queues:
        await channel.declare_queue(name, passive=True)

    assert (owned(await queues(), "ers"), owned(await exchanges(), "ers")) == real_before


async def test_a_different_argument_is_refused(
    channel: aio_pika.abc.AbstractChannel, prefix: str
) -> None:
    """The check above has teeth: a file whose delivery limit differs stops the worker."""
    document = with_prefix(json.loads(DEFINITIONS.read_bytes()), prefix)
    requests = Names(prefix).requests_queue
    for queue in document["queues"]:
        if queue["name"] == requests:
            queue["arguments"]["x-delivery-limit"] += 1
    await import_definitions(document)
    deadline = asyncio.get_running_loop().time() + IMPORT_WAIT_SECONDS
    while requests not in await queues():
        assert asyncio.get_running_loop().time() < deadline, "definitions import timed out"
        await asyncio.sleep(0.2)

    settings = Settings()
    with pytest.raises(aio_pika.exceptions.ChannelPreconditionFailed):
        await declare(
            channel,
            Names(prefix),
            delivery_limit=settings.delivery_limit,
            delays=settings.retry_delays,
        )
