"""The production entry point as a process: `ers-worker run` consumes, then exits 0 on SIGTERM."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from typing import Any

import orjson

from tests.conftest import delete_topology
from tests.harness import Harness, sample
from worker.ops.settings import Settings


async def test_run_consumes_then_stops_cleanly_on_sigterm(
    settings: Settings, amqp_url: str, sandbox_admin: Any, harness: Harness
) -> None:
    # The in-process worker of the harness stops first: only the subprocess consumes.
    await harness.worker.stop(grace_seconds=1)
    env = {
        **os.environ,
        "AMQP_URL": amqp_url,
        "TOPOLOGY_PREFIX": settings.topology_prefix,
        "ERS_ENVIRONMENT": "sandbox",
        "ERS_BASE_URL": settings.ers_base_url,
        "LETTERS_DIR": str(settings.letters_dir),
        "SAGA_STORE_PATH": str(settings.saga_store_path),
        "RETRY_DELAYS_SECONDS": settings.retry_delays_seconds,
        "LOG_LEVEL": "INFO",
    }
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "worker.ops.cli",
        "run",
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        cid = await harness.publish(sample("03-ibs-shortlisted.json"))
        outcome = await harness.outcome(cid, timeout=60)
        assert outcome["status"] == "COMPLETED"
        process.send_signal(signal.SIGTERM)
        _, stderr = await asyncio.wait_for(process.communicate(), timeout=30)
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    assert process.returncode == 0, stderr.decode()[-2000:]
    log = stderr.decode()
    assert "consuming" in log and "stopping" in log
    assert "test-user-token" not in log
    await delete_topology(amqp_url, settings)


async def test_demo_says_in_one_line_when_rabbitmq_is_unreachable() -> None:
    env = {**os.environ, "AMQP_URL": "amqp://guest:guest@127.0.0.1:9/"}
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "worker.ops.cli",
        "demo",
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    stdout, stderr = await asyncio.wait_for(process.communicate(), timeout=30)
    assert process.returncode == 2
    lines = stderr.decode().strip().splitlines()
    assert lines == [
        "RabbitMQ is not reachable at 127.0.0.1:9: start one with `rabbitmq-server -detached` "
        "(or set AMQP_URL), then run again."
    ]
    assert stdout == b""


async def test_a_broker_down_at_start_is_waited_for_with_one_log_line_per_try(
    settings: Settings, tmp_path: Any
) -> None:
    # Nothing listens on port 1: every connection attempt is refused at once.
    env = {
        **os.environ,
        "AMQP_URL": "amqp://guest:guest@127.0.0.1:1/",
        "ERS_ENVIRONMENT": "sandbox",
        "TOPOLOGY_PREFIX": settings.topology_prefix,
        "SAGA_STORE_PATH": str(tmp_path / "sagas.db"),
        "METRICS_PORT": "0",
        "LOG_LEVEL": "INFO",
    }
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "worker.ops.cli",
        "run",
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    tries: list[dict[str, Any]] = []
    try:
        assert process.stderr is not None
        async with asyncio.timeout(30):
            while len(tries) < 2:  # two tries, one second of backoff apart
                line = await process.stderr.readline()
                assert line, "the worker exited instead of waiting for the broker"
                record = orjson.loads(line)
                if record["msg"] == "broker unreachable, retrying":
                    tries.append(record)
        process.send_signal(signal.SIGTERM)
        _, rest = await asyncio.wait_for(process.communicate(), timeout=30)
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()

    assert process.returncode == 0  # stopped while waiting: a clean exit, not a crash
    assert [t["attempt"] for t in tries] == [1, 2]
    assert tries[0]["level"] == "error" and tries[0]["error"] in (
        "ConnectionError",
        "AMQPConnectionError",
        "OSError",
        "ConnectionRefusedError",
    )
    assert "Traceback" not in rest.decode()
