"""The booking step (``worker.saga.booking``) against a scripted e-RS: which slot is booked,
when the saga defers or stays unbooked, and exactly which calls it makes to get there."""

from __future__ import annotations

import asyncio
from datetime import date
from typing import Any

import pytest

from schemas.events import Path, Step
from schemas.referral_request import ReferralRequestV1
from tests.spec_examples import example
from tests.unit.fakes import (
    COMMISSIONING_ORG,
    UBRN,
    Call,
    FakeErs,
    booked,
    created_fields,
    deferred,
    make_context,
    ok,
    referral,
    saga_state,
    sample_request,
    slot,
    slot_bundle,
)
from worker.fhir.build import SDS_USER_ID
from worker.saga.booking import book_or_defer
from worker.saga.context import SagaOptions
from worker.saga.errors import ErsOutcomeUnknown, ErsRejected, ErsTransientError
from worker.saga.ports import ErsReply
from worker.saga.slot_claims import SlotClaims
from worker.saga.state import SagaState

CLINICIAN = "921600556514"
# 2 June 2025 (the appointments' creation day, a Monday) + 40 working days
CONTACT_BY_40 = date(2025, 7, 28)

S1 = slot("s1", "2025-07-01T09:00:00.000Z")
S2 = slot("s2", "2025-07-02T09:00:00.000Z")
S3 = slot("s3", "2025-07-03T09:00:00.000Z")
S4 = slot("s4", "2025-07-04T09:00:00.000Z")
S5 = slot("s5", "2025-07-05T09:00:00.000Z")


def slot_gone(code: str = "SLOT_NOT_AVAILABLE") -> ErsRejected:
    return ErsRejected("A016", 422, code, diagnostics="Slot is no longer available.")


def options(**changes: Any) -> SagaOptions:
    fields: dict[str, Any] = {"specialty_cs": "https://ers.example/STU3/CodeSystem/SPECIALTY"}
    fields.update(changes)
    return SagaOptions(**fields)


def ready(request: ReferralRequestV1, **changes: Any) -> SagaState:
    """A saga at BOOK_OR_DEFER: referral created (version 4, letters linked)."""
    return saga_state(request, Step.BOOK_OR_DEFER, **created_fields(version="4", **changes))


async def book(
    ers: FakeErs,
    request: ReferralRequestV1 | None = None,
    *,
    state: SagaState | None = None,
    slot_claims: SlotClaims | None = None,
    **option_changes: Any,
) -> SagaState:
    req = request or sample_request()
    ctx = make_context(req, ers, options=options(**option_changes), slot_claims=slot_claims)
    return await book_or_defer(state or ready(req), ctx)


def pages(ers: FakeErs) -> list[int]:
    return [c.args["page"] for c in ers.calls_to("A015")]


def booked_slot(body: dict[str, Any]) -> str:
    assert body["status"] == "booked"
    [ref] = body["slot"]
    reference: str = ref["reference"]
    return reference.removeprefix("Slot/")


def defer_reason(body: dict[str, Any]) -> str:
    assert body["status"] == "proposed"
    [reason] = body["reason"]
    code: str = reason["coding"][0]["code"]
    return code


def sent_version(body: dict[str, Any]) -> str:
    [ref] = body["incomingReferral"]
    reference: str = ref["reference"]
    return reference.rsplit("/", 1)[-1]


def clinicians_in(body: dict[str, Any]) -> list[str]:
    return [
        p["actor"]["identifier"]["value"]
        for p in body["participant"]
        if p["actor"]["identifier"]["system"] == SDS_USER_ID
    ]


# --- reading the slots ------------------------------------------------------------------------


async def test_the_earliest_slot_across_pages_is_booked() -> None:
    ers = FakeErs()
    ers.script(
        "A015",
        ok(slot_bundle([S3, S4], total=5)),
        ok(slot_bundle([S5, S1], total=5)),  # the earliest is on page 2
        ok(slot_bundle([S2], total=5)),
    )
    ers.script("A016", ok(booked(S1, version="5")))

    state = await book(ers, slot_page_size=2)

    assert ers.endpoints() == ["A015", "A015", "A015", "A016"]
    assert [c.args for c in ers.calls_to("A015")] == [
        {
            "service_id": "11002",
            "priority": "ROUTINE",
            "commissioning_rule_org": COMMISSIONING_ORG,
            "page": page,
            "page_size": 2,
            "named_clinician": None,
        }
        for page in (1, 2, 3)
    ]
    [body] = ers.bodies("A016")
    assert booked_slot(body) == "s1"
    assert (body["start"], body["end"]) == (S1.start, S1.end)
    assert sent_version(body) == "4"
    assert state.path is Path.DBS_BOOKED
    assert state.path_reason is None
    assert state.booking_done
    assert state.referral_state == "BOOKED"
    assert state.referral_version == "5"
    assert state.contact_by is None
    assert state.appointment is not None
    assert state.appointment.slot_id == "s1"
    assert state.appointment.appointment_id == "70000"
    assert state.appointment.service_id == "11002"
    assert state.appointment.status == "booked"
    assert state.appointment.start is not None
    assert state.appointment.start.isoformat() == "2025-07-01T09:00:00+00:00"
    assert state.appointment.slot_id == S1.slot_id  # read from the appointment A005 shows


async def test_no_more_than_max_slot_pages_are_read() -> None:
    ers = FakeErs()
    ers.script(
        "A015",
        ok(slot_bundle([S3, S4], total=10)),
        ok(slot_bundle([S5, S2], total=10)),
        ok(slot_bundle([S1], total=10)),  # page 3: beyond the bound, never read
    )
    ers.script("A016", ok(booked(S2)))

    state = await book(ers, slot_page_size=2, max_slot_pages=2)

    assert pages(ers) == [1, 2]
    assert ers.unconsumed() == {"A015": 1}
    assert booked_slot(ers.bodies("A016")[0]) == "s2"
    assert state.appointment is not None and state.appointment.slot_id == "s2"


async def test_an_empty_page_ends_the_list_whatever_the_total_says() -> None:
    ers = FakeErs()
    ers.script("A015", ok(slot_bundle([S2, S3], total=9)), ok(slot_bundle([], total=9)))
    ers.script("A016", ok(booked(S2)))

    await book(ers, slot_page_size=2)

    assert pages(ers) == [1, 2]
    assert booked_slot(ers.bodies("A016")[0]) == "s2"


async def test_a_page_past_the_shrunken_end_is_refused_and_ends_the_list() -> None:
    ers = FakeErs()
    page_past_end = ErsRejected("A015", 400, "INVALID_VALUE", diagnostics="'Page Number' (2)")
    ers.script("A015", ok(slot_bundle([S3, S2], total=4)), page_past_end)
    ers.script("A016", ok(booked(S2)))

    state = await book(ers, slot_page_size=2)

    assert ers.endpoints() == ["A015", "A015", "A016"]
    assert pages(ers) == [1, 2]
    assert booked_slot(ers.bodies("A016")[0]) == "s2"
    assert state.path is Path.DBS_BOOKED


@pytest.mark.parametrize(
    ("refused_page", "status", "code"),
    [
        (1, 400, "INVALID_VALUE"),  # the first page refused: nothing was read
        (2, 422, "INVALID_VALUE"),
        (2, 400, "INVALID_CODE"),
    ],
)
async def test_other_slot_refusals_are_errors(refused_page: int, status: int, code: str) -> None:
    ers = FakeErs()
    refusal = ErsRejected("A015", status, code)
    if refused_page == 1:
        ers.script("A015", refusal)
    else:
        ers.script("A015", ok(slot_bundle([S1, S2], total=4)), refusal)

    with pytest.raises(ErsRejected) as raised:
        await book(ers, slot_page_size=2)

    assert raised.value is refusal
    assert ers.calls_to("A016") == []


async def test_the_slots_of_the_spec_example_are_read_and_the_earliest_booked() -> None:
    ers = FakeErs()
    ers.script("A015", ok(example("retrieveAppointmentSlots/responses/Page1With2Schedules.json")))
    ers.script("A016", ok(example("bookOrDeferAppointment/responses/MinimalBooking.json")))

    state = await book(ers, slot_page_size=5)

    assert pages(ers) == [1]  # total 5, five slots on the page
    [body] = ers.bodies("A016")
    assert booked_slot(body) == "11000012"
    assert clinicians_in(body) == []  # its Schedule names no clinician
    assert state.path is Path.DBS_BOOKED
    assert state.referral_version == "8"
    assert state.appointment is not None
    assert state.appointment.appointment_id == "70000"
    assert state.appointment.slot_id == "11000012"


# --- slots taken meanwhile --------------------------------------------------------------------


@pytest.mark.parametrize("code", ["SLOT_NOT_AVAILABLE", "INAPPROPRIATE_SLOT"])
async def test_a_slot_taken_meanwhile_sends_the_saga_back_for_the_next(code: str) -> None:
    ers = FakeErs()
    # The second list is stale: it still shows the slot we were refused.
    ers.script("A015", ok(slot_bundle([S1, S2])), ok(slot_bundle([S1, S2])))
    ers.script("A016", slot_gone(code), ok(booked(S2)))

    state = await book(ers)

    assert ers.endpoints() == ["A015", "A016", "A015", "A016"]
    assert [booked_slot(b) for b in ers.bodies("A016")] == ["s1", "s2"]
    assert state.path is Path.DBS_BOOKED
    assert state.appointment is not None and state.appointment.slot_id == "s2"
    assert state.referral_state == "BOOKED"


async def test_booking_attempts_exhausted_defers_with_slot_not_available() -> None:
    ers = FakeErs()
    ers.always("A015", ok(slot_bundle([S1, S2, S3])))
    ers.script("A016", slot_gone(), slot_gone(), ok(deferred("SLOT_NOT_AVAILABLE")))

    state = await book(ers, max_booking_attempts=2)

    assert ers.endpoints() == ["A015", "A016", "A015", "A016", "A016"]
    first, second, deferral = ers.bodies("A016")
    assert [booked_slot(first), booked_slot(second)] == ["s1", "s2"]
    assert defer_reason(deferral) == "SLOT_NOT_AVAILABLE"
    assert deferral["comment"] == "The slot is no longer available"
    assert "slot" not in deferral
    assert state.path is Path.DBS_DEFERRED
    assert state.path_reason is None
    assert state.booking_done
    assert state.referral_state == "DEFERRED_TO_PROVIDER"
    assert state.appointment is not None
    assert state.appointment.status == "proposed"
    assert state.appointment.reason == "SLOT_NOT_AVAILABLE"
    assert state.appointment.slot_id is None
    assert state.contact_by == CONTACT_BY_40


async def test_only_the_taken_slot_left_defers_with_slot_not_available() -> None:
    ers = FakeErs()
    ers.script("A015", ok(slot_bundle([S1])), ok(slot_bundle([S1])))
    ers.script("A016", slot_gone(), ok(deferred("SLOT_NOT_AVAILABLE")))

    state = await book(ers, max_booking_attempts=3)

    assert ers.endpoints() == ["A015", "A016", "A015", "A016"]
    assert defer_reason(ers.bodies("A016")[1]) == "SLOT_NOT_AVAILABLE"
    assert state.path is Path.DBS_DEFERRED


async def test_no_slots_left_after_one_was_taken_defers_with_slot_not_available() -> None:
    ers = FakeErs()
    ers.script("A015", ok(slot_bundle([S1])), ok(slot_bundle([], total=0)))
    ers.script("A016", slot_gone(), ok(deferred("SLOT_NOT_AVAILABLE")))

    state = await book(ers)

    assert ers.endpoints() == ["A015", "A016", "A015", "A016"]
    # Not NO_SLOTS_AT_SERVICE: the service had a slot, and it went.
    assert defer_reason(ers.bodies("A016")[1]) == "SLOT_NOT_AVAILABLE"
    assert state.path is Path.DBS_DEFERRED


async def test_another_refusal_of_the_booking_is_an_error() -> None:
    ers = FakeErs()
    ers.script("A015", ok(slot_bundle([S1, S2])))
    refusal = ErsRejected("A016", 422, "INVALID_REQUEST_STATE")
    ers.script("A016", refusal)

    with pytest.raises(ErsRejected) as raised:
        await book(ers)

    assert raised.value is refusal
    assert ers.endpoints() == ["A015", "A016"]


# --- the booking window -----------------------------------------------------------------------


def windowed(not_before: str | None, not_after: str | None) -> ReferralRequestV1:
    window = {"not_before": not_before, "not_after": not_after}
    return sample_request(action={"kind": "BOOK_EARLIEST", "booking_window": window})


async def test_slots_outside_the_booking_window_are_skipped() -> None:
    ers = FakeErs()
    early = slot("early", "2025-07-01T09:00:00.000Z")
    inside = slot("inside", "2025-07-10T09:00:00.000Z")
    late = slot("late", "2025-07-20T09:00:00.000Z")
    ers.script("A015", ok(slot_bundle([early, late, inside])))
    ers.script("A016", ok(booked(inside)))

    state = await book(ers, windowed("2025-07-05", "2025-07-15"))

    assert booked_slot(ers.bodies("A016")[0]) == "inside"
    assert state.path is Path.DBS_BOOKED
    assert state.appointment is not None and state.appointment.slot_id == "inside"


async def test_the_booking_window_is_in_london_dates() -> None:
    ers = FakeErs()
    # 23:30 UTC on 30 June is 00:30 on 1 July in London (BST): inside a window from 1 July.
    # 23:30 UTC on 31 July is 1 August in London: outside a window to 31 July.
    london_first = slot("london-1-jul", "2025-06-30T23:30:00.000Z")
    london_august = slot("london-1-aug", "2025-07-31T23:30:00.000Z")
    utc_before = slot("30-jun", "2025-06-30T22:30:00.000Z")  # 23:30 on 30 June in London
    ers.script("A015", ok(slot_bundle([utc_before, london_first, london_august])))
    ers.script("A016", ok(booked(london_first)))

    await book(ers, windowed("2025-07-01", "2025-07-31"))

    assert [booked_slot(b) for b in ers.bodies("A016")] == ["london-1-jul"]


async def test_no_slot_inside_the_window_leaves_the_referral_unbooked() -> None:
    ers = FakeErs()
    ers.script("A015", ok(slot_bundle([S1, S2, S3])))

    state = await book(ers, windowed("2025-08-01", None))

    assert ers.endpoints() == ["A015"]  # no A016: deferral is not allowed while slots are free
    assert state.path is Path.DBS_NOT_BOOKED
    assert state.path_reason == "NO_SLOT_IN_WINDOW"
    assert state.booking_done
    assert state.appointment is None
    assert state.referral_state == "NOT_BOOKED"
    assert state.referral_version == "4"


async def test_a_window_slot_taken_with_only_others_outside_defers() -> None:
    ers = FakeErs()
    inside = slot("inside", "2025-07-10T09:00:00.000Z")
    outside = slot("outside", "2025-09-01T09:00:00.000Z")
    ers.always("A015", ok(slot_bundle([inside, outside])))
    ers.script("A016", slot_gone(), ok(deferred("SLOT_NOT_AVAILABLE")))

    state = await book(ers, windowed(None, "2025-07-31"))

    assert ers.endpoints() == ["A015", "A016", "A015", "A016"]
    assert defer_reason(ers.bodies("A016")[1]) == "SLOT_NOT_AVAILABLE"
    assert state.path is Path.DBS_DEFERRED


# --- named clinicians -------------------------------------------------------------------------


async def test_the_named_clinician_is_searched_for_and_booked_with() -> None:
    ers = FakeErs()
    with_clinician = slot("c1", "2025-07-01T09:00:00.000Z", clinician=CLINICIAN)
    ers.script("A015", ok(slot_bundle([with_clinician])))
    ers.script("A016", ok(booked(with_clinician)))
    request = sample_request(search={"named_clinician_sds_user_id": CLINICIAN})

    state = await book(ers, request)

    assert [c.args["named_clinician"] for c in ers.calls_to("A015")] == [CLINICIAN]
    [body] = ers.bodies("A016")
    assert booked_slot(body) == "c1"
    assert clinicians_in(body) == [CLINICIAN]
    [consultant] = [p for p in body["participant"] if "type" in p]
    assert consultant["type"]["coding"][0]["code"] == "CON"
    assert state.path is Path.DBS_BOOKED


async def test_a_slot_of_the_spec_example_with_a_clinician_is_booked_with_them() -> None:
    ers = FakeErs()
    ers.script("A015", ok(example("retrieveAppointmentSlots/responses/Page1With2Schedules.json")))
    ers.script("A016", ok(example("bookOrDeferAppointment/responses/MinimalBooking.json")))
    # Slot 11000015 starts 2021-05-22T23:59Z, on 23 May in London: the first in this window;
    # its Schedule/11000 names clinician 921600556514.
    window = {"not_before": "2021-05-23"}
    request = sample_request(action={"kind": "BOOK_EARLIEST", "booking_window": window})

    await book(ers, request, slot_page_size=5)

    [body] = ers.bodies("A016")
    assert booked_slot(body) == "11000015"
    assert clinicians_in(body) == ["921600556514"]


# --- deferral ---------------------------------------------------------------------------------


async def test_no_slots_at_the_service_defers_to_the_provider() -> None:
    ers = FakeErs()
    ers.script("A015", ok(slot_bundle([], total=0)))
    ers.script("A016", ok(deferred("NO_SLOTS_AT_SERVICE", version="5")))

    state = await book(ers)

    assert ers.endpoints() == ["A015", "A016"]
    [body] = ers.bodies("A016")
    assert defer_reason(body) == "NO_SLOTS_AT_SERVICE"
    assert body["comment"] == "There are no slots"
    assert sent_version(body) == "4"
    assert state.path is Path.DBS_DEFERRED
    assert state.referral_state == "DEFERRED_TO_PROVIDER"
    assert state.referral_version == "5"
    assert state.booking_done
    assert state.contact_by == CONTACT_BY_40
    assert state.appointment is not None
    assert state.appointment.reason == "NO_SLOTS_AT_SERVICE"
    assert state.appointment.appointment_id == "70001"


def defer_to_provider() -> tuple[ReferralRequestV1, SagaState]:
    request = sample_request(action={"kind": "DEFER_TO_PROVIDER"})
    return request, ready(request, path=Path.DBS_DEFERRED)


async def test_defer_to_provider_with_slots_free_is_not_booked() -> None:
    ers = FakeErs()
    ers.script("A015", ok(slot_bundle([S1, S2])))
    request, state = defer_to_provider()

    result = await book(ers, request, state=state)

    assert ers.endpoints() == ["A015"]  # e-RS would refuse the deferral
    assert result.path is Path.DBS_NOT_BOOKED
    assert result.path_reason == "SLOTS_AVAILABLE_DEFERRAL_NOT_ALLOWED"
    assert result.booking_done
    assert result.appointment is None


async def test_defer_to_provider_with_no_slots_defers() -> None:
    ers = FakeErs()
    ers.script("A015", ok(slot_bundle([], total=0)))
    ers.script("A016", ok(deferred("NO_SLOTS_AT_SERVICE")))
    request, state = defer_to_provider()

    result = await book(ers, request, state=state)

    assert ers.endpoints() == ["A015", "A016"]
    assert defer_reason(ers.bodies("A016")[0]) == "NO_SLOTS_AT_SERVICE"
    assert result.path is Path.DBS_DEFERRED
    assert result.referral_state == "DEFERRED_TO_PROVIDER"
    assert result.contact_by == CONTACT_BY_40


def defer_asking_for(
    slot_id: str | None, comment: str | None
) -> tuple[ReferralRequestV1, SagaState]:
    action = {"kind": "DEFER_TO_PROVIDER", "requested_slot_id": slot_id, "comment": comment}
    request = sample_request(action=action)
    return request, ready(request, path=Path.DBS_DEFERRED)


async def test_defer_for_a_slot_that_is_taken_defers_with_it_and_the_comment() -> None:
    ers = FakeErs()
    ers.script("A015", ok(slot_bundle([S1, S2])))
    ers.script("A016", ok(deferred("SLOT_NOT_AVAILABLE")))
    request, state = defer_asking_for("s9", "Patient asked for a Friday")

    result = await book(ers, request, state=state)

    assert ers.endpoints() == ["A015", "A016"]
    (body,) = ers.bodies("A016")
    assert defer_reason(body) == "SLOT_NOT_AVAILABLE"
    assert body["slot"] == [{"reference": "Slot/s9"}]
    assert body["comment"] == "Patient asked for a Friday"
    assert result.path is Path.DBS_DEFERRED


async def test_defer_for_a_slot_at_a_service_with_none_free_says_no_slots() -> None:
    ers = FakeErs()
    ers.script("A015", ok(slot_bundle([], total=0)))
    ers.script("A016", ok(deferred("NO_SLOTS_AT_SERVICE")))
    request, state = defer_asking_for("s9", None)

    await book(ers, request, state=state)

    (body,) = ers.bodies("A016")
    assert defer_reason(body) == "NO_SLOTS_AT_SERVICE"
    assert body["slot"] == [{"reference": "Slot/s9"}]
    assert body["comment"] == "There are no slots"


async def test_defer_for_a_slot_that_is_free_is_not_booked() -> None:
    ers = FakeErs()
    ers.script("A015", ok(slot_bundle([S1, S2])))
    request, state = defer_asking_for("s2", "Patient asked for this one")

    result = await book(ers, request, state=state)

    assert ers.endpoints() == ["A015"]  # the slot is free: e-RS allows no deferral
    assert result.path is Path.DBS_NOT_BOOKED
    assert result.path_reason == "SLOTS_AVAILABLE_DEFERRAL_NOT_ALLOWED"


async def test_defer_to_provider_refused_as_slots_appeared_is_not_booked() -> None:
    ers = FakeErs()
    ers.script("A015", ok(slot_bundle([], total=0)))
    ers.script("A016", ErsRejected("A016", 422, "SLOTS_CURRENTLY_AVAILABLE"))
    request, state = defer_to_provider()

    result = await book(ers, request, state=state)

    assert ers.endpoints() == ["A015", "A016"]
    assert result.path is Path.DBS_NOT_BOOKED
    assert result.path_reason == "SLOTS_AVAILABLE_DEFERRAL_NOT_ALLOWED"


async def test_defer_to_provider_refused_otherwise_is_an_error() -> None:
    ers = FakeErs()
    ers.script("A015", ok(slot_bundle([], total=0)))
    ers.script("A016", ErsRejected("A016", 422, "INVALID_REQUEST_STATE"))
    request, state = defer_to_provider()

    with pytest.raises(ErsRejected, match="INVALID_REQUEST_STATE"):
        await book(ers, request, state=state)


async def test_a_triage_referral_is_sent_with_a016() -> None:
    ers = FakeErs()
    ers.script("A016", ok(deferred("TRIAGE")))
    request = sample_request("04-ras-triage.json")
    state = ready(request, path=Path.RAS_TRIAGE, triage_contact_days=5)

    result = await book(ers, request, state=state)

    assert ers.endpoints() == ["A016"]
    assert defer_reason(ers.bodies("A016")[0]) == "TRIAGE"
    assert result.path is Path.RAS_TRIAGE
    assert result.referral_state == "AWAITING_TRIAGE"
    assert result.contact_by == date(2025, 6, 9)  # Monday + 5 working days


# --- a booking whose answer was lost ----------------------------------------------------------


def lost(status: int | None = 504) -> ErsOutcomeUnknown:
    return ErsOutcomeUnknown("A016", status, "HTTP_504" if status else "TIMEOUT")


async def test_a_lost_booking_answer_is_checked_and_an_existing_booking_adopted() -> None:
    ers = FakeErs()
    ers.script("A015", ok(slot_bundle([S1, S2])))
    ers.script("A016", lost())
    made = booked(S1, version="5", appointment_id="70009")
    ers.script("A005", ok(referral(version="5", state="BOOKED", contained_appointment=made)))

    state = await book(ers)

    assert ers.endpoints() == ["A015", "A016", "A005"]  # not booked twice
    assert ers.calls_to("A005") == [Call("A005", "retrieve_referral", {"ubrn": UBRN})]
    assert state.path is Path.DBS_BOOKED
    assert state.booking_done
    assert state.referral_state == "BOOKED"
    assert state.referral_version == "5"
    assert state.appointment is not None
    assert state.appointment.appointment_id == "70009"
    assert state.appointment.status == "booked"
    assert state.appointment.start is not None
    assert state.appointment.start.isoformat() == "2025-07-01T09:00:00+00:00"


async def test_an_adopted_booking_keeps_the_version_a005_read() -> None:
    ers = FakeErs()
    ers.script("A015", ok(slot_bundle([S1])))
    ers.script("A016", lost())
    made = booked(S1, version="5", appointment_id="70009")
    # The referral moved on since its appointment was made: its ETag is what If-Match needs.
    body = referral(version="6", state="BOOKED", contained_appointment=made)
    ers.script("A005", ok(body, etag='W/"6"'))

    state = await book(ers)

    assert state.referral_version == "6"


async def test_a_lost_booking_answer_with_nothing_booked_defers_with_booking_attempt_problem() -> (
    None
):
    ers = FakeErs()
    ers.script("A015", ok(slot_bundle([S1, S2])))
    ers.script("A016", lost(None), ok(deferred("BOOKING_ATTEMPT_PROBLEM", version="8")))
    ers.script("A005", ok(referral(version="7", state="NOT_BOOKED"), etag='W/"7"'))

    state = await book(ers)

    assert ers.endpoints() == ["A015", "A016", "A005", "A016"]
    attempt, deferral = ers.bodies("A016")
    assert booked_slot(attempt) == "s1"
    assert defer_reason(deferral) == "BOOKING_ATTEMPT_PROBLEM"
    assert deferral["comment"] == "Booking failed"
    assert sent_version(deferral) == "7"  # the version A005 read, not the one we held
    assert state.path is Path.DBS_DEFERRED
    assert state.referral_state == "DEFERRED_TO_PROVIDER"
    assert state.referral_version == "8"
    assert state.appointment is not None
    assert state.appointment.reason == "BOOKING_ATTEMPT_PROBLEM"


# --- slot claims between the sagas of one process ---------------------------------------------


async def test_two_sagas_at_once_book_different_slots() -> None:
    claims = SlotClaims()
    first_in_a016 = asyncio.Event()
    release_first = asyncio.Event()

    async def slow_booking(call: Call) -> ErsReply:
        first_in_a016.set()
        await release_first.wait()
        return ok(booked(S1))

    first = FakeErs().script("A015", ok(slot_bundle([S1, S2]))).script("A016", slow_booking)
    second = FakeErs().script("A015", ok(slot_bundle([S1, S2]))).script("A016", ok(booked(S2)))
    request_a = sample_request()
    request_b = sample_request(patient={"nhs_number": "9990010013"})

    running = asyncio.create_task(book(first, request_a, slot_claims=claims))
    in_a016 = asyncio.create_task(first_in_a016.wait())
    # Should the first saga end without reaching A016, fail here rather than wait forever.
    await asyncio.wait([running, in_a016], return_when=asyncio.FIRST_COMPLETED)
    assert first_in_a016.is_set() and not running.done()  # the first saga is booking s1 now
    state_b = await book(second, request_b, slot_claims=claims)
    release_first.set()
    state_a = await running

    assert booked_slot(first.bodies("A016")[0]) == "s1"
    assert booked_slot(second.bodies("A016")[0]) == "s2"  # not a race for s1
    assert state_a.appointment is not None and state_a.appointment.slot_id == "s1"
    assert state_b.appointment is not None and state_b.appointment.slot_id == "s2"
    assert not claims.take("s1") and not claims.take("s2")  # both gone


async def test_when_every_slot_is_claimed_the_saga_races_for_the_earliest() -> None:
    claims = SlotClaims()
    assert claims.take("s1") and claims.take("s2")
    ers = FakeErs().script("A015", ok(slot_bundle([S2, S1]))).script("A016", ok(booked(S1)))

    await book(ers, slot_claims=claims)

    assert booked_slot(ers.bodies("A016")[0]) == "s1"


async def test_a_slot_seen_taken_stays_claimed() -> None:
    claims = SlotClaims()
    ers = FakeErs()
    ers.script("A015", ok(slot_bundle([S1, S2])), ok(slot_bundle([S1, S2])))
    ers.script("A016", slot_gone(), ok(booked(S2)))

    await book(ers, slot_claims=claims)

    assert not claims.take("s1")  # taken by someone: other sagas here skip it


@pytest.mark.parametrize(
    "failure",
    [
        ErsTransientError("A016", 503, "SERVICE_UNAVAILABLE"),
        ErsRejected("A016", 422, "INVALID_REQUEST_STATE"),
    ],
    ids=["transient", "rejected"],
)
async def test_a_booking_that_fails_otherwise_releases_its_claim(failure: Exception) -> None:
    claims = SlotClaims()
    ers = FakeErs().script("A015", ok(slot_bundle([S1]))).script("A016", failure)

    with pytest.raises(type(failure)):
        await book(ers, slot_claims=claims)

    assert claims.take("s1")  # free again for the next saga
