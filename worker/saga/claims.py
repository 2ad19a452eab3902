"""The claim decision every saga store makes, written once: the backends only read and write.

A backend, inside one transaction:
1. reads the stored saga (if any) and asks ``settled`` whether the claim is answered without
   a write (a re-used id, a finished saga, a saga someone holds);
2. if not, checks whether another saga of the patient holds a lease (``BUSY_PATIENT``);
3. if not, takes the lease and returns ``taken``.

Patients and request bodies are known to the store only by keyed hashes (``patient_key``,
``content_fingerprint`` and ``raw_fingerprint``).
"""

from __future__ import annotations

import hashlib
import hmac

import orjson

from schemas.events import Step
from schemas.referral_request import ReferralRequestV1
from worker.saga.state import SagaState
from worker.saga.store import Claim, ClaimKind, StoredSaga


def same_request(stored: StoredSaga, fingerprint: str, content_fingerprint: str) -> bool:
    """Whether the incoming message is the stored saga's request.

    By content where both sides have it (a re-send the engine re-serialised is the same
    request); else by the raw bytes, which is all a saga stored before content fingerprints
    has, and all a replica of that older version compares (so both versions can run side by
    side during a rolling upgrade, and a rollback reads what this one stored)."""
    if stored.content_fingerprint and content_fingerprint:
        return stored.content_fingerprint == content_fingerprint
    return not stored.fingerprint or stored.fingerprint == fingerprint


def settled(
    stored: StoredSaga | None, fingerprint: str, now: float, *, content_fingerprint: str = ""
) -> Claim | None:
    """The claim's answer when no lease is to be taken, else None."""
    if stored is None:
        return None
    if not same_request(stored, fingerprint, content_fingerprint):
        return Claim(ClaimKind.REUSED, stored.state)
    if stored.final:
        return Claim(ClaimKind.FINISHED, stored.state, stored.outcome)
    # Held by anyone, this replica included: a second delivery of the request must not
    # run the saga beside the first.
    if stored.owner is not None and (stored.lease_until or 0) > now:
        return Claim(ClaimKind.BUSY_REQUEST, stored.state)
    return None


def patient_busy(stored: StoredSaga | None) -> Claim:
    """Another saga of the patient holds a lease: this one waits."""
    return Claim(ClaimKind.BUSY_PATIENT, stored.state if stored else None)


def taken(stored: StoredSaga | None, initial: SagaState) -> Claim:
    """The lease is ours: resume the stored saga, or start ``initial``."""
    if stored is not None:
        return Claim(ClaimKind.RESUMED, stored.state)
    return Claim(ClaimKind.STARTED, initial)


def patient_key(nhs_number: str, secret: bytes) -> str:
    """A keyed hash: equal for one patient, useless for finding the number without the key."""
    return hmac.new(secret, nhs_number.encode("ascii"), hashlib.sha256).hexdigest()


def content_fingerprint(request: ReferralRequestV1, secret: bytes) -> str:
    """A keyed hash of the request's validated content in a canonical form (keys sorted, no
    whitespace, numbers as the contract types them): tells a re-send from a new request
    re-using its id, even when the upstream engine re-serialised the JSON."""
    canonical = orjson.dumps(request.model_dump(mode="json"), option=orjson.OPT_SORT_KEYS)
    return hmac.new(secret, b"v2:" + canonical, hashlib.sha256).hexdigest()


def raw_fingerprint(body: bytes, secret: bytes) -> str:
    """A keyed hash of the raw bytes: what sagas stored before ``content_fingerprint``, and
    still stored beside it (see ``same_request``)."""
    return hmac.new(secret, body, hashlib.sha256).hexdigest()


def resumable(state: SagaState) -> SagaState:
    """A stored, non-final saga made ready to run on from the step it reached.

    A saga checkpointed at DONE had completed when its process died before storing the
    outcome: it stays complete, and only its outcome is still to be stored and sent.
    """
    if state.step is Step.DONE:
        return state
    return state.model_copy(
        update={"status": None, "error": None, "waiting": None, "waiting_at_least": None}
    )
