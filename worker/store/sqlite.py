"""The embedded saga store: SQLite in WAL mode, for a single worker replica.

aiosqlite runs the sqlite3 calls on a thread of its own, so the event loop never blocks on
disk. ``BEGIN IMMEDIATE`` makes each claim a serialised write transaction, which is what
keeps two claims for one request or one patient apart (also against another process on the
same file). Within the process, one connection is shared, so every statement runs under one
lock: a checkpoint must never slip into another task's open claim transaction.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import aiosqlite

from worker.saga import claims
from worker.saga.state import SagaState
from worker.saga.store import Claim, LeaseLost, StoredSaga

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


class SqliteSagaStore:
    def __init__(self, connection: aiosqlite.Connection) -> None:
        self._db = connection
        self._lock = asyncio.Lock()

    @classmethod
    async def open(cls, path: Path) -> SqliteSagaStore:
        path.parent.mkdir(parents=True, exist_ok=True)
        db = await aiosqlite.connect(path, isolation_level=None)
        await db.execute("PRAGMA journal_mode=WAL")
        await db.execute("PRAGMA synchronous=FULL")  # a checkpoint must survive power loss
        await db.execute("PRAGMA busy_timeout=5000")
        await db.executescript(SCHEMA)
        # Stores made before the column existed get it on start-up (SQLite has no
        # ADD COLUMN IF NOT EXISTS).
        async with db.execute("PRAGMA table_info(ers_sagas)") as cursor:
            columns = {row[1] for row in await cursor.fetchall()}
        for column in ("fingerprint", "content_fingerprint"):
            if column not in columns:
                await db.execute(f"ALTER TABLE ers_sagas ADD COLUMN {column} TEXT")
        return cls(db)

    async def close(self) -> None:
        await self._db.close()

    async def ping(self) -> None:
        async with self._lock, self._db.execute("SELECT 1") as cursor:
            await cursor.fetchone()

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
        db = self._db

        async def transaction() -> Claim:
            async with self._lock:
                await db.execute("BEGIN IMMEDIATE")
                try:
                    claim = await self._claim(
                        initial,
                        patient_key,
                        owner,
                        lease_seconds,
                        now,
                        fingerprint,
                        content_fingerprint,
                    )
                except BaseException:
                    await db.execute("ROLLBACK")
                    raise
                await db.execute("COMMIT")
                return claim

        # Shielded: a cancelled task must not leave a transaction open on the shared
        # connection, where other tasks' checkpoints would join it.
        return await asyncio.shield(transaction())

    async def _claim(
        self,
        initial: SagaState,
        patient_key: str,
        owner: str,
        lease_seconds: float,
        now: float,
        fingerprint: str = "",
        content_fingerprint: str = "",
    ) -> Claim:
        db = self._db
        request_id = initial.request_id
        async with db.execute(_SELECT, (request_id,)) as cursor:
            row = await cursor.fetchone()
        stored = _stored(row) if row else None
        answer = claims.settled(stored, fingerprint, now, content_fingerprint=content_fingerprint)
        if answer is not None:
            return answer
        async with db.execute(
            "SELECT 1 FROM ers_sagas WHERE patient_key = ? AND request_id <> ? "
            "AND owner IS NOT NULL AND lease_until > ? LIMIT 1",
            (patient_key, request_id, now),
        ) as cursor:
            if await cursor.fetchone():
                return claims.patient_busy(stored)
        lease_until = now + lease_seconds
        if stored:
            await db.execute(
                "UPDATE ers_sagas SET owner = ?, lease_until = ?, patient_key = ?, "
                "claims = claims + 1, updated_at = ? WHERE request_id = ?",
                (owner, lease_until, patient_key, now, request_id),
            )
            return claims.taken(stored, initial)
        await db.execute(
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

    async def _update(self, sql: str, params: tuple[Any, ...]) -> None:
        async with self._lock:
            cursor = await self._db.execute(sql, params)
        if cursor.rowcount != 1:
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
        async with self._lock:
            cursor = await self._db.execute(
                "UPDATE ers_sagas SET owner = NULL, lease_until = NULL "
                "WHERE substr(owner, 1, ?) = ?",
                (len(replica) + 1, replica + "/"),
            )
        return cursor.rowcount

    async def release_all_leases(self) -> int:
        async with self._lock:
            cursor = await self._db.execute(
                "UPDATE ers_sagas SET owner = NULL, lease_until = NULL WHERE owner IS NOT NULL"
            )
        return cursor.rowcount

    async def ubrn_holder(self, ubrn: str) -> str | None:
        # A scan, but only when a create's answer was lost: rare, and the table is local.
        async with (
            self._lock,
            self._db.execute(
                "SELECT request_id FROM ers_sagas WHERE json_extract(state, '$.ubrn') = ? LIMIT 1",
                (ubrn,),
            ) as cursor,
        ):
            row = await cursor.fetchone()
        return str(row[0]) if row else None

    async def load(self, request_id: str) -> StoredSaga | None:
        async with self._lock, self._db.execute(_SELECT, (request_id,)) as cursor:
            row = await cursor.fetchone()
        return _stored(row) if row else None
