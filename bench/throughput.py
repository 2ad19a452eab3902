"""Throughput and cost of the worker: N referral requests through RabbitMQ and the sandbox.

    python -m bench.throughput [--requests 200] [--concurrency 50] [--path dbs|ibs]
                               [--same-patient]

The sandbox runs in its own process so the CPU figures are the worker's alone (plus the
requester publishing and reading outcomes in the same process, which is small). e-RS' rate
limit is lifted for the run: the figure of interest is the worker's own cost per message.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import resource
import socket
import sys
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from tempfile import TemporaryDirectory
from typing import Any

import aio_pika
import httpx
import orjson
from pydantic import SecretStr

from worker.messaging.consumer import Worker
from worker.messaging.publish import publish_request
from worker.messaging.topology import Names, remove
from worker.ops.app import request_handler
from worker.ops.samples import nhs_numbers
from worker.ops.settings import PREFETCH_PER_SLOT, Settings

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = {"dbs": "01-dbs-booked.json", "ibs": "03-ibs-shortlisted.json"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def start_sandbox(port: int) -> asyncio.subprocess.Process:
    process = await asyncio.create_subprocess_exec(
        *[sys.executable, "-m", "sandbox", "--host", "127.0.0.1", "--port", str(port)],
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL,
    )
    await wait_healthy(f"http://127.0.0.1:{port}", process)
    return process


async def wait_healthy(root: str, process: asyncio.subprocess.Process) -> None:
    """Until `root`/_sandbox/health answers (the sandbox's, or the stub's), 5 s at most."""
    async with httpx.AsyncClient() as client:
        for _ in range(100):
            try:
                await client.get(f"{root}/_sandbox/health")
                return
            except httpx.TransportError:
                await asyncio.sleep(0.05)
    process.kill()
    raise RuntimeError(f"{root} did not start")


async def give_slots(root: str, count: int) -> None:
    start = datetime.now(UTC).replace(minute=0, second=0, microsecond=0) + timedelta(days=1)
    slots = [
        {
            "start": (start + timedelta(minutes=15 * i)).isoformat(),
            "end": (start + timedelta(minutes=15 * (i + 1))).isoformat(),
        }
        for i in range(count)
    ]
    async with httpx.AsyncClient() as client:
        (await client.put(f"{root}/_sandbox/slots/11002", json={"slots": slots})).raise_for_status()


def worker_settings(
    root: str, amqp_url: str, prefix: str, concurrency: int, scratch: Path
) -> Settings:
    """The worker of every benchmark: e-RS' rate limit lifted (the figure of interest is the
    worker's own cost), a saga store and letters of its own in ``scratch``, so that no run
    resumes another's sagas, and metrics on a free port, beside other workers."""
    return Settings().model_copy(
        update={
            "amqp_url": SecretStr(amqp_url),
            "topology_prefix": prefix,
            "ers_base_url": f"{root}/referrals/FHIR",
            "letters_dir": scratch / "letters",
            "saga_store_path": scratch / "sagas.db",
            "ers_rate_limit_per_second": 100_000.0,
            "concurrency": concurrency,
            "prefetch": PREFETCH_PER_SLOT * concurrency,  # as the defaults
            "metrics_port": 0,
            # The saga reads every page of free slots to find the earliest; with the
            # benchmark's hundreds of slots, pages of 100 keep a DBS saga near its 8 calls.
            "slot_page_size": 100,
        }
    )


async def run(
    requests: int, concurrency: int, path: str, amqp_url: str, *, same_patient: bool = False
) -> dict[str, Any]:
    port = free_port()
    sandbox = await start_sandbox(port)
    root = f"http://127.0.0.1:{port}"
    prefix = f"bench-{uuid.uuid4().hex[:8]}"
    template = orjson.loads((ROOT / "samples" / SAMPLE[path]).read_bytes())
    try:
        await give_slots(root, requests + 10)
        with TemporaryDirectory() as scratch:
            settings = worker_settings(root, amqp_url, prefix, concurrency, Path(scratch))
            async with request_handler(settings) as handler:
                worker = Worker(settings, handler)
                await worker.start()
                try:
                    figures = await drive(amqp_url, Names(prefix), template, requests, same_patient)
                    patients = "one" if same_patient else "distinct"
                    return {"patients": patients, "concurrency": concurrency, **figures}
                finally:
                    await worker.stop(grace_seconds=10)
                    await remove(amqp_url, Names(prefix), delays=settings.retry_delays)
    finally:
        sandbox.terminate()
        await asyncio.wait_for(sandbox.wait(), timeout=10)


async def drive(
    amqp_url: str, names: Names, template: dict[str, Any], requests: int, same_patient: bool
) -> dict[str, Any]:
    connection = await aio_pika.connect(amqp_url)
    async with connection:
        channel = await connection.channel(publisher_confirms=True)
        replies = await channel.declare_queue(exclusive=True, auto_delete=True)
        exchange = await channel.get_exchange(names.requests_exchange)
        # Distinct patients by default: the worker runs one saga per patient at a time, so
        # requests for one patient measure that rule, not the worker (--same-patient does).
        patients = [template["patient"]["nhs_number"]] * requests
        if not same_patient:
            patients = nhs_numbers(requests)
        bodies = [
            orjson.dumps(
                {
                    **template,
                    "request_id": f"bench-{i}-{uuid.uuid4().hex[:6]}",
                    "patient": {"nhs_number": patients[i]},
                }
            )
            for i in range(requests)
        ]
        cpu0, wall0 = time.process_time(), time.perf_counter()
        for i, body in enumerate(bodies):
            await publish_request(
                exchange, body, reply_to=replies.name, correlation_id=str(i), token="bench-token"
            )
        statuses: dict[str, int] = {}
        outcomes = 0
        async with replies.iterator() as messages:
            async for message in messages:
                await message.ack()
                event = orjson.loads(message.body)
                if event["event_type"] == "referral.outcome":
                    outcomes += 1
                    # A failure is shown with its code (never a patient detail): a benchmark
                    # that loses referrals quietly would measure the wrong thing.
                    error = event.get("error") or {}
                    key = event["status"] if not error else f"{event['status']}:{error.get('code')}"
                    statuses[key] = statuses.get(key, 0) + 1
                    if outcomes == requests:
                        break
        wall = time.perf_counter() - wall0
        cpu = time.process_time() - cpu0
    return {
        "requests": requests,
        "outcomes": statuses,
        "wall_s": round(wall, 2),
        "throughput_per_s": round(requests / wall, 1),
        "worker_cpu_ms_per_request": round(cpu * 1000 / requests, 2),
        "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--concurrency", type=int, default=50)
    parser.add_argument("--path", choices=sorted(SAMPLE), default="dbs")
    parser.add_argument(
        "--same-patient",
        action="store_true",
        help="every request for one patient (sagas then run one at a time): its own figure",
    )
    args = parser.parse_args()
    amqp_url = os.environ.get("AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/")
    figures = asyncio.run(
        run(args.requests, args.concurrency, args.path, amqp_url, same_patient=args.same_patient)
    )
    for key, value in figures.items():
        print(f"{key:28} {value}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
