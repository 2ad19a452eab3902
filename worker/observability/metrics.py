"""The worker's Prometheus metrics, in one container that takes its registry.

Names: ``ers_worker_`` then what is counted; ``api_`` is the e-RS API (the only API the
worker calls), ``rate_limit_`` the worker's own budget for it. Rules: names follow
Prometheus conventions (base units, ``_total`` counters, ``_seconds``);
every label takes values from a closed set (enums, endpoint ids, e-RS error codes, which the
spec enumerates); never a patient identifier, UBRN, request id or free text.
"""

from __future__ import annotations

import platform
import re
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from importlib.metadata import PackageNotFoundError, version

from prometheus_client import (
    GC_COLLECTOR,
    PLATFORM_COLLECTOR,
    PROCESS_COLLECTOR,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
)

from schemas.events import OutcomeStatus, Path, Step

PREFIX = "ers_worker"
_CODE = re.compile(r"^[A-Z0-9_]{1,48}$")

# Message results, as operators read them.
PROCESSED = "processed"  # a saga ran and ended (whatever its outcome)
ALREADY_FINISHED = "already_finished"  # a finished request again: its stored outcome resent
REJECTED = "rejected"  # invalid message
DELAYED = "delayed"  # sent to a delay queue
REQUEUED = "requeued"  # handed back on shutdown
POISONED = "poisoned"  # last delivery of a message that never settled


# The token exchange's results (label values): ok, transient faults, and the OAuth errors
# (RFC 6749 section 5.2) a refusal names, with the API platform's own "public_key error" (a
# signature its JWKS for the application does not verify, or no JWKS) as public_key_error,
# and its invalid_request naming the subject_token (an ID token it refuses: upstream's, not
# the worker's credentials) as invalid_id_token; anything else is "other".
TOKEN_EXCHANGE_RESULTS = (
    "ok",
    "rate_limited",
    "unavailable",
    "server_error",
    "timeout",
    "connection_error",
    "unreadable",
    "invalid_request",
    "invalid_id_token",
    "invalid_client",
    "invalid_grant",
    "unauthorized_client",
    "unsupported_grant_type",
    "invalid_scope",
    "public_key_error",
    "other",
)


def bounded_code(code: str | None) -> str:
    """An error code as a label value, lower case like every other label value: e-RS' codes
    are a closed list; anything else is ``other``."""
    if code is None:
        return "none"
    return code.lower() if _CODE.match(code) else "other"


def status_class(status: int | None) -> str:
    return f"{status // 100}xx" if status else "no_response"


def _version() -> str:
    try:
        return version("ers-worker")
    except PackageNotFoundError:
        return "unknown"


class Metrics:
    def __init__(
        self, registry: CollectorRegistry | None = None, park_reasons: Iterable[str] = ()
    ) -> None:
        """``park_reasons``: the reasons a message is parked for (``worker.saga.policy``),
        each shown at 0 from the start."""
        self.registry = registry or CollectorRegistry()
        r = self.registry
        # process_* (CPU, memory, open files, start time), python_info and python_gc_*: the
        # client's own collectors, on the registry that /metrics serves.
        for collector in (PROCESS_COLLECTOR, PLATFORM_COLLECTOR, GC_COLLECTOR):
            r.register(collector)
        self.messages = Counter(
            f"{PREFIX}_messages_consumed",
            "Request messages consumed, by result.",
            ["result"],
            registry=r,
        )
        self.sagas_finished = Counter(
            f"{PREFIX}_sagas_finished",
            "Sagas that reached a terminal outcome.",
            ["outcome", "path"],
            registry=r,
        )
        self.saga_duration = Histogram(
            f"{PREFIX}_saga_duration_seconds",
            "Time from a saga's (re)start in this process to its outcome.",
            ["outcome"],
            buckets=(0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800),
            registry=r,
        )
        self.step_attempts = Counter(
            f"{PREFIX}_step_attempts", "Saga step attempts.", ["step"], registry=r
        )
        self.step_failures = Counter(
            f"{PREFIX}_step_failures",
            "Saga steps that failed, waited or need a person.",
            ["step", "reason"],
            registry=r,
        )
        self.ers_requests = Counter(
            f"{PREFIX}_api_requests",
            "e-RS API calls (each attempt).",
            ["endpoint", "status_class"],
            registry=r,
        )
        self.ers_latency = Histogram(
            f"{PREFIX}_api_request_duration_seconds",
            "e-RS API call latency.",
            ["endpoint"],
            buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120),
            registry=r,
        )
        self.ers_retries = Counter(
            f"{PREFIX}_api_retries",
            "e-RS calls retried in process.",
            ["endpoint", "reason"],
            registry=r,
        )
        self.last_ers_success = Gauge(
            f"{PREFIX}_api_last_success_timestamp_seconds",
            "Unix time of the last successful e-RS call.",
            registry=r,
        )
        # --- the application's e-RS budget (worker.ers.budget) ---
        self.permit_wait = Histogram(
            f"{PREFIX}_rate_limit_permit_wait_seconds",
            "Time an e-RS call waited for its permit from the budget, by clinical priority.",
            ["priority"],
            buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
            registry=r,
        )
        self.rate_limited = Counter(
            f"{PREFIX}_api_rate_limited",
            "429 answers from e-RS: each pauses every replica (the budget is set too high).",
            registry=r,
        )
        self.late_permits = Counter(
            f"{PREFIX}_rate_limit_late_permits",
            "e-RS calls that reached the wire late after their permit (a new connection) "
            "and took a fresh one, so that e-RS sees them spaced: one call's budget each.",
            registry=r,
        )
        self.rate_limit_fallbacks = Counter(
            f"{PREFIX}_rate_limit_fallbacks",
            "Times this replica lost the shared budget's store and fell back to its share.",
            registry=r,
        )
        self.rate_limit_shared_unreachable = Gauge(
            f"{PREFIX}_rate_limit_shared_store_unreachable",
            "1 while this replica spends its local share because the shared store is down.",
            registry=r,
        )
        self.rate_limit_per_second = Gauge(
            f"{PREFIX}_rate_limit_per_second",
            "e-RS calls/s this replica may spend now: the application's budget when shared, "
            "its local share otherwise.",
            registry=r,
        )
        # --- the API platform's token exchange (worker.ers.token_exchange) ---
        self.token_exchange_attempts = Counter(
            f"{PREFIX}_token_exchange_attempts",
            "Token exchanges (CIS2 ID token for an access token), each attempt, by result: "
            "ok, a transient fault, or the OAuth error of a refusal.",
            ["result"],
            registry=r,
        )
        self.token_exchange_latency = Histogram(
            f"{PREFIX}_token_exchange_duration_seconds",
            "Latency of one token exchange attempt.",
            buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
            registry=r,
        )
        self.token_exchange_cache = Counter(
            f"{PREFIX}_token_exchange_cache_lookups",
            "Access-token cache lookups before an e-RS call, by result (hit, miss).",
            ["result"],
            registry=r,
        )
        self.sorted = Counter(
            f"{PREFIX}_requests_sorted",
            "Requests moved from the intake queue to their priority's work queue.",
            ["priority"],
            registry=r,
        )
        self.time_to_outcome = Histogram(
            f"{PREFIX}_time_to_outcome_seconds",
            "Time from a request's first sight to its outcome, by clinical priority.",
            ["priority"],
            buckets=(1, 5, 10, 30, 60, 120, 300, 600, 1800, 3600, 14400, 86400),
            registry=r,
        )
        self.delayed = Counter(
            f"{PREFIX}_delayed_messages",
            "Messages sent to a delay queue.",
            ["delay_seconds", "reason"],
            registry=r,
        )
        self.dead_lettered = Counter(
            f"{PREFIX}_dead_lettered_messages",
            "Messages parked in the dead-letter queue.",
            ["reason"],
            registry=r,
        )
        self.in_flight = Gauge(
            f"{PREFIX}_sagas_in_flight",
            "Sagas running in this process (holding a slot).",
            registry=r,
        )
        self.oldest_age = Gauge(
            f"{PREFIX}_oldest_saga_age_seconds",
            "Age of the oldest saga running in this process (0 when none).",
            registry=r,
        )
        self.consumer_attached = Gauge(
            f"{PREFIX}_consumer_attached", "1 while the worker consumes its queue.", registry=r
        )
        self.build_info = Gauge(
            f"{PREFIX}_build_info",
            "Build of the running worker.",
            ["version", "python"],
            registry=r,
        )
        self.build_info.labels(version=_version(), python=platform.python_version()).set(1)
        self._started: dict[int, float] = {}
        self.oldest_age.set_function(self._oldest)
        self._zero_known_series(park_reasons)

    def _zero_known_series(self, park_reasons: Iterable[str]) -> None:
        """Show every known label set from the start: a series that first appears at 1 is
        invisible to rate() and increase(), so the first dead letter would go unseen."""
        for result in (PROCESSED, ALREADY_FINISHED, REJECTED, DELAYED, REQUEUED, POISONED):
            self.messages.labels(result)
        for outcome in OutcomeStatus:
            for path in [*(p.value.lower() for p in Path), "none"]:
                self.sagas_finished.labels(outcome.value.lower(), path)
        for reason in park_reasons:
            self.dead_lettered.labels(bounded_code(reason))
        for result in TOKEN_EXCHANGE_RESULTS:
            self.token_exchange_attempts.labels(result)
        for result in ("hit", "miss"):
            self.token_exchange_cache.labels(result)

    # --- worker.saga.ports.SagaObserver ---

    def step_started(self, step: Step) -> None:
        self.step_attempts.labels(step.value).inc()

    def step_failed(self, step: Step, reason: str) -> None:
        self.step_failures.labels(step.value, bounded_code(reason)).inc()

    def _oldest(self) -> float:
        return time.monotonic() - min(self._started.values()) if self._started else 0.0

    @contextmanager
    def in_flight_message(self) -> Iterator[None]:
        """Count one message being handled, and how long the oldest has been."""
        key = object()
        self._started[id(key)] = time.monotonic()
        self.in_flight.inc()
        try:
            yield
        finally:
            del self._started[id(key)]
            self.in_flight.dec()
