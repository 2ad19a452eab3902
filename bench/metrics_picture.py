"""A picture of the metrics from a real run, for docs/operations.md.

    python -m bench.metrics_picture        (needs matplotlib: pip install 'ers-worker[docs]')

300 requests through RabbitMQ and a sandbox process, with a 20-second e-RS outage (503 on
every endpoint) in the middle; /metrics is scraped every half second and plotted.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from tempfile import TemporaryDirectory

import aio_pika
import httpx
import matplotlib
from prometheus_client.parser import text_string_to_metric_families
from pydantic import SecretStr

from bench.throughput import ROOT, free_port, give_slots, start_sandbox
from worker.messaging.consumer import Worker
from worker.messaging.publish import publish_request
from worker.messaging.topology import Names, remove
from worker.ops.app import request_handler
from worker.ops.samples import mixed_batch
from worker.ops.settings import Settings

matplotlib.use("Agg")
import matplotlib.pyplot as plt

OUT = ROOT / "docs" / "img" / "metrics-run.png"
ENDPOINTS = ["A004", "A010", "A011", "A012", "A015", "A016", "A019", "A020"]
Sample = dict[str, float]


def scrape(text: str) -> Sample:
    values: Sample = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            key = s.name + "".join(f"|{k}={v}" for k, v in sorted(s.labels.items()))
            values[key] = s.value
    return values


def total(sample: Sample, prefix: str, **labels: str) -> float:
    want = [f"|{k}={v}" for k, v in labels.items()]
    return sum(
        v for k, v in sample.items() if k.split("|")[0] == prefix and all(w in k for w in want)
    )


async def run(amqp_url: str) -> list[tuple[float, Sample]]:
    port = free_port()
    sandbox = await start_sandbox(port)
    root = f"http://127.0.0.1:{port}"
    prefix = f"picture-{uuid.uuid4().hex[:6]}"
    series: list[tuple[float, Sample]] = []
    try:
        await give_slots(root, 400)
        with TemporaryDirectory() as tmp:
            settings = Settings().model_copy(
                update={
                    "amqp_url": SecretStr(amqp_url),
                    "topology_prefix": prefix,
                    "ers_base_url": f"{root}/referrals/FHIR",
                    "letters_dir": Path(tmp) / "letters",
                    "saga_store_path": Path(tmp) / "sagas.db",
                    "ers_rate_limit_per_second": 60.0,
                    "retry_delays_seconds": "2,4",
                    "ers_retry_initial_seconds": 0.2,
                    "metrics_port": 0,
                    "metrics_host": "127.0.0.1",
                }
            )
            async with request_handler(settings) as handler:
                worker = Worker(settings, handler)
                await worker.start()
                try:
                    series = await drive(settings, worker, root)
                finally:
                    await worker.stop(grace_seconds=10)
                    await remove(amqp_url, Names(prefix), delays=settings.retry_delays)
    finally:
        sandbox.terminate()
        await sandbox.wait()
    return series


async def drive(settings: Settings, worker: Worker, root: str) -> list[tuple[float, Sample]]:
    names = Names(settings.topology_prefix)
    batch = mixed_batch(300, ["01-dbs-booked.json", "03-ibs-shortlisted.json"])
    series: list[tuple[float, Sample]] = []
    metrics_url = f"http://127.0.0.1:{worker.health.port}/metrics"
    connection = await aio_pika.connect(settings.amqp_url.get_secret_value())
    async with connection, httpx.AsyncClient() as client:
        channel = await connection.channel(publisher_confirms=True)
        exchange = await channel.get_exchange(names.requests_exchange)
        for request in batch:
            await publish_request(
                exchange,
                request,
                reply_to="amq.rabbitmq.reply-to-unused",
                correlation_id=str(uuid.uuid4()),
                token="picture-token",
            )
        start = time.monotonic()
        outage = False
        while True:
            now = time.monotonic() - start
            sample = scrape((await client.get(metrics_url)).text)
            series.append((now, sample))
            if not outage and now > 6:
                outage = True
                for endpoint in ENDPOINTS:
                    await client.post(
                        f"{root}/_sandbox/faults",
                        json={"endpoint": endpoint, "status": 503, "times": 1_000_000},
                    )
            if outage and 26 < now < 27:
                await client.delete(f"{root}/_sandbox/faults")
            finished = total(sample, "ers_worker_sagas_finished_total")
            if finished >= len(batch) or now > 180:
                return series
            await asyncio.sleep(0.5)


def rate(
    series: list[tuple[float, Sample]], value: Callable[[Sample], float]
) -> tuple[list[float], list[float]]:
    times, rates = [], []
    for (t0, s0), (t1, s1) in itertools.pairwise(series):
        times.append(t1)
        rates.append((value(s1) - value(s0)) / (t1 - t0))
    return times, rates


def finished(outcome: str) -> Callable[[Sample], float]:
    return lambda s: total(s, "ers_worker_sagas_finished_total", outcome=outcome)


def calls(status_class: str) -> Callable[[Sample], float]:
    return lambda s: total(s, "ers_worker_api_requests_total", status_class=status_class)


def plot(series: list[tuple[float, Sample]]) -> None:
    fig, axes = plt.subplots(3, 1, figsize=(10, 9), sharex=True)
    for outcome in ("completed", "failed"):
        axes[0].plot(*rate(series, finished(outcome)), label=f"sagas {outcome}/s")
    axes[0].plot(
        *rate(series, lambda s: total(s, "ers_worker_delayed_messages_total")),
        label="to delay queues/s",
    )
    axes[0].set_ylabel("per second")
    axes[0].legend(loc="upper right")
    axes[0].set_title("ers-worker: 300 requests, e-RS down from t=6 s to t=26 s")
    for status in ("2xx", "5xx", "4xx"):
        axes[1].plot(*rate(series, calls(status)), label=f"e-RS calls {status}/s")
    axes[1].set_ylabel("per second")
    axes[1].legend(loc="upper right")
    times = [t for t, _ in series]
    axes[2].plot(
        times, [total(s, "ers_worker_sagas_in_flight") for _, s in series], label="sagas in flight"
    )
    axes[2].plot(
        times,
        [total(s, "ers_worker_oldest_saga_age_seconds") for _, s in series],
        label="oldest saga age (s)",
    )
    axes[2].set_xlabel("seconds since the requests were published")
    axes[2].legend(loc="upper right")
    fig.tight_layout()
    OUT.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(OUT, dpi=90)


def main() -> int:
    amqp_url = os.environ.get("AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/")
    series = asyncio.run(run(amqp_url))
    plot(series)
    last = series[-1][1]
    print(
        f"wrote {OUT.relative_to(ROOT)}; finished: "
        f"{total(last, 'ers_worker_sagas_finished_total'):.0f} sagas in {series[-1][0]:.0f}s"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
