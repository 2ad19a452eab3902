"""The benchmarks' canned stub (bench/stub.py) records one DBS saga through the sandbox, then
replays it to every referral with that referral's own ids, without the sandbox: `make bench`
is only as true as this."""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator

import httpx
import pytest
from aiohttp import web

from bench import stub
from bench.suite import calls_per_referral, run_worker
from bench.throughput import give_slots
from sandbox.testing import SandboxAdmin, SandboxHandle


@pytest.fixture
async def stub_root(sandbox: SandboxHandle) -> AsyncIterator[tuple[str, stub.Stub]]:
    app = stub.create_app(sandbox.root_url)
    runner = web.AppRunner(app)
    await runner.setup()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    site = web.TCPSite(runner, "127.0.0.1", port)
    await site.start()
    yield f"http://127.0.0.1:{port}", app[stub.STUB]
    await runner.cleanup()


async def test_the_stub_replays_a_dbs_saga_with_each_referrals_ids(
    stub_root: tuple[str, stub.Stub],
    sandbox: SandboxHandle,
    sandbox_admin: SandboxAdmin,
    amqp_url: str,
) -> None:
    root, state = stub_root
    await give_slots(sandbox.root_url, 12)
    recording = await run_worker(root, amqp_url, requests=1, concurrency=1)
    assert recording["outcomes"] == {"COMPLETED": 1}
    recorded_calls = len(await sandbox_admin.requests())

    async with httpx.AsyncClient(base_url=root) as admin:
        endpoints = (await admin.post("/_stub/replay")).json()["endpoints"]
        (await admin.post("/_sandbox/reset")).raise_for_status()
    assert len(endpoints) == 8  # A004, A010, A011, A020, A012, A015, A016, A019

    figures = await run_worker(root, amqp_url, requests=5, concurrency=5)

    assert figures["outcomes"] == {"COMPLETED": 5}
    assert len(await sandbox_admin.requests()) == recorded_calls  # none reached the sandbox
    assert (await calls_per_referral(root))["median"] == 7
    # A UBRN of its own per referral, each kept with its own patient.
    assert len(state.patients) == 5
    assert len(set(state.patients.values())) == 5
    assert state.recorded.ubrn not in state.patients
