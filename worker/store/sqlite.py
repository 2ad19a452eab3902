"""The embedded saga store: SQLite in WAL mode, for a single worker replica.

Every statement runs on one thread of the store's own (the sqlite3 connection never leaves
it), so the event loop never blocks on disk, and each operation is one trip to that thread:

- every write (a claim, and the writes of running sagas: checkpoints, write-ahead marks,
  finish, release) is *group-committed*: those that arrive while the thread is busy go
  together, in order, in the next ``BEGIN IMMEDIATE`` transaction, one commit (one fsync,
  ``synchronous=FULL``) for all of them. Each caller is answered only after the commit that
  holds its write, so a write-ahead mark is on disk before its call is sent, exactly as
  with a commit of its own;
- a claim's reads and writes run whole inside that transaction, which keeps two claims for
  one request or one patient apart (also against another process on the same file): no
  other statement can slip between them, since the thread runs one thing at a time;
- should a batch fail, each of its writes is run again in a transaction of its own, so that
  one failing write (a claim meeting a row it cannot read, say) fails its own caller only.
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import suppress
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

from worker.saga import claims
from worker.saga.state import SagaState
from worker.saga.store import Claim, LeaseLost, StoredSaga

T = TypeVar("T")

SCHEMA = """
CREATE TABLE IF NOT EXISTS ers_sagas (
    request_id   TEXT PRIMARY KEY,
    state        TEXT NOT NULL,
    step         TEXT NOT NULL,
    status       TEXT,
    final        INTEGER NOT NULL DEFAULT 0,
    outcome      BLOB,
    patient_key  TEXT,
    fingerprint  TEXT,
    content_fingerprint TEXT,
    owner        TEXT,
    lease_until  REAL,
    claims       INTEGER NOT NULL DEFAULT 0,
    created_at   REAL NOT NULL,
    updated_at   REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS ers_sagas_patient ON ers_sagas (patient_key)
    WHERE patient_key IS NOT NULL;
"""

_SELECT = (
    "SELECT request_id, state, final, outcome, owner, lease_until, claims, created_at, "
    "updated_at, fingerprint, content_fingerprint FROM ers_sagas WHERE request_id = ?"
)


def _stored(row: Any) -> StoredSaga:
    return StoredSaga(
        request_id=row[0],
        state=SagaState.model_validate_json(row[1]),
        final=bool(row[2]),
        outcome=row[3],
        owner=row[4],
        lease_until=row[5],
        claims=row[6],
        created_at=row[7],
        updated_at=row[8],
        fingerprint=row[9],
        content_fingerprint=row[10],
    )


Work = Callable[[sqlite3.Connection], Any]
"""A write, run on the store's thread inside its batch's transaction; its result answers it."""


@dataclass(slots=True)
class _Write:
    work: Work
    done: asyncio.Future[Any] = field(
        default_factory=lambda: asyncio.get_running_loop().create_future()
    )


@dataclass(slots=True, frozen=True)
class _Failed:
    error: Exception


def _statement(sql: str, params: tuple[Any, ...]) -> Work:
    return lambda db: db.execute(sql, params).rowcount


def _in_transaction(db: sqlite3.Connection, work: Callable[[], T]) -> T:
    """On the store's thread: ``work`` in one write transaction, rolled back if anything in
    it (the commit too) fails, so that no later statement runs inside a stale transaction."""
    if db.in_transaction:
        # A ROLLBACK failed (an I/O error, say) and left one open: end it first, or every
        # later write would fail on BEGIN for as long as the process runs, while /readyz,
        # whose SELECT still works, kept sending it work.
        db.execute("ROLLBACK")
    db.execute("BEGIN IMMEDIATE")
    try:
        result = work()
        db.execute("COMMIT")
    except BaseException:
        if db.in_transaction:
            db.execute("ROLLBACK")
        raise
    return result


def _run_writes(db: sqlite3.Connection, batch: list[Work]) -> list[Any]:
    """On the store's thread: the batch in one transaction, each write's result.

    Should the transaction fail, each write is tried in a transaction of its own, so that
    one failing write fails its own caller only (its error comes back as ``_Failed``)."""
    if len(batch) > 1:
        with suppress(Exception):  # rolled back; each write alone, below, says whose it was
            return _in_transaction(db, lambda: [work(db) for work in batch])
    results: list[Any] = []
    for work in batch:
        try:
            results.append(_in_transaction(db, partial(work, db)))
        except Exception as exc:
            results.append(_Failed(exc))
    return results


class SqliteSagaStore:
    def __init__(self, db: sqlite3.Connection, thread: ThreadPoolExecutor) -> None:
        self._db = db
        self._thread = thread
        self._queued: list[_Write] = []
        self._flusher: asyncio.Task[None] | None = None

    @classmethod
    async def open(cls, path: Path, *, read_only: bool = False) -> SqliteSagaStore:
        """``read_only`` (operator reads): an existing file, opened so nothing can change it."""
        if not read_only:
            path.parent.mkdir(parents=True, exist_ok=True)
        # One worker: the connection is made, used and closed on that thread alone.
        thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="saga-store")

        def connect() -> sqlite3.Connection:
            if read_only:
                uri = f"{path.resolve().as_uri()}?mode=ro"
                return sqlite3.connect(uri, uri=True, isolation_level=None)
            db = sqlite3.connect(path, isolation_level=None)
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=FULL")  # a checkpoint must survive power loss
            db.execute("PRAGMA busy_timeout=5000")
            db.executescript(SCHEMA)
            # Stores made before the column existed get it on start-up (SQLite has no
            # ADD COLUMN IF NOT EXISTS).
            columns = {row[1] for row in db.execute("PRAGMA table_info(ers_sagas)")}
            for column in ("fingerprint", "content_fingerprint"):
                if column not in columns:
                    db.execute(f"ALTER TABLE ers_sagas ADD COLUMN {column} TEXT")
            return db

        try:
            db = await asyncio.get_running_loop().run_in_executor(thread, connect)
        except BaseException:
            thread.shutdown(wait=False)
            raise
        return cls(db, thread)

    async def _on_thread(self, work: Callable[[sqlite3.Connection], T]) -> T:
        # Once started, ``work`` runs to its end even if the caller is cancelled: a
        # transaction is never left open on the connection.
        return await asyncio.get_running_loop().run_in_executor(self._thread, work, self._db)

    async def close(self) -> None:
        if self._flusher is not None:
            await asyncio.shield(self._flusher)
        await self._on_thread(sqlite3.Connection.close)
        self._thread.shutdown(wait=False)

    async def ping(self) -> None:
        await self._on_thread(lambda db: db.execute("SELECT 1").fetchone())

    async def claim(
        self,
        initial: SagaState,
        patient_key: str,
        owner: str,
        lease_seconds: float,
        now: float,
        fingerprint: str = "",
        content_fingerprint: str = "",
    ) -> Claim:
        claim: Claim = await self._queue(
            lambda db: _claim(
                db, initial, patient_key, owner, lease_seconds, now, fingerprint,
                content_fingerprint,
            )
        )  # fmt: skip
        return claim

    async def _write(self, sql: str, params: tuple[Any, ...]) -> int:
        """The row count of ``sql``, once it is committed with whatever else was waiting."""
        count: int = await self._queue(_statement(sql, params))
        return count

    async def _queue(self, work: Work) -> Any:
        """``work``'s result, once it is committed with whatever else was waiting."""
        write = _Write(work)
        self._queued.append(write)
        if self._flusher is None:
            self._flusher = asyncio.create_task(self._flush())
        return await write.done

    async def _flush(self) -> None:
        try:
            while self._queued:
                batch, self._queued = self._queued, []
                # A caller cancelled before its write went is answered by nothing; its write
                # is dropped, as it was before when it waited for the connection's lock.
                batch = [w for w in batch if not w.done.cancelled()]
                if batch:
                    await self._commit(batch)
        finally:
            self._flusher = None

    async def _commit(self, batch: list[_Write]) -> None:
        work = partial(_run_writes, batch=[w.work for w in batch])
        try:
            results: list[Any] = await self._on_thread(work)
        except asyncio.CancelledError:
            for w in batch:
                w.done.cancel()
            raise
        except Exception as exc:  # the store is closed: every caller hears it
            for w in batch:
                if not w.done.done():
                    w.done.set_exception(exc)
            return
        for w, result in zip(batch, results, strict=True):
            if w.done.done():  # its caller was cancelled while the batch ran
                continue
            if isinstance(result, _Failed):
                w.done.set_exception(result.error)
            else:
                w.done.set_result(result)

    async def _update(self, sql: str, params: tuple[Any, ...]) -> None:
        if await self._write(sql, params) != 1:
            raise LeaseLost("the saga's lease is held by another owner")

    async def checkpoint(
        self, state: SagaState, owner: str, lease_seconds: float, now: float
    ) -> None:
        await self._update(
            "UPDATE ers_sagas SET state = ?, step = ?, lease_until = ?, updated_at = ? "
            "WHERE request_id = ? AND owner = ?",
            (
                state.model_dump_json(),
                state.step.value,
                now + lease_seconds,
                now,
                state.request_id,
                owner,
            ),
        )

    async def finish(
        self, state: SagaState, outcome: bytes, owner: str, *, final: bool, now: float
    ) -> None:
        await self._update(
            "UPDATE ers_sagas SET state = ?, step = ?, status = ?, final = ?, outcome = ?, "
            "owner = NULL, lease_until = NULL, patient_key = NULL, updated_at = ? "
            "WHERE request_id = ? AND owner = ?",
            (
                state.model_dump_json(),
                state.step.value,
                state.status.value if state.status else None,
                int(final),
                outcome,
                now,
                state.request_id,
                owner,
            ),
        )

    async def release(self, state: SagaState, owner: str, now: float) -> None:
        await self._update(
            "UPDATE ers_sagas SET state = ?, step = ?, owner = NULL, lease_until = NULL, "
            "patient_key = NULL, updated_at = ? WHERE request_id = ? AND owner = ?",
            (state.model_dump_json(), state.step.value, now, state.request_id, owner),
        )

    async def reopen(self, state: SagaState, now: float) -> None:
        await self._update(
            "UPDATE ers_sagas SET state = ?, step = ?, status = NULL, final = 0, owner = NULL, "
            "lease_until = NULL, updated_at = ? WHERE request_id = ? AND owner IS NULL",
            (state.model_dump_json(), state.step.value, now, state.request_id),
        )

    async def renew(self, request_id: str, owner: str, lease_seconds: float, now: float) -> None:
        await self._update(
            "UPDATE ers_sagas SET lease_until = ? WHERE request_id = ? AND owner = ?",
            (now + lease_seconds, request_id, owner),
        )

    async def release_leases_of(self, replica: str) -> int:
        return await self._write(
            "UPDATE ers_sagas SET owner = NULL, lease_until = NULL WHERE substr(owner, 1, ?) = ?",
            (len(replica) + 1, replica + "/"),
        )

    async def release_all_leases(self) -> int:
        return await self._write(
            "UPDATE ers_sagas SET owner = NULL, lease_until = NULL WHERE owner IS NOT NULL", ()
        )

    async def ubrn_holder(self, ubrn: str) -> str | None:
        # A scan, but only when a create's answer was lost: rare, and the table is local.
        row = await self._on_thread(
            lambda db: db.execute(
                "SELECT request_id FROM ers_sagas WHERE json_extract(state, '$.ubrn') = ? LIMIT 1",
                (ubrn,),
            ).fetchone()
        )
        return str(row[0]) if row else None

    async def load(self, request_id: str) -> StoredSaga | None:
        row = await self._on_thread(lambda db: db.execute(_SELECT, (request_id,)).fetchone())
        return _stored(row) if row else None


def _claim(
    db: sqlite3.Connection,
    initial: SagaState,
    patient_key: str,
    owner: str,
    lease_seconds: float,
    now: float,
    fingerprint: str,
    content_fingerprint: str,
) -> Claim:
    """On the store's thread, inside the claim's transaction."""
    request_id = initial.request_id
    row = db.execute(_SELECT, (request_id,)).fetchone()
    stored = _stored(row) if row else None
    answer = claims.settled(stored, fingerprint, now, content_fingerprint=content_fingerprint)
    if answer is not None:
        return answer
    busy = db.execute(
        "SELECT 1 FROM ers_sagas WHERE patient_key = ? AND request_id <> ? "
        "AND owner IS NOT NULL AND lease_until > ? LIMIT 1",
        (patient_key, request_id, now),
    ).fetchone()
    if busy:
        return claims.patient_busy(stored)
    lease_until = now + lease_seconds
    if stored:
        db.execute(
            "UPDATE ers_sagas SET owner = ?, lease_until = ?, patient_key = ?, "
            "claims = claims + 1, updated_at = ? WHERE request_id = ?",
            (owner, lease_until, patient_key, now, request_id),
        )
        return claims.taken(stored, initial)
    db.execute(
        "INSERT INTO ers_sagas (request_id, state, step, patient_key, owner, lease_until, "
        "claims, created_at, updated_at, fingerprint, content_fingerprint) "
        "VALUES (?, ?, ?, ?, ?, ?, 1, ?, ?, ?, ?)",
        (
            request_id,
            initial.model_dump_json(),
            initial.step.value,
            patient_key,
            owner,
            lease_until,
            now,
            now,
            fingerprint or None,
            content_fingerprint or None,
        ),
    )
    return claims.taken(None, initial)
