"""A full saga with known patient values: every log line is JSON, carries the saga's ids, and
none of those values reaches any line."""

from __future__ import annotations

import logging

import orjson
import pytest

from tests.harness import TEST_TOKEN, Harness, sample
from worker.observability.logs import JsonFormatter
from worker.ops.app import guard_library_loggers


async def test_no_patient_identifier_or_token_in_any_log_line(
    harness: Harness, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    guard_library_loggers()  # as the worker's logging set-up does
    request = sample("01-dbs-booked.json")
    bad = sample("01-dbs-booked.json")
    bad["patient"]["nhs_number"] = "9990010006"  # invalid: rejected, still must not be logged

    for body in (request, bad):
        cid = await harness.publish(body)
        await harness.outcome(cid)
    await harness.settle()

    secrets = [
        request["patient"]["nhs_number"],
        bad["patient"]["nhs_number"],
        TEST_TOKEN,
        request["attachments"][0]["content"],
        "Dear colleague",
    ]
    # The sandbox is e-RS' stand-in, not ours: what it logs is not the worker's to answer for.
    records = [r for r in caplog.records if not r.name.startswith("sandbox")]
    formatter = JsonFormatter()
    lines = [formatter.format(r) for r in records]
    assert lines, "the worker logged nothing: the test would prove nothing"
    for record, line in zip(records, lines, strict=True):
        raw = f"{record.getMessage()} {record.__dict__}"
        for secret in secrets:
            assert secret not in line, f"{record.name} wrote a secret to its log line"
            if record.name.startswith("worker"):
                assert secret not in raw, f"{record.name} passed a secret to the logger"
    parsed = [orjson.loads(line) for line in lines]
    steps = [p for p in parsed if p["msg"] == "step ended"]
    assert {p["step"] for p in steps} >= {"SEARCH", "CREATE", "BOOK_OR_DEFER", "PATIENT_LETTER"}
    assert all(p["request_id"] == request["request_id"] for p in steps)
    assert all(p["correlation_id"] and isinstance(p["duration_ms"], int) for p in steps)
