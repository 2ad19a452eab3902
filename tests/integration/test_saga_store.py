"""Both saga-store backends against their real engines: SQLite (WAL) and PostgreSQL."""

from __future__ import annotations

import asyncio
import os
import sqlite3
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg
import pytest

from schemas.events import ErrorInfo, OutcomeStatus, Step
from worker.saga.claims import patient_key
from worker.saga.policy import is_final
from worker.saga.state import SagaState, finish, new_saga
from worker.saga.store import Claim, ClaimKind, LeaseLost, SagaStore
from worker.store.postgres import PostgresSagaStore
from worker.store.sqlite import SqliteSagaStore

POSTGRES_DSN = os.environ.get("POSTGRES_DSN", "postgresql://postgres@127.0.0.1:5432/test")
LEASE = 30.0
ALICE = patient_key("9912003888", b"k")
BOB = patient_key("9434765919", b"k")


@pytest.fixture(params=["sqlite", "postgres"])
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[SagaStore]:
    if request.param == "sqlite":
        sqlite = await SqliteSagaStore.open(tmp_path / "sagas.db")
        yield sqlite
        await sqlite.close()
        return
    schema = f"t_{uuid.uuid4().hex[:12]}"
    try:
        postgres = await PostgresSagaStore.open(POSTGRES_DSN, schema=schema)
    except OSError as exc:
        pytest.fail(f"PostgreSQL is not reachable at {POSTGRES_DSN}: {exc}", pytrace=False)
    yield postgres
    await postgres.close()
    conn = await asyncpg.connect(POSTGRES_DSN)
    await conn.execute(f'DROP SCHEMA "{schema}" CASCADE')
    await conn.close()


def saga(request_id: str = "req-1") -> SagaState:
    return new_saga(request_id, "corr-1")


async def test_claim_starts_then_resumes_for_the_same_owner(store: SagaStore) -> None:
    first = await store.claim(saga(), ALICE, "a", LEASE, now=100.0)
    assert first.kind is ClaimKind.STARTED
    moved = saga().model_copy(update={"step": Step.CREATE, "ubrn": "000000100000"})
    await store.checkpoint(moved, "a", LEASE, now=101.0)
    await store.release(moved, "a", now=102.0)
    again = await store.claim(saga(), ALICE, "b", LEASE, now=103.0)
    assert again.kind is ClaimKind.RESUMED
    assert again.state == moved
    stored = await store.load("req-1")
    assert stored is not None and stored.owner == "b" and stored.claims == 2


async def test_a_leased_saga_is_busy_for_others_until_the_lease_runs_out(
    store: SagaStore,
) -> None:
    await store.claim(saga(), ALICE, "a", LEASE, now=100.0)
    busy = await store.claim(saga(), ALICE, "b", LEASE, now=100.0 + LEASE - 1)
    assert busy.kind is ClaimKind.BUSY_REQUEST
    taken = await store.claim(saga(), ALICE, "b", LEASE, now=100.0 + LEASE + 1)
    assert taken.kind is ClaimKind.RESUMED
    with pytest.raises(LeaseLost):
        await store.checkpoint(saga(), "a", LEASE, now=200.0)


async def test_one_saga_per_patient_at_a_time(store: SagaStore) -> None:
    await store.claim(saga("req-1"), ALICE, "a", LEASE, now=100.0)
    assert (await store.claim(saga("req-2"), ALICE, "b", LEASE, now=101.0)).kind is (
        ClaimKind.BUSY_PATIENT
    )
    assert (await store.claim(saga("req-3"), BOB, "b", LEASE, now=101.0)).kind is (
        ClaimKind.STARTED
    )
    await store.release(saga("req-1"), "a", now=102.0)
    assert (await store.claim(saga("req-2"), ALICE, "b", LEASE, now=103.0)).kind is (
        ClaimKind.STARTED
    )


async def test_a_finished_saga_returns_its_outcome(store: SagaStore) -> None:
    await store.claim(saga(), ALICE, "a", LEASE, now=100.0)
    done = saga().model_copy(update={"step": Step.DONE, "status": OutcomeStatus.COMPLETED})
    await store.finish(done, b'{"outcome": 1}', "a", final=is_final(done), now=101.0)
    again = await store.claim(saga(), ALICE, "b", LEASE, now=102.0)
    assert again.kind is ClaimKind.FINISHED
    assert again.outcome == b'{"outcome": 1}'
    assert again.state == done


async def test_reauthentication_is_not_final(store: SagaStore) -> None:
    await store.claim(saga(), ALICE, "a", LEASE, now=100.0)
    paused = finish(
        saga().model_copy(update={"step": Step.UPLOAD}),
        OutcomeStatus.REAUTHENTICATION_NEEDED,
        ErrorInfo(step=Step.UPLOAD, code="NO_ACCESS", text="", retryable=True),
    )
    await store.finish(paused, b"{}", "a", final=is_final(paused), now=101.0)
    again = await store.claim(saga(), ALICE, "b", LEASE, now=102.0)
    assert again.kind is ClaimKind.RESUMED
    assert again.state is not None and again.state.step is Step.UPLOAD


async def test_concurrent_claims_of_one_request_give_it_to_one_owner(store: SagaStore) -> None:
    claims = await asyncio.gather(
        *(store.claim(saga(), ALICE, f"owner-{i}", LEASE, now=100.0) for i in range(10))
    )
    kinds = sorted(c.kind.value for c in claims)
    assert kinds.count(ClaimKind.STARTED.value) == 1
    assert kinds.count(ClaimKind.BUSY_REQUEST.value) == 9


async def test_release_all_leases_frees_every_saga(store: SagaStore) -> None:
    await store.claim(saga("req-1"), ALICE, "dead", LEASE, now=100.0)
    await store.claim(saga("req-2"), BOB, "dead", LEASE, now=100.0)
    assert await store.release_all_leases() == 2
    assert (await store.claim(saga("req-1"), ALICE, "new", LEASE, now=101.0)).kind is (
        ClaimKind.RESUMED
    )


async def test_a_store_made_before_fingerprints_is_upgraded(tmp_path: Path) -> None:
    import aiosqlite

    path = tmp_path / "old.db"
    async with aiosqlite.connect(path) as db:
        await db.executescript(
            "CREATE TABLE ers_sagas (request_id TEXT PRIMARY KEY, state TEXT NOT NULL, "
            "step TEXT NOT NULL, status TEXT, final INTEGER NOT NULL DEFAULT 0, outcome BLOB, "
            "patient_key TEXT, owner TEXT, lease_until REAL, claims INTEGER NOT NULL DEFAULT 0, "
            "created_at REAL NOT NULL, updated_at REAL NOT NULL);"
        )
    store = await SqliteSagaStore.open(path)
    try:
        claim = await store.claim(saga(), ALICE, "a", LEASE, now=100.0, fingerprint="f1")
        assert claim.kind is ClaimKind.STARTED
        reused = await store.claim(saga(), ALICE, "b", LEASE, now=200.0, fingerprint="f2")
        assert reused.kind is ClaimKind.REUSED
    finally:
        await store.close()


async def test_a_saga_stored_before_content_fingerprints_is_matched_by_its_raw_bytes(
    store: SagaStore,
) -> None:
    # A saga in flight across the upgrade holds only the raw-bytes fingerprint: its
    # byte-identical redelivery resumes; different bytes are another request.
    first = await store.claim(saga(), ALICE, "a", LEASE, now=100.0, fingerprint="raw")
    assert first.kind is ClaimKind.STARTED and first.state is not None
    await store.release(first.state, "a", now=101.0)

    again = await store.claim(
        saga(), ALICE, "a", LEASE, now=102.0, fingerprint="raw", content_fingerprint="c"
    )
    other = await store.claim(
        saga(), ALICE, "a", LEASE, now=103.0, fingerprint="raw2", content_fingerprint="c"
    )

    assert again.kind is ClaimKind.RESUMED
    assert other.kind is ClaimKind.REUSED


async def test_a_resend_with_other_bytes_but_the_same_content_is_the_same_request(
    store: SagaStore,
) -> None:
    first = await store.claim(
        saga(), ALICE, "a", LEASE, now=100.0, fingerprint="raw", content_fingerprint="c"
    )
    assert first.state is not None
    await store.release(first.state, "a", now=101.0)

    reserialised = await store.claim(
        saga(), ALICE, "a", LEASE, now=102.0, fingerprint="raw2", content_fingerprint="c"
    )
    older_replica = await store.claim(saga(), ALICE, "b", LEASE, now=103.0, fingerprint="raw")
    different = await store.claim(
        saga(), ALICE, "a", LEASE, now=300.0, fingerprint="raw", content_fingerprint="d"
    )

    assert reserialised.kind is ClaimKind.RESUMED
    # A replica of the version before (raw bytes only) still recognises its redelivery.
    assert older_replica.kind is ClaimKind.BUSY_REQUEST  # held by "a" since 102: not REUSED
    assert different.kind is ClaimKind.REUSED
    stored = await store.load("req-1")
    assert stored is not None
    assert (stored.fingerprint, stored.content_fingerprint) == ("raw", "c")


async def test_a_restarted_replica_frees_its_own_leases_and_no_other(store: SagaStore) -> None:
    mine = await store.claim(saga("req-1"), ALICE, "ers-worker-0/aaaa", LEASE, now=100.0)
    other = await store.claim(saga("req-2"), "bob", "ers-worker-10/bbbb", LEASE, now=100.0)
    assert mine.kind is other.kind is ClaimKind.STARTED

    assert await store.release_leases_of("ers-worker-0") == 1

    freed, kept = await store.load("req-1"), await store.load("req-2")
    assert freed is not None and freed.owner is None
    assert kept is not None and kept.owner == "ers-worker-10/bbbb"


async def test_writes_committed_together_each_keep_their_own_answer(store: SagaStore) -> None:
    # SQLite commits the writes that arrive together in one transaction: each caller still
    # hears about its own write, and one lost lease fails that caller only.
    ids = [f"req-{i}" for i in range(20)]
    for i, request_id in enumerate(ids):
        await store.claim(saga(request_id), f"patient-{i}", "a", LEASE, now=100.0)
    moved = {
        request_id: saga(request_id).model_copy(update={"step": Step.CREATE, "ubrn": f"{i:012}"})
        for i, request_id in enumerate(ids)
    }

    results = await asyncio.gather(
        *(
            store.checkpoint(state, "b" if request_id == "req-7" else "a", LEASE, now=101.0)
            for request_id, state in moved.items()
        ),
        return_exceptions=True,
    )

    assert [type(r) for r in results] == [LeaseLost if i == 7 else type(None) for i in range(20)]
    for request_id in ids:
        stored = await store.load(request_id)
        assert stored is not None
        assert stored.state == (saga(request_id) if request_id == "req-7" else moved[request_id])


async def test_claims_that_arrive_together_still_keep_sagas_apart(store: SagaStore) -> None:
    # SQLite runs claims in the group commit with the other writes: claims in one batch
    # still see each other, in the order they came.
    await store.claim(saga("req-0"), "patient-0", "a", LEASE, now=100.0)
    running = saga("req-0").model_copy(update={"step": Step.CREATE})

    results = await asyncio.gather(
        store.checkpoint(running, "a", LEASE, now=101.0),
        *(store.claim(saga(f"req-{i}"), "patient-1", f"w{i}", LEASE, now=101.0)
          for i in range(1, 6)),
        store.claim(saga("req-6"), "patient-2", "w6", LEASE, now=101.0),
        store.claim(saga("req-6"), "patient-2", "w7", LEASE, now=101.0),
    )  # fmt: skip

    kinds = [claim.kind for claim in results[1:]]
    # One saga per patient, and one owner per request (PostgreSQL's pool may take them in
    # any order); the checkpoint went with them.
    assert sorted(kinds[:5]) == sorted([ClaimKind.STARTED] + [ClaimKind.BUSY_PATIENT] * 4)
    assert sorted(kinds[5:]) == sorted([ClaimKind.STARTED, ClaimKind.BUSY_REQUEST])
    stored = await store.load("req-0")
    assert stored is not None and stored.state == running
    winner = await store.load("req-6")
    assert winner is not None
    assert winner.owner == ("w6" if kinds[5] is ClaimKind.STARTED else "w7")


async def test_a_claim_that_fails_in_a_batch_fails_its_own_caller_only(tmp_path: Path) -> None:
    # SQLite: a claim meeting a row it cannot read (written by hand here) rolls back the
    # batch it went in; the other writes are committed on their own, each caller answered.
    store = await SqliteSagaStore.open(tmp_path / "sagas.db")
    try:
        await store.claim(saga("req-0"), "patient-0", "a", LEASE, now=100.0)
        await store.claim(saga("req-bad"), "patient-9", "a", LEASE, now=100.0)
        with sqlite3.connect(tmp_path / "sagas.db") as db:
            db.execute("UPDATE ers_sagas SET state = 'not json' WHERE request_id = 'req-bad'")
        running = saga("req-0").model_copy(update={"step": Step.CREATE})

        results = await asyncio.gather(
            store.checkpoint(running, "a", LEASE, now=101.0),
            store.claim(saga("req-bad"), "patient-9", "a", LEASE, now=101.0),
            store.claim(saga("req-1"), "patient-1", "a", LEASE, now=101.0),
            return_exceptions=True,
        )

        assert results[0] is None
        assert isinstance(results[1], ValueError)  # pydantic's ValidationError
        assert isinstance(results[2], Claim) and results[2].kind is ClaimKind.STARTED
        stored = await store.load("req-0")
        assert stored is not None and stored.state == running
    finally:
        await store.close()


async def test_a_transaction_left_open_on_the_connection_does_not_block_later_writes(
    tmp_path: Path,
) -> None:
    # SQLite: should a ROLLBACK fail, the connection stays in its transaction; the next
    # write ends it rather than failing on BEGIN, as every write after it would.
    store = await SqliteSagaStore.open(tmp_path / "sagas.db")
    try:
        await store.claim(saga("req-0"), "patient-0", "a", LEASE, now=100.0)
        await store._on_thread(lambda db: db.execute("BEGIN"))
        running = saga("req-0").model_copy(update={"step": Step.CREATE})

        await store.checkpoint(running, "a", LEASE, now=101.0)
        claim = await store.claim(saga("req-1"), "patient-1", "a", LEASE, now=101.0)

        assert claim.kind is ClaimKind.STARTED
        stored = await store.load("req-0")
        assert stored is not None and stored.state == running
        with sqlite3.connect(tmp_path / "sagas.db") as db:  # committed, seen from outside
            rows = db.execute("SELECT request_id FROM ers_sagas ORDER BY 1").fetchall()
        assert rows == [("req-0",), ("req-1",)]
    finally:
        await store.close()


async def test_writes_that_arrive_together_share_one_commit(tmp_path: Path) -> None:
    # SQLite: writes queued while the store's thread is away go in its next batch, so 20
    # sagas' checkpoints cost one transaction and one fsync, not 20.
    store = await SqliteSagaStore.open(tmp_path / "sagas.db")
    try:
        ids = [f"req-{i}" for i in range(20)]
        for i, request_id in enumerate(ids):
            await store.claim(saga(request_id), f"patient-{i}", "a", LEASE, now=100.0)
        statements: list[str] = []
        await store._on_thread(lambda db: db.set_trace_callback(statements.append))
        moved = [saga(r).model_copy(update={"step": Step.CREATE}) for r in ids]

        await asyncio.gather(*(store.checkpoint(state, "a", LEASE, now=101.0) for state in moved))

        assert statements.count("COMMIT") == 1
        assert sum(s.startswith("UPDATE ers_sagas") for s in statements) == 20
        for state in moved:
            stored = await store.load(state.request_id)
            assert stored is not None and stored.state == state
    finally:
        await store.close()
