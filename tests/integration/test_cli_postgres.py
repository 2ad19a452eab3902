"""`ers-worker status` on PostgreSQL under a read-only operator login: reading needs SELECT only.

The worker (superuser here) owns the schema and its table; the operator's role may only read.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg
import orjson
import pytest

from tests.harness import TEST_TOKEN, Harness, sample
from tests.integration.test_cli_exits import one_line, run, write
from tests.processes import worker_env
from worker.ops.settings import Settings

POSTGRES_DSN = os.environ.get("POSTGRES_DSN", "postgresql://postgres@127.0.0.1:5432/test")


@pytest.fixture
async def schema() -> AsyncIterator[str]:
    name = f"cli_{uuid.uuid4().hex[:10]}"
    yield name
    admin = await asyncpg.connect(POSTGRES_DSN)
    try:
        await admin.execute(f'DROP SCHEMA IF EXISTS "{name}" CASCADE')
    finally:
        await admin.close()


@pytest.fixture
async def reader() -> AsyncIterator[str]:
    """A login role with no privilege beyond connecting (trust auth: no password)."""
    role = f"ers_reader_{uuid.uuid4().hex[:10]}"
    admin = await asyncpg.connect(POSTGRES_DSN)
    try:
        await admin.execute(f'CREATE ROLE "{role}" LOGIN')
        yield role
        await admin.execute(f'DROP OWNED BY "{role}"')
        await admin.execute(f'DROP ROLE "{role}"')
    finally:
        await admin.close()


@pytest.fixture
def settings(settings: Settings, schema: str) -> Settings:
    return settings.model_copy(update={"saga_store": "postgres", "postgres_schema": schema})


def as_role(settings: Settings, role: str) -> dict[str, str]:
    dsn = POSTGRES_DSN.replace("postgres@", f"{role}@", 1)
    return worker_env(settings, POSTGRES_DSN=dsn)


async def tables(schema: str) -> list[str]:
    admin = await asyncpg.connect(POSTGRES_DSN)
    try:
        rows = await admin.fetch(
            "SELECT table_name FROM information_schema.tables WHERE table_schema = $1", schema
        )
        present = await admin.fetchval(
            "SELECT count(*) FROM information_schema.schemata WHERE schema_name = $1", schema
        )
    finally:
        await admin.close()
    return [r["table_name"] for r in rows] if present else ["(no schema)"]


async def grant(sql: str) -> None:
    admin = await asyncpg.connect(POSTGRES_DSN)
    try:
        await admin.execute(sql)
    finally:
        await admin.close()


async def test_status_reads_with_select_only(
    harness: Harness, settings: Settings, schema: str, reader: str, tmp_path: Path
) -> None:
    request = sample("03-ibs-shortlisted.json")
    env = worker_env(settings, ERS_ACCESS_TOKEN=TEST_TOKEN)
    code, _, err = await run("submit", "--wait", str(write(tmp_path, "r.json", request)), env=env)
    assert code == 0, err

    # Before the grants: one line naming what is missing, exit 2.
    code, out, err = await run("status", request["request_id"], env=as_role(settings, reader))
    assert (code, out) == (2, "")
    assert f"that role '{reader}' can see" in one_line(err) and "USAGE" in err
    await grant(f'GRANT USAGE ON SCHEMA "{schema}" TO "{reader}"')
    code, out, err = await run("status", request["request_id"], env=as_role(settings, reader))
    assert (code, out) == (2, "")
    assert f"role '{reader}' lacks a privilege (permission denied for table ers_sagas)" in (
        one_line(err)
    )

    await grant(f'GRANT SELECT ON "{schema}".ers_sagas TO "{reader}"')
    code, out, err = await run(
        "status", "--json", request["request_id"], env=as_role(settings, reader)
    )
    assert code == 0, err
    saga = orjson.loads(out)
    assert saga["state"]["step"] == "DONE" and saga["outcome"]["status"] == "COMPLETED"
    code, out, err = await run("status", request["request_id"], env=as_role(settings, reader))
    assert code == 0, err
    assert "step           DONE" in out


async def test_status_on_an_empty_database_creates_nothing(
    settings: Settings, schema: str, reader: str
) -> None:
    # No worker ever ran on this schema: the read says so, and leaves the database as it was.
    for env in (as_role(settings, reader), worker_env(settings)):
        code, out, err = await run("status", "some-request", env=env)
        assert (code, out) == (2, "")
        assert one_line(err).startswith("PostgreSQL at 127.0.0.1:5432/test has no saga table in ")
    assert await tables(schema) == ["(no schema)"]


async def test_status_with_postgres_down_is_one_line(settings: Settings) -> None:
    env = worker_env(settings, POSTGRES_DSN="postgresql://postgres@127.0.0.1:9/test")
    code, out, err = await run("status", "some-request", env=env)
    assert (code, out) == (2, "")
    assert one_line(err) == (
        "PostgreSQL is not reachable at 127.0.0.1:9: start it (or set POSTGRES_DSN), then run "
        "again."
    )
