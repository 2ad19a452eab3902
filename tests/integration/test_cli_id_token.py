"""`submit` and `dead-letters replay` with a CIS2 ID token (ERS_ID_TOKEN or --id-token-file),
run as the CLI against a worker in ERS_TOKEN_PROVIDER=message-id-token mode, through the
broker and the sandbox as the API platform."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import orjson
import pytest

from sandbox.testing import SandboxHandle
from tests.harness import Harness, sample
from tests.integration.test_cli_exits import one_line, run
from tests.platform import exchanges, id_token, id_token_mode, registered_application
from tests.processes import worker_env
from worker.messaging.headers import ID_TOKEN_HEADER
from worker.ops.settings import Settings


@pytest.fixture
async def platform(sandbox: SandboxHandle, tmp_path: Path) -> AsyncIterator[Path]:
    async with registered_application(sandbox.root_url, tmp_path) as keys:
        yield keys


@pytest.fixture
def settings(settings: Settings, platform: Path) -> Settings:
    return id_token_mode(settings, platform)


def cli_env(settings: Settings, **extra: str) -> dict[str, str]:
    """The operator's environment: the worker's settings, no token unless given."""
    env = worker_env(settings, **extra)
    for name in ("ERS_ACCESS_TOKEN", "ERS_ID_TOKEN"):
        if name not in extra:
            env.pop(name, None)
    return env


async def test_a_parked_request_replayed_with_an_id_token_completes(
    harness: Harness, settings: Settings, sandbox: SandboxHandle
) -> None:
    harness.read_parked = False
    # e-RS answering something the spec does not list parks a valid request for a person.
    await harness.sandbox.add_fault(endpoint="A010", status=418, times=1)
    request = sample("03-ibs-shortlisted.json")
    first = await id_token(sandbox.root_url)
    cid = await harness.publish(request, token=None, headers={ID_TOKEN_HEADER: first})
    await harness.wait_for_parked(1)
    assert (await harness.outcome(cid))["status"] == "FAILED"

    code, out, err = await run("dead-letters", "list", "--json", env=cli_env(settings))
    assert code == 0, err
    (parked,) = map(orjson.loads, out.splitlines())
    assert parked["reason"] == "UNEXPECTED_RESPONSE"
    code, out, err = await run(
        "dead-letters", "show", "--json", parked["message_id"], env=cli_env(settings)
    )
    assert code == 0, err
    assert ID_TOKEN_HEADER not in orjson.loads(out)["headers"]  # parked without its ID token
    assert first not in out

    await harness.sandbox.clear_faults()
    fresh = await id_token(sandbox.root_url)
    code, out, err = await run(
        "dead-letters",
        "replay",
        parked["message_id"],
        "--reopen",
        env=cli_env(settings, ERS_ID_TOKEN=fresh),
    )

    assert code == 0, err
    assert out == f"replayed {parked['message_id']}\n"
    assert err == ""  # no note about a missing token
    await harness.wait_until(lambda: len(harness.outcomes(cid)) == 2, timeout=60)
    outcome = harness.outcomes(cid)[1]
    assert outcome["status"] == "COMPLETED", outcome["error"]
    assert outcome["path"] == "IBS_SHORTLISTED"
    # The replay's ID token was exchanged (a new one: the first's access token is cached).
    assert [e["status"] for e in await exchanges(sandbox.root_url)] == [200, 200]
    referrals = [
        r
        for r in await harness.sandbox.referrals()
        if r.get("nhs_number") == request["patient"]["nhs_number"]
    ]
    assert len(referrals) == 1
    assert fresh not in str(outcome)


async def test_submit_sends_the_id_token_of_the_file_before_the_environments(
    harness: Harness, settings: Settings, sandbox: SandboxHandle, tmp_path: Path
) -> None:
    request = sample("01-dbs-booked.json")
    path = tmp_path / "request.json"
    path.write_bytes(orjson.dumps(request))
    token_file = tmp_path / "id-token"
    subject = await id_token(sandbox.root_url)
    token_file.write_text(subject + "\n")  # as `echo` or an editor leaves it

    code, out, err = await run(
        "submit",
        str(path),
        "--wait",
        "--id-token-file",
        str(token_file),
        # The file wins: were this one sent, the outcome would be REAUTHENTICATION_NEEDED.
        env=cli_env(settings, ERS_ID_TOKEN="not-a-jwt"),
    )

    assert code == 0, err
    assert "COMPLETED DBS_BOOKED UBRN 0000001" in out
    assert [e["status"] for e in await exchanges(sandbox.root_url)] == [200]
    assert subject not in out and subject not in err


@pytest.mark.parametrize("command", ["submit", "replay"])
@pytest.mark.parametrize(
    ("source", "line"),
    [
        ("no such file", "cannot read --id-token-file {path} (No such file or directory)"),
        ("empty file", "--id-token-file {path} is empty"),
        ("not a JWT", "ERS_ID_TOKEN holds no CIS2 ID token (a JWT"),
        ("expired", "the CIS2 ID token in ERS_ID_TOKEN expired at "),
    ],
)
async def test_an_id_token_that_cannot_serve_is_one_line_and_nothing_is_sent(
    sandbox: SandboxHandle, tmp_path: Path, command: str, source: str, line: str
) -> None:
    path = tmp_path / "id-token"
    if source == "empty file":
        path.write_text("\n")
    expired = await id_token(sandbox.root_url, lifetime_seconds=-5)
    extra = {"not a JWT": {"ERS_ID_TOKEN": "not-a-jwt"}, "expired": {"ERS_ID_TOKEN": expired}}
    option = ["--id-token-file", str(path)] if "file" in source else []
    request = tmp_path / "request.json"
    request.write_bytes(orjson.dumps(sample("01-dbs-booked.json")))
    args = ["submit", str(request)] if command == "submit" else ["dead-letters", "replay", "m-1"]
    # No broker on port 9: had the command gone as far as sending, it would say so instead.
    env = {
        **cli_env(Settings(), **extra.get(source, {})),
        "AMQP_URL": "amqp://guest:guest@127.0.0.1:9/",
        "ERS_ENVIRONMENT": "sandbox",
    }

    code, out, err = await run(*args, *option, env=env)

    assert (code, out) == (2, "")
    said = one_line(err)
    assert said.startswith(line.format(path=path)), said
    assert expired not in said and "not-a-jwt" not in said
