"""`ers-worker run` with a setting it must refuse: exit 2, one line on stderr, no traceback."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import orjson
import pytest

from worker.ops.settings import ENV_FILE_ENV, Settings


def run_worker(tmp_path: Path, **settings: str) -> subprocess.CompletedProcess[str]:
    names = {f.validation_alias.choices[0] for f in Settings.model_fields.values()}  # type: ignore[union-attr]
    env = {k: v for k, v in os.environ.items() if k not in names and k != ENV_FILE_ENV}
    return subprocess.run(
        [sys.executable, "-m", "worker.ops.cli", "run"],
        env={**env, "AMQP_URL": "amqp://guest:guest@127.0.0.1:1/", **settings},
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


@pytest.mark.parametrize(
    ("settings", "line"),
    [
        (
            {"LOG_LEVEL": "verbose", "PATIENT_KEY_SECRET": "s3cr3t-for-the-test"},
            "ers-worker: invalid settings: LOG_LEVEL: Input should be 'DEBUG', 'INFO', "
            "'WARNING', 'ERROR' or 'CRITICAL' (got 'VERBOSE')",
        ),
        (
            {"ERS_ENVIRONMENT": "staging", "PATIENT_KEY_SECRET": "s3cr3t-for-the-test"},
            "ers-worker: invalid settings: ERS_ENVIRONMENT: Input should be 'sandbox', "
            "'integration' or 'production' (got 'staging')",
        ),
        (
            {"ERS_ENVIRONMENT": "integration"},
            "ers-worker: PATIENT_KEY_SECRET is the shipped default, with which anyone can "
            "compute a patient's key from the NHS number: set a long random secret (the same "
            "on every replica), or ERS_ENVIRONMENT=sandbox",
        ),
        (
            {
                "ERS_BASE_URL": "http://ers.example.org/referrals/FHIR",
                "PATIENT_KEY_SECRET": "s3cr3t-for-the-test",
            },
            "ers-worker: invalid settings: ERS_BASE_URL: is plain http:// to a host that is not "
            "loopback: use https://, or set ERS_ALLOW_PLAIN_HTTP=true for a sandbox on another "
            "host (got 'http://ers.example.org/referrals/FHIR')",
        ),
    ],
    ids=["log-level", "environment", "default-secret", "plain-http"],
)
def test_run_refuses_a_bad_setting_in_one_line(
    tmp_path: Path, settings: dict[str, str], line: str
) -> None:
    done = run_worker(tmp_path, **settings)
    assert done.returncode == 2
    # `run` logs JSON, its start-up failure included: one line, whose reason is the line
    # the other subcommands print.
    [logged] = done.stderr.splitlines()
    record = orjson.loads(logged)
    assert record["level"] == "critical"
    assert record["why"] == line.removeprefix("ers-worker: ")
    assert "s3cr3t" not in done.stderr
    assert done.stdout == ""


def test_run_reads_worker_env_from_its_directory(tmp_path: Path) -> None:
    (tmp_path / "worker.env").write_text("PATIENT_KEY_SECRET=s3cr3t-for-the-test\nLOG_LEVEL=loud\n")
    done = run_worker(tmp_path)
    assert done.returncode == 2
    [logged] = done.stderr.splitlines()
    assert orjson.loads(logged)["why"].startswith("invalid settings: LOG_LEVEL: ")
