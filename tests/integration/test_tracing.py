"""W3C trace context: taken from the request's AMQP headers, continued through every e-RS
call and into the events, when OpenTelemetry is set up."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from tests.harness import Harness, sample

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT_SPAN = "00f067aa0ba902b7"
_EXPORTER = InMemorySpanExporter()


@pytest.fixture
def spans() -> Iterator[InMemorySpanExporter]:
    # A process has one global tracer provider: set it once, keep it for the session.
    if not isinstance(trace.get_tracer_provider(), TracerProvider):
        provider = TracerProvider()
        provider.add_span_processor(SimpleSpanProcessor(_EXPORTER))
        trace.set_tracer_provider(provider)
    _EXPORTER.clear()
    yield _EXPORTER
    _EXPORTER.clear()


async def test_without_a_tracer_provider_nothing_is_added(harness: Harness) -> None:
    if isinstance(trace.get_tracer_provider(), TracerProvider):
        pytest.skip("a tracer provider is already set in this process")
    cid = await harness.publish(sample("03-ibs-shortlisted.json"))
    await harness.outcome(cid)
    replies = [r for r in harness.replies if r.correlation_id == cid]
    assert replies
    assert all("traceparent" not in r.headers for r in replies)


async def test_trace_continues_through_the_saga(
    harness: Harness, spans: InMemorySpanExporter
) -> None:
    cid = await harness.publish(
        sample("03-ibs-shortlisted.json"),
        headers={"traceparent": f"00-{TRACE_ID}-{PARENT_SPAN}-01"},
    )
    await harness.outcome(cid)
    await harness.settle()

    finished = spans.get_finished_spans()
    (saga,) = [s for s in finished if s.name == "ers.saga"]
    assert f"{saga.context.trace_id:032x}" == TRACE_ID
    assert saga.parent is not None and f"{saga.parent.span_id:016x}" == PARENT_SPAN
    calls = [s for s in finished if s.name.startswith("ers.A")]
    assert len(calls) == len(await harness.sandbox.requests())
    assert all(s.parent is not None and s.parent.span_id == saga.context.span_id for s in calls)
    replies = [r for r in harness.replies if r.correlation_id == cid]
    assert len(replies) == 2  # the letter-ready event and the outcome
    assert {r.headers["traceparent"].split("-")[1] for r in replies} == {TRACE_ID}
