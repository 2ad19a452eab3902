"""A full saga with known patient values: none of them reaches any log line."""

from __future__ import annotations

import logging

import pytest

from tests.harness import TEST_TOKEN, Harness, sample
from worker.app import guard_library_loggers


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
    worker_records = [r for r in caplog.records if not r.name.startswith("sandbox")]
    assert worker_records, "the worker logged nothing: the test would prove nothing"
    for record in worker_records:
        line = f"{record.getMessage()} {record.__dict__}"
        for secret in secrets:
            assert secret not in line, f"{record.name} logged a secret"
