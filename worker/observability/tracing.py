"""W3C trace context through the saga, with OpenTelemetry where it is installed and set up.

A request's AMQP headers may carry ``traceparent``/``tracestate``. When the
``opentelemetry-api`` package is installed and the process has a tracer provider configured
(by the OpenTelemetry SDK or its auto-instrumentation), each saga becomes a span continuing
that trace, each e-RS call a child span whose context travels in the call's ``traceparent``
header, and the events carry the saga's context. Otherwise every function here does nothing.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

try:
    from opentelemetry import propagate, trace
except ImportError:  # tracing is optional: pip install 'ers-worker[tracing]'
    propagate = None  # type: ignore[assignment]
    trace = None  # type: ignore[assignment]

_TRACER_NAME = "ers-worker"


def _tracer() -> Any | None:
    if trace is None:
        return None
    provider = trace.get_tracer_provider()
    # The API's default provider is a proxy that records nothing until one is configured.
    if isinstance(provider, trace.ProxyTracerProvider | trace.NoOpTracerProvider):
        return None
    return provider.get_tracer(_TRACER_NAME)


def _carrier(headers: Mapping[str, Any]) -> dict[str, str]:
    return {
        k: v.decode() if isinstance(v, bytes) else str(v)
        for k, v in headers.items()
        if k in ("traceparent", "tracestate")
    }


@contextmanager
def saga_span(headers: Mapping[str, Any], request_id: str) -> Iterator[None]:
    """The span of one saga, child of the trace the request message carried (if any)."""
    tracer = _tracer()
    if tracer is None or propagate is None:
        yield
        return
    parent = propagate.extract(_carrier(headers))
    with tracer.start_as_current_span(
        "ers.saga", context=parent, attributes={"ers.request_id": request_id}
    ):
        yield


@contextmanager
def call_span(endpoint: str, headers: dict[str, str]) -> Iterator[None]:
    """A child span for one e-RS call; its context is injected into the call's headers."""
    tracer = _tracer()
    if tracer is None or propagate is None:
        yield
        return
    with tracer.start_as_current_span(
        f"ers.{endpoint}", kind=trace.SpanKind.CLIENT, attributes={"ers.endpoint": endpoint}
    ):
        propagate.inject(headers)
        yield


def current_headers() -> dict[str, str]:
    """The current trace context as message headers (empty when tracing is off)."""
    if _tracer() is None or propagate is None:
        return {}
    carrier: dict[str, str] = {}
    propagate.inject(carrier)
    return carrier
