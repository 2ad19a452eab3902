"""`make run`: the bundled e-RS sandbox, the worker, and the sample requests, end to end.

Starts the sandbox on a free loopback port, starts the worker in this process on a topology
of its own, publishes each sample with a reply queue, and prints one row per outcome.

Whose topology: the demo's worker would take any request waiting in the queues it consumes,
and its outcomes go out on the prefix's events exchange, so it runs only on a topology that
is its own:

- ``TOPOLOGY_PREFIX`` unset: the demo's prefix, ``ers-demo``, which nothing else uses. A
  leftover one is reused, unless a consumer is attached or requests wait in it.
- ``TOPOLOGY_PREFIX`` set: that prefix, only if no topology exists under it yet.

At exit the demo removes the topology, unless another process has started consuming from it
meanwhile (then it stays, and the demo says so).
"""

from __future__ import annotations

import asyncio
import logging
import sys
import uuid
from pathlib import Path

import aio_pika
import orjson
from yarl import URL

from sandbox.testing import running_sandbox
from worker.messaging.consumer import Worker
from worker.messaging.publish import confirmed_channel, publish_request
from worker.messaging.topology import Names, remove
from worker.ops.app import request_handler
from worker.ops.failure import OperatorError
from worker.ops.samples import SAMPLES
from worker.ops.settings import Settings
from worker.saga.priority import MOST_URGENT_FIRST

DEMO_PREFIX = "ers-demo"
DEMO_TOKEN = "demo-user-token"
COLUMNS = ("request id", "status", "path", "UBRN", "state", "letter")
WIDTHS = (30, 23, 15, 12, 20, 0)


def _where(url: str) -> str:
    parsed = URL(url)
    return f"{parsed.host}:{parsed.port}"


async def _broker_reachable(url: str) -> bool:
    aiormq_log = logging.getLogger("aiormq")
    level = aiormq_log.level
    aiormq_log.setLevel(logging.CRITICAL)  # our one line says it better than its traceback
    try:
        connection = await asyncio.wait_for(aio_pika.connect(url), timeout=5)
    except (OSError, TimeoutError, aio_pika.exceptions.AMQPError):
        return False
    finally:
        aiormq_log.setLevel(level)
    await connection.close()
    return True


def _load(paths: list[str]) -> list[tuple[str, bytes]]:
    files = paths or sorted(str(p) for p in SAMPLES.glob("*.json"))
    return [(Path(p).name, Path(p).read_bytes()) for p in files]


def _unique(body: bytes, run_id: str) -> bytes:
    """Give each run's requests their own ids: a request id is referred only once."""
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError:
        return body
    if isinstance(data, dict) and isinstance(data.get("request_id"), str):
        data["request_id"] = f"{data['request_id']}-{run_id}"
        return orjson.dumps(data)
    return body


def _row(outcome: dict[str, object], sample: str, letters_dir: Path) -> tuple[str, ...]:
    letter = outcome.get("letter")
    letter_name = (
        str(letters_dir / Path(str(letter["location"])).name) if isinstance(letter, dict) else "-"
    )
    return (
        str(outcome.get("request_id") or sample),
        str(outcome.get("status")),
        str(outcome.get("path") or "-"),
        str(outcome.get("ubrn") or "-"),
        str(outcome.get("referral_state") or "-"),
        letter_name,
    )


def _print_row(row: tuple[str, ...]) -> None:
    print(
        "  ".join(cell.ljust(w) for cell, w in zip(row, WIDTHS, strict=True)).rstrip(), flush=True
    )


def demo_prefix(settings: Settings) -> tuple[str, bool]:
    """The prefix the demo runs under, and whether the operator chose it."""
    if "topology_prefix" in settings.model_fields_set:
        return settings.topology_prefix, True
    return DEMO_PREFIX, False


def _consumed_queues(names: Names, delays: tuple[float, ...]) -> list[str]:
    # Every queue whose messages the demo's worker would take (the dead letters it only adds to).
    return [
        names.requests_queue,
        *(names.work_queue(p) for p in MOST_URGENT_FIRST),
        *(names.delay_queue(d) for d in delays),
    ]


async def _usage(url: str, queues: list[str]) -> tuple[bool, int, int]:
    """Whether the first queue exists, and the consumers and messages of those that do."""
    exists, consumers, messages = False, 0, 0
    connection = await aio_pika.connect(url)
    async with connection:
        for index, name in enumerate(queues):
            channel = await connection.channel()  # a passive miss closes its channel
            try:
                queue = await channel.declare_queue(name, passive=True)
            except aio_pika.exceptions.ChannelNotFoundEntity:
                continue
            exists = exists or index == 0
            consumers += queue.declaration_result.consumer_count or 0
            messages += queue.declaration_result.message_count or 0
            await channel.close()
    return exists, consumers, messages


async def _check_topology_is_ours(url: str, prefix: str, chosen: bool, queues: list[str]) -> None:
    exists, consumers, messages = await _usage(url, queues)
    if exists and chosen:
        raise OperatorError(
            f"a topology already exists under TOPOLOGY_PREFIX={prefix}: the demo runs only on "
            "one of its own (and removes it at exit); choose an unused prefix, or unset "
            f"TOPOLOGY_PREFIX for {DEMO_PREFIX}."
        )
    if consumers or messages:
        raise OperatorError(
            f"the {prefix} topology is in use ({consumers} consumers, {messages} requests "
            "waiting), and the demo's worker would take them: set TOPOLOGY_PREFIX to an "
            "unused prefix, or wait for the other run to end."
        )


async def run_demo(settings: Settings, sample_paths: list[str], timeout: float) -> int:
    url = settings.amqp_url.get_secret_value()
    if not await _broker_reachable(url):
        print(
            f"RabbitMQ is not reachable at {_where(url)}: start one with "
            "`rabbitmq-server -detached` (or set AMQP_URL), then run again.",
            file=sys.stderr,
        )
        return 2
    samples = _load(sample_paths)
    if not samples:
        print("no sample requests found (samples/*.json)", file=sys.stderr)
        return 2
    prefix, chosen = demo_prefix(settings)
    names = Names(prefix)
    queues = _consumed_queues(names, settings.retry_delays)
    await _check_topology_is_ours(url, prefix, chosen, queues)

    with running_sandbox() as sandbox:
        print(f"e-RS sandbox at {sandbox.base_url}; topology {prefix}")
        demo_settings = settings.model_copy(
            update={"ers_base_url": sandbox.base_url, "topology_prefix": prefix}
        )
        async with request_handler(demo_settings) as handler:
            worker = Worker(demo_settings, handler)
            await worker.start()
            try:
                rows = await _publish_and_collect(
                    url, names, samples, timeout, settings.letters_dir
                )
            finally:
                await worker.stop(grace_seconds=10)
                await _remove_unless_used(url, names, queues, demo_settings.retry_delays)
    missing = [sample for (sample, _), row in zip(samples, rows, strict=True) if not row]
    if missing:
        print(f"no outcome within {timeout:.0f}s for: {', '.join(missing)}", file=sys.stderr)
        return 1
    print(f"{len(rows)} requests, {len(rows)} terminal outcomes")
    return 0


async def _remove_unless_used(
    url: str, names: Names, queues: list[str], delays: tuple[float, ...]
) -> None:
    # The demo's queues go with it (a later version never meets stale ones), unless someone
    # else started consuming from them while it ran: their topology is not ours to delete.
    _, consumers, _ = await _usage(url, queues)
    if consumers:
        print(
            f"kept the {names.prefix} topology: {consumers} other consumers use it",
            file=sys.stderr,
        )
        return
    await remove(url, names, delays=delays)


async def _publish_and_collect(
    url: str, names: Names, samples: list[tuple[str, bytes]], timeout: float, letters_dir: Path
) -> list[tuple[str, ...]]:
    run_id = uuid.uuid4().hex[:8]
    connection = await aio_pika.connect(url)
    async with connection:
        channel = await confirmed_channel(connection)
        replies = await channel.declare_queue(exclusive=True, auto_delete=True)
        exchange = await channel.get_exchange(names.requests_exchange)
        by_correlation: dict[str, int] = {}
        for index, (_, body) in enumerate(samples):
            correlation_id = await publish_request(
                exchange,
                _unique(body, run_id),
                reply_to=replies.name,
                correlation_id=f"demo-{run_id}-{index}",
                token=DEMO_TOKEN,
            )
            by_correlation[correlation_id] = index
        print(f"published {len(samples)} sample requests; outcomes as they arrive:\n")
        _print_row(COLUMNS)
        rows: list[tuple[str, ...]] = [() for _ in samples]
        pending = set(by_correlation)
        try:
            async with asyncio.timeout(timeout):
                async with replies.iterator() as messages:
                    async for message in messages:
                        await message.ack()
                        event = orjson.loads(message.body)
                        cid = message.correlation_id or ""
                        if event.get("event_type") == "referral.outcome" and cid in pending:
                            pending.discard(cid)
                            index = by_correlation[cid]
                            rows[index] = _row(event, samples[index][0], letters_dir)
                            _print_row(rows[index])
                            if not pending:
                                break
        except TimeoutError:
            pass
        print()
        return rows
