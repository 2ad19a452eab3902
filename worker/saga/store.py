"""Durable saga state: what survives a crash, and what stops two replicas racing.

Rules every backend keeps:
1. One row per request id. A saga runs only while its owner holds an unexpired lease;
   ``claim`` takes it, every ``checkpoint`` renews it, ``finish`` and ``release`` drop it.
   A replica that dies stops renewing, so its lease runs out and another may claim.
2. A saga is not claimed while another saga for the same patient holds a lease (two
   referrals for one patient racing on e-RS). Patients are known by a keyed hash only,
   kept while the saga is in flight and cleared when it stops.
3. A finished saga keeps its outcome; claiming it again returns that outcome, so an
   upstream re-send is answered without a second referral. REAUTHENTICATION_NEEDED and
   retryable failures are not final: a re-send resumes them from their checkpoint.
4. State is the serialised ``SagaState``: never a token, an NHS number or attachment bytes.
"""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass
from enum import StrEnum
from typing import Protocol

from schemas.events import OutcomeStatus, Step
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


class LeaseLost(RuntimeError):
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
    ) -> Claim:
        """Take the saga of ``initial.request_id`` (stored as ``initial`` when new)."""
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

    async def release_all_leases(self) -> int: ...

    async def load(self, request_id: str) -> StoredSaga | None: ...

    async def ping(self) -> None:
        """Raise if the store cannot be reached."""
        ...

    async def close(self) -> None: ...


def is_final(state: SagaState) -> bool:
    """Whether a re-send gets the stored outcome (True) or resumes the saga (False)."""
    if state.status in (OutcomeStatus.COMPLETED, OutcomeStatus.NEEDS_RECONCILIATION):
        return True
    return state.status is OutcomeStatus.FAILED and not (state.error and state.error.retryable)


def patient_key(nhs_number: str, secret: bytes) -> str:
    """A keyed hash: equal for one patient, useless for finding the number without the key."""
    return hmac.new(secret, nhs_number.encode("ascii"), hashlib.sha256).hexdigest()


def request_fingerprint(body: bytes, secret: bytes) -> str:
    """A keyed hash of the request body: tells a re-send from a new request re-using its id."""
    return hmac.new(secret, body, hashlib.sha256).hexdigest()


def resumable(state: SagaState) -> SagaState:
    """A stored, non-final saga made ready to run on from the step it reached.

    A saga checkpointed at DONE had completed when its process died before storing the
    outcome: it stays complete, and only its outcome is still to be stored and sent.
    """
    if state.step is Step.DONE:
        return state
    return state.model_copy(update={"status": None, "error": None, "waiting": None})
