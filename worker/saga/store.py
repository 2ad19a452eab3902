"""Durable saga state: what survives a crash, and what stops two replicas racing.

Rules every backend keeps:
1. One row per request id. A saga runs only while its owner holds an unexpired lease;
   ``claim`` takes it, every ``checkpoint`` renews it, ``finish`` and ``release`` drop it.
   A replica that dies stops renewing, so its lease runs out and another may claim.
2. A saga is not claimed while another saga for the same patient holds a lease (two
   referrals for one patient racing on e-RS). Patients are known by a keyed hash only,
   kept while the saga is in flight and cleared when it stops.
3. A finished saga keeps its outcome; claiming it again returns that outcome, so an
   upstream re-send is answered without a second referral. Which outcomes are final is
   ``worker.saga.policy``'s to say; the decision a claim makes is ``worker.saga.claims``'.
4. State is the serialised ``SagaState``: never a token, an NHS number or attachment bytes.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Protocol

from worker.saga.state import SagaState


class ClaimKind(StrEnum):
    STARTED = "started"
    RESUMED = "resumed"
    FINISHED = "finished"
    BUSY_REQUEST = "busy_request"
    BUSY_PATIENT = "busy_patient"
    REUSED = "reused"  # the request id was first used for a different request


@dataclass(frozen=True, slots=True)
class Claim:
    kind: ClaimKind
    state: SagaState | None = None
    outcome: bytes | None = None


@dataclass(frozen=True, slots=True)
class StoredSaga:
    request_id: str
    state: SagaState
    final: bool
    outcome: bytes | None
    owner: str | None
    lease_until: float | None
    claims: int
    created_at: float
    updated_at: float
    fingerprint: str | None = None
    content_fingerprint: str | None = None


class NotStored(RuntimeError):
    """The journal could not store the saga before a call (``worker.saga.journal``), so the
    call was not sent. Not the saga's fault, and not final: the run stops, and the message
    goes back to resume from what the store holds. The runner lets it through untouched."""


class LeaseLost(NotStored):
    """This replica no longer owns the saga: stop, and let the owner carry on."""


class SagaStore(Protocol):
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
        """Take the saga of ``initial.request_id`` (stored as ``initial`` when new, with both
        fingerprints: ``claims.raw_fingerprint`` and ``claims.request_fingerprint``)."""
        ...

    async def checkpoint(
        self, state: SagaState, owner: str, lease_seconds: float, now: float
    ) -> None: ...

    async def finish(
        self, state: SagaState, outcome: bytes, owner: str, *, final: bool, now: float
    ) -> None: ...

    async def release(self, state: SagaState, owner: str, now: float) -> None: ...

    async def reopen(self, state: SagaState, now: float) -> None:
        """Make a finished saga resumable again (an operator replays it after a fix)."""
        ...

    async def renew(self, request_id: str, owner: str, lease_seconds: float, now: float) -> None:
        """Extend the lease (and nothing else); raise ``LeaseLost`` if ``owner`` lost it."""
        ...

    async def release_all_leases(self) -> int: ...

    async def release_leases_of(self, replica: str) -> int:
        """Free the sagas held by any process of ``replica`` (owners ``<replica>/<nonce>``):
        called by a replica with a stable name when it starts, since the process that held
        them under that name is dead."""
        ...

    async def load(self, request_id: str) -> StoredSaga | None: ...

    async def ubrn_holder(self, ubrn: str) -> str | None:
        """The request id of the saga whose state holds this UBRN, if any."""
        ...

    async def ping(self) -> None:
        """Raise if the store cannot be reached."""
        ...

    async def close(self) -> None: ...
