"""The metric names and label values operators' dashboards and alerts are written against."""

from __future__ import annotations

from prometheus_client import generate_latest

from worker.observability.metrics import ALREADY_FINISHED, Metrics, bounded_code
from worker.saga.policy import PARK_REASONS


def exposition(metrics: Metrics) -> str:
    return generate_latest(metrics.registry).decode()


def test_the_process_metrics_are_served_with_the_workers() -> None:
    text = exposition(Metrics())
    for name in (
        "process_cpu_seconds_total",
        "process_resident_memory_bytes",
        "process_open_fds",
        "process_start_time_seconds",
        "python_info",
        "python_gc_collections_total",
    ):
        assert f"\n{name}" in text, name


def test_two_metrics_containers_each_serve_the_process_metrics() -> None:
    # One per worker in a test process: registering the shared collectors twice must work.
    assert "process_cpu_seconds_total" in exposition(Metrics())
    assert "process_cpu_seconds_total" in exposition(Metrics())


def test_no_name_says_ers_twice() -> None:
    names = {
        line.split()[2]
        for line in exposition(Metrics(park_reasons=PARK_REASONS)).splitlines()
        if line.startswith("# TYPE ers_worker_")
    }
    assert {"ers_worker_api_requests_total", "ers_worker_rate_limit_permit_wait_seconds"} <= names
    assert not [n for n in names if n.startswith("ers_worker_ers_") or "_ers_" in n[10:]]


def test_reason_label_values_are_lower_case_like_the_outcomes() -> None:
    assert bounded_code("TOO_MANY_REQUESTS") == "too_many_requests"
    assert bounded_code("free text: 9990010005") == "other"
    assert bounded_code(None) == "none"
    metrics = Metrics(park_reasons=PARK_REASONS)
    parked = {
        sample.labels["reason"]
        for family in metrics.dead_lettered.collect()
        for sample in family.samples
    }
    assert parked and all(reason == reason.lower() for reason in parked)
    assert "invalid_message" in parked


def test_a_resent_finished_request_is_counted_as_already_finished() -> None:
    metrics = Metrics()
    assert ALREADY_FINISHED == "already_finished"
    value = metrics.registry.get_sample_value(
        "ers_worker_messages_consumed_total", {"result": "already_finished"}
    )
    assert value == 0  # shown from the start
    assert (
        metrics.registry.get_sample_value(
            "ers_worker_messages_consumed_total", {"result": "replayed"}
        )
        is None
    )
