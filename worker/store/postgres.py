"""The shared saga store: PostgreSQL (asyncpg), for several replicas working one queue.

A claim is one transaction that locks the request's row (``FOR UPDATE``) and, first, takes a
transaction-scoped advisory lock on the patient key, so two replicas cannot both decide that
no other saga holds that patient.
"""

from __future__ import annotations

from typing import Any

import asyncpg

from worker.saga import claims
from worker.saga.state import SagaState
from worker.saga.store import Claim, ClaimKind, LeaseLost, StoredSaga

SCHEMA = """
CREATE TABLE IF NOT EXISTS ers_sagas (
    request_id   TEXT PRIMARY KEY,
    state        JSONB NOT NULL,
    step         TEXT NOT NULL,
    status       TEXT,
    final        BOOLEAN NOT NULL DEFAULT FALSE,
    outcome      BYTEA,
    patient_key  TEXT,
    fingerprint  TEXT,
    content_fingerprint TEXT,
    owner        TEXT,
    lease_until  DOUBLE PRECISION,
    claims       INTEGER NOT NULL DEFAULT 0,
    created_at   DOUBLE PRECISION NOT NULL,
    updated_at   DOUBLE PRECISION NOT NULL
);
CREATE INDEX IF NOT EXISTS ers_sagas_patient ON ers_sagas (patient_key)
    WHERE patient_key IS NOT NULL;
-- Stores made before the column existed get it on start-up.
ALTER TABLE ers_sagas ADD COLUMN IF NOT EXISTS fingerprint TEXT;
ALTER TABLE ers_sagas ADD COLUMN IF NOT EXISTS content_fingerprint TEXT;
"""

_COLUMNS = (
    "request_id, state::text AS state, final, outcome, owner, lease_until, claims, "
    "created_at, updated_at, fingerprint, content_fingerprint"
)


async def _migrate(dsn: str, schema: str) -> None:
    conn = await asyncpg.connect(dsn)
    try:
        async with conn.transaction():
            # Replicas starting together must not race on CREATE ... IF NOT EXISTS.
            await conn.execute("SELECT pg_advisory_xact_lock(hashtext('ers_sagas_schema'))")
            await conn.execute(f'CREATE SCHEMA IF NOT EXISTS "{schema}"')
            await conn.execute(f'SET LOCAL search_path TO "{schema}"')
            await conn.execute(SCHEMA)
    finally:
        await conn.close()


def _stored(row: asyncpg.Record) -> StoredSaga:
    return StoredSaga(
        request_id=row["request_id"],
        state=SagaState.model_validate_json(row["state"]),
        final=row["final"],
        outcome=row["outcome"],
        owner=row["owner"],
        lease_until=row["lease_until"],
        claims=row["claims"],
        created_at=row["created_at"],
        updated_at=row["updated_at"],
        fingerprint=row["fingerprint"],
        content_fingerprint=row["content_fingerprint"],
    )


class PostgresSagaStore:
    def __init__(self, pool: asyncpg.Pool) -> None:
        self._pool = pool

    @classmethod
    async def open(
        cls,
        dsn: str,
        *,
        schema: str = "public",
        max_size: int = 10,
        migrate: bool = True,
        read_only: bool = False,
    ) -> PostgresSagaStore:
        """``migrate``: create the schema and table (the worker); operator tools open an
        existing store without it, and ``read_only`` ones need nothing but SELECT."""
        if not schema.isidentifier():
            raise ValueError("schema must be a plain SQL identifier")
        if migrate:
            await _migrate(dsn, schema)
        server_settings = {"search_path": schema}
        if read_only:
            # A read that would write fails loudly rather than changing the store.
            server_settings["default_transaction_read_only"] = "on"
        pool = await asyncpg.create_pool(
            dsn, min_size=1, max_size=max_size, server_settings=server_settings
        )
        return cls(pool)

    async def close(self) -> None:
        await self._pool.close()

    async def ping(self) -> None:
        await self._pool.fetchval("SELECT 1")

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
        request_id = initial.request_id
        async with self._pool.acquire() as conn, conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock(hashtext($1))", patient_key)
            row = await conn.fetchrow(
                f"SELECT {_COLUMNS} FROM ers_sagas WHERE request_id = $1 FOR UPDATE", request_id
            )
            stored = _stored(row) if row else None
            answer = claims.settled(
                stored, fingerprint, now, content_fingerprint=content_fingerprint
            )
            if answer is not None:
                return answer
            other = await conn.fetchval(
                "SELECT 1 FROM ers_sagas WHERE patient_key = $1 AND request_id <> $2 "
                "AND owner IS NOT NULL AND lease_until > $3 LIMIT 1",
                patient_key,
                request_id,
                now,
            )
            if other:
                return claims.patient_busy(stored)
            lease_until = now + lease_seconds
            if stored:
                await conn.execute(
                    "UPDATE ers_sagas SET owner = $1, lease_until = $2, patient_key = $3, "
                    "claims = claims + 1, updated_at = $4 WHERE request_id = $5",
                    owner,
                    lease_until,
                    patient_key,
                    now,
                    request_id,
                )
                return claims.taken(stored, initial)
            inserted = await conn.execute(
                "INSERT INTO ers_sagas (request_id, state, step, patient_key, owner, "
                "lease_until, claims, created_at, updated_at, fingerprint, content_fingerprint) "
                "VALUES ($1, $2::jsonb, $3, $4, $5, $6, 1, $7, $7, $8, $9) "
                "ON CONFLICT (request_id) DO NOTHING",
                request_id,
                initial.model_dump_json(),
                initial.step.value,
                patient_key,
                owner,
                lease_until,
                now,
                fingerprint or None,
                content_fingerprint or None,
            )
            if inserted.endswith(" 0"):
                # Another replica inserted it between our read and our insert.
                return Claim(ClaimKind.BUSY_REQUEST)
            return claims.taken(None, initial)

    async def _update(self, sql: str, *params: Any) -> None:
        result = await self._pool.execute(sql, *params)
        if not result.endswith(" 1"):
            raise LeaseLost("the saga's lease is held by another owner")

    async def checkpoint(
        self, state: SagaState, owner: str, lease_seconds: float, now: float
    ) -> None:
        await self._update(
            "UPDATE ers_sagas SET state = $1::jsonb, step = $2, lease_until = $3, "
            "updated_at = $4 WHERE request_id = $5 AND owner = $6",
            state.model_dump_json(),
            state.step.value,
            now + lease_seconds,
            now,
            state.request_id,
            owner,
        )

    async def finish(
        self, state: SagaState, outcome: bytes, owner: str, *, final: bool, now: float
    ) -> None:
        await self._update(
            "UPDATE ers_sagas SET state = $1::jsonb, step = $2, status = $3, final = $4, "
            "outcome = $5, owner = NULL, lease_until = NULL, patient_key = NULL, "
            "updated_at = $6 WHERE request_id = $7 AND owner = $8",
            state.model_dump_json(),
            state.step.value,
            state.status.value if state.status else None,
            final,
            outcome,
            now,
            state.request_id,
            owner,
        )

    async def release(self, state: SagaState, owner: str, now: float) -> None:
        await self._update(
            "UPDATE ers_sagas SET state = $1::jsonb, step = $2, owner = NULL, "
            "lease_until = NULL, patient_key = NULL, updated_at = $3 "
            "WHERE request_id = $4 AND owner = $5",
            state.model_dump_json(),
            state.step.value,
            now,
            state.request_id,
            owner,
        )

    async def reopen(self, state: SagaState, now: float) -> None:
        await self._update(
            "UPDATE ers_sagas SET state = $1::jsonb, step = $2, status = NULL, final = FALSE, "
            "owner = NULL, lease_until = NULL, updated_at = $3 "
            "WHERE request_id = $4 AND owner IS NULL",
            state.model_dump_json(),
            state.step.value,
            now,
            state.request_id,
        )

    async def renew(self, request_id: str, owner: str, lease_seconds: float, now: float) -> None:
        await self._update(
            "UPDATE ers_sagas SET lease_until = $1 WHERE request_id = $2 AND owner = $3",
            now + lease_seconds,
            request_id,
            owner,
        )

    async def release_leases_of(self, replica: str) -> int:
        result = await self._pool.execute(
            "UPDATE ers_sagas SET owner = NULL, lease_until = NULL WHERE left(owner, $1) = $2",
            len(replica) + 1,
            replica + "/",
        )
        return int(result.rsplit(" ", 1)[-1])

    async def release_all_leases(self) -> int:
        result = await self._pool.execute(
            "UPDATE ers_sagas SET owner = NULL, lease_until = NULL WHERE owner IS NOT NULL"
        )
        return int(result.rsplit(" ", 1)[-1])

    async def ubrn_holder(self, ubrn: str) -> str | None:
        # A scan, but only when a create's answer was lost: rare.
        holder = await self._pool.fetchval(
            "SELECT request_id FROM ers_sagas WHERE state->>'ubrn' = $1 LIMIT 1", ubrn
        )
        return str(holder) if holder is not None else None

    async def load(self, request_id: str) -> StoredSaga | None:
        row = await self._pool.fetchrow(
            f"SELECT {_COLUMNS} FROM ers_sagas WHERE request_id = $1", request_id
        )
        return _stored(row) if row else None
