"""FHIR representations of the store's records, shaped like the specification's examples."""

from __future__ import annotations

from sandbox import reference
from sandbox.catalogue import Service
from sandbox.fhir import (
    APPOINTMENT_PROFILES,
    CS,
    DIRECTORY_ORG_SYSTEM,
    NHS_NUMBER_SYSTEM,
    ODS_ORG_SYSTEM,
    PRIORITY_DISPLAY,
    PRIORITY_SYSTEM,
    REFERRAL_STATE_SYSTEM,
    REQUEST_ID_SYSTEM,
    REVIEW_REASON_SYSTEM,
    SD,
    SERVICE_SYSTEM,
    STATE_DISPLAY,
    Json,
    coding,
    instant,
    specialty_system,
    substitute_base_url,
)
from sandbox.state import Appointment, Attachment, Binary, Referral, SandboxState

COMMISSIONING_RULE_ORG = "R69"
REFERRAL_PROFILE = SD + "eRS-ReferralRequest-1"
SEARCH_CRITERIA_PROFILE = SD + "eRS-ServiceSearchCriteria-Parameters-1"
SHORTLIST_PROFILE = SD + "eRS-Shortlist-List-1"
DOCUMENT_REFERENCE_PROFILE = SD + "eRS-DocumentReference-1"
FETCH_SERVICES_PROFILE = SD + "eRS-FetchServices-List-1"


def _ext(name: str, **value: object) -> Json:
    return {"url": SD + name, **value}


def patient_participant(nhs_number: str) -> Json:
    return {
        "actor": {"identifier": {"system": NHS_NUMBER_SYSTEM, "value": nhs_number}},
        "status": "accepted",
    }


def service_participant(service_id: str, name: str | None) -> Json:
    actor: Json = {"identifier": {"system": SERVICE_SYSTEM, "value": service_id}}
    if name is not None:
        actor["display"] = name
    return {"actor": actor, "status": "accepted"}


def appointment_resource(
    state: SandboxState, appointment: Appointment, nhs_number: str, *, contained: bool = False
) -> Json:
    service = state.catalogue.get(appointment.service_id)
    resource: Json = {
        "id": "appointment" if contained else appointment.id,
        "meta": {"versionId": str(appointment.version), "profile": list(APPOINTMENT_PROFILES)},
        "language": "en",
        "resourceType": "Appointment",
        "status": appointment.status,
    }
    if appointment.reason is not None:
        resource["reason"] = [{"coding": [coding(REVIEW_REASON_SYSTEM, appointment.reason)]}]
    resource["description"] = "e-Referral Appointment"
    if appointment.start is not None and appointment.end is not None:
        resource["start"] = instant(appointment.start)
        resource["end"] = instant(appointment.end)
    if appointment.slot_id is not None:
        resource["slot"] = [{"reference": f"Slot/{appointment.slot_id}"}]
    resource["created"] = instant(appointment.created)
    if appointment.comment is not None:
        resource["comment"] = appointment.comment
    resource["incomingReferral"] = [
        {"reference": f"ReferralRequest/{appointment.ubrn}/_history/{appointment.referral_version}"}
    ]
    resource["participant"] = [
        service_participant(appointment.service_id, service.name if service else None),
        patient_participant(nhs_number),
        *appointment.extra_participants,
    ]
    return resource


def _document_reference(attachment: Attachment, binary: Binary | None) -> Json:
    extensions: list[Json] = [
        _ext(
            "Extension-eRS-AvailabilityStatus-1",
            valueCoding=coding(CS + "eRS-AvailabilityStatus-1", "AVAILABLE"),
        )
    ]
    if attachment.ods_code:
        extensions.append(
            _ext(
                "Extension-eRS-AttachedByOrganisation-1",
                valueReference={
                    "identifier": {"system": ODS_ORG_SYSTEM, "value": attachment.ods_code}
                },
            )
        )
    file_attachment: Json = {"id": attachment.attachment_id, "extension": extensions}
    if binary is not None:
        file_attachment["contentType"] = binary.content_type
    file_attachment["url"] = f"Binary/{attachment.binary_id}"
    if binary is not None:
        file_attachment["size"] = binary.size
        file_attachment["title"] = binary.file_name
        file_attachment["creation"] = binary.uploaded.date().isoformat()
    return {
        "id": f"DocumentReference-{attachment.attachment_id}",
        "meta": {"profile": [DOCUMENT_REFERENCE_PROFILE]},
        "resourceType": "DocumentReference",
        "type": {"coding": [coding(CS + "eRS-AttachmentType-1", "REFERRER", "Referrer")]},
        "status": "current",
        "indexed": instant(attachment.indexed),
        "description": attachment.description,
        "content": [{"attachment": file_attachment}],
    }


def _state_extension(referral: Referral) -> Json:
    parts: list[Json] = [
        {
            "url": "state",
            "valueCoding": coding(
                REFERRAL_STATE_SYSTEM,
                referral.state,
                STATE_DISPLAY.get(referral.state, referral.state),
            ),
        }
    ]
    if referral.state_reason is not None:
        parts.append(
            {"url": "reason", "valueCoding": coding(REVIEW_REASON_SYSTEM, referral.state_reason)}
        )
    return _ext("Extension-eRS-ReferralState-1", extension=parts)


def referral_resource(state: SandboxState, referral: Referral, base_url: str) -> Json:
    appointment = state.appointments.get(referral.appointment_id or "")
    extensions: list[Json] = []
    if appointment is not None:
        extensions.append(
            _ext("Extension-eRS-Appointment-1", valueReference={"reference": "#appointment"})
        )
        extensions.append(
            _ext(
                "Extension-eRS-Appointment-Reference-1",
                valueReference={"reference": f"Appointment/{appointment.id}"},
            )
        )
    if referral.clinical_info_first_submitted is not None:
        extensions.append(
            _ext(
                "Extension-eRS-ClinicalInfoFirstSubmitted-1",
                valueDateTime=instant(referral.clinical_info_first_submitted),
            )
        )
    if referral.clinical_info_last_updated is not None:
        extensions.append(
            _ext(
                "Extension-eRS-ClinicalInfoLastUpdated-1",
                valueDateTime=instant(referral.clinical_info_last_updated),
            )
        )
    if referral.pathway_start is not None:
        extensions.append(
            _ext("Extension-eRS-eReferralPathwayStart-1", valueInstant=referral.pathway_start)
        )
    extensions.append(
        _ext(
            "Extension-eRS-ReferralPriority-1",
            valueCodeableConcept={
                "coding": [
                    coding(
                        PRIORITY_SYSTEM,
                        referral.priority,
                        PRIORITY_DISPLAY.get(referral.priority, referral.priority),
                    )
                ]
            },
        )
    )
    extensions.append(
        _ext("Extension-eRS-ReferralShortlist-1", valueReference={"reference": "#shortlist"})
    )
    extensions.append(
        _ext(
            "Extension-eRS-Commissioning-Rule-Org-1",
            valueIdentifier={"system": ODS_ORG_SYSTEM, "value": COMMISSIONING_RULE_ORG},
        )
    )
    extensions.append(_state_extension(referral))

    contained: list[Json] = [
        {
            "id": "serviceSearchCriteria",
            "meta": {"profile": [SEARCH_CRITERIA_PROFILE]},
            "resourceType": "Parameters",
            "parameter": [
                *substitute_base_url(referral.search_criteria, base_url),
                *_commissioning_provisioning(referral),
            ],
        },
        {
            "id": "shortlist",
            "meta": {"profile": [SHORTLIST_PROFILE]},
            "resourceType": "List",
            "extension": [
                _ext(
                    "Extension-eRS-Shortlist-SearchCriteria-1",
                    valueReference={"reference": "#serviceSearchCriteria"},
                )
            ],
            "status": "current",
            "mode": "snapshot",
            "entry": [_shortlist_entry(state, service_id) for service_id in referral.service_ids],
        },
    ]
    if appointment is not None:
        contained.append(
            appointment_resource(state, appointment, referral.nhs_number, contained=True)
        )
    contained.extend(
        _document_reference(attachment, state.binaries.get(attachment.binary_id))
        for attachment in referral.attachments
    )

    resource: Json = {
        "id": referral.ubrn,
        "meta": {"versionId": str(referral.version), "profile": [REFERRAL_PROFILE]},
        "resourceType": "ReferralRequest",
        "extension": extensions,
        "contained": contained,
        "status": "active",
    }
    # e-RS only shows the top-level specialty once the referral has an appointment.
    if appointment is not None and referral.specialty is not None:
        resource["specialty"] = {
            "coding": [
                coding(
                    specialty_system(base_url),
                    referral.specialty,
                    reference.display("SPECIALTY", referral.specialty) or referral.specialty,
                )
            ]
        }
    resource["subject"] = {
        "identifier": {"system": NHS_NUMBER_SYSTEM, "value": referral.nhs_number}
    }
    resource["supportingInfo"] = [
        {"reference": f"#DocumentReference-{attachment.attachment_id}"}
        for attachment in referral.attachments
    ]
    resource["intent"] = "plan"
    resource["identifier"] = [{"system": REQUEST_ID_SYSTEM, "value": referral.request_id}]
    return resource


def _commissioning_provisioning(referral: Referral) -> list[Json]:
    if not referral.commissioning_provisioning:
        return []
    return [
        {
            "name": "commissioningProvisioning",
            "valueCoding": coding(
                CS + "eRS-CommissioningProvisioning-1", "ALL_AVAILABLE_FOR_BOOKING"
            ),
        }
    ]


def _shortlist_entry(state: SandboxState, service_id: str) -> Json:
    item: Json = {"identifier": {"system": SERVICE_SYSTEM, "value": service_id}}
    service = state.catalogue.get(service_id)
    if service is not None:
        item["display"] = service.name
    return {"item": item}


def service_search_entry(service: Service, base_url: str) -> Json:
    if service.indicative_wait_days is None:
        wait: Json = {
            "url": "indicativeAppointmentWaitTime",
            "valueCodeableConcept": {"coding": [coding(CS + "eRS-IWT-1", "NOT_APPLICABLE")]},
        }
    else:
        wait = {
            "url": "indicativeAppointmentWaitTime",
            "valueUnsignedInt": service.indicative_wait_days,
        }
    summary: list[Json] = [
        {"url": "serviceName", "valueString": service.name},
        {
            "url": "specialty",
            "valueCodeableConcept": {
                "coding": [coding(specialty_system(base_url), service.specialty)]
            },
        },
        {
            "url": "genderTreated",
            "valueCodeableConcept": {
                "coding": [coding(CS + "eRS-GenderTreated-1", "MALE_AND_FEMALE")]
            },
        },
        {
            "url": "bookableType",
            "valueCodeableConcept": {
                "coding": [coding(CS + "eRS-BookableType-1", service.bookable_type)]
            },
        },
        {
            "url": "supportedAppointmentType",
            "valueCodeableConcept": {
                "coding": [coding(CS + "eRS-AppointmentType-1", service.appointment_type)]
            },
        },
        {"url": "referralLetterRequired", "valueBoolean": service.referral_letter_required},
        {
            "url": "location",
            "valueReference": {
                "identifier": {"system": DIRECTORY_ORG_SYSTEM, "value": service.location_ods},
                "display": service.location_display,
            },
        },
        {
            "url": "linkToNHSWebsite",
            "valueString": (
                "https://www.nhs.uk/service-search/other-services/chooseandbook"
                f"?serviceId={service.id}"
            ),
        },
        *(
            {
                "url": "supportedRequestFlowType",
                "valueCodeableConcept": {
                    "coding": [coding(CS + "eRS-RequestFlowType-1", flow_type)]
                },
            }
            for flow_type in service.request_flow_types
        ),
    ]
    return {
        "extension": [
            {
                "extension": [{"url": "displayProminently", "valueBoolean": False}, wait],
                "url": SD + "Extension-eRS-ServiceSearch-ListItem-1",
            }
        ],
        "item": {
            "extension": [{"extension": summary, "url": SD + "Extension-eRS-ServiceSummaryView-1"}],
            "identifier": {"system": SERVICE_SYSTEM, "value": service.id},
        },
    }


def service_list(services: list[Service], base_url: str) -> Json:
    resource: Json = {
        "meta": {"profile": [FETCH_SERVICES_PROFILE]},
        "resourceType": "List",
        "status": "current",
        "mode": "snapshot",
        "entry": [service_search_entry(service, base_url) for service in services],
    }
    if not services:
        resource["emptyReason"] = {
            "coding": [
                coding("http://hl7.org/fhir/ValueSet/list-empty-reason", "nilknown", "no results")
            ]
        }
    return resource
