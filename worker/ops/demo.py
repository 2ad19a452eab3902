"""`make run`: the bundled e-RS sandbox, the worker, and the sample requests, end to end.

Starts the sandbox on a free loopback port, declares the topology under the ``ers-demo``
prefix (so a real deployment's queues are never touched), starts the worker in this process,
publishes each sample with a reply queue, and prints one row per outcome.
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
from worker.ops.samples import SAMPLES
from worker.ops.settings import Settings

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

    with running_sandbox() as sandbox:
        print(f"e-RS sandbox at {sandbox.base_url}")
        demo_settings = settings.model_copy(
            update={"ers_base_url": sandbox.base_url, "topology_prefix": DEMO_PREFIX}
        )
        async with request_handler(demo_settings) as handler:
            worker = Worker(demo_settings, handler)
            await worker.start()
            try:
                rows = await _publish_and_collect(url, samples, timeout, settings.letters_dir)
            finally:
                await worker.stop(grace_seconds=10)
                # The demo's queues go with it: a later version never meets stale ones.
                await remove(url, Names(DEMO_PREFIX), delays=demo_settings.retry_delays)
    missing = [sample for (sample, _), row in zip(samples, rows, strict=True) if not row]
    if missing:
        print(f"no outcome within {timeout:.0f}s for: {', '.join(missing)}", file=sys.stderr)
        return 1
    print(f"{len(rows)} requests, {len(rows)} terminal outcomes")
    return 0


async def _publish_and_collect(
    url: str, samples: list[tuple[str, bytes]], timeout: float, letters_dir: Path
) -> list[tuple[str, ...]]:
    run_id = uuid.uuid4().hex[:8]
    connection = await aio_pika.connect(url)
    async with connection:
        channel = await confirmed_channel(connection)
        replies = await channel.declare_queue(exclusive=True, auto_delete=True)
        exchange = await channel.get_exchange(Names(DEMO_PREFIX).requests_exchange)
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
