"""Issue 10's benchmarks in one go, against one sandbox process started once.

    python -m bench.suite [--only cpu|latency|budget ...] [--rounds 5] [--requests 1000]
                          [--budget-requests 500] [--against stub|sandbox]
                          [--loop uvloop|asyncio]

cpu      the bare aio-pika -> aiohttp pipeline (bench/bare.py) and the worker, in alternating
         rounds: median CPU ms per message of each and the ratio worker / bare.
latency  every e-RS call answered after --latency seconds (100 ms); the worker at each
         --latency-concurrency (50, 200): throughput against the ideal
         concurrency / (mean e-RS calls per referral x latency), counted in the stub's log;
         then the bare pipeline making as many calls, as the rig's own ceiling.
budget   3 replicas sharing e-RS' 10/s through Redis on a backlog of --budget-requests (500),
         ~10 % 2WW, one SIGKILLed on the way (bench/budget.py), against the sandbox itself
         (its strict limiter is what the section measures against).

cpu and latency run against the canned stub (bench/stub.py: the sandbox's own answers,
recorded through it at start, replayed), so that the stub's CPU does not bound them;
`--against sandbox` runs them against the sandbox. Figures come from bench.throughput's
`drive` (process CPU, so the requester's small cost is in every figure alike). Between runs
the stub's log (or the sandbox, `POST /_sandbox/reset`) is reset.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import time
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from tempfile import TemporaryDirectory
from typing import Any

import aio_pika
import httpx
import orjson

from bench.bare import CALLS_PER_MESSAGE, run_bare
from bench.budget import all_consuming, replica_env, run_budget, start_replica, stop_replica
from bench.throughput import (
    ROOT,
    SAMPLE,
    drive,
    free_port,
    give_slots,
    start_sandbox,
    wait_healthy,
    worker_settings,
)
from sandbox.faults import ENDPOINT_IDS
from worker.messaging.consumer import Worker
from worker.messaging.publish import publish_request
from worker.messaging.topology import DEFAULT_RETRY_DELAYS, Names, remove
from worker.ops import loop as event_loop
from worker.ops.app import request_handler
from worker.ops.samples import nhs_numbers
from worker.ops.settings import PREFETCH_PER_SLOT
from worker.saga.priority import MOST_URGENT_FIRST

# A fault answers `times` calls and then leaves the queue: this many outlasts any run.
FOREVER = 1_000_000_000


@dataclass(frozen=True)
class Suite:
    """What every section needs: the one sandbox, the broker and the command line."""

    root: str  # http://127.0.0.1:PORT of the sandbox process
    stub: str  # of the canned stub (bench/stub.py), replaying the sandbox's answers
    amqp_url: str
    args: argparse.Namespace

    @property
    def ers(self) -> str:
        """What the cpu and latency sections run against (--against)."""
        return self.stub if self.args.against == "stub" else self.root

    async def fresh(self, requests: int, *, delay_seconds: float = 0.0) -> None:
        if self.args.against == "stub":
            await fresh_stub(self.stub, delay_seconds)
        else:
            await fresh_sandbox(self.root, requests, delay_seconds=delay_seconds)


# --- the sandbox -----------------------------------------------------------------------------


async def fresh_sandbox(root: str, requests: int, *, delay_seconds: float = 0.0) -> None:
    """Back to the seed (no referrals, empty request log, no faults), slots enough for every
    request, and, if asked, every e-RS call answered after `delay_seconds`."""
    async with httpx.AsyncClient(base_url=f"{root}/_sandbox") as admin:
        (await admin.post("/reset")).raise_for_status()
        if delay_seconds > 0:
            # `status: null` with a delay only slows the real answer (sandbox/README.md). A
            # fault is taken per endpoint, so one on every endpoint slows every e-RS call.
            for endpoint in ENDPOINT_IDS:
                fault = {
                    "endpoint": endpoint,
                    "status": None,
                    "times": FOREVER,
                    "delay_seconds": delay_seconds,
                }
                (await admin.post("/faults", json=fault)).raise_for_status()
    await give_slots(root, requests + 10)


async def fresh_stub(root: str, delay_seconds: float) -> None:
    async with httpx.AsyncClient(base_url=root) as admin:
        (await admin.post("/_sandbox/reset")).raise_for_status()
        latency = {"seconds": delay_seconds}
        (await admin.post("/_stub/latency", json=latency)).raise_for_status()


async def start_stub(sandbox_root: str, amqp_url: str) -> tuple[asyncio.subprocess.Process, str]:
    """The canned stub, recorded from one DBS saga through the sandbox, then replaying."""
    port = free_port()
    process = await asyncio.create_subprocess_exec(
        *[sys.executable, "-m", "bench.stub", "--port", str(port), "--upstream", sandbox_root],
        stdout=asyncio.subprocess.DEVNULL,
    )
    root = f"http://127.0.0.1:{port}"
    await wait_healthy(root, process)
    await fresh_sandbox(sandbox_root, 1)
    recording = await run_worker(root, amqp_url, requests=1, concurrency=1)
    if recording["outcomes"] != {"COMPLETED": 1}:
        process.kill()
        raise RuntimeError(f"the stub's recording saga ended {recording['outcomes']}")
    async with httpx.AsyncClient(base_url=root) as admin:
        (await admin.post("/_stub/replay")).raise_for_status()
    return process, root


async def calls_per_referral(root: str) -> dict[str, float]:
    """e-RS calls the sandbox logged since the last reset, per referral. Not a constant: the
    saga pages A015 through every free slot (up to 5 pages of 20), so a run offered many slots
    makes more calls per saga early on than the issue's 8. `mean` (every call over every saga,
    A004's once-per-process fetch included) is what sets throughput under latency, by Little's
    law; `median` is the typical saga."""
    async with httpx.AsyncClient() as client:
        response = await client.get(f"{root}/_sandbox/requests")
        response.raise_for_status()
    log: list[dict[str, Any]] = response.json()
    # bench.throughput.drive gives each request its own correlation id, which the worker
    # passes on as X-Correlation-ID: the log's calls group by saga.
    per_saga = Counter(entry["correlation_id"] for entry in log)
    counts = [n for key, n in per_saga.items() if key is not None]
    return {
        "median": float(statistics.median(counts)) if counts else 0.0,
        "mean": round(len(log) / max(1, len(counts)), 2),
    }


# --- the worker, against a sandbox already running -------------------------------------------


async def run_worker(
    root: str, amqp_url: str, *, requests: int, concurrency: int, timeout: float | None = None
) -> dict[str, Any]:
    """bench.throughput.run without starting a sandbox (it has no way to be given one): the same
    settings and `drive`."""
    prefix = f"suite-{uuid.uuid4().hex[:8]}"
    template = orjson.loads((ROOT / "samples" / SAMPLE["dbs"]).read_bytes())
    with TemporaryDirectory() as scratch:
        settings = worker_settings(root, amqp_url, prefix, concurrency, Path(scratch))
        async with request_handler(settings) as handler:
            worker = Worker(settings, handler)
            await worker.start()
            try:
                figures = await asyncio.wait_for(
                    drive(amqp_url, Names(prefix), template, requests, same_patient=False),
                    timeout=timeout or max(120.0, requests * 0.5),
                )
            finally:
                await worker.stop(grace_seconds=10)
                await remove(amqp_url, Names(prefix), delays=settings.retry_delays)
    return {"pipeline": "worker", "concurrency": concurrency, **figures}


# --- sections --------------------------------------------------------------------------------


def _line(label: str, figures: dict[str, Any], extra: str = "") -> None:
    print(
        f"  {label:18} {figures['throughput_per_s']:7.1f} /s  "
        f"{figures['worker_cpu_ms_per_request']:7.2f} ms CPU/msg  "
        f"outcomes {figures['outcomes']}{extra}",
        flush=True,
    )


async def cpu_section(suite: Suite) -> None:
    args = suite.args
    print(
        f"== cpu: bare pipeline ({args.bare_calls} POSTs/msg) against the worker, "
        f"{args.requests} DBS requests, concurrency {args.concurrency}, {args.rounds} rounds",
        flush=True,
    )

    async def bare(requests: int) -> dict[str, Any]:
        await suite.fresh(requests)
        return await run_bare(
            suite.ers,
            suite.amqp_url,
            requests=requests,
            concurrency=args.concurrency,
            calls=args.bare_calls,
        )

    async def worker(requests: int) -> dict[str, Any]:
        await suite.fresh(requests)
        figures = await run_worker(
            suite.ers, suite.amqp_url, requests=requests, concurrency=args.concurrency
        )
        return {**figures, "calls": await calls_per_referral(suite.ers)}

    # A discarded warm-up of each: the first run in a process pays for first-time imports,
    # connection pools and the worker's reference data, which no later round does.
    await worker(args.warmup)
    await bare(args.warmup)
    print(f"  (warm-up of {args.warmup} requests each, not counted)", flush=True)

    cpu: dict[str, list[float]] = {"bare": [], "worker": []}
    worker_calls: list[float] = []
    for round_no in range(1, args.rounds + 1):
        # Alternate which goes first, so neither always runs on a cooler or warmer machine.
        order = ("bare", "worker") if round_no % 2 else ("worker", "bare")
        for pipeline in order:
            extra = ""
            if pipeline == "bare":
                figures = await bare(args.requests)
            else:
                figures = await worker(args.requests)
                worker_calls.append(figures["calls"]["mean"])
                calls = figures["calls"]
                extra = f"  e-RS calls/referral mean {calls['mean']:g}, median {calls['median']:g}"
            cpu[pipeline].append(figures["worker_cpu_ms_per_request"])
            _line(f"round {round_no} {pipeline}", figures, extra)
    bare_ms = statistics.median(cpu["bare"])
    worker_ms = statistics.median(cpu["worker"])
    calls_median = statistics.median(worker_calls)
    print(
        f"  median CPU per message: bare {bare_ms:.2f} ms, worker {worker_ms:.2f} ms, "
        f"worker / bare {worker_ms / bare_ms:.1f}",
        flush=True,
    )
    # The worker's saga made more (or fewer) calls than the bare pipeline's fixed count: per
    # e-RS call the comparison does not depend on how many slots the sandbox offered.
    per_call = (worker_ms / calls_median) / (bare_ms / args.bare_calls)
    print(
        f"  per e-RS call: bare {bare_ms / args.bare_calls:.2f} ms, worker "
        f"{worker_ms / calls_median:.2f} ms ({calls_median:g} calls/referral), "
        f"worker / bare {per_call:.1f}",
        flush=True,
    )


async def latency_section(suite: Suite) -> None:
    args = suite.args
    latency = args.latency
    print(f"== latency: every e-RS call answered after {latency * 1000:g} ms", flush=True)
    for concurrency in args.latency_concurrency:
        requests = args.latency_requests_per_slot * concurrency
        await suite.fresh(requests, delay_seconds=latency)
        figures = await run_worker(
            suite.ers, suite.amqp_url, requests=requests, concurrency=concurrency
        )
        calls = await calls_per_referral(suite.ers)
        # Each saga makes its calls one after another, so `concurrency` sagas in flight can
        # finish at most concurrency / (calls x latency) per second, calls being the mean.
        ideal = concurrency / (calls["mean"] * latency)
        throughput = figures["throughput_per_s"]
        # Cores the worker process kept busy: near the machine's count, the run was bound by
        # CPU rather than by latency.
        cores = throughput * figures["worker_cpu_ms_per_request"] / 1000
        _line(f"concurrency {concurrency}", figures)
        print(
            f"  {'':18} {requests} requests, e-RS calls/referral mean {calls['mean']:g} "
            f"(median {calls['median']:g}), ideal {ideal:.1f} /s, "
            f"fraction of ideal {throughput / ideal:.2f}, worker busy {cores:.2f} cores",
            flush=True,
        )
        # The rig's own ceiling: the bare pipeline making as many calls against the same
        # stub at the same latency. What it misses of the ideal is the stub's and the
        # machine's (a sleep's overshoot, the stub's loop, the broker), not the worker's.
        await suite.fresh(requests, delay_seconds=latency)
        per_message = max(1, round(calls["mean"]))
        bare = await run_bare(
            suite.ers, suite.amqp_url, requests=requests, concurrency=concurrency,
            calls=per_message,
        )  # fmt: skip
        bare_ideal = concurrency / (per_message * latency)
        print(
            f"  {'':18} the bare pipeline, {per_message} POSTs/msg at the same latency: "
            f"{bare['throughput_per_s'] / bare_ideal:.2f} of its ideal",
            flush=True,
        )


async def budget_section(suite: Suite) -> None:
    """Issue 10's shared budget: replicas against the sandbox's strict 10/s limit, clinical
    priority under it, and a replica SIGKILLed on the way (bench.budget has the figures)."""
    args = suite.args
    requests = args.budget_requests
    print(
        f"== budget: {requests} referrals (~10 % 2WW) + one 2WW last, 3 replicas sharing "
        f"10 e-RS calls/s through Redis, one SIGKILLed a third of the way",
        flush=True,
    )
    # Slots for every request, not just the DBS ones: a saga offered more free slots pages
    # A015 further, and a run that ran out of slots would defer sagas instead of booking.
    await fresh_sandbox(suite.root, requests + 1)
    report = await run_budget(
        suite.root, suite.amqp_url, requests=requests, keep_logs=args.budget_logs
    )
    for line in report.lines:
        print(line, flush=True)


def _rss_mib(pid: int | str = "self") -> float:
    """A process's resident set now (not its peak)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


async def memory_section(suite: Suite) -> None:
    """Issue 10's memory target: with a backlog of --memory-requests DBS requests, the worker
    holds at most its prefetch of them, so its RSS stays where it was before the backlog.
    The worker is a process of its own (``ers-worker run``, as deployed), so the figure is its
    alone; the requests are published from this one."""
    args = suite.args
    requests = args.memory_requests
    prefetch = PREFETCH_PER_SLOT * args.concurrency  # as the defaults
    print(f"== memory: a backlog of {requests} DBS requests, prefetch {prefetch}")
    await suite.fresh(requests, delay_seconds=args.latency)  # sagas slow: the backlog stays
    prefix = f"mem-{uuid.uuid4().hex[:8]}"
    names = Names(prefix)
    template = orjson.loads((ROOT / "samples" / SAMPLE["dbs"]).read_bytes())
    patients = nhs_numbers(requests)
    with TemporaryDirectory() as scratch:
        env = replica_env(
            root=suite.ers, amqp_url=suite.amqp_url, prefix=prefix, schema="",
            letters=Path(scratch) / "letters", per_second=100_000,
        )  # fmt: skip
        env.pop("RATE_LIMIT_REDIS_URL")  # one replica, alone: no shared budget
        env.update(
            {
                "SAGA_STORE": "sqlite",
                "SAGA_STORE_PATH": str(Path(scratch) / "sagas.db"),
                "WORKER_CONCURRENCY": str(args.concurrency),
                "AMQP_PREFETCH": str(prefetch),
            }
        )
        worker = await start_replica("memory", env, Path(scratch))
        try:
            await all_consuming([worker])
            pid = worker.process.pid
            before = peak = _rss_mib(pid)
            by_quarter: list[float] = []
            connection = await aio_pika.connect(suite.amqp_url)
            async with connection:
                channel = await connection.channel(publisher_confirms=True)
                exchange = await channel.get_exchange(names.requests_exchange)
                replies = await channel.declare_queue(exclusive=True, auto_delete=True)
                for i in range(requests):
                    body = orjson.dumps(
                        {
                            **template,
                            "request_id": f"mem-{i}-{prefix}",
                            "patient": {"nhs_number": patients[i]},
                        }
                    )
                    await publish_request(
                        exchange, body, reply_to=replies.name, correlation_id=str(i),
                        token="bench-token",
                    )  # fmt: skip
                    if i % 500 == 0:
                        peak = max(peak, _rss_mib(pid))
                    if (i + 1) % (requests // 4 or 1) == 0:
                        # Bounded means flat: the same RSS a quarter and all the way in.
                        by_quarter.append(_rss_mib(pid))
                published = time.perf_counter()
                intake = await channel.declare_queue(names.requests_queue, passive=True)
                while intake.declaration_result.message_count:
                    peak = max(peak, _rss_mib(pid))
                    await asyncio.sleep(0.5)
                    intake = await channel.declare_queue(names.requests_queue, passive=True)
                sorted_after = time.perf_counter() - published
                waiting = 0
                for priority in MOST_URGENT_FIRST:
                    work = await channel.declare_queue(names.work_queue(priority), passive=True)
                    waiting += work.declaration_result.message_count or 0
            peak = max(peak, _rss_mib(pid))
        finally:
            await stop_replica(worker)
            await remove(
                suite.amqp_url, names, delays=tuple(map(float, DEFAULT_RETRY_DELAYS.split(",")))
            )
    print(
        f"  sorted {sorted_after:.1f} s after the last publish, {waiting} waiting in the work "
        f"queues; the worker process's RSS {before:.0f} MiB before the backlog, at most "
        f"{peak:.0f} MiB with it; after each quarter published: "
        + ", ".join(f"{rss:.0f}" for rss in by_quarter)
        + " MiB",
        flush=True,
    )


Section = Callable[[Suite], Awaitable[None]]
# In the order a full run takes them; --only picks some. A new section is one entry here.
SECTIONS: dict[str, Section] = {
    "cpu": cpu_section,
    "latency": latency_section,
    "budget": budget_section,
    "memory": memory_section,
}


async def run_suite(args: argparse.Namespace, amqp_url: str) -> None:
    port = free_port()
    sandbox = await start_sandbox(port)
    root = f"http://127.0.0.1:{port}"
    processes = [sandbox]
    try:
        stub, stub_root = await start_stub(root, amqp_url)
        processes.append(stub)
        suite = Suite(root, stub_root, amqp_url, args)
        print(
            f"(on {args.loop}; cpu and latency against the {args.against}, budget against "
            "the sandbox)"
        )
        for name in args.only or list(SECTIONS):
            await SECTIONS[name](suite)
    finally:
        for process in processes:
            process.terminate()
            await asyncio.wait_for(process.wait(), timeout=10)


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument(
        "--only", action="append", choices=list(SECTIONS), help="run this section (repeatable)"
    )
    parser.add_argument(
        "--against",
        choices=("stub", "sandbox"),
        default="stub",
        help="what answers the cpu and latency runs: the canned stub (bench/stub.py, the "
        "sandbox's recorded answers) or the sandbox itself",
    )
    parser.add_argument(
        "--loop",
        choices=("uvloop", "asyncio"),
        default="uvloop",
        help="the event loop of this process (the worker's EVENT_LOOP default is uvloop)",
    )
    # 5 rounds of 1,000: the ratio held within 2.8-2.9x over three runs on this machine,
    # where 3 rounds of 200 (a round under 2 s) ranged 2.0-3.1x on the same tree.
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--requests", type=int, default=1000, help="per cpu run")
    parser.add_argument("--concurrency", type=int, default=50, help="of the cpu runs")
    parser.add_argument(
        "--bare-calls",
        type=int,
        default=CALLS_PER_MESSAGE,
        help="POSTs per message of the bare pipeline (issue 10: a DBS referral costs 8)",
    )
    parser.add_argument("--warmup", type=int, default=20, help="requests per warm-up run")
    parser.add_argument("--latency", type=float, default=0.1, help="seconds per e-RS call")
    parser.add_argument(
        "--latency-concurrency", type=int, nargs="+", default=[50, 200], metavar="N"
    )
    parser.add_argument(
        "--latency-requests-per-slot",
        type=int,
        default=8,
        metavar="K",
        # 8 waves: the first wave's cold start and the last one's tail weigh 1/16 each.
        help="each latency run sends K x concurrency requests (K waves of sagas)",
    )
    parser.add_argument(
        "--budget-requests",
        type=int,
        default=500,
        metavar="N",
        help="referrals in the budget run's backlog (at ~1 referral/s, 500 take ~7 min)",
    )
    parser.add_argument(
        "--memory-requests",
        type=int,
        default=20_000,
        metavar="N",
        help="the memory run's backlog (issue 10: 20,000)",
    )
    parser.add_argument(
        "--budget-logs", type=Path, metavar="DIR", help="keep the budget run's replica logs here"
    )
    args = parser.parse_args()
    amqp_url = os.environ.get("AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/")
    # Bare pipeline and worker alike run on this loop: the ratio compares like with like.
    event_loop.run(run_suite(args, amqp_url), args.loop)
    return 0


if __name__ == "__main__":
    sys.exit(main())
