"""``worker.saga.runner.run_saga`` against a scripted e-RS: what each kind of failure makes
of the saga (wait, re-authenticate, refresh, reconcile, fail), what it records (history,
checkpoints) and what it tells its observer."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest

from schemas.events import OutcomeStatus, Path, Step
from schemas.referral_request import ReferralRequestV1
from tests.unit.fakes import (
    NOW,
    UBRN,
    FakeErs,
    FakeLetters,
    RecordingCheckpoint,
    RecordingObserver,
    booked,
    created_fields,
    deferred,
    make_context,
    ok,
    priority_code_system,
    referral,
    saga_state,
    sample_request,
    service_entry,
    service_list,
    slot,
    slot_bundle,
)
from tests.unit.saga.test_lost_create import item, worklist
from tests.unit.saga.test_lost_create import referral as confirmable
from worker.saga.claims import resumable
from worker.saga.context import SagaOptions
from worker.saga.errors import (
    SUBJECT_TOKEN,
    BusinessRuleFailure,
    ErsAuthError,
    ErsConflict,
    ErsError,
    ErsLocked,
    ErsOutcomeUnknown,
    ErsRateLimited,
    ErsRejected,
    ErsTransientError,
    ErsUnexpected,
    ExchangeRefused,
    TokenExpired,
)
from worker.saga.runner import MAX_UNKNOWN_EFFECTS, MAX_VERSION_CONFLICTS, run_saga
from worker.saga.state import CallRecord, PendingWrite, SagaState, TriageRoute, new_saga

NHS_NUMBER = "9990010005"  # the patient of 01-dbs-booked.json
BINARY = "Binary/a7c98bb4-c0d0-4094-b26d-8dbd1677edc8"
PDF = b"%PDF-1.4 patient letter"
S1 = slot("s1", "2025-07-01T09:00:00.000Z")


def happy_dbs(ers: FakeErs) -> FakeErs:
    """Defaults that carry 01-dbs-booked.json to COMPLETED; tests queue deviations first.

    Referral versions: created 3, letters linked 4, booked 5.
    """
    ers.always("A004", ok(priority_code_system()))
    ers.always("A010", ok(service_list(service_entry("11002"))))
    ers.always("A011", ok(referral(version="3"), status=201, etag='W/"3"'))
    ers.always("A020", ok(status=201, location=BINARY))
    ers.always("A012", ok(referral(version="4", attachment_urls=[BINARY]), etag='W/"4"'))
    ers.always("A015", ok(slot_bundle([S1])))
    ers.always("A016", ok(booked(S1, version="5"), status=201))
    ers.always(
        "A019", ok(content=PDF, file_name="000000070000_Appointment_Confirmation_Summary.pdf")
    )
    return ers


class Run:
    """One saga run with its recording seams."""

    def __init__(
        self,
        ers: FakeErs,
        request: ReferralRequestV1 | None = None,
        *,
        options: SagaOptions | None = None,
    ) -> None:
        self.ers = ers
        self.request = request or sample_request()
        self.letters = FakeLetters()
        self.checkpoints = RecordingCheckpoint()
        self.observer = RecordingObserver()
        self.ctx = make_context(self.request, ers, options=options, letters=self.letters)

    def new(self) -> SagaState:
        return new_saga(self.request.request_id, f"corr-{self.request.request_id}")

    def at(self, step: Step, **fields: Any) -> SagaState:
        return saga_state(self.request, step, **fields)

    async def __call__(self, state: SagaState | None = None) -> SagaState:
        return await run_saga(
            state if state is not None else self.new(),
            self.ctx,
            checkpoint=self.checkpoints,
            observer=self.observer,
        )

    def checkpointed_steps(self) -> list[Step]:
        return [s.step for s in self.checkpoints.states]


def a012_versions(ers: FakeErs) -> list[str]:
    return [c.args["version"] for c in ers.calls_to("A012")]


def linked(version: str = "4", **more: Any) -> dict[str, Any]:
    """A saga's fields once its letter is uploaded and linked."""
    return created_fields(version=version, uploaded_urls=(BINARY,), attachments_linked=1, **more)


def uploaded(version: str = "3") -> dict[str, Any]:
    return created_fields(version=version, uploaded_urls=(BINARY,))


# --- the happy run ----------------------------------------------------------------------------


async def test_a_dbs_request_runs_to_completed() -> None:
    run = Run(happy_dbs(FakeErs()))

    state = await run()

    assert state.status is OutcomeStatus.COMPLETED
    assert state.step is Step.DONE
    assert state.error is None and state.waiting is None and state.pending is None
    assert run.ers.endpoints() == ["A004", "A010", "A011", "A020", "A012", "A015", "A016", "A019"]
    assert state.path is Path.DBS_BOOKED
    assert state.ubrn == UBRN
    assert state.referral_version == "5"
    assert state.referral_state == "BOOKED"
    assert state.defer_contact_days == 40 and state.triage_contact_days == 40
    assert [s.service_id for s in state.shortlist] == ["11002"]
    assert state.uploaded_urls == (BINARY,)
    assert state.attachments_linked == 1
    assert state.appointment is not None and state.appointment.slot_id == "s1"
    # each write is sent with the version the one before it produced
    assert a012_versions(run.ers) == ["3"]
    assert run.ers.bodies("A016")[0]["incomingReferral"] == [
        {"reference": f"ReferralRequest/{UBRN}/_history/4"}
    ]
    [upload] = run.ers.calls_to("A020")
    assert upload.args["ubrn"] == UBRN
    assert upload.args["file_name"] == "referral-letter.txt"
    assert upload.args["content"] == run.request.attachments[0].content
    assert run.letters.saved == [
        {
            "ubrn": UBRN,
            "request_id": run.request.request_id,
            "file_name": "000000070000_Appointment_Confirmation_Summary.pdf",
            "content": PDF,
        }
    ]
    assert state.letter is not None and state.letter.size_bytes == len(PDF)
    # the state is what the store keeps: never the NHS number
    assert NHS_NUMBER not in state.model_dump_json()


async def test_the_history_records_every_call_under_its_step() -> None:
    ers = happy_dbs(FakeErs())
    ers.script("A010", ok(service_list(service_entry("11002")), request_id="rq-a010"))
    run = Run(ers)

    state = await run()

    assert [(r.step, r.endpoint, r.status) for r in state.history] == [
        (Step.REFERENCE_DATA, "A004", 200),
        (Step.SEARCH, "A010", 200),
        (Step.CREATE, "A011", 201),
        (Step.UPLOAD, "A020", 201),
        (Step.LINK_LETTER, "A012", 200),
        (Step.BOOK_OR_DEFER, "A015", 200),
        (Step.BOOK_OR_DEFER, "A016", 201),
        (Step.PATIENT_LETTER, "A019", 200),
    ]
    assert state.history[1] == CallRecord(
        step=Step.SEARCH,
        endpoint="A010",
        status=200,
        at=NOW,
        duration_ms=0,
        x_request_id="rq-a010",
        error_code=None,
    )
    assert ers.drain_calls() == []  # the runner drained every one


async def test_a_checkpoint_follows_every_step() -> None:
    run = Run(happy_dbs(FakeErs()))

    state = await run()

    assert run.checkpointed_steps() == [
        Step.SEARCH,
        Step.CREATE,
        Step.UPLOAD,
        Step.LINK_LETTER,
        Step.BOOK_OR_DEFER,
        Step.PATIENT_LETTER,
        Step.DONE,
    ]
    assert run.checkpoints.states[-1] == state
    # each checkpoint holds what its step learned, with its calls in the history
    created = run.checkpoints.states[2]
    assert created.ubrn == UBRN and created.referral_version == "3"
    assert [r.endpoint for r in created.history] == ["A004", "A010", "A011"]
    assert all(s.status is None for s in run.checkpoints.states[:-1])


async def test_the_observer_is_told_of_every_step_started() -> None:
    run = Run(happy_dbs(FakeErs()))

    await run()

    assert run.observer.started == [
        Step.REFERENCE_DATA,
        Step.SEARCH,
        Step.CREATE,
        Step.UPLOAD,
        Step.LINK_LETTER,
        Step.BOOK_OR_DEFER,
        Step.PATIENT_LETTER,
    ]
    assert run.observer.failed == []


# --- waiting ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("error", "status"),
    [
        (ErsTransientError("A010", 503, "SERVICE_UNAVAILABLE"), 503),
        (ErsTransientError("A010", 500, "HTTP_500"), 500),
        (ErsTransientError("A010", None, "TIMEOUT"), None),
        (ErsRateLimited("A010", 5.0), 429),
    ],
    ids=["503", "500", "timeout", "429"],
)
async def test_a_transient_fault_makes_the_saga_wait(error: ErsError, status: int | None) -> None:
    ers = happy_dbs(FakeErs()).script("A010", error)
    run = Run(ers)

    state = await run()

    assert not state.finished and state.status is None
    assert not state.running
    assert state.waiting is not None
    assert state.waiting.step is Step.SEARCH
    assert state.waiting.code == error.code
    assert state.waiting.http_status == status
    assert state.waiting.retryable
    assert state.step is Step.SEARCH  # resumes there
    assert state.error is None
    assert ers.endpoints() == ["A004", "A010"]
    assert run.checkpoints.states[-1] == state
    assert run.observer.failed == [(Step.SEARCH, error.code)]
    assert (state.history[-1].endpoint, state.history[-1].error_code) == ("A010", error.code)


async def test_a_locked_referral_makes_the_saga_wait() -> None:
    ers = FakeErs().script("A012", ErsLocked("A012", 423, "LOCKED"))
    run = Run(ers)

    state = await run(run.at(Step.LINK_LETTER, **uploaded()))

    assert state.waiting is not None
    assert (state.waiting.step, state.waiting.code, state.waiting.http_status) == (
        Step.LINK_LETTER,
        "LOCKED",
        423,
    )
    assert state.waiting.retryable
    assert not state.finished
    assert ers.endpoints() == ["A012"]


async def test_a_waiting_saga_resumes_from_its_checkpoint_once_made_resumable() -> None:
    ers = happy_dbs(FakeErs()).script("A010", ErsTransientError("A010", 503, "UNAVAILABLE"))
    run = Run(ers)
    waiting = await run()

    assert await run(waiting) == waiting  # still waiting: run_saga does nothing
    assert ers.endpoints() == ["A004", "A010"]

    state = await run(resumable(waiting))

    assert state.status is OutcomeStatus.COMPLETED
    # A004 is not asked again; the first run's history is kept
    assert ers.endpoints() == [
        "A004",
        "A010",
        "A010",
        "A011",
        "A020",
        "A012",
        "A015",
        "A016",
        "A019",
    ]
    assert [r.endpoint for r in state.history[:3]] == ["A004", "A010", "A010"]


# --- re-authentication ------------------------------------------------------------------------


async def test_a_refused_token_ends_reauthentication_needed() -> None:
    ers = happy_dbs(FakeErs()).script("A011", ErsAuthError("A011", 401, "UNAUTHORISED"))
    run = Run(ers)

    state = await run()

    assert state.status is OutcomeStatus.REAUTHENTICATION_NEEDED
    assert state.error is not None
    assert (state.error.step, state.error.code, state.error.http_status) == (
        Step.CREATE,
        "UNAUTHORISED",
        401,
    )
    assert state.error.retryable
    assert state.step is Step.CREATE  # a re-send resumes here
    assert ers.endpoints() == ["A004", "A010", "A011"]
    assert run.observer.failed == [(Step.CREATE, "UNAUTHORISED")]


async def test_a_refused_token_exchange_before_a_write_ends_reauthentication_needed() -> None:
    # The session exchanges the CIS2 ID token before A011 and the platform refuses: an
    # error that names no e-RS endpoint, and proves A011 was never sent.
    refused = ExchangeRefused(400, "invalid_grant", SUBJECT_TOKEN)
    ers = happy_dbs(FakeErs()).script("A011", refused)
    run = Run(ers)

    state = await run()

    assert state.status is OutcomeStatus.REAUTHENTICATION_NEEDED
    assert state.error is not None and state.error.code == "TOKEN_EXCHANGE_INVALID_GRANT"
    assert state.pending is None and state.step is Step.CREATE


async def test_a_token_expired_before_a_call_ends_reauthentication_needed() -> None:
    ers = happy_dbs(FakeErs()).script("A010", TokenExpired("access token expired before A010"))
    run = Run(ers)

    state = await run()

    assert state.status is OutcomeStatus.REAUTHENTICATION_NEEDED
    assert state.error is not None
    assert (state.error.step, state.error.code, state.error.retryable) == (
        Step.SEARCH,
        "TOKEN_EXPIRED",
        True,
    )
    assert state.error.http_status is None
    assert [r.endpoint for r in state.history] == ["A004"]  # nothing was sent


# --- stale versions ---------------------------------------------------------------------------


async def test_a_version_conflict_rereads_the_referral_and_retries_the_step() -> None:
    ers = happy_dbs(FakeErs()).script("A012", ErsConflict("A012", 412, "PRECONDITION_FAILED"))
    ers.script("A005", ok(referral(version="7"), etag='W/"7"'))
    ers.script("A012", ok(referral(version="8", attachment_urls=[BINARY]), etag='W/"8"'))
    run = Run(ers)

    state = await run(run.at(Step.LINK_LETTER, **uploaded(version="3")))

    assert ers.endpoints()[:3] == ["A012", "A005", "A012"]
    assert ers.calls_to("A005")[0].args == {"ubrn": UBRN}
    assert a012_versions(ers) == ["3", "7"]
    after_conflict = run.checkpoints.states[0]
    assert (after_conflict.step, after_conflict.referral_version) == (Step.LINK_LETTER, "7")
    assert after_conflict.error is None and after_conflict.waiting is None
    assert state.status is OutcomeStatus.COMPLETED
    assert state.attachments_linked == 1


async def test_too_many_version_conflicts_fail_the_saga() -> None:
    conflict = ErsConflict("A012", 412, "PRECONDITION_FAILED")
    ers = FakeErs().always("A012", conflict).always("A005", ok(referral(version="7")))
    run = Run(ers)

    state = await run(run.at(Step.LINK_LETTER, **uploaded()))

    assert len(ers.calls_to("A012")) == MAX_VERSION_CONFLICTS + 1
    assert len(ers.calls_to("A005")) == MAX_VERSION_CONFLICTS
    assert ers.endpoints()[-1] == "A012"
    assert state.status is OutcomeStatus.FAILED
    assert state.error is not None
    assert (state.error.step, state.error.code, state.error.http_status) == (
        Step.LINK_LETTER,
        "PRECONDITION_FAILED",
        412,
    )
    assert state.error.retryable  # REFRESH: a later re-send could still work
    assert run.observer.failed == [(Step.LINK_LETTER, "PRECONDITION_FAILED")]


async def test_a_conflict_while_booking_adopts_a_booking_already_made() -> None:
    ers = happy_dbs(FakeErs()).script("A016", ErsConflict("A016", 409, "CONFLICT"))
    made = booked(S1, version="5", appointment_id="70009")
    ers.script("A005", ok(referral(version="5", state="BOOKED", contained_appointment=made)))
    run = Run(ers)

    state = await run(run.at(Step.BOOK_OR_DEFER, **linked()))

    assert ers.endpoints() == ["A015", "A016", "A005", "A019"]  # not booked again
    assert run.checkpointed_steps()[0] is Step.PATIENT_LETTER
    assert state.status is OutcomeStatus.COMPLETED
    assert state.path is Path.DBS_BOOKED
    assert state.appointment is not None and state.appointment.appointment_id == "70009"


async def test_a_conflict_while_booking_with_nothing_made_books_again() -> None:
    ers = happy_dbs(FakeErs()).script("A016", ErsConflict("A016", 409, "CONFLICT"))
    ers.script("A005", ok(referral(version="6", state="NOT_BOOKED"), etag='W/"6"'))
    run = Run(ers)

    state = await run(run.at(Step.BOOK_OR_DEFER, **linked()))

    assert ers.endpoints() == ["A015", "A016", "A005", "A015", "A016", "A019"]
    first, second = ers.bodies("A016")
    assert [first["incomingReferral"], second["incomingReferral"]] == [
        [{"reference": f"ReferralRequest/{UBRN}/_history/4"}],
        [{"reference": f"ReferralRequest/{UBRN}/_history/6"}],
    ]
    assert state.status is OutcomeStatus.COMPLETED


@pytest.mark.parametrize(
    ("reread_error", "waits", "status"),
    [
        (ErsTransientError("A005", 503, "SERVICE_UNAVAILABLE"), True, None),
        (ErsAuthError("A005", 401, "UNAUTHORISED"), False, OutcomeStatus.REAUTHENTICATION_NEEDED),
        (ErsRejected("A005", 404, "REFERENCE_NOT_FOUND"), False, OutcomeStatus.FAILED),
    ],
    ids=["transient", "401", "rejected"],
)
async def test_a_failed_reread_after_a_conflict_settles_as_its_own_error(
    reread_error: ErsError, waits: bool, status: OutcomeStatus | None
) -> None:
    ers = FakeErs().script("A012", ErsConflict("A012", 412, "PRECONDITION_FAILED"))
    ers.script("A005", reread_error)
    run = Run(ers)

    state = await run(run.at(Step.LINK_LETTER, **uploaded()))

    assert ers.endpoints() == ["A012", "A005"]
    assert state.status is status
    problem = state.waiting if waits else state.error
    assert problem is not None
    assert (problem.step, problem.code) == (Step.LINK_LETTER, reread_error.code)
    assert state.referral_version == "3"


# --- unknown outcomes -------------------------------------------------------------------------


async def test_an_unknown_create_is_found_on_the_worklists_and_the_saga_completes() -> None:
    # Issue 9: A011's answer lost; e-RS' worklists show the referral, A005 confirms it, and
    # the saga carries on with it: A011 is never sent twice, nobody is asked.
    ers = happy_dbs(FakeErs()).script("A011", ErsOutcomeUnknown("A011", None, "TIMEOUT"))
    found = worklist(item(UBRN))
    ers.script("A008", ok(found), ok(found))
    ers.script("A005", ok(confirmable(UBRN, version="3"), etag='W/"3"'))
    run = Run(ers)

    state = await run()

    assert ers.endpoints().count("A011") == 1
    assert ers.endpoints()[:7] == ["A004", "A010", "A011", "A008", "A008", "A005", "A020"]
    marks = [c.pending for c in run.checkpoints.states if c.pending is not None]
    assert marks == [PendingWrite(step=Step.CREATE, endpoint="A011", at=NOW)]
    assert state.status is OutcomeStatus.COMPLETED
    assert state.ubrn == UBRN
    assert [r.decision for r in state.reconciliations] == ["ADOPTED"]
    assert run.observer.failed == [(Step.CREATE, "OUTCOME_UNKNOWN")]


async def test_an_unknown_upload_outcome_is_uploaded_again_and_linked_once() -> None:
    # Issue 9: an upload that did land is an unlinked Binary, inert; only the one the saga
    # records is linked.
    ers = happy_dbs(FakeErs()).script("A020", ErsOutcomeUnknown("A020", 502, "HTTP_502"))
    run = Run(ers)

    state = await run(run.at(Step.UPLOAD, **created_fields()))

    assert ers.endpoints() == ["A020", "A020", "A012", "A015", "A016", "A019"]
    assert state.status is OutcomeStatus.COMPLETED
    assert state.uploaded_urls == (BINARY,)
    assert state.attachments_linked == 1
    assert run.observer.failed == [(Step.UPLOAD, "OUTCOME_UNKNOWN")]


async def test_an_upload_that_stays_unknown_waits_in_a_delay_queue_with_its_mark() -> None:
    unknown = ErsOutcomeUnknown("A020", None, "TIMEOUT")
    ers = FakeErs().script("A020", *[unknown] * (MAX_UNKNOWN_EFFECTS + 1))
    run = Run(ers)

    state = await run(run.at(Step.UPLOAD, **created_fields()))

    assert ers.endpoints() == ["A020"] * (MAX_UNKNOWN_EFFECTS + 1)  # bounded, not a hot loop
    assert state.status is None and state.waiting is not None
    assert state.waiting.code == "TIMEOUT" and state.waiting.retryable is True
    assert state.pending is not None and state.pending.endpoint == "A020"


async def test_an_unknown_letter_link_found_done_by_a005_moves_on() -> None:
    ers = happy_dbs(FakeErs()).script("A012", ErsOutcomeUnknown("A012", 504, "HTTP_504"))
    ers.script("A005", ok(referral(version="4", attachment_urls=[BINARY]), etag='W/"4"'))
    run = Run(ers)

    state = await run(run.at(Step.LINK_LETTER, **uploaded()))

    assert ers.endpoints() == ["A012", "A005", "A015", "A016", "A019"]  # A012 not re-sent
    marked, reconciled = run.checkpoints.states[:2]
    assert marked.pending == PendingWrite(step=Step.LINK_LETTER, endpoint="A012", at=NOW)
    assert reconciled.pending is None
    assert (reconciled.step, reconciled.attachments_linked) == (Step.BOOK_OR_DEFER, 1)
    assert reconciled.referral_version == "4"
    assert state.status is OutcomeStatus.COMPLETED
    assert run.observer.failed == [(Step.LINK_LETTER, "OUTCOME_UNKNOWN")]


async def test_an_unknown_letter_link_not_done_is_sent_again() -> None:
    ers = happy_dbs(FakeErs()).script("A012", ErsOutcomeUnknown("A012", 504, "HTTP_504"))
    ers.script("A005", ok(referral(version="3"), etag='W/"3"'))
    run = Run(ers)

    state = await run(run.at(Step.LINK_LETTER, **uploaded()))

    assert ers.endpoints()[:3] == ["A012", "A005", "A012"]
    assert a012_versions(ers) == ["3", "3"]
    assert state.status is OutcomeStatus.COMPLETED
    assert state.attachments_linked == 1


async def test_a_lost_booking_whose_check_fails_waits_with_its_mark() -> None:
    # A016's answer lost, and A005 failing to say whether it booked: the next run must
    # check again before booking, so the saga waits with A016 marked pending.
    unavailable = ErsTransientError("A005", 503, "SERVICE_UNAVAILABLE")
    ers = happy_dbs(FakeErs()).script("A016", ErsOutcomeUnknown("A016", 504, "HTTP_504"))
    ers.script("A005", unavailable, unavailable)
    run = Run(ers)

    state = await run(run.at(Step.BOOK_OR_DEFER, **linked()))

    assert ers.endpoints() == ["A015", "A016", "A005", "A005"]  # the check, and reconcile's
    assert state.waiting is not None and state.status is None
    assert state.pending is not None and state.pending.endpoint == "A016"
    assert state.pending.step is Step.BOOK_OR_DEFER


async def test_an_unknown_triage_referral_is_checked_with_a005() -> None:
    request = sample_request("04-ras-triage.json")
    ers = FakeErs().script("A016", ErsOutcomeUnknown("A016", 504, "HTTP_504"))
    triaged = deferred("TRIAGE", version="5", appointment_id="70020")
    ers.script(
        "A005", ok(referral(version="5", state="AWAITING_TRIAGE", contained_appointment=triaged))
    )
    ers.always("A019", ok(content=PDF, file_name="letter.pdf"))
    options = SagaOptions(
        specialty_cs="https://ers.example/STU3/CodeSystem/SPECIALTY",
        triage_route=TriageRoute.A011_A016,
    )
    run = Run(ers, request, options=options)

    state = await run(run.at(Step.BOOK_OR_DEFER, **linked(path=Path.RAS_TRIAGE)))

    assert ers.endpoints() == ["A016", "A005", "A019"]
    assert state.status is OutcomeStatus.COMPLETED
    assert state.path is Path.RAS_TRIAGE
    assert state.referral_state == "AWAITING_TRIAGE"
    assert state.appointment is not None and state.appointment.appointment_id == "70020"


# --- final failures ---------------------------------------------------------------------------


async def test_an_e_rs_refusal_fails_the_saga_for_good() -> None:
    refusal = ErsRejected(
        "A011", 422, "NO_RELATIONSHIP", diagnostics=f"No relationship with patient {NHS_NUMBER}"
    )
    ers = happy_dbs(FakeErs()).script("A011", refusal)
    run = Run(ers)

    state = await run()

    assert state.status is OutcomeStatus.FAILED
    assert state.error is not None
    assert (state.error.step, state.error.code, state.error.http_status) == (
        Step.CREATE,
        "NO_RELATIONSHIP",
        422,
    )
    assert state.error.retryable is False
    assert state.error.text == "No relationship with patient [NHS number]"
    assert ers.endpoints() == ["A004", "A010", "A011"]
    assert run.observer.failed == [(Step.CREATE, "NO_RELATIONSHIP")]


async def test_an_answer_the_spec_does_not_list_fails_unexpected_response() -> None:
    ers = happy_dbs(FakeErs()).script("A010", ErsUnexpected("A010", 418, "HTTP_418"))
    run = Run(ers)

    state = await run()

    assert state.status is OutcomeStatus.FAILED
    assert state.error is not None
    assert (state.error.code, state.error.http_status, state.error.retryable) == (
        "UNEXPECTED_RESPONSE",
        418,
        False,
    )
    assert "A010 answered 418 HTTP_418" in state.error.text
    assert state.pending is None  # a read: nothing to check on e-RS


async def test_an_unexpected_answer_to_a_write_ends_the_saga_with_its_mark_kept() -> None:
    # Nobody knows what that A011 did. The saga ends (and is parked), but should storing
    # its outcome fail, the next run must look for the referral first, not create another.
    ers = happy_dbs(FakeErs()).script("A011", ErsUnexpected("A011", 418, "HTTP_418"))
    run = Run(ers)

    state = await run()

    assert state.status is OutcomeStatus.FAILED
    assert state.error is not None and state.error.code == "UNEXPECTED_RESPONSE"
    assert state.pending == PendingWrite(step=Step.CREATE, endpoint="A011", at=NOW)
    assert ers.endpoints().count("A011") == 1


async def test_a_worker_rule_fails_the_saga() -> None:
    # The explicit shortlist's service is not among those the search returned.
    ers = happy_dbs(FakeErs()).script("A010", ok(service_list(service_entry("99999"))))
    run = Run(ers)

    state = await run()

    assert state.status is OutcomeStatus.FAILED
    assert state.error is not None
    assert (state.error.step, state.error.code, state.error.retryable) == (
        Step.SEARCH,
        "SERVICE_NOT_IN_SEARCH_RESULTS",
        False,
    )
    assert ers.endpoints() == ["A004", "A010"]


async def test_a_business_rule_failure_text_is_redacted() -> None:
    ers = FakeErs().script("A004", BusinessRuleFailure(f"no good for {NHS_NUMBER}", code="NOPE"))
    run = Run(ers)

    state = await run()

    assert state.status is OutcomeStatus.FAILED
    assert state.error is not None
    assert state.error.code == "NOPE"
    assert NHS_NUMBER not in state.error.text and "[NHS number]" in state.error.text


@pytest.mark.parametrize(
    "bug",
    [ValueError(f"slot for patient {NHS_NUMBER} broke"), KeyError(NHS_NUMBER)],
    ids=["ValueError", "KeyError"],
)
async def test_an_unexpected_exception_fails_internal_error_without_patient_data(
    bug: Exception,
) -> None:
    ers = happy_dbs(FakeErs()).script("A015", bug)
    run = Run(ers)

    state = await run(run.at(Step.BOOK_OR_DEFER, **linked()))

    assert state.status is OutcomeStatus.FAILED
    assert state.error is not None
    assert (state.error.step, state.error.code, state.error.retryable) == (
        Step.BOOK_OR_DEFER,
        "INTERNAL_ERROR",
        False,
    )
    assert type(bug).__name__ in state.error.text
    assert NHS_NUMBER not in state.error.text
    assert "broke" not in state.error.text
    assert NHS_NUMBER not in state.model_dump_json()
    assert state.referral_version == "4"  # the state it reached is kept
    assert run.checkpoints.states == [state]
    assert run.observer.failed == [(Step.BOOK_OR_DEFER, "INTERNAL_ERROR")]


async def test_an_unreadable_reply_is_an_internal_error() -> None:
    # A016 answered 201 with a body that is not an Appointment at all.
    ers = happy_dbs(FakeErs()).script("A016", ok(["not", "an", "appointment"], status=201))
    run = Run(ers)

    state = await run(run.at(Step.BOOK_OR_DEFER, **linked()))

    assert state.status is OutcomeStatus.FAILED
    assert state.error is not None and state.error.code == "INTERNAL_ERROR"
    assert [r.endpoint for r in state.history] == ["A015", "A016"]


async def test_an_unknown_effect_is_marked_from_when_it_was_sent() -> None:
    # The silence ended later (a 30 s timeout, say); the lost create is looked for from the
    # send, so a referral e-RS made meanwhile is inside the window.
    unknown = ErsOutcomeUnknown("A011", None, "TIMEOUT")
    unknown.sent_at = NOW - timedelta(seconds=30)
    ers = happy_dbs(FakeErs()).script("A011", unknown)
    ers.script("A008", ok(worklist()), ok(worklist()))
    run = Run(ers)

    state = await run()

    assert state.pending == PendingWrite(step=Step.CREATE, endpoint="A011", at=unknown.sent_at)
