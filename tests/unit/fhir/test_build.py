"""Contract tests: for the business facts of NHS Digital's example requests, our builders
produce bodies JSON-equal to the examples (arrays in order)."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from schemas import ActingUser, BusinessFunction, Priority, SearchCriteria, SortBy
from tests.spec_examples import example
from tests.spec_schemas import schema_problems
from worker.fhir import build as fb
from worker.fhir import build_appointment as fa

SPECIALTY_CS = fb.specialty_system("_baseUrl_")
NHS = "9912003888"
RC = ActingUser(ods_code="R69", business_function=BusinessFunction.REFERRING_CLINICIAN)
RC_NAMED = RC.model_copy(update={"referring_clinician_sds_user_id": "021600556514"})
RCA = ActingUser(
    ods_code="R69",
    business_function=BusinessFunction.REFERRING_CLINICIAN_ADMIN,
    referring_clinician_sds_user_id="021600556514",
)
CARDIO_LIPID = SearchCriteria(
    priority=Priority.URGENT, specialty="CARDIOLOGY", clinic_type="LIPID_MANAGEMENT"
)


@pytest.mark.parametrize(
    ("name", "user", "criteria"),
    [
        ("RcMinimal.json", RC, CARDIO_LIPID),
        (
            "RcaWithIWT.json",
            RCA,
            CARDIO_LIPID.model_copy(update={"indicative_wait_time_limit_days": 15}),
        ),
        (
            "RcSearchWithCommissioningRuleOrganisation.json",
            RC,
            CARDIO_LIPID.model_copy(update={"commissioning_rule_organisation": "R69"}),
        ),
        (
            "RcSearchByClinicalTerm.json",
            RC_NAMED,
            SearchCriteria(
                priority=Priority.URGENT,
                sort_by=SortBy.IWT,
                indicative_wait_time_limit_days=15,
                postcode="BR1 1AB",
                distance_limit_miles=23,
                clinical_term="1003",
                organisation_ods_code="R69",
            ),
        ),
    ],
)
def test_a010_patient_service_search(name: str, user: ActingUser, criteria: SearchCriteria) -> None:
    body = fb.patient_service_search(
        nhs_number=NHS, user=user, criteria=criteria, specialty_cs=SPECIALTY_CS
    )
    assert body == example(f"patientServiceSearch/requests/{name}")


def test_a010_search_by_named_clinician_alone() -> None:
    """The specification names RcSearchByNamedClinician.json but does not ship it: the body
    is checked against A010's request schema, and against the example where present."""
    criteria = SearchCriteria(priority=Priority.URGENT, named_clinician_sds_user_id="021600556514")
    body = fb.patient_service_search(
        nhs_number=NHS, user=RC, criteria=criteria, specialty_cs=SPECIALTY_CS
    )
    assert schema_problems("eRS-PatientServiceSearch-Parameters.yaml", body) == []
    (found,) = [p for p in body["parameter"] if p["name"] == "searchCriteria"]
    names = [p["name"] for p in found["resource"]["parameter"]]
    assert names == ["priority", "namedClinician", "ageAndGenderAppropriate"]
    named = example("patientServiceSearch/requests/RcMinimal.json")
    named_criteria = named["parameter"][3]["resource"]["parameter"]
    named_criteria[1:3] = [
        {
            "name": "namedClinician",
            "valueIdentifier": {
                "system": "http://fhir.nhs.net/Id/sds-user-id",
                "value": "021600556514",
            },
        }
    ]
    assert body == named


def test_the_spec_schema_check_can_fail() -> None:
    body = fb.patient_service_search(
        nhs_number=NHS, user=RC, criteria=CARDIO_LIPID, specialty_cs=SPECIALTY_CS
    )
    body["parameter"][0]["valueCoding"]["code"] = 42
    assert schema_problems("eRS-PatientServiceSearch-Parameters.yaml", body) != []


HEART_FAILURE = SearchCriteria(
    priority=Priority.URGENT,
    specialty="CARDIOLOGY",
    clinic_type="HEART_FAILURE",
    age_and_gender_appropriate=False,
)


@pytest.mark.parametrize(
    ("name", "user"),
    [("MinimalRequest.json", RC), ("MinimalRequestWithReferringClinician.json", RC_NAMED)],
)
def test_a011_create_referral(name: str, user: ActingUser) -> None:
    referral = fb.NewReferral(
        nhs_number=NHS,
        user=user,
        criteria=HEART_FAILURE,
        service_ids=["11002"],
        intends_to_add_letter=True,
        first_reminder_letter_follow_up_days=0,
        pathway_start=datetime(2024, 5, 1, 9, 55, tzinfo=UTC),
    )
    assert fb.create_referral(referral, SPECIALTY_CS) == example(f"createReferral/requests/{name}")


def test_a021_create_referral_and_send_for_triage() -> None:
    referral = fb.NewReferral(
        nhs_number=NHS,
        user=RC,
        criteria=HEART_FAILURE.model_copy(update={"priority": Priority.ROUTINE}),
        service_ids=["11004"],
        intends_to_add_letter=True,
        first_reminder_letter_follow_up_days=0,
    )
    assert fb.create_referral_and_send_for_triage(referral, SPECIALTY_CS) == example(
        "createReferralAndSendForTriage/requests/Parameters.json"
    )


@pytest.mark.parametrize(
    ("name", "description", "indexed"),
    [
        (
            "SingleDocumentReference.json",
            "Blood test results showing an anomaly in the values of xxxx",
            datetime(2021, 6, 24, 13, 5, 3, 652000, tzinfo=UTC),
        ),
        (
            "UpdateClinicalInfo.json",
            "Second blood test results showing an anomaly in the values of xxxx",
            datetime(2021, 6, 24, 13, 22, 13, 465000, tzinfo=UTC),
        ),
    ],
)
def test_a012_maintain_referral_letter(name: str, description: str, indexed: datetime) -> None:
    files = [fb.LetterFile("Binary/50f0c0d5-7ed1-4587-8fce-889c8685eb54", description, indexed)]
    assert fb.maintain_referral_letter(files) == example(f"maintainReferralLetter/requests/{name}")


REFERRAL = {"ubrn": "000000070000", "version": "6", "nhs_number": NHS}


def test_a016_minimal_booking() -> None:
    body = fa.book_appointment(
        **REFERRAL,
        service_id="11000",
        slot_id="11000021",
        start="2022-07-11T12:00:00+00:00",
        end="2022-07-11T13:00:00+00:00",
    )
    assert body == example("bookOrDeferAppointment/requests/MinimalBooking.json")


@pytest.mark.parametrize(
    ("name", "service_id", "reason"),
    [
        ("MinimalDeferral.json", "11021", "NO_SLOTS_AT_SERVICE"),
        ("DeferralBookingAttemptProblem.json", "11000", "BOOKING_ATTEMPT_PROBLEM"),
    ],
)
def test_a016_deferral(name: str, service_id: str, reason: str) -> None:
    body = fa.defer_appointment(**REFERRAL, service_id=service_id, reason=reason)
    assert body == example(f"bookOrDeferAppointment/requests/{name}")


def test_a016_deferral_with_the_clinicians_comment_and_a_slot_reference() -> None:
    """A016's "Deferral with slot reference" example is named but not shipped: the body is
    MinimalDeferral's with the slot and the comment, and keeps to A016's request schema."""
    body = fa.defer_appointment(
        **REFERRAL,
        service_id="11021",
        reason="SLOT_NOT_AVAILABLE",
        comment="Patient asked for the Tuesday clinic; please offer the next one",
        slot_id="11000021",
    )
    assert schema_problems("eRS-Appointment.yaml", body) == []
    expected = example("bookOrDeferAppointment/requests/MinimalDeferral.json")
    expected["reason"][0]["coding"][0]["code"] = "SLOT_NOT_AVAILABLE"
    expected["comment"] = "Patient asked for the Tuesday clinic; please offer the next one"
    expected["slot"] = [{"reference": "Slot/11000021"}]
    assert body == expected


def test_a016_deferral_with_a_comment_alone_keeps_the_reason_and_has_no_slot() -> None:
    body = fa.defer_appointment(
        **REFERRAL, service_id="11021", reason="NO_SLOTS_AT_SERVICE", comment="Please call her"
    )
    assert schema_problems("eRS-Appointment.yaml", body) == []
    expected = example("bookOrDeferAppointment/requests/MinimalDeferral.json")
    expected["comment"] = "Please call her"
    assert body == expected


def test_a016_triage() -> None:
    body = fa.send_for_triage(**REFERRAL, service_id="50001")
    assert body == example("bookOrDeferAppointment/requests/TriageDeferral.json")


@pytest.mark.parametrize(
    ("list_type", "name"),
    [
        ("AWAITING_BOOKING", "MinimalAwaitingBooking.json"),
        ("LETTERS_OUTSTANDING", "MinimalLettersOutstanding.json"),
    ],
)
def test_a008_worklist_request_matches_the_example(list_type: str, name: str) -> None:
    assert fb.fetch_worklist(list_type) == example(f"retrieveWorklist/requests/{name}")
