"""`ers-worker run` as a process: what it writes to stderr is JSON lines, library lines
interpolated and filtered, and a failure to start is one of them."""

from __future__ import annotations

import asyncio
import os
import socket
import sys
import uuid
from pathlib import Path

import orjson
import pytest

from worker.messaging.topology import Names, remove
from worker.ops.settings import Settings


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def env(tmp_path: Path, **extra: str) -> dict[str, str]:
    return {
        **os.environ,
        "METRICS_PORT": "0",
        "PATIENT_KEY_SECRET": "startup-logs-test-secret",  # not the default: run refuses that
        "SAGA_STORE_PATH": str(tmp_path / "sagas.db"),
        "LETTERS_DIR": str(tmp_path / "letters"),
        **extra,
    }


async def run_worker(environment: dict[str, str]) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        sys.executable, "-m", "worker.ops.cli", "run",
        env=environment, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip


async def test_a_start_up_failure_is_a_json_line_naming_the_setting(tmp_path: Path) -> None:
    process = await run_worker(env(tmp_path, AMQP_PREFETCH="0"))
    _, err = await asyncio.wait_for(process.communicate(), 30)
    assert process.returncode == 2
    lines = [orjson.loads(line) for line in err.decode().splitlines()]  # every line is JSON
    assert lines[-1]["level"] == "critical"
    assert lines[-1]["msg"] == "exiting on an error"
    # load_settings() names the setting in its one line (its value only for enumerations).
    assert lines[-1]["error"] == "OperatorError"
    assert lines[-1]["why"].startswith("invalid settings: AMQP_PREFETCH: ")
    assert "Traceback" not in err.decode()


async def test_a_store_it_cannot_open_is_a_json_line_with_the_os_reason(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("")  # a file where the store's directory should be
    process = await run_worker(env(tmp_path, SAGA_STORE_PATH=str(tmp_path / "file" / "s.db")))
    _, err = await asyncio.wait_for(process.communicate(), 30)
    assert process.returncode == 2
    last = orjson.loads(err.decode().splitlines()[-1])
    assert last["msg"] == "exiting on an error"
    assert last["error"] == "FileExistsError"
    assert str(tmp_path / "file") in last["why"]


async def test_library_lines_are_interpolated_without_the_broker_password(
    tmp_path: Path,
) -> None:
    closed = free_port()  # nothing listens: aiormq logs its failure to connect, with %r
    url = f"amqp://guest:s3cret-pw@127.0.0.1:{closed}/"
    process = await run_worker(env(tmp_path, AMQP_URL=url, LOG_LEVEL="INFO"))
    assert process.stderr is not None
    seen: list[dict[str, object]] = []
    try:
        async with asyncio.timeout(30):
            while not any(str(s["logger"]).startswith("aiormq") for s in seen):
                raw = await process.stderr.readline()
                assert raw, "the worker exited before a library line"
                assert b"s3cret-pw" not in raw
                seen.append(orjson.loads(raw))
    finally:
        process.terminate()
        await process.wait()
    library = next(s for s in seen if str(s["logger"]).startswith("aiormq"))
    assert library["msg"] != "error when creating transport: %r"
    assert "%r" not in str(library["msg"]) and "%s" not in str(library["msg"])
    assert str(library["msg"]).startswith("error when creating transport: ")


@pytest.mark.parametrize(("setting", "loop"), [(None, "uvloop"), ("asyncio", "asyncio")])
async def test_the_consuming_line_names_the_event_loop(
    tmp_path: Path, amqp_url: str, setting: str | None, loop: str
) -> None:
    names = Names(f"loop-{uuid.uuid4().hex[:8]}")
    extra = {"AMQP_URL": amqp_url, "TOPOLOGY_PREFIX": names.prefix, "LOG_LEVEL": "INFO"}
    if setting is not None:
        extra["EVENT_LOOP"] = setting
    process = await run_worker(env(tmp_path, **extra))
    assert process.stderr is not None
    try:
        async with asyncio.timeout(30):
            while True:
                raw = await process.stderr.readline()
                assert raw, "the worker exited before it consumed"
                line = orjson.loads(raw)
                if line["msg"] == "consuming":
                    break
    finally:
        process.terminate()
        await process.wait()
        await remove(amqp_url, names, delays=Settings().retry_delays)
    assert line["event_loop"] == loop
