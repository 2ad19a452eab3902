"""The saga's state machine, tested as data: no broker, no HTTP."""

from __future__ import annotations

from pathlib import Path as FsPath

import orjson
import pytest

from schemas.events import OutcomeStatus, Path, Step
from schemas.referral_request import IntendedAction, ReferralRequestV1
from worker.saga.state import (
    TRANSITIONS,
    IllegalTransition,
    SagaState,
    ShortlistedService,
    TriageRoute,
    new_saga,
    next_step,
    planned_path,
    transition,
)

SAMPLES = FsPath(__file__).resolve().parents[3] / "samples"
DBS = ShortlistedService(service_id="1", name="D", bookable_type="DIRECTLY_BOOKABLE", triage=False)
IBS = ShortlistedService(
    service_id="2", name="I", bookable_type="INDIRECTLY_BOOKABLE", triage=False
)
RAS = ShortlistedService(
    service_id="3", name="R", bookable_type="DIRECTLY_BOOKABLE", triage=True, appointments=False
)


def request(name: str) -> ReferralRequestV1:
    return ReferralRequestV1.model_validate(orjson.loads((SAMPLES / name).read_bytes()))


def walk(
    state: SagaState, req: ReferralRequestV1, route: TriageRoute, **done: object
) -> list[Step]:
    """The steps a saga visits when every step succeeds (simulating each step's effect)."""
    seen = [state.step]
    while not state.finished:
        if state.step is Step.UPLOAD:
            state = state.model_copy(update={"uploaded_urls": (*state.uploaded_urls, "Binary/x")})
        elif state.step is Step.LINK_LETTER:
            state = state.model_copy(update={"attachments_linked": len(state.uploaded_urls)})
        elif state.step is Step.BOOK_OR_DEFER:
            state = state.model_copy(update={"booking_done": True})
        elif state.step is Step.PATIENT_LETTER:
            state = state.model_copy(update={"letter": done["letter"]})
        state = transition(state, next_step(state, req, route))
        seen.append(state.step)
    return seen


@pytest.fixture
def letter() -> object:
    from schemas.events import LetterInfo

    return LetterInfo(location="/l.pdf", file_name="l.pdf", size_bytes=1, sha256="0" * 64)


def test_every_step_but_done_has_a_way_on() -> None:
    assert set(TRANSITIONS) == set(Step) - {Step.VALIDATE}
    for step, targets in TRANSITIONS.items():
        assert bool(targets) == (step is not Step.DONE)


def test_illegal_transition_raises() -> None:
    state = new_saga("r1", "c1")
    with pytest.raises(IllegalTransition):
        transition(state, Step.CREATE)


def test_dbs_with_letter_visits_every_step_once_per_file(letter: object) -> None:
    req = request("01-dbs-booked.json")
    state = new_saga("r", "c").model_copy(update={"path": Path.DBS_BOOKED, "shortlist": (DBS,)})
    assert walk(state, req, TriageRoute.A021, letter=letter) == [
        Step.REFERENCE_DATA,
        Step.SEARCH,
        Step.CREATE,
        Step.UPLOAD,
        Step.LINK_LETTER,
        Step.BOOK_OR_DEFER,
        Step.PATIENT_LETTER,
        Step.DONE,
    ]


@pytest.mark.parametrize(
    ("route", "books"), [(TriageRoute.A021, False), (TriageRoute.A011_A016, True)]
)
def test_triage_books_only_on_the_a011_a016_route(
    route: TriageRoute, books: bool, letter: object
) -> None:
    req = request("04-ras-triage.json")
    state = new_saga("r", "c").model_copy(update={"path": Path.RAS_TRIAGE, "shortlist": (RAS,)})
    assert (Step.BOOK_OR_DEFER in walk(state, req, route, letter=letter)) is books


def test_ibs_is_never_booked(letter: object) -> None:
    req = request("03-ibs-shortlisted.json")
    state = new_saga("r", "c").model_copy(
        update={"path": Path.IBS_SHORTLISTED, "shortlist": (IBS,)}
    )
    steps = walk(state, req, TriageRoute.A021, letter=letter)
    assert Step.BOOK_OR_DEFER not in steps and Step.PATIENT_LETTER in steps


def test_done_completes_the_saga() -> None:
    state = new_saga("r", "c").model_copy(update={"step": Step.PATIENT_LETTER})
    assert transition(state, Step.DONE).status is OutcomeStatus.COMPLETED


@pytest.mark.parametrize(
    ("action", "service", "path"),
    [
        (IntendedAction.BOOK_EARLIEST, DBS, Path.DBS_BOOKED),
        (IntendedAction.DEFER_TO_PROVIDER, DBS, Path.DBS_DEFERRED),
        (IntendedAction.BOOK_EARLIEST, IBS, Path.IBS_SHORTLISTED),
        (IntendedAction.SEND_FOR_TRIAGE, RAS, Path.RAS_TRIAGE),
        (IntendedAction.SEND_FOR_TRIAGE, DBS, None),
        (IntendedAction.BOOK_EARLIEST, RAS, None),
        (IntendedAction.SHORTLIST_ONLY, RAS, Path.SHORTLIST_ONLY),
    ],
)
def test_planned_path(
    action: IntendedAction, service: ShortlistedService, path: Path | None
) -> None:
    assert planned_path(action, service) is path
