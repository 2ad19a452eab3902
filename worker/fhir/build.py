"""FHIR STU3 request bodies for the e-RS referrer flow, built from our message contract.

Pure functions: no I/O, no clock (times are passed in). Parameter order follows NHS Digital's
example requests so the contract tests can compare bodies for JSON equality.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from schemas.referral_request import ActingUser, SearchCriteria
from worker.fhir.vocabulary import APPOINTMENT_REQUEST

Json = dict[str, Any]

NHS_NUMBER = "http://fhir.nhs.net/Id/nhs-number"
SDS_USER_ID = "http://fhir.nhs.net/Id/sds-user-id"
ERS_SERVICE = "http://fhir.nhs.net/Id/ers-service"
ODS_ORGANIZATION_CODE = "https://fhir.nhs.uk/Id/ods-organization-code"
SPINE_ORGANIZATION = "https://directory.spineservices.nhs.uk/STU3/Organization"
SNOMED = "http://snomed.info/sct"
_CS = "https://fhir.nhs.uk/STU3/CodeSystem/"
_SD = "https://fhir.nhs.uk/STU3/StructureDefinition/"
SEARCH_CRITERIA_ID = "ServiceSearchCriteria-1"


def specialty_system(code_system_base_url: str) -> str:
    """The SPECIALTY code system lives under the e-RS base URL of the environment called."""
    return f"{code_system_base_url.rstrip('/')}/STU3/CodeSystem/SPECIALTY"


def _coding(name: str, system: str, code: str) -> Json:
    return {"name": name, "valueCoding": {"system": system, "code": code}}


def _identifier(name: str, system: str, value: str) -> Json:
    return {"name": name, "valueIdentifier": {"system": system, "value": value}}


def _profile(name: str) -> Json:
    return {"profile": [f"{_SD}{name}"]}


def search_criteria(criteria: SearchCriteria, specialty_cs: str) -> Json:
    """The eRS-ServiceSearchCriteria-Parameters resource shared by A010 and A011/A021."""
    params: list[Json] = [_coding("priority", f"{_CS}eRS-Priority-1", criteria.priority.value)]
    if criteria.specialty:
        params.append(_coding("specialty", specialty_cs, criteria.specialty))
    if criteria.clinic_type:
        params.append(_coding("clinicType", f"{_CS}eRS-ClinicType-1", criteria.clinic_type))
    if criteria.indicative_wait_time_limit_days is not None:
        params.append(
            {
                "name": "indicativeAppointmentWaitTimeLimit",
                "valueUnsignedInt": criteria.indicative_wait_time_limit_days,
            }
        )
    if criteria.postcode:
        params.append({"name": "postcode", "valueString": criteria.postcode})
    if criteria.distance_limit_miles is not None:
        params.append({"name": "distanceLimit", "valueUnsignedInt": criteria.distance_limit_miles})
    if criteria.clinical_term:
        params.append(_coding("clinicalTerm", SNOMED, criteria.clinical_term))
    if criteria.named_clinician_sds_user_id:
        params.append(
            _identifier("namedClinician", SDS_USER_ID, criteria.named_clinician_sds_user_id)
        )
    if criteria.organisation_ods_code:
        params.append(
            _identifier("organisation", SPINE_ORGANIZATION, criteria.organisation_ods_code)
        )
    params.append(
        {"name": "ageAndGenderAppropriate", "valueBoolean": criteria.age_and_gender_appropriate}
    )
    return {
        "resourceType": "Parameters",
        "meta": _profile("eRS-ServiceSearchCriteria-Parameters-1"),
        "id": SEARCH_CRITERIA_ID,
        "parameter": params,
    }


def _referring_clinician(user: ActingUser) -> list[Json]:
    if user.referring_clinician_sds_user_id is None:
        return []
    return [_identifier("referringClinician", SDS_USER_ID, user.referring_clinician_sds_user_id)]


def patient_service_search(
    *, nhs_number: str, user: ActingUser, criteria: SearchCriteria, specialty_cs: str
) -> Json:
    """A010 body."""
    params: list[Json] = [
        _coding("requestType", f"{_CS}eRS-RequestType-1", APPOINTMENT_REQUEST),
        _coding("sortBy", f"{_CS}eRS-SortBy-1", criteria.sort_by.value),
        _identifier("patient", NHS_NUMBER, nhs_number),
        *_referring_clinician(user),
        {"name": "searchCriteria", "resource": search_criteria(criteria, specialty_cs)},
    ]
    if criteria.commissioning_rule_organisation:
        params.append(
            _identifier(
                "commissioningRuleOrganisation",
                ODS_ORGANIZATION_CODE,
                criteria.commissioning_rule_organisation,
            )
        )
    return {
        "resourceType": "Parameters",
        "meta": _profile("eRS-PatientServiceSearch-Parameters-1"),
        "parameter": params,
    }


def _instant(value: datetime) -> str:
    """FHIR instant with milliseconds in UTC, as e-RS writes them (2024-05-01T09:55:00.000Z)."""
    utc = value.astimezone(UTC)
    return utc.strftime("%Y-%m-%dT%H:%M:%S.") + f"{utc.microsecond // 1000:03d}Z"


def _shortlist(criteria: SearchCriteria, service_ids: Sequence[str], specialty_cs: str) -> Json:
    return {
        "meta": _profile("eRS-Shortlist-List-1"),
        "resourceType": "List",
        "status": "current",
        "mode": "snapshot",
        "contained": [search_criteria(criteria, specialty_cs)],
        "entry": [
            {"item": {"identifier": {"system": ERS_SERVICE, "value": s}}} for s in service_ids
        ],
        "extension": [
            {
                "url": f"{_SD}Extension-eRS-Shortlist-SearchCriteria-1",
                "valueReference": {"reference": f"#{SEARCH_CRITERIA_ID}"},
            }
        ],
    }


@dataclass(frozen=True, slots=True)
class NewReferral:
    """The business facts of a referral to create, whatever the endpoint."""

    nhs_number: str
    user: ActingUser
    criteria: SearchCriteria
    service_ids: Sequence[str]
    intends_to_add_letter: bool
    first_reminder_letter_follow_up_days: int
    pathway_start: datetime | None = None


def _referral_parameters(referral: NewReferral, specialty_cs: str, *, triage: bool) -> list[Json]:
    intention = "NEED_TO_ADD_LATER" if referral.intends_to_add_letter else "NOT_INTENDING_TO_ADD"
    params: list[Json] = [
        _identifier("patient", NHS_NUMBER, referral.nhs_number),
        *_referring_clinician(referral.user),
        _coding("intentionToAddReferralLetter", f"{_CS}eRS-ReferralLetterIntention-1", intention),
        {
            "name": "firstReminderLetterFollowUpDays",
            "valueUnsignedInt": referral.first_reminder_letter_follow_up_days,
        },
    ]
    # A021's parameters have no pathway start (its schema lists none).
    if referral.pathway_start is not None and not triage:
        params.append(
            {"name": "eReferralPathwayStart", "valueInstant": _instant(referral.pathway_start)}
        )
    params.append(
        {
            "name": "shortlist",
            "resource": _shortlist(referral.criteria, referral.service_ids, specialty_cs),
        }
    )
    return params


def create_referral(referral: NewReferral, specialty_cs: str) -> Json:
    """A011 body: shortlist of bookable and/or triage services."""
    return {
        "resourceType": "Parameters",
        "meta": _profile("eRS-CreateReferral-Parameters-1"),
        "parameter": _referral_parameters(referral, specialty_cs, triage=False),
    }


def create_referral_and_send_for_triage(referral: NewReferral, specialty_cs: str) -> Json:
    """A021 body: a shortlist of exactly the one triage (RAS) service."""
    return {
        "resourceType": "Parameters",
        "meta": _profile("eRS-CreateReferralAndSendForTriage-Parameters-1"),
        "parameter": _referral_parameters(referral, specialty_cs, triage=True),
    }


@dataclass(frozen=True, slots=True)
class LetterFile:
    url: str
    description: str
    indexed: datetime


def maintain_referral_letter(files: Sequence[LetterFile]) -> Json:
    """A012 body: the WHOLE set of referral-letter attachments the referral should have."""
    return {
        "meta": _profile("eRS-MaintainReferralLetter-Parameters-1"),
        "resourceType": "Parameters",
        "parameter": [
            {
                "name": "referralLetterFile",
                "resource": {
                    "meta": _profile("eRS-DocumentReference-1"),
                    "resourceType": "DocumentReference",
                    "type": {
                        "coding": [{"system": f"{_CS}eRS-AttachmentType-1", "code": "REFERRER"}]
                    },
                    "status": "current",
                    "indexed": f.indexed.isoformat(),
                    "description": f.description,
                    "content": [{"attachment": {"url": f.url}}],
                },
            }
            for f in files
        ],
    }


def fetch_worklist(list_type: str) -> Json:
    """A008's Parameters: one referrer worklist (MinimalAwaitingBooking.json)."""
    return {
        "resourceType": "Parameters",
        "meta": _profile("eRS-FetchWorklist-Parameters-1"),
        "parameter": [
            {
                "name": "listType",
                "valueCodeableConcept": {
                    "coding": [{"system": f"{_CS}eRS-ReferralListSelector-1", "code": list_type}]
                },
            }
        ],
    }
