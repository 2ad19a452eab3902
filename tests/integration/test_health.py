"""The operations endpoint of a running worker: /healthz, /readyz and /metrics."""

from __future__ import annotations

import asyncio

import httpx
from prometheus_client.parser import text_string_to_metric_families

from tests.harness import Harness, sample


def _url(harness: Harness, path: str) -> str:
    return f"http://127.0.0.1:{harness.worker.health.port}{path}"


def _samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


async def test_ready_while_consuming_not_ready_when_draining(harness: Harness) -> None:
    async with httpx.AsyncClient() as client:
        assert (await client.get(_url(harness, "/healthz"))).status_code == 200
        ready = await client.get(_url(harness, "/readyz"))
        assert ready.status_code == 200, ready.text
        harness.worker._stopping = True  # the first thing stop() does
        draining = await client.get(_url(harness, "/readyz"))
    harness.worker._stopping = False
    assert draining.status_code == 503
    assert draining.json()["problems"] == ["draining"]


async def test_metrics_count_what_happened(harness: Harness) -> None:
    cid = await harness.publish(sample("03-ibs-shortlisted.json"))
    await harness.outcome(cid)
    bad = await harness.publish(b"not json")
    await harness.outcome(bad)
    found: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
    text = ""

    def value(name: str, **labels: str) -> float:
        return found.get((name, tuple(sorted(labels.items()))), 0.0)

    async with httpx.AsyncClient() as client:
        # A message is counted once acknowledged, a moment after its outcome is out.
        async def scrape() -> None:
            nonlocal text
            text = (await client.get(_url(harness, "/metrics"))).text
            found.clear()
            found.update(_samples(text))

        deadline = asyncio.get_running_loop().time() + 10
        await scrape()
        while (
            value("ers_worker_messages_consumed_total", result="rejected") < 1
            or value("ers_worker_messages_consumed_total", result="processed") < 1
        ):
            assert asyncio.get_running_loop().time() < deadline, "messages never counted"
            await asyncio.sleep(0.05)
            await scrape()
    calls = await harness.sandbox.requests()

    assert value("ers_worker_messages_consumed_total", result="processed") == 1
    assert value("ers_worker_messages_consumed_total", result="rejected") == 1
    assert (
        value("ers_worker_sagas_finished_total", outcome="completed", path="ibs_shortlisted") == 1
    )
    assert value("ers_worker_dead_lettered_messages_total", reason="invalid_message") == 1
    ers_calls = sum(v for (name, _), v in found.items() if name == "ers_worker_api_requests_total")
    assert ers_calls == len(calls)
    assert value("ers_worker_consumer_attached") == 1
    assert value("ers_worker_sagas_in_flight") == 0
    assert value("ers_worker_api_last_success_timestamp_seconds") > 0
    assert "9912003888" not in text and "ers_worker_build_info" in text
