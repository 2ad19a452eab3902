"""Facts the saga needs, read out of e-RS FHIR STU3 responses. Pure functions, no I/O.

e-RS responses are large and mostly extensions; we read the few facts we act on and ignore
the rest, so an additive change on e-RS' side does not break us.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any

from worker.fhir.build import ERS_SERVICE, ODS_ORGANIZATION_CODE, SDS_USER_ID
from worker.fhir.vocabulary import TRIAGE_REQUEST, BookableType

Json = dict[str, Any]
_SD = "https://fhir.nhs.uk/STU3/StructureDefinition/"
_HISTORY = re.compile(r"ReferralRequest/(?P<ubrn>[^/]+)/_history/(?P<version>[^/]+)$")
_ETAG = re.compile(r'^(?:W/)?"(?P<version>[^"]+)"$')


@dataclass(frozen=True, slots=True)
class FoundService:
    service_id: str
    name: str
    bookable_type: str | None
    request_flow_types: frozenset[str]

    @property
    def directly_bookable(self) -> bool:
        return self.bookable_type == BookableType.DIRECTLY_BOOKABLE

    @property
    def triage(self) -> bool:
        return TRIAGE_REQUEST in self.request_flow_types


def _codes(concept: Json) -> Iterator[str]:
    for coding in concept.get("coding", []):
        if "code" in coding:
            yield coding["code"]


def services_from_search(body: Json) -> list[FoundService]:
    """A010's FetchServices List, in the order e-RS ranked them."""
    found: list[FoundService] = []
    for entry in body.get("entry", []):
        item = entry.get("item", {})
        ident = item.get("identifier", {})
        if ident.get("system") != ERS_SERVICE or "value" not in ident:
            continue
        name: str = ""
        bookable: str | None = None
        flows: set[str] = set()
        for ext in item.get("extension", []):
            for sub in ext.get("extension", []):
                url = sub.get("url")
                if url == "serviceName":
                    name = sub.get("valueString", "")
                elif url == "bookableType":
                    bookable = next(_codes(sub.get("valueCodeableConcept", {})), None)
                elif url == "supportedRequestFlowType":
                    flows.update(_codes(sub.get("valueCodeableConcept", {})))
        found.append(FoundService(ident["value"], name, bookable, frozenset(flows)))
    return found


@dataclass(frozen=True, slots=True)
class ReferralFacts:
    ubrn: str
    version: str
    state: str | None
    commissioning_rule_org: str | None
    appointment: AppointmentFacts | None
    attachment_urls: tuple[str, ...]
    # What A005 tells about what was asked: to confirm a referral found on a worklist.
    nhs_number: str | None = None
    service_ids: tuple[str, ...] = ()
    priority: str | None = None
    specialty: str | None = None


def referral_facts(body: Json, etag: str | None = None) -> ReferralFacts:
    """A ReferralRequest (A005, A011, A012, A021). The ETag wins over meta.versionId."""
    version = version_from_etag(etag) or str(body.get("meta", {}).get("versionId", ""))
    state = comm_org = appointment_id = None
    for ext in body.get("extension", []):
        url = ext.get("url")
        if url == f"{_SD}Extension-eRS-ReferralState-1":
            for sub in ext.get("extension", []):
                if sub.get("url") == "state":
                    state = sub.get("valueCoding", {}).get("code")
        elif url == f"{_SD}Extension-eRS-Commissioning-Rule-Org-1":
            ident = ext.get("valueIdentifier", {})
            if ident.get("system") == ODS_ORGANIZATION_CODE:
                comm_org = ident.get("value")
        elif url == f"{_SD}Extension-eRS-Appointment-Reference-1":
            reference = ext.get("valueReference", {}).get("reference", "")
            appointment_id = reference.rsplit("/", 1)[-1] or None
    appointment = None
    urls: list[str] = []
    services: list[str] = []
    priority = criteria_specialty = None
    for res in body.get("contained", []):
        kind = res.get("resourceType")
        if kind == "Appointment":
            appointment = appointment_facts(res)
        elif kind == "List":
            services.extend(
                str(e["item"]["identifier"]["value"])
                for e in res.get("entry", [])
                if e.get("item", {}).get("identifier", {}).get("system") == ERS_SERVICE
            )
        elif kind == "Parameters":  # the search criteria the referral was made with
            codes = {
                p.get("name"): p.get("valueCoding", {}).get("code")
                for p in res.get("parameter", [])
            }
            priority = codes.get("priority") or priority
            criteria_specialty = codes.get("specialty") or criteria_specialty
        elif kind == "DocumentReference":
            urls.extend(
                c["attachment"]["url"]
                for c in res.get("content", [])
                if "url" in c.get("attachment", {})
            )
    if appointment is not None and appointment_id:
        appointment = replace(appointment, appointment_id=appointment_id)
    return ReferralFacts(
        ubrn=str(body.get("id", "")),
        version=version,
        state=state,
        commissioning_rule_org=comm_org,
        appointment=appointment,
        attachment_urls=tuple(urls),
        nhs_number=body.get("subject", {}).get("identifier", {}).get("value"),
        service_ids=tuple(services),
        priority=priority,
        # e-RS shows the top-level specialty only once there is an appointment.
        specialty=next(iter(_codes(body.get("specialty", {}))), None) or criteria_specialty,
    )


def version_from_etag(etag: str | None) -> str | None:
    if not etag:
        return None
    match = _ETAG.match(etag.strip())
    return match.group("version") if match else None


def parse_instant(value: str) -> datetime:
    return datetime.fromisoformat(value.replace("Z", "+00:00"))


@dataclass(frozen=True, slots=True)
class FreeSlot:
    slot_id: str
    start: str
    end: str
    clinician: str | None = None
    """SDS user id of the slot's named clinician, from its Schedule's actors (A015)."""

    @property
    def starts_at(self) -> datetime:
        return parse_instant(self.start)


def slots_from_bundle(body: Json) -> tuple[list[FreeSlot], int]:
    """A015's searchset: the free slots on this page, and the total e-RS says there are."""
    resources = [entry.get("resource", {}) for entry in body.get("entry", [])]
    clinicians = {
        f"Schedule/{res.get('id')}": actor["identifier"]["value"]
        for res in resources
        if res.get("resourceType") == "Schedule"
        for actor in res.get("actor", [])
        if actor.get("identifier", {}).get("system") == SDS_USER_ID
    }
    slots = [
        FreeSlot(
            res["id"],
            res["start"],
            res["end"],
            clinicians.get(res.get("schedule", {}).get("reference", "")),
        )
        for res in resources
        if res.get("resourceType") == "Slot"
        and res.get("status", "free") == "free"
        and {"id", "start", "end"} <= res.keys()
    ]
    return slots, int(body.get("total", len(slots)))


@dataclass(frozen=True, slots=True)
class AppointmentFacts:
    appointment_id: str
    status: str
    reason: str | None
    created: datetime | None
    start: str | None
    end: str | None
    referral_version: str | None
    slot_id: str | None = None  # Appointment.slot: the booked slot, as A005 also shows it


def appointment_facts(body: Json) -> AppointmentFacts:
    """A016's Appointment. Its incomingReferral carries the referral's NEW version."""
    reason = next(
        (code for r in body.get("reason", []) for code in _codes(r)),
        None,
    )
    version = None
    for ref in body.get("incomingReferral", []):
        match = _HISTORY.search(ref.get("reference", ""))
        if match:
            version = match.group("version")
    created = body.get("created")
    slot = next(
        (
            ref["reference"].removeprefix("Slot/")
            for ref in body.get("slot", [])
            if isinstance(ref, dict) and str(ref.get("reference", "")).startswith("Slot/")
        ),
        None,
    )
    return AppointmentFacts(
        appointment_id=str(body.get("id", "")),
        status=str(body.get("status", "")),
        reason=reason,
        created=parse_instant(created) if created else None,
        start=body.get("start"),
        end=body.get("end"),
        referral_version=version,
        slot_id=slot,
    )


@dataclass(frozen=True, slots=True)
class ContactDays:
    defer_to_provider: int | None
    triage: int | None


def priority_contact_days(code_system: Json) -> dict[str, ContactDays]:
    """A004 PRIORITY: working days within which a provider or triage service makes contact."""
    table: dict[str, ContactDays] = {}
    for concept in code_system.get("concept", []):
        props = {p.get("code"): p.get("valueInteger") for p in concept.get("property", [])}
        table[concept["code"]] = ContactDays(
            props.get("deferToProviderContactDays"), props.get("triageContactDays")
        )
    return table


def operation_outcome(body: Any) -> tuple[str | None, str]:
    """The e-RS error code and diagnostics of an OperationOutcome, when the body is one."""
    if not isinstance(body, dict) or body.get("resourceType") != "OperationOutcome":
        return None, ""
    for issue in body.get("issue", []):
        code = next(_codes(issue.get("details", {})), None) or issue.get("code")
        return code, str(issue.get("diagnostics", ""))
    return None, ""
