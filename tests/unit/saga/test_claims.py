"""``worker.saga.claims``: the claim decision every saga store makes, and the keyed hashes
that stand for patients and request bodies in the store."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from schemas.events import ErrorInfo, OutcomeStatus, Step
from schemas.referral_request import ReferralRequestV1
from tests.unit.fakes import NOW
from worker.ops.samples import sample
from worker.saga.claims import (
    content_fingerprint,
    patient_busy,
    patient_key,
    raw_fingerprint,
    resumable,
    settled,
    taken,
)
from worker.saga.state import PendingWrite, SagaState, new_saga
from worker.saga.store import Claim, ClaimKind, StoredSaga

NOW_S = 1_000.0
FINGERPRINT = "f" * 64
NHS_NUMBER = "9990010005"
SECRET = b"a secret of the store"


def stored(**changes: Any) -> StoredSaga:
    fields: dict[str, Any] = {
        "request_id": "req-1",
        "state": new_saga("req-1", "corr-1").model_copy(update={"step": Step.CREATE}),
        "final": False,
        "outcome": None,
        "owner": None,
        "lease_until": None,
        "claims": 1,
        "created_at": 900.0,
        "updated_at": 950.0,
        "fingerprint": FINGERPRINT,
    }
    fields.update(changes)
    return StoredSaga(**fields)


# --- settled ----------------------------------------------------------------------------------


def test_no_stored_saga_is_not_settled() -> None:
    assert settled(None, FINGERPRINT, NOW_S) is None


def test_a_stored_saga_no_one_holds_is_not_settled() -> None:
    assert settled(stored(), FINGERPRINT, NOW_S) is None


def test_a_request_id_reused_for_another_body_is_refused() -> None:
    row = stored(fingerprint="0" * 64)

    assert settled(row, FINGERPRINT, NOW_S) == Claim(ClaimKind.REUSED, row.state)


def test_reuse_is_found_before_a_finished_or_held_saga() -> None:
    row = stored(fingerprint="0" * 64, final=True, outcome=b"{}", owner="w1", lease_until=2e3)

    claim = settled(row, FINGERPRINT, NOW_S)

    assert claim is not None and claim.kind is ClaimKind.REUSED


@pytest.mark.parametrize("old", [None, ""], ids=["none", "empty"])
def test_a_row_stored_without_a_fingerprint_is_not_reuse(old: str | None) -> None:
    # Rows from before fingerprints were stored are taken on trust.
    assert settled(stored(fingerprint=old), FINGERPRINT, NOW_S) is None


def test_a_finished_saga_answers_with_its_stored_outcome() -> None:
    row = stored(final=True, outcome=b'{"status": "COMPLETED"}')

    assert settled(row, FINGERPRINT, NOW_S) == Claim(
        ClaimKind.FINISHED, row.state, b'{"status": "COMPLETED"}'
    )


@pytest.mark.parametrize("owner", ["another-replica", "this-replica"])
def test_a_saga_held_under_a_live_lease_is_busy_whoever_holds_it(owner: str) -> None:
    row = stored(owner=owner, lease_until=NOW_S + 0.001)

    assert settled(row, FINGERPRINT, NOW_S) == Claim(ClaimKind.BUSY_REQUEST, row.state)


@pytest.mark.parametrize("lease_until", [NOW_S, NOW_S - 30.0], ids=["ends-now", "ended"])
def test_an_expired_lease_is_not_settled(lease_until: float) -> None:
    assert (
        settled(stored(owner="dead-replica", lease_until=lease_until), FINGERPRINT, NOW_S) is None
    )


def test_a_lease_time_with_no_owner_holds_nothing() -> None:
    assert settled(stored(owner=None, lease_until=NOW_S + 60), FINGERPRINT, NOW_S) is None


# --- taken, patient_busy --------------------------------------------------------------------


def test_taken_with_no_stored_saga_starts_the_initial_one() -> None:
    initial = new_saga("req-2", "corr-2")

    assert taken(None, initial) == Claim(ClaimKind.STARTED, initial)


def test_taken_with_a_stored_saga_resumes_it() -> None:
    row = stored()

    claim = taken(row, new_saga("req-1", "corr-1"))

    assert claim == Claim(ClaimKind.RESUMED, row.state)
    assert claim.state is not None and claim.state.step is Step.CREATE


def test_patient_busy() -> None:
    row = stored()

    assert patient_busy(row) == Claim(ClaimKind.BUSY_PATIENT, row.state)
    assert patient_busy(None) == Claim(ClaimKind.BUSY_PATIENT, None)


# --- keyed hashes -----------------------------------------------------------------------------


def test_a_patient_key_is_stable_keyed_and_hides_the_number() -> None:
    key = patient_key(NHS_NUMBER, SECRET)

    assert key == patient_key(NHS_NUMBER, SECRET)
    assert key != patient_key(NHS_NUMBER, b"another secret")
    assert key != patient_key("9990010013", SECRET)
    assert len(key) == 64 and int(key, 16) >= 0  # hex SHA-256
    assert NHS_NUMBER not in key


def _request(data: dict[str, Any]) -> ReferralRequestV1:
    return ReferralRequestV1.model_validate(data)


def test_a_raw_fingerprint_is_stable_keyed_and_hides_the_body() -> None:
    body = f'{{"patient": {{"nhs_number": "{NHS_NUMBER}"}}}}'.encode()

    fingerprint = raw_fingerprint(body, SECRET)

    assert fingerprint == raw_fingerprint(body, SECRET)
    assert fingerprint != raw_fingerprint(body, b"another secret")
    assert fingerprint != raw_fingerprint(body + b" ", SECRET)
    assert len(fingerprint) == 64
    assert NHS_NUMBER not in fingerprint


def test_a_content_fingerprint_ignores_how_the_json_was_written() -> None:
    data = sample("03-ibs-shortlisted.json")
    pretty = orjson.dumps(data, option=orjson.OPT_INDENT_2)
    compact = orjson.dumps(dict(reversed(list(data.items()))))

    fingerprint = content_fingerprint(_request(orjson.loads(pretty)), SECRET)

    assert fingerprint == content_fingerprint(_request(orjson.loads(compact)), SECRET)
    assert raw_fingerprint(pretty, SECRET) != raw_fingerprint(compact, SECRET)
    assert fingerprint != content_fingerprint(_request(orjson.loads(pretty)), b"another secret")
    assert len(fingerprint) == 64
    assert data["patient"]["nhs_number"] not in fingerprint


def test_a_content_fingerprint_tells_a_different_request_apart() -> None:
    data = sample("03-ibs-shortlisted.json")
    changed = {**data, "search": {**data["search"], "priority": "URGENT"}}

    assert content_fingerprint(_request(data), SECRET) != content_fingerprint(
        _request(changed), SECRET
    )


def test_content_decides_where_both_sides_have_it_else_the_raw_bytes() -> None:
    legacy = stored(fingerprint="raw-fp")  # stored before content fingerprints
    both = stored(fingerprint="raw-fp", content_fingerprint="content-fp")
    reused = Claim(ClaimKind.REUSED, legacy.state)

    assert settled(legacy, "raw-fp", NOW_S, content_fingerprint="content-fp") is None
    assert settled(legacy, "other-raw", NOW_S, content_fingerprint="content-fp") == reused
    # Re-serialised: other bytes, the same content.
    assert settled(both, "other-raw", NOW_S, content_fingerprint="content-fp") is None
    assert settled(both, "raw-fp", NOW_S, content_fingerprint="other-content") == reused
    # A replica of the version before compares the raw bytes only.
    assert settled(both, "raw-fp", NOW_S) is None


def test_patient_keys_and_fingerprints_are_not_plain_hashes() -> None:
    import hashlib

    assert patient_key(NHS_NUMBER, SECRET) != hashlib.sha256(NHS_NUMBER.encode()).hexdigest()
    assert raw_fingerprint(b"x", SECRET) != hashlib.sha256(b"x").hexdigest()


# --- resumable --------------------------------------------------------------------------------


def test_resumable_clears_how_the_last_run_ended_and_keeps_what_it_learned() -> None:
    error = ErrorInfo(step=Step.CREATE, code="UNAUTHORISED", text="401", retryable=True)
    pending = PendingWrite(step=Step.CREATE, endpoint="A011", at=NOW)
    state = SagaState(
        request_id="req-1",
        correlation_id="corr-1",
        step=Step.LINK_LETTER,
        status=OutcomeStatus.REAUTHENTICATION_NEEDED,
        error=error,
        waiting=error,
        ubrn="000000070000",
        referral_version="4",
        uploaded_urls=("Binary/x",),
        pending=pending,
    )

    again = resumable(state)

    assert (again.status, again.error, again.waiting) == (None, None, None)
    assert again.running
    assert again.step is Step.LINK_LETTER
    assert (again.ubrn, again.referral_version, again.uploaded_urls) == (
        "000000070000",
        "4",
        ("Binary/x",),
    )
    assert again.pending == pending  # an unknown write is still checked before going on


def test_a_saga_checkpointed_at_done_stays_completed() -> None:
    done = new_saga("req-1", "corr-1").model_copy(
        update={"step": Step.DONE, "status": OutcomeStatus.COMPLETED}
    )

    assert resumable(done) == done
    assert resumable(done).finished
