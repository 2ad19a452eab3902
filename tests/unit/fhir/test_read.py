"""``worker.fhir.read`` on the e-RS specification's own example responses.

The examples live in ../shared/ers-spec (``tests.spec_examples``); a test whose example is
missing is skipped. The values asserted are read from the example files themselves.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest

from tests.spec_examples import example
from worker.fhir.build import ERS_SERVICE
from worker.fhir.read import (
    AppointmentFacts,
    ContactDays,
    FreeSlot,
    appointment_facts,
    operation_outcome,
    parse_instant,
    priority_contact_days,
    referral_facts,
    services_from_search,
    slots_from_bundle,
    version_from_etag,
)

SEARCH = "patientServiceSearch/responses/"
SLOTS = "retrieveAppointmentSlots/responses/"
BOOK = "bookOrDeferAppointment/responses/"
REFERRAL = "retrieveReferralRequest/responses/"

# --- A010 patient service search ---


def test_services_come_in_the_order_e_rs_ranked_them() -> None:
    found = services_from_search(example(SEARCH + "FetchServiceListWithMultipleServices.json"))

    assert [s.service_id for s in found] == ["11030", "11021", "11010", "11007", "11008", "11002"]
    first = found[0]
    assert first.name == "A LOCALLY_COMMISSIONABLE Service"
    assert first.bookable_type == "DIRECTLY_BOOKABLE"
    assert first.directly_bookable
    assert first.request_flow_types == frozenset({"APPOINTMENT_REQUEST"})
    assert not first.triage
    assert found[-1].name == "Good Cardiology Business Service"


def test_a_service_can_take_several_request_flows() -> None:
    found = services_from_search(example(SEARCH + "FetchServiceListWithMultipleServices.json"))

    by_id = {s.service_id: s for s in found}
    assert by_id["11010"].request_flow_types == frozenset(
        {"APPOINTMENT_REQUEST", "ADVICE_AND_GUIDANCE_REQUEST"}
    )


def test_a_triage_service_is_recognised() -> None:
    (service,) = services_from_search(example(SEARCH + "TriageAndAppointmentRequestType.json"))

    assert service.service_id == "42"
    assert service.name == "Service Name"
    assert service.triage
    assert service.request_flow_types == frozenset({"TRIAGE_REQUEST", "APPOINTMENT_REQUEST"})


def test_a_single_service_and_an_empty_search() -> None:
    (service,) = services_from_search(example(SEARCH + "FetchServiceListWithSingleService.json"))
    assert (service.service_id, service.name) == ("11002", "Good Cardiology Business Service")
    assert services_from_search(example(SEARCH + "EmptyResponse.json")) == []


def test_entries_without_an_ers_service_identifier_are_skipped() -> None:
    body = {
        "entry": [
            {"item": {"identifier": {"system": "http://example.org/other", "value": "1"}}},
            {"item": {"identifier": {"system": ERS_SERVICE}}},  # no value
            {"item": {"identifier": {"system": ERS_SERVICE, "value": "7"}}},
        ]
    }

    (service,) = services_from_search(body)
    assert service.service_id == "7"
    assert service.name == ""
    assert service.bookable_type is None
    assert not service.directly_bookable


# --- A015 retrieve appointment slots ---


def test_free_slots_and_the_total() -> None:
    slots, total = slots_from_bundle(example(SLOTS + "Minimum.json"))

    assert total == 3
    assert [s.slot_id for s in slots] == ["12000001", "12000003", "12000004"]
    assert slots[0] == FreeSlot(
        "12000001", "2021-05-22T08:25:32.562Z", "2021-05-22T09:25:32.562Z", None
    )
    assert slots[0].starts_at == datetime(2021, 5, 22, 8, 25, 32, 562000, tzinfo=UTC)


def test_the_total_counts_every_page_not_this_one() -> None:
    slots, total = slots_from_bundle(example(SLOTS + "Page1PageSize5.json"))

    assert total == 12
    assert [s.slot_id for s in slots] == [f"1100000{i}" for i in range(1, 6)]
    page2, total2 = slots_from_bundle(example(SLOTS + "Page2PageSize5.json"))
    assert total2 == 12
    assert [s.slot_id for s in page2] == [
        "11000006",
        "11000007",
        "11000008",
        "11000009",
        "11000010",
    ]


def test_a_slot_gets_the_clinician_of_its_own_schedule() -> None:
    # Two schedules: "11000-921600556514" names no clinician (despite its id); "11000" does.
    slots, _ = slots_from_bundle(example(SLOTS + "Page1With2Schedules.json"))

    clinicians = {s.slot_id: s.clinician for s in slots}
    assert clinicians == {
        "11000012": None,
        "11000013": None,
        "11000014": None,
        "11000015": "921600556514",
        "11000021": "921600556514",
    }


def test_clinician_search_slots() -> None:
    slots, total = slots_from_bundle(example(SLOTS + "SlotClinicianSearch.json"))

    assert total == 4
    assert {s.clinician for s in slots} == {"921600556514"}


def test_no_slots() -> None:
    assert slots_from_bundle(example(SLOTS + "NoSlots.json")) == ([], 0)


def test_busy_and_incomplete_slots_are_left_out() -> None:
    body = {
        "entry": [
            {"resource": {"resourceType": "Slot", "id": "1", "start": "a", "end": "b"}},
            {
                "resource": {
                    "resourceType": "Slot",
                    "id": "2",
                    "start": "a",
                    "end": "b",
                    "status": "busy",
                }
            },
            {"resource": {"resourceType": "Slot", "id": "3", "start": "a"}},
            {"resource": {"resourceType": "Schedule", "id": "s"}},
        ]
    }

    slots, total = slots_from_bundle(body)
    assert [s.slot_id for s in slots] == ["1"]
    assert total == 1  # no total given: the slots counted


# --- A016 book or defer ---


def test_a_booking() -> None:
    facts = appointment_facts(example(BOOK + "MinimalBooking.json"))

    assert facts == AppointmentFacts(
        appointment_id="70000",
        status="booked",
        reason=None,
        created=datetime(2021, 6, 30, 13, 2, 32, 133000, tzinfo=UTC),
        start="2021-07-11T12:00:00+00:00",
        end="2021-07-11T13:00:00+00:00",
        referral_version="8",  # from incomingReferral ReferralRequest/000000070000/_history/8
        slot_id="11000021",  # from slot Slot/11000021
    )


def test_a_booked_referral_read_back_names_its_slot() -> None:
    # Issue 9: a booking confirmed through A005 (its A016 answer lost) reports its slot.
    facts = referral_facts(example("retrieveReferralRequest/responses/BookedDBS.json"), None)

    assert facts.appointment is not None
    assert facts.appointment.slot_id == "11002001"


@pytest.mark.parametrize(
    ("name", "reason"),
    [
        ("MinimalDeferral.json", "NO_SLOTS_AT_SERVICE"),
        ("TriageDeferral.json", "TRIAGE"),
        ("DeferralBookingAttemptProblem.json", "BOOKING_ATTEMPT_PROBLEM"),
    ],
)
def test_a_deferral_has_a_reason_and_no_times(name: str, reason: str) -> None:
    facts = appointment_facts(example(BOOK + name))

    assert facts.status == "proposed"
    assert facts.reason == reason
    assert facts.start is None and facts.end is None
    assert facts.referral_version == "8"
    assert facts.appointment_id == "70000"


def test_an_appointment_without_a_versioned_referral_has_no_version() -> None:
    body = {"id": "1", "status": "booked", "incomingReferral": [{"reference": "ReferralRequest/9"}]}

    facts = appointment_facts(body)
    assert facts.referral_version is None
    assert facts.created is None


# --- A011 / A021 / A012 / A005 referrals ---


def test_a_created_referral() -> None:
    facts = referral_facts(example("createReferral/responses/ReferralRequest.json"))

    assert facts.ubrn == "000000070000"
    assert facts.version == "3"  # meta.versionId
    assert facts.state == "NOT_BOOKED"
    assert facts.commissioning_rule_org == "R69"
    assert facts.appointment is None
    assert facts.attachment_urls == ()


@pytest.mark.parametrize(
    ("etag", "version"),
    [('W/"4"', "4"), ('"12"', "12"), (' W/"7" ', "7"), ("garbage", "3"), ("", "3"), (None, "3")],
)
def test_the_etag_wins_over_meta_version_id(etag: str | None, version: str) -> None:
    body = example("createReferral/responses/ReferralRequest.json")

    assert referral_facts(body, etag).version == version


def test_version_from_etag() -> None:
    assert version_from_etag('W/"5"') == "5"
    assert version_from_etag('"5"') == "5"
    assert version_from_etag("5") is None
    assert version_from_etag('W/""') is None
    assert version_from_etag(None) is None


def test_a_referral_sent_for_triage_holds_its_triage_appointment() -> None:
    facts = referral_facts(example("createReferralAndSendForTriage/responses/ReferralRequest.json"))

    assert facts.state == "AWAITING_TRIAGE"
    assert facts.version == "3"
    assert facts.appointment is not None
    assert facts.appointment.reason == "TRIAGE"
    assert facts.appointment.status == "proposed"
    assert facts.appointment.appointment_id == "70009"  # from the Appointment-Reference extension


def test_a_booked_referral_names_its_appointment_and_letters() -> None:
    facts = referral_facts(example(REFERRAL + "BookedDBS.json"))

    assert facts.ubrn == "000000070001"
    assert facts.version == "5"
    assert facts.state == "BOOKED"
    assert facts.commissioning_rule_org == "R69"
    appointment = facts.appointment
    assert appointment is not None
    # The contained Appointment's id is "appointment"; its e-RS id is in the extension.
    assert appointment.appointment_id == "70009"
    assert appointment.status == "booked"
    assert appointment.start == "2021-06-13T12:30:00.000Z"
    assert appointment.end == "2021-06-13T12:45:00.000Z"
    assert appointment.referral_version == "5"
    assert facts.attachment_urls == ("Binary/719f6045-e791-4029-8e0f-1201c02b0a55",)


def test_a_deferred_referral() -> None:
    facts = referral_facts(example(REFERRAL + "DeferredToProvider.json"))

    assert facts.state == "DEFERRED_TO_PROVIDER"
    assert facts.appointment is not None
    assert facts.appointment.reason == "NO_SLOTS_AT_SERVICE"
    assert facts.appointment.start is None


def test_an_unbooked_referral_has_no_appointment() -> None:
    facts = referral_facts(example(REFERRAL + "Unbooked.json"))

    assert (facts.ubrn, facts.state, facts.appointment) == ("000000070000", "NOT_BOOKED", None)


def test_every_letter_of_the_referral_is_listed() -> None:
    facts = referral_facts(example(REFERRAL + "WithUnavailableAttachments.json"))

    assert facts.attachment_urls == (
        "Binary/19eb7224-dff3-4730-a5cb-67eac811f1a5",
        "Binary/adda8c72-4a91-4dc7-a918-b6d12fb28085",
        "Binary/9e554611-3378-425c-9cab-700b697e52d3",
    )


def test_a_maintained_referral_letter() -> None:
    body = example(
        "maintainReferralLetter/responses/ReferralRequestWithSingleDocumentReference.json"
    )

    facts = referral_facts(body, 'W/"6"')
    assert facts.version == "6"
    assert facts.attachment_urls == ("Binary/a7c98bb4-c0d0-4094-b26d-8dbd1677edc8",)


def test_an_empty_referral_reads_as_nothing_known() -> None:
    facts = referral_facts({})

    assert (facts.ubrn, facts.version, facts.state, facts.commissioning_rule_org) == (
        "",
        "",
        None,
        None,
    )


# --- A004 reference data ---


def test_priority_contact_days() -> None:
    table = priority_contact_days(example("getCodeSystem/responses/PriorityCodeSystem.json"))

    assert table == {
        "ROUTINE": ContactDays(defer_to_provider=40, triage=40),
        "URGENT": ContactDays(defer_to_provider=10, triage=5),
        "TWO_WEEK_WAIT": ContactDays(defer_to_provider=5, triage=2),
    }


def test_a_priority_without_contact_days() -> None:
    body = {"concept": [{"code": "ROUTINE", "property": [{"code": "effectiveFrom"}]}]}

    assert priority_contact_days(body) == {"ROUTINE": ContactDays(None, None)}


# --- OperationOutcome ---


@pytest.mark.parametrize(
    ("name", "code", "diagnostics"),
    [
        (
            "STU3-OperationOutcome.json",
            "UNEXPECTED_FIELD",
            "'parameter[0]/resource/contained[0]/parameter[1]' (unknownParameter) "
            "unknown parameter name",
        ),
        ("STU3-ServiceUnavailable.json", "SYSTEM_UNAVAILABLE", ""),
        ("STU3-Unauthorised.json", "NO_ACCESS", "Example diagnostics message."),
        ("STU3-Forbidden.json", "FORBIDDEN", "Example diagnostics message."),
        (SLOTS + "ErrorPage5.json", "INVALID_VALUE", "'Page Number' (5) is invalid."),
    ],
)
def test_operation_outcome_code_and_diagnostics(name: str, code: str, diagnostics: str) -> None:
    assert operation_outcome(example(name)) == (code, diagnostics)


def test_a_pas_timeout_outcome() -> None:
    code, diagnostics = operation_outcome(example("PasNotRespondingOperationOutcome.json"))

    assert code == "PAS_NOT_RESPONDING"
    assert "TIMED_OUT" in diagnostics


@pytest.mark.parametrize(
    "body",
    [None, "text", [], {}, {"resourceType": "Bundle"}, {"resourceType": "OperationOutcome"}],
)
def test_anything_but_an_operation_outcome_has_no_code(body: object) -> None:
    assert operation_outcome(body) == (None, "")


def test_the_first_issue_is_the_one_read() -> None:
    body = {
        "resourceType": "OperationOutcome",
        "issue": [{"code": "invalid", "diagnostics": "first"}, {"code": "other"}],
    }

    assert operation_outcome(body) == ("invalid", "first")


# --- instants ---


@pytest.mark.parametrize(
    ("text", "instant"),
    [
        ("2021-05-22T08:25:32.562Z", datetime(2021, 5, 22, 8, 25, 32, 562000, tzinfo=UTC)),
        ("2021-07-11T12:00:00+00:00", datetime(2021, 7, 11, 12, tzinfo=UTC)),
        (
            "2021-07-11T13:00:00+01:00",
            datetime(2021, 7, 11, 13, tzinfo=timezone(timedelta(hours=1))),
        ),
    ],
)
def test_parse_instant(text: str, instant: datetime) -> None:
    parsed = parse_instant(text)

    assert parsed == instant
    assert parsed.utcoffset() == instant.utcoffset()


def test_a_referrer_worklist_names_each_referral_its_patient_and_when_it_was_made() -> None:
    from worker.fhir.read_worklist import WorklistItem, worklist_items

    items = worklist_items(example("retrieveWorklist/responses/AwaitingBooking.json"))

    assert items[0] == WorklistItem(
        ubrn="000000070001",
        nhs_number="9462979626",
        priority="ROUTINE",
        created=datetime(2021, 9, 3, 14, 19, 4, 702000, tzinfo=UTC),
        referrer="021600556514",
    )
    assert len(items) == 2
