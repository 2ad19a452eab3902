"""A010 patient service search, and the search-criteria / patient parsing A011 and A021 share."""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from sandbox import reference
from sandbox.catalogue import ADVICE_REQUEST, APPOINTMENT_REQUEST, TRIAGE_REQUEST, Service
from sandbox.context import caller, own_base_url, read_fhir_json, state
from sandbox.fhir import SDS_USER_SYSTEM, Json, dig, parameter, specialty_system
from sandbox.outcomes import fhir_response, unprocessable
from sandbox.resources import service_list

_NHS_NUMBER = re.compile(r"^\d{10}$")
_SNOMED_CODE = re.compile(r"^\d{1,18}$")
SNOMED_SYSTEM = "http://snomed.info/sct"
# Parameters that e-RS accepts as search input but does not keep with the referral.
_NOT_STORED = {"organisation", "commissioningProvisioning"}


@dataclass(frozen=True)
class SearchCriteria:
    priority: str
    specialty: str | None
    clinic_type: str | None
    wait_limit_days: int | None
    organisation: str | None
    stored_parameters: list[Json]
    clinical_term: str | None = None
    named_clinician: str | None = None


def require_parameters_resource(body: Any) -> Json:
    if not isinstance(body, dict) or body.get("resourceType") != "Parameters":
        raise unprocessable("INVALID_FHIR_STRUCTURE", "Request body must be a FHIR Parameters.")
    if not isinstance(body.get("parameter"), list):
        raise unprocessable("MISSING_VALUE", "'parameter' is required.")
    return body


def patient_nhs_number(body: Json) -> str:
    value = dig(parameter(body, "patient"), "valueIdentifier", "value")
    if value is None:
        raise unprocessable("MISSING_VALUE", "'patient' parameter is required.")
    if not isinstance(value, str) or not _NHS_NUMBER.match(value):
        raise unprocessable("INVALID_VALUE", "'patient' must carry a 10-digit NHS number.")
    return value


def parse_search_criteria(resource: Any, base_url: str, where: str) -> SearchCriteria:
    if not isinstance(resource, dict) or not isinstance(resource.get("parameter"), list):
        raise unprocessable("MISSING_VALUE", f"'{where}' search criteria are required.")
    priority = dig(parameter(resource, "priority"), "valueCoding", "code")
    if priority is None:
        raise unprocessable("MISSING_VALUE", f"'{where}/priority' is required.")
    if not isinstance(priority, str) or not reference.has_code("PRIORITY", priority):
        raise unprocessable("INVALID_CODE", f"'{where}/priority' ({priority}) is not a valid code.")
    if parameter(resource, "ageAndGenderAppropriate") is None:
        raise unprocessable("MISSING_VALUE", f"'{where}/ageAndGenderAppropriate' is required.")

    specialty: str | None = None
    specialty_coding = dig(parameter(resource, "specialty"), "valueCoding")
    if specialty_coding is not None:
        expected_system = specialty_system(base_url)
        system = dig(specialty_coding, "system")
        if system != expected_system:
            raise unprocessable(
                "INVALID_CODE",
                f"'{where}/specialty' system ({system}) must be {expected_system}.",
            )
        code = dig(specialty_coding, "code")
        if not isinstance(code, str) or not reference.has_code("SPECIALTY", code):
            raise unprocessable(
                "INVALID_CODE", f"'{where}/specialty' ({code}) is not a valid code."
            )
        specialty = code

    clinic_type = dig(parameter(resource, "clinicType"), "valueCoding", "code")
    limit = dig(parameter(resource, "indicativeAppointmentWaitTimeLimit"), "valueUnsignedInt")
    if limit is not None and (not isinstance(limit, int) or isinstance(limit, bool) or limit < 0):
        raise unprocessable("INVALID_VALUE", f"'{where}/indicativeAppointmentWaitTimeLimit'.")
    organisation = dig(parameter(resource, "organisation"), "valueIdentifier", "value")
    clinical_term = _clinical_term(resource, where)
    named_clinician = _named_clinician(resource, where)
    stored = [
        dict(p)
        for p in resource["parameter"]
        if isinstance(p, dict) and p.get("name") not in _NOT_STORED
    ]
    return SearchCriteria(
        priority=priority,
        specialty=specialty,
        clinic_type=clinic_type if isinstance(clinic_type, str) else None,
        wait_limit_days=limit,
        organisation=organisation if isinstance(organisation, str) else None,
        stored_parameters=stored,
        clinical_term=clinical_term,
        named_clinician=named_clinician,
    )


def _clinical_term(resource: Json, where: str) -> str | None:
    found = parameter(resource, "clinicalTerm")
    if found is None:
        return None
    code = dig(found, "valueCoding", "code")
    system = dig(found, "valueCoding", "system")
    if system != SNOMED_SYSTEM or not isinstance(code, str) or not _SNOMED_CODE.match(code):
        raise unprocessable(
            "INVALID_VALUE", f"'{where}/clinicalTerm' must be a SNOMED CT code ({SNOMED_SYSTEM})."
        )
    return code


def _named_clinician(resource: Json, where: str) -> str | None:
    found = parameter(resource, "namedClinician")
    if found is None:
        return None
    value = dig(found, "valueIdentifier", "value")
    system = dig(found, "valueIdentifier", "system")
    if system != SDS_USER_SYSTEM or not isinstance(value, str) or not value:
        raise unprocessable(
            "INVALID_VALUE", f"'{where}/namedClinician' must be an SDS user id ({SDS_USER_SYSTEM})."
        )
    return value


def _offered(service: Service, request_type: str, criteria: SearchCriteria) -> bool:
    if request_type == ADVICE_REQUEST:
        if not service.supports(ADVICE_REQUEST):
            return False
    elif not (service.supports(APPOINTMENT_REQUEST) or service.supports(TRIAGE_REQUEST)):
        return False
    if criteria.specialty is not None and service.specialty != criteria.specialty:
        return False
    if criteria.clinic_type is not None and criteria.clinic_type not in service.clinic_types:
        return False
    if criteria.clinical_term is not None and criteria.clinical_term not in service.clinical_terms:
        return False
    if criteria.named_clinician is not None and criteria.named_clinician not in service.clinicians:
        return False
    if criteria.wait_limit_days is not None and (
        service.indicative_wait_days is None
        or service.indicative_wait_days > criteria.wait_limit_days
    ):
        return False
    return criteria.organisation is None or service.location_ods == criteria.organisation


def _check_known(services: Iterable[Service], criteria: SearchCriteria) -> None:
    """e-RS refuses a clinical term outside its dictionary and a clinician it cannot resolve;
    the sandbox's dictionary and directory are its services' terms and named clinicians."""
    listed = list(services)
    if criteria.clinical_term is not None and not any(
        criteria.clinical_term in s.clinical_terms for s in listed
    ):
        raise unprocessable(
            "SNOMED_NOT_FOUND",
            f"SNOMED code ({criteria.clinical_term}) is not in the e-RS dictionary.",
        )
    if criteria.named_clinician is not None and not any(
        criteria.named_clinician in s.clinicians for s in listed
    ):
        raise unprocessable(
            "REFERENCE_NOT_FOUND",
            f"Named clinician ({criteria.named_clinician}) could not be found.",
        )


async def search_healthcare_services(request: web.Request) -> web.Response:
    """A010: POST /STU3/HealthcareService/$ers.searchHealthcareServicesForPatient"""
    body = require_parameters_resource(await read_fhir_json(request))
    base_url = own_base_url(request)
    request_type = dig(parameter(body, "requestType"), "valueCoding", "code")
    if request_type is None:
        raise unprocessable("MISSING_VALUE", "'requestType' parameter is required.")
    if request_type not in (APPOINTMENT_REQUEST, ADVICE_REQUEST):
        raise unprocessable("INVALID_CODE", f"'requestType' ({request_type}) is not a valid code.")
    if dig(parameter(body, "sortBy"), "valueCoding", "code") is None:
        raise unprocessable("MISSING_VALUE", "'sortBy' parameter is required.")
    nhs_number = patient_nhs_number(body)
    criteria = parse_search_criteria(
        dig(parameter(body, "searchCriteria"), "resource"), base_url, "searchCriteria"
    )

    store = state(request)
    _check_known(store.catalogue.services.values(), criteria)
    found = sorted(
        (s for s in store.catalogue.services.values() if _offered(s, request_type, criteria)),
        key=lambda s: (s.name, s.id),
    )
    ods_code = caller(request).ods_code or ""
    store.search_results[(ods_code, nhs_number)] = frozenset(s.id for s in found)
    return fhir_response(service_list(found, base_url))
