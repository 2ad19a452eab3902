"""FHIR STU3 identifiers, code systems and small helpers shared by the e-RS handlers."""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import Any

BASE_PATH = "/referrals/FHIR"
BASE_URL_PLACEHOLDER = "_baseUrl_"
_PLACEHOLDER_RE = re.compile(re.escape(BASE_URL_PLACEHOLDER), re.IGNORECASE)

NHS_NUMBER_SYSTEM = "http://fhir.nhs.net/Id/nhs-number"
SERVICE_SYSTEM = "http://fhir.nhs.net/Id/ers-service"
SDS_USER_SYSTEM = "http://fhir.nhs.net/Id/sds-user-id"
ODS_ORG_SYSTEM = "https://fhir.nhs.uk/Id/ods-organization-code"
DIRECTORY_ORG_SYSTEM = "https://directory.spineservices.nhs.uk/STU3/Organization"
REQUEST_ID_SYSTEM = "https://fhir.nhs.uk/Id/ers-request-id"
ERROR_CODE_SYSTEM = "https://fhir.nhs.uk/STU3/CodeSystem/eRS-APIErrorCode-1"

CS = "https://fhir.nhs.uk/STU3/CodeSystem/"
SD = "https://fhir.nhs.uk/STU3/StructureDefinition/"

PRIORITY_SYSTEM = CS + "eRS-Priority-1"
REFERRAL_STATE_SYSTEM = CS + "eRS-ReferralState-1"
REVIEW_REASON_SYSTEM = CS + "eRS-ReviewReason-1"

APPOINTMENT_PROFILES = [
    SD + "eRS-Appointment-1",
    "https://fhir.hl7.org.uk/STU3/StructureDefinition/CareConnect-Appointment-1",
]

PRIORITY_DISPLAY = {"ROUTINE": "Routine", "URGENT": "Urgent", "TWO_WEEK_WAIT": "Two Week Wait"}
STATE_DISPLAY = {
    "NOT_BOOKED": "Not Booked",
    "BOOKED": "Booked",
    "DEFERRED_TO_PROVIDER": "Deferred To Provider",
    "AWAITING_TRIAGE": "Awaiting Triage",
}

Json = dict[str, Any]


def specialty_system(base_url: str) -> str:
    return f"{base_url}/STU3/CodeSystem/SPECIALTY"


def substitute_base_url(value: Any, base_url: str) -> Any:
    """Replace the examples' `_baseUrl_` placeholder (any case) inside a JSON value."""
    if isinstance(value, str):
        return _PLACEHOLDER_RE.sub(base_url, value)
    if isinstance(value, list):
        return [substitute_base_url(item, base_url) for item in value]
    if isinstance(value, dict):
        return {key: substitute_base_url(item, base_url) for key, item in value.items()}
    return value


def substitute_base_url_text(text: str, base_url: str) -> str:
    return _PLACEHOLDER_RE.sub(base_url, text)


def instant(moment: datetime) -> str:
    """FHIR instant as e-RS writes it: UTC, milliseconds, trailing Z."""
    utc = moment.astimezone(UTC)
    return utc.strftime("%Y-%m-%dT%H:%M:%S.") + f"{utc.microsecond // 1000:03d}Z"


def parse_instant(text: str) -> datetime | None:
    try:
        parsed = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None
    if parsed.tzinfo is None:
        return None
    return parsed


def parameters(resource: Any, name: str) -> list[Json]:
    """All `parameter` entries of a FHIR Parameters resource with the given name."""
    if not isinstance(resource, dict):
        return []
    found = resource.get("parameter")
    if not isinstance(found, list):
        return []
    return [p for p in found if isinstance(p, dict) and p.get("name") == name]


def parameter(resource: Any, name: str) -> Json | None:
    found = parameters(resource, name)
    return found[0] if found else None


def dig(value: Any, *path: str | int) -> Any:
    """Walk dict keys / list indexes, answering None as soon as the shape does not fit."""
    current = value
    for step in path:
        if isinstance(step, int):
            if not isinstance(current, list) or not -len(current) <= step < len(current):
                return None
            current = current[step]
        else:
            if not isinstance(current, dict):
                return None
            current = current.get(step)
    return current


def coding(system: str, code: str, display: str | None = None) -> Json:
    result: Json = {"system": system, "code": code}
    if display is not None:
        result["display"] = display
    return result
