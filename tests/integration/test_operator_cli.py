"""The operator tools, run as the CLI an on-call engineer types, against a running worker."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

import orjson

from tests.harness import TEST_TOKEN, Harness, sample
from tests.processes import worker_env
from worker.ops.settings import Settings


async def cli(settings: Settings, *args: str, token: bool = True) -> tuple[int, str, str]:
    extra = {"ERS_ACCESS_TOKEN": TEST_TOKEN} if token else {}
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "worker.ops.cli",
        *args,
        env=worker_env(settings, **extra),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(process.communicate(), timeout=90)
    return process.returncode or 0, out.decode(), err.decode()


async def test_submit_and_status(harness: Harness, settings: Settings, tmp_path: Path) -> None:
    request = sample("03-ibs-shortlisted.json")
    path = tmp_path / "request.json"
    path.write_bytes(orjson.dumps(request))

    code, out, err = await cli(settings, "submit", str(path), "--wait")
    assert code == 0, err
    assert "COMPLETED IBS_SHORTLISTED UBRN 0000001" in out

    code, out, err = await cli(settings, "status", request["request_id"])
    assert code == 0, err
    assert "step           DONE" in out and "status         COMPLETED" in out
    assert " A010 200 " in out and "x-request-id=" in out
    assert request["patient"]["nhs_number"] not in out
    code, _, err = await cli(settings, "status", "no-such-request")
    assert code == 1 and "no saga" in err


async def test_dead_letters_list_show_and_replay(harness: Harness, settings: Settings) -> None:
    harness.read_parked = False
    bad = sample("01-dbs-booked.json")
    bad["patient"]["nhs_number"] = "9990010006"
    bad_cid = await harness.publish(bad)
    # e-RS answering something the spec does not list parks a valid request for a person.
    await harness.sandbox.add_fault(endpoint="A010", status=418, times=1)
    good = sample("03-ibs-shortlisted.json")
    good_cid = await harness.publish(good)
    await harness.wait_for_parked(2)

    code, out, err = await cli(settings, "dead-letters", "list", "--json")
    assert code == 0, err
    listed = [orjson.loads(line) for line in out.splitlines()]
    by_reason = {entry["reason"]: entry for entry in listed}
    assert set(by_reason) == {"INVALID_MESSAGE", "UNEXPECTED_RESPONSE"}
    assert by_reason["UNEXPECTED_RESPONSE"]["request_id"] == good["request_id"]

    parked = by_reason["INVALID_MESSAGE"]["message_id"]
    code, out, err = await cli(settings, "dead-letters", "show", parked)
    assert code == 0, err
    shown = orjson.loads(out)
    assert shown["body"]["patient"]["nhs_number"] == "******0006"
    assert shown["body"]["attachments"][0]["content"].endswith("characters of base64>")
    assert "9990010006" not in out and TEST_TOKEN not in out

    # Looking took nothing away.
    code, out, _ = await cli(settings, "dead-letters", "list", "--json")
    assert len(out.splitlines()) == 2

    await harness.sandbox.clear_faults()
    unexpected = by_reason["UNEXPECTED_RESPONSE"]["message_id"]
    code, out, err = await cli(settings, "dead-letters", "replay", unexpected, "--reopen")
    assert code == 0, err
    assert f"replayed {unexpected}" in out
    await harness.wait_until(
        lambda: any(o["status"] == "COMPLETED" for o in harness.outcomes(good_cid)), timeout=60
    )
    code, out, _ = await cli(settings, "dead-letters", "list", "--json")
    assert [orjson.loads(line)["reason"] for line in out.splitlines()] == ["INVALID_MESSAGE"]
    assert harness.outcomes(bad_cid)[0]["status"] == "REJECTED"
