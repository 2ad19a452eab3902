"""Fixtures that give tests the real parts: RabbitMQ, the e-RS sandbox over HTTP, the worker.

Each test gets its own topology prefix (so its own queues and exchanges), a freshly reset
sandbox, and a worker started in the test's event loop.
"""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aio_pika
import pytest
from pydantic import SecretStr

from sandbox.testing import SandboxAdmin, SandboxHandle, running_sandbox
from tests.harness import Harness
from worker.messaging.consumer import Worker
from worker.messaging.topology import Names, remove
from worker.ops.app import request_handler
from worker.ops.settings import Settings

AMQP_URL = os.environ.get("AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/")


@dataclass
class ReliabilityFigures:
    """What the fault-injection tests did and found, summed over the session."""

    requests: int = 0
    kills: int = 0
    restarts: int = 0
    connection_drops: int = 0
    duplicates: int = 0
    lost: int = 0
    retries: int = 0
    delayed: int = 0
    ambiguous: int = 0  # writes whose answer was lost after e-RS may have acted
    reconciliations: int = 0  # of those, the ones that ended needing a person

    def line(self) -> str:
        return (
            f"reliability: {self.requests} requests, {self.kills} kills, {self.restarts} "
            f"restarts, {self.connection_drops} connection drops, {self.retries} e-RS retries, "
            f"{self.delayed} delay-queue trips, {self.ambiguous} ambiguous writes, "
            f"{self.reconciliations} needing a person, {self.duplicates} duplicates, "
            f"{self.lost} lost"
        )


FIGURES = ReliabilityFigures()


@pytest.fixture(scope="session")
def reliability() -> ReliabilityFigures:
    return FIGURES


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if FIGURES.requests:
        terminalreporter.write_line(FIGURES.line())


@pytest.fixture(scope="session")
def amqp_url() -> str:
    async def probe() -> None:
        connection = await asyncio.wait_for(aio_pika.connect(AMQP_URL), timeout=10)
        await connection.close()

    try:
        asyncio.run(probe())
    except Exception as exc:
        pytest.fail(
            f"RabbitMQ is not reachable ({type(exc).__name__}); start it with "
            "`rabbitmq-server -detached` or set AMQP_URL",
            pytrace=False,
        )
    return AMQP_URL


@pytest.fixture(scope="session")
def sandbox() -> Iterator[SandboxHandle]:
    with running_sandbox() as handle:
        yield handle


@pytest.fixture
async def sandbox_admin(sandbox: SandboxHandle) -> AsyncIterator[SandboxAdmin]:
    admin = SandboxAdmin(sandbox.root_url)
    await admin.reset()
    yield admin
    await admin.aclose()


@pytest.fixture
def prefix() -> str:
    return f"test-{uuid.uuid4().hex[:12]}"


@pytest.fixture
def settings(
    request: pytest.FixtureRequest,
    amqp_url: str,
    sandbox: SandboxHandle,
    prefix: str,
    tmp_path: Path,
) -> Settings:
    """Worker settings for one test; ``@pytest.mark.worker_settings(name=value)`` overrides."""
    marker = request.node.get_closest_marker("worker_settings")
    overrides = marker.kwargs if marker else {}
    return Settings().model_copy(
        update={
            "amqp_url": SecretStr(amqp_url),
            "topology_prefix": prefix,
            "ers_base_url": sandbox.base_url,
            "letters_dir": tmp_path / "letters",
            "ers_rate_limit_per_second": 1000.0,
            "ers_retry_initial_seconds": 0.01,
            "ers_retry_max_seconds": 0.1,
            "shutdown_grace_seconds": 10.0,
            "concurrency": 8,
            "saga_store_path": tmp_path / "sagas.db",
            "retry_delays_seconds": "0.2,0.5,1",
            # Lost creates are looked for again after a second, not five minutes.
            "reconcile_horizon_seconds": 1.0,
            "patient_key_secret": SecretStr("test-secret"),
            "metrics_port": 0,
            "metrics_host": "127.0.0.1",
            **overrides,
        }
    )


@pytest.fixture
async def harness(
    settings: Settings, sandbox_admin: SandboxAdmin, amqp_url: str
) -> AsyncIterator[Harness]:
    """A started worker plus a requester: publish requests, read what came back."""
    async with request_handler(settings) as handler:
        worker = Worker(settings, handler)
        await worker.start()
        harness = Harness(amqp_url, Names(settings.topology_prefix), worker, sandbox_admin)
        await harness.open()
        try:
            yield harness
        finally:
            await harness.close()
            await worker.stop(grace_seconds=5)
            await delete_topology(amqp_url, settings)


async def delete_topology(amqp_url: str, settings: Settings) -> None:
    await remove(amqp_url, Names(settings.topology_prefix), delays=settings.retry_delays)
