"""The CLI's contract with scripts and people: exit codes, one-line errors, JSON output.

Every test runs ``python -m worker.ops.cli`` as a process, against the real broker where one
is involved, and reads its exit code, stdout and stderr.
"""

from __future__ import annotations

import asyncio
import fcntl
import os
import pty
import struct
import sys
import termios
from pathlib import Path
from typing import Any

import aio_pika
import orjson
import pytest

from tests.conftest import delete_topology
from tests.harness import TEST_TOKEN, Harness, sample
from tests.processes import worker_env
from worker.messaging.intake import Rejection, parse_request
from worker.messaging.topology import Names, declare
from worker.ops.samples import SAMPLES, mixed_batch
from worker.ops.settings import Settings

CLI = (sys.executable, "-m", "worker.ops.cli")


async def run(*args: str, env: dict[str, str] | None = None) -> tuple[int, str, str]:
    process = await asyncio.create_subprocess_exec(
        *CLI,
        *args,
        env=env if env is not None else dict(os.environ),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(process.communicate(), timeout=120)
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()


def one_line(err: str) -> str:
    """The whole of stderr, which must be a single line and no traceback."""
    assert "Traceback" not in err, err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    return lines[0]


def write(tmp_path: Path, name: str, request: dict[str, Any]) -> Path:
    path = tmp_path / name
    path.write_bytes(orjson.dumps(request))
    return path


async def queue_depth(amqp_url: str, name: str) -> int:
    connection = await aio_pika.connect(amqp_url)
    async with connection:
        channel = await connection.channel()
        queue = await channel.declare_queue(name, passive=True)
        return queue.declaration_result.message_count or 0


async def declared(settings: Settings) -> None:
    connection = await aio_pika.connect(settings.amqp_url.get_secret_value())
    async with connection:
        channel = await connection.channel()
        await declare(
            channel,
            Names(settings.topology_prefix),
            delivery_limit=settings.delivery_limit,
            delays=settings.retry_delays,
        )


# --- help, version ---


async def test_version_and_a_clean_top_level_help() -> None:
    code, out, err = await run("--version")
    assert (code, err) == (0, "")
    assert out.strip() == "ers-worker 0.1.0"

    code, out, _ = await run("--help")
    assert code == 0
    assert "``" not in out
    commands = ("run", "demo", "validate", "submit", "status", "dead-letters", "schemas", "jwks")
    for command in commands:
        assert f"\n    {command} " in out or f"\n    {command}\n" in out
    assert "exit codes" in out and "\n  130  interrupted" in out


def test_every_positional_and_option_has_help() -> None:
    import argparse

    from worker.ops.cli import _parser

    def parsers(parser: argparse.ArgumentParser) -> list[argparse.ArgumentParser]:
        found = [parser]
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                for child in action.choices.values():
                    found += parsers(child)
        return found

    missing = [
        f"{parser.prog} {action.dest}"
        for parser in parsers(_parser())
        for action in parser._actions
        if not isinstance(action, argparse._SubParsersAction) and not action.help
    ]
    assert missing == []


async def test_a_usage_error_exits_2() -> None:
    code, _, err = await run("submit")
    assert code == 2 and "the following arguments are required: FILE" in err


# --- validate ---


async def test_validate_checks_offline_with_the_workers_intake(tmp_path: Path) -> None:
    not_json = tmp_path / "not-json.json"
    not_json.write_bytes(b"{nope")
    files = [*sorted(SAMPLES.glob("*.json")), not_json]
    # No broker, no saga store: validate needs neither.
    env = {**os.environ, "AMQP_URL": "amqp://guest:guest@127.0.0.1:9/", "SAGA_STORE": "nonsense"}

    code, out, err = await run("validate", "--json", *map(str, files), env=env)

    assert code == 1, err
    reports = {Path(r["file"]).name: r for r in map(orjson.loads, out.splitlines())}
    assert len(reports) == len(files)
    for path in files:  # the very verdict the worker's intake gives the same bytes
        parsed = parse_request(path.read_bytes())
        expected = (
            [p.model_dump(mode="json") for p in parsed.problems]
            if isinstance(parsed, Rejection)
            else []
        )
        assert reports[path.name]["problems"] == expected
        assert reports[path.name]["valid"] is (expected == [])
    assert not reports["01-dbs-booked.json"]["problems"]
    fields = {p["field"] for p in reports["06-invalid-nhs-number.json"]["problems"]}
    assert "patient.nhs_number" in fields
    assert "9990010006" not in out  # problems name fields and rules, never values

    code, out, _ = await run("validate", str(SAMPLES / "06-invalid-nhs-number.json"))
    assert code == 1
    assert "06-invalid-nhs-number.json: invalid: patient.nhs_number: " in out

    code, out, err = await run("validate", str(SAMPLES / "01-dbs-booked.json"))
    assert (code, err) == (0, "")
    assert out.strip().endswith("01-dbs-booked.json: valid (request_id demo-dbs-booked)")


# --- submit ---


async def test_submit_publishes_nothing_when_a_file_is_missing(
    settings: Settings, amqp_url: str, tmp_path: Path
) -> None:
    await declared(settings)  # no worker: whatever is published stays in the queue
    try:
        good = write(tmp_path, "a.json", sample("03-ibs-shortlisted.json"))
        code, out, err = await run(
            "submit", str(good), str(tmp_path / "missing.json"), env=worker_env(settings)
        )
        assert code == 2 and out == ""
        line = one_line(err)
        assert "missing.json (No such file or directory)" in line and "nothing was" in line
        assert await queue_depth(amqp_url, Names(settings.topology_prefix).requests_queue) == 0

        bad = sample("03-ibs-shortlisted.json")
        bad["patient"]["nhs_number"] = "123"
        code, out, err = await run(
            "submit", str(good), str(write(tmp_path, "b.json", bad)), env=worker_env(settings)
        )
        assert code == 1 and out == ""
        assert "b.json: invalid: patient.nhs_number: " in err
        assert "nothing was published: 1 of 2 files are invalid" in err
        assert await queue_depth(amqp_url, Names(settings.topology_prefix).requests_queue) == 0
    finally:
        await delete_topology(amqp_url, settings)


async def test_submit_wait_exits_1_unless_every_outcome_completed(
    harness: Harness, settings: Settings, tmp_path: Path
) -> None:
    completes = write(tmp_path, "ok.json", sample("03-ibs-shortlisted.json"))
    fails = write(
        tmp_path,
        "fails.json",
        sample("01-dbs-booked.json", shortlist={"mode": "explicit", "service_ids": ["20001"]}),
    )
    env = worker_env(settings, ERS_ACCESS_TOKEN=TEST_TOKEN)

    code, out, err = await run("submit", "--wait", "--json", str(completes), env=env)
    assert code == 0, err
    (result,) = map(orjson.loads, out.splitlines())
    assert result["file"] == str(completes) and result["outcome"]["status"] == "COMPLETED"

    code, out, err = await run("submit", "--wait", "--json", str(completes), str(fails), env=env)
    assert code == 1, err
    statuses = {
        Path(r["file"]).name: r["outcome"]["status"] for r in map(orjson.loads, out.splitlines())
    }
    assert statuses == {"ok.json": "COMPLETED", "fails.json": "FAILED"}

    # No token: the outcome asks for re-authentication, which is not done either.
    fresh = write(tmp_path, "fresh.json", sample("03-ibs-shortlisted.json"))
    code, out, _ = await run("submit", "--wait", str(fresh), env=worker_env(settings))
    assert code == 1 and "REAUTHENTICATION_NEEDED" in out

    # Without --wait, published is all that was asked.
    code, out, err = await run("submit", "--json", str(fails), env=env)
    assert code == 0, err
    assert orjson.loads(out)["published"] is True


async def test_the_progress_bar_covers_the_wait_on_a_terminal_only(
    harness: Harness, settings: Settings, tmp_path: Path
) -> None:
    files = [
        str(write(tmp_path, f"r{i}.json", request))
        for i, request in enumerate(mixed_batch(10, ["03-ibs-shortlisted.json"]))
    ]
    env = worker_env(settings, ERS_ACCESS_TOKEN=TEST_TOKEN)
    code, _, err = await run("submit", "--wait", *files, env=env)
    assert code == 0, err
    assert "\r" not in err and err == ""  # stderr is a pipe here: no bar at all

    # On a terminal, the bar shows publishing and then the outcomes arriving.
    ours, theirs = pty.openpty()
    fcntl.ioctl(theirs, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 100, 0, 0))  # 100 columns
    process = await asyncio.create_subprocess_exec(
        *CLI, "submit", "--wait", *files[:3], env=env,
        stdout=asyncio.subprocess.PIPE, stderr=theirs,
    )  # fmt: skip
    os.close(theirs)
    try:
        await asyncio.wait_for(process.wait(), timeout=120)
    finally:
        if process.returncode is None:
            process.kill()
    drawn = b""
    while True:
        try:
            chunk = os.read(ours, 65536)
        except OSError:  # the terminal's other end closed: all of it read
            break
        if not chunk:
            break
        drawn += chunk
    os.close(ours)
    assert process.returncode == 0
    assert b"publishing: 100%" in drawn and b"outcomes: 100%" in drawn and b"3/3" in drawn


# --- one line and exit 2 for the environment's failures ---


SUBCOMMANDS = [
    ("submit", str(SAMPLES / "03-ibs-shortlisted.json")),
    ("dead-letters", "list"),
    ("dead-letters", "show", "some-id"),
    ("dead-letters", "replay", "some-id"),
    ("dead-letters", "drop", "some-id"),
]


@pytest.mark.parametrize("args", SUBCOMMANDS, ids=lambda a: " ".join(a[:2]))
async def test_a_broker_that_is_down_is_one_line_and_exit_2(
    settings: Settings, args: tuple[str, ...]
) -> None:
    env = worker_env(settings, AMQP_URL="amqp://guest:guest@127.0.0.1:9/")
    code, out, err = await run(*args, env=env)
    assert (code, out) == (2, "")
    assert one_line(err) == (
        "RabbitMQ is not reachable at 127.0.0.1:9: start one with `rabbitmq-server -detached` "
        "(or set AMQP_URL), then run again."
    )


@pytest.mark.parametrize("args", SUBCOMMANDS, ids=lambda a: " ".join(a[:2]))
async def test_a_wrong_password_is_one_line_and_exit_2(
    settings: Settings, amqp_url: str, args: tuple[str, ...]
) -> None:
    wrong = amqp_url.replace("guest:guest@", "guest:not-the-password@")
    code, out, err = await run(*args, env=worker_env(settings, AMQP_URL=wrong))
    assert (code, out) == (2, "")
    line = one_line(err)
    assert line.startswith("RabbitMQ at 127.0.0.1:5672 refused the login of user 'guest'")
    assert "check the user name and password in AMQP_URL" in line
    assert "not-the-password" not in line


@pytest.mark.parametrize("args", SUBCOMMANDS, ids=lambda a: " ".join(a[:2]))
async def test_a_wrong_prefix_is_one_line_and_exit_2(
    settings: Settings, args: tuple[str, ...]
) -> None:
    # The settings' prefix has no topology: no worker ever started under it.
    code, out, err = await run(*args, env=worker_env(settings))
    assert (code, out) == (2, "")
    line = one_line(err)
    assert f"has no queue '{settings.topology_prefix}." in line or (
        f"has no exchange '{settings.topology_prefix}." in line
    )
    assert f"(TOPOLOGY_PREFIX={settings.topology_prefix}): check TOPOLOGY_PREFIX" in line


async def test_an_invalid_setting_is_one_line_and_exit_2(settings: Settings) -> None:
    code, out, err = await run(
        "dead-letters", "list", env=worker_env(settings, TOPOLOGY_PREFIX="Not A Prefix!")
    )
    assert (code, out) == (2, "")
    assert one_line(err).startswith("invalid settings: TOPOLOGY_PREFIX: ")


async def test_status_without_a_saga_store_is_one_line_and_exit_2(
    settings: Settings, tmp_path: Path
) -> None:
    missing = tmp_path / "nowhere" / "sagas.db"
    code, out, err = await run(
        "status", "some-id", env=worker_env(settings, SAGA_STORE_PATH=str(missing))
    )
    assert (code, out) == (2, "")
    assert one_line(err).startswith(f"there is no saga store at {missing}: check SAGA_STORE_PATH")
    assert not missing.parent.exists()  # looking created nothing


async def test_status_json(harness: Harness, settings: Settings, tmp_path: Path) -> None:
    request = sample("03-ibs-shortlisted.json")
    env = worker_env(settings, ERS_ACCESS_TOKEN=TEST_TOKEN)
    code, _, err = await run("submit", "--wait", str(write(tmp_path, "r.json", request)), env=env)
    assert code == 0, err

    code, out, err = await run("status", "--json", request["request_id"], env=env)
    assert code == 0, err
    (saga,) = map(orjson.loads, out.splitlines())
    assert saga["request_id"] == request["request_id"] and saga["final"] is True
    assert saga["state"]["step"] == "DONE" and saga["outcome"]["status"] == "COMPLETED"
    assert "A010" in [call["endpoint"] for call in saga["state"]["history"]]
    assert request["patient"]["nhs_number"] not in out and TEST_TOKEN not in out

    code, out, err = await run("status", "--json", "no-such-request", env=env)
    assert (code, out) == (1, "")
    assert one_line(err) == "no saga with request id no-such-request"


async def test_dead_letters_list_json_lines_and_a_table(
    harness: Harness, settings: Settings
) -> None:
    harness.read_parked = False
    for _ in range(2):
        bad = sample("01-dbs-booked.json")
        bad["patient"]["nhs_number"] = "9990010006"
        await harness.publish(bad)
    await harness.wait_for_parked(2)

    code, out, err = await run("dead-letters", "list", "--json", env=worker_env(settings))
    assert code == 0, err
    listed = [orjson.loads(line) for line in out.splitlines()]
    assert [entry["reason"] for entry in listed] == ["INVALID_MESSAGE", "INVALID_MESSAGE"]

    code, out, err = await run("dead-letters", "list", "--limit", "1", env=worker_env(settings))
    assert code == 0
    header, row = out.splitlines()
    assert header.split()[:2] == ["message", "id"] and row.startswith(listed[0]["message_id"])
    assert one_line(err) == "showed 1 of 2 parked messages; for more: --offset 1"

    code, out, _ = await run(
        "dead-letters", "show", "--json", listed[0]["message_id"], env=worker_env(settings)
    )
    assert code == 0
    assert orjson.loads(out)["body"]["patient"]["nhs_number"] == "******0006"
    code, out, _ = await run(
        "dead-letters", "drop", "--json", listed[0]["message_id"], "gone", env=worker_env(settings)
    )
    assert code == 1  # one of the two was not there
    assert list(map(orjson.loads, out.splitlines())) == [
        {"message_id": listed[0]["message_id"], "result": "dropped"},
        {"message_id": "gone", "result": "not_found"},
    ]


async def test_schemas_json_lines() -> None:
    code, out, err = await run("schemas", "--json")
    assert (code, err) == (0, "")
    documents = {r["path"]: r["document"] for r in map(orjson.loads, out.splitlines())}
    assert "schemas/referral-request.v1.schema.json" in documents
    assert documents["schemas/referral-request.v1.schema.json"]["title"] == "ReferralRequestV1"
    assert all(not line.startswith("#") for line in out.splitlines())


# --- demo on a shared broker ---


async def test_demo_runs_under_topology_prefix_and_removes_only_its_own(
    settings: Settings, amqp_url: str, tmp_path: Path
) -> None:
    env = {
        **os.environ,
        "AMQP_URL": amqp_url,
        "TOPOLOGY_PREFIX": settings.topology_prefix,
        "SAGA_STORE_PATH": str(tmp_path / "sagas.db"),
        "LETTERS_DIR": str(tmp_path / "letters"),
        "METRICS_PORT": "0",
    }
    sample_file = str(SAMPLES / "03-ibs-shortlisted.json")
    code, out, err = await run("demo", sample_file, env=env)
    assert code == 0, err
    assert f"topology {settings.topology_prefix}" in out and "1 requests, 1 terminal" in out
    assert "tokens: 1 CIS2 ID tokens exchanged for access tokens at http://127.0.0.1:" in out
    with pytest.raises(aio_pika.exceptions.ChannelNotFoundEntity):  # removed at exit
        await queue_depth(amqp_url, Names(settings.topology_prefix).requests_queue)

    # A topology that was there before is someone's: the demo neither uses nor deletes it.
    await declared(settings)
    try:
        connection = await aio_pika.connect(amqp_url)
        async with connection:
            channel = await connection.channel()
            exchange = await channel.get_exchange(Names(settings.topology_prefix).requests_exchange)
            await exchange.publish(aio_pika.Message(b"{}"), routing_key="referral.request")
        code, out, err = await run("demo", sample_file, env=env)
        assert (code, out) == (2, "")
        line = one_line(err)
        assert line.startswith(
            f"a topology already exists under TOPOLOGY_PREFIX={settings.topology_prefix}"
        )
        assert await queue_depth(amqp_url, Names(settings.topology_prefix).requests_queue) == 1
    finally:
        await delete_topology(amqp_url, settings)


# --- demo: the token exchange by default, --static-token the quick path ---


def demo_env(settings: Settings, tmp_path: Path) -> dict[str, str]:
    # APIM_* and ERS_TOKEN_PROVIDER of the machine's own must not matter: the demo sets them.
    return {
        **{k: v for k, v in os.environ.items() if not k.startswith(("APIM_", "ERS_TOKEN"))},
        "AMQP_URL": settings.amqp_url.get_secret_value(),
        "TOPOLOGY_PREFIX": settings.topology_prefix,
        "SAGA_STORE_PATH": str(tmp_path / "sagas.db"),
        "LETTERS_DIR": str(tmp_path / "letters"),
        "METRICS_PORT": "0",
        "ERS_TOKEN_PROVIDER": "message-access-token",  # overridden by the demo either way
    }


def outcome_rows(out: str) -> dict[str, str]:
    """Each table row's request id stem (without the run's suffix) and its status."""
    rows = [line.split() for line in out.splitlines() if line.startswith("demo-")]
    return {row[0].rsplit("-", 1)[0]: row[1] for row in rows}


EXPECTED_STATUSES = {
    "demo-dbs-booked": "COMPLETED",
    "demo-dbs-deferred": "COMPLETED",
    "demo-ibs": "COMPLETED",
    "demo-ras-triage": "COMPLETED",
    "demo-shortlist-only": "COMPLETED",
    "demo-invalid": "REJECTED",
}


async def test_make_runs_demo_exchanges_an_id_token_per_sample_and_shows_none(
    settings: Settings, tmp_path: Path
) -> None:
    code, out, err = await run("demo", env=demo_env(settings, tmp_path))

    assert code == 0, err
    assert outcome_rows(out) == EXPECTED_STATUSES
    # The sandbox's API platform enforces its tokens once the demo's application is
    # registered: COMPLETED outcomes are e-RS calls made with the access tokens it issued.
    # Each valid sample's ID token was exchanged once; the invalid one never reached e-RS.
    (line,) = [line for line in out.splitlines() if line.startswith("tokens: ")]
    assert line.startswith("tokens: 5 CIS2 ID tokens exchanged for access tokens at http://")
    assert line.endswith("/oauth2/token (ERS_TOKEN_PROVIDER=message-id-token)")
    assert out.rstrip().endswith("6 requests, 6 terminal outcomes")
    assert "eyJ" not in out + err  # no JWT (an ID token) shown
    assert "PRIVATE KEY" not in out + err


async def test_demo_static_token_is_the_quick_path_without_an_exchange(
    settings: Settings, tmp_path: Path
) -> None:
    code, out, err = await run(
        "demo",
        "--static-token",
        str(SAMPLES / "01-dbs-booked.json"),
        str(SAMPLES / "06-invalid-nhs-number.json"),
        env=demo_env(settings, tmp_path),
    )

    assert code == 0, err
    assert outcome_rows(out) == {"demo-dbs-booked": "COMPLETED", "demo-invalid": "REJECTED"}
    assert "tokens: one static access token for every request (ERS_TOKEN_PROVIDER=static)" in out
    assert "exchanged" not in out
    assert "demo-user-token" not in out + err
