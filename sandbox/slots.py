"""A015 retrieve appointment slots: a paged searchset Bundle of a service's free slots."""

from __future__ import annotations

import math
import uuid
from urllib.parse import urlencode

from aiohttp import web

from sandbox.catalogue import Slot
from sandbox.context import own_base_url, state
from sandbox.fhir import SDS_USER_SYSTEM, SERVICE_SYSTEM, Json, instant
from sandbox.outcomes import ErsError, fhir_response

COMM_RULE_ORG_HEADER = "NHSD-eRS-Comm-Rule-Org"
SERVICE_PARAM = "schedule.actor:HealthcareService"
PRACTITIONER_PARAM = "schedule.actor:Practitioner"
PRIORITIES = ("ROUTINE", "URGENT", "TWO_WEEK_WAIT")
MAX_PAGE_SIZE = 100


def _bad_request(code: str, diagnostics: str) -> ErsError:
    return ErsError(400, code, diagnostics)


def _required(request: web.Request, name: str) -> str:
    value = request.query.get(name)
    if value is None or value == "":
        raise _bad_request("MISSING_PARAMETER", f"Missing mandatory search parameter '{name}'.")
    return value


def _positive_int(value: str, label: str, maximum: int | None = None) -> int:
    try:
        number = int(value)
    except ValueError:
        number = 0
    if number < 1 or (maximum is not None and number > maximum):
        raise _bad_request("INVALID_VALUE", f"'{label}' ({value}) is invalid.")
    return number


def _self_url(base_url: str, query: list[tuple[str, str]]) -> str:
    return f"{base_url}/STU3/Slot?{urlencode(query)}"


def _slot_entry(base_url: str, slot: Slot) -> Json:
    return {
        "fullUrl": f"{base_url}/STU3/Slot/{slot.id}",
        "resource": {
            "id": slot.id,
            "meta": {
                "profile": ["https://fhir.hl7.org.uk/STU3/StructureDefinition/CareConnect-Slot-1"]
            },
            "resourceType": "Slot",
            "identifier": [
                {"system": "https://fhir.nhs.uk/Id/alternative-slot", "value": f"USRN-{slot.id}"}
            ],
            "schedule": {"reference": f"Schedule/{slot.schedule_id}"},
            "status": slot.status,
            "start": instant(slot.start),
            "end": instant(slot.end),
        },
        "search": {"mode": "match"},
    }


def _schedule_entry(base_url: str, slot: Slot) -> Json:
    actors: list[Json] = [{"identifier": {"system": SERVICE_SYSTEM, "value": slot.service_id}}]
    if slot.clinician:
        actors.append({"identifier": {"system": SDS_USER_SYSTEM, "value": slot.clinician}})
    return {
        "fullUrl": f"{base_url}/STU3/Schedule/{slot.schedule_id}",
        "resource": {
            "id": slot.schedule_id,
            "meta": {
                "profile": [
                    "https://fhir.hl7.org.uk/STU3/StructureDefinition/CareConnect-Schedule-1"
                ]
            },
            "resourceType": "Schedule",
            "identifier": [
                {"system": "https://fhir.nhs.uk/Id/ers-schedule", "value": slot.schedule_id}
            ],
            "actor": actors,
        },
        "search": {"mode": "include"},
    }


async def retrieve_slots(request: web.Request) -> web.Response:
    """A015: GET /STU3/Slot"""
    if not request.headers.get(COMM_RULE_ORG_HEADER):
        raise _bad_request("MISSING_HEADER", f"Missing mandatory header '{COMM_RULE_ORG_HEADER}'.")
    service_id = _required(request, SERVICE_PARAM)
    priority = _required(request, "appointmentType")
    page_size_text = _required(request, "_count")
    status = _required(request, "status")
    page_text = _required(request, "page")
    if priority not in PRIORITIES:
        raise _bad_request("INVALID_CODE", f"'appointmentType' ({priority}) is not a valid code.")
    if status != "free":
        raise _bad_request("INVALID_VALUE", f"'status' ({status}) must be 'free'.")
    page_size = _positive_int(page_size_text, "Page Size", MAX_PAGE_SIZE)
    page = _positive_int(page_text, "Page Number")
    practitioner = request.query.get(PRACTITIONER_PARAM)

    store = state(request)
    if store.catalogue.get(service_id) is None:
        raise _bad_request("REFERENCE_NOT_FOUND", f"Service ({service_id}) not found.")
    free = store.bookable_slots(service_id, store.clock())
    if practitioner:
        free = [slot for slot in free if slot.clinician == practitioner]
    last_page = max(1, math.ceil(len(free) / page_size))
    if page > last_page:
        raise _bad_request("INVALID_VALUE", f"'Page Number' ({page}) is invalid.")
    on_page = free[(page - 1) * page_size : page * page_size]

    base_url = own_base_url(request)

    def link(relation: str, number: int) -> Json:
        query = [(PRACTITIONER_PARAM, practitioner)] if practitioner else []
        query += [
            (SERVICE_PARAM, service_id),
            ("appointmentType", priority),
            ("_count", str(page_size)),
            ("status", "free"),
            ("_include", "Slot:schedule"),
            ("page", str(number)),
        ]
        return {"relation": relation, "url": _self_url(base_url, query)}

    links = [link("self", page)]
    if page > 1:
        links.append(link("previous", page - 1))
    if page < last_page:
        links.append(link("next", page + 1))

    entries = [_slot_entry(base_url, slot) for slot in on_page]
    # e-RS returns each slot's Schedule whether or not _include=Slot:schedule was asked for.
    schedules: dict[str, Slot] = {}
    for slot in on_page:
        schedules.setdefault(slot.schedule_id, slot)
    entries += [_schedule_entry(base_url, slot) for slot in schedules.values()]
    bundle: Json = {
        "id": str(uuid.uuid4()),
        "meta": {
            "lastUpdated": instant(store.clock()),
            "profile": ["http://hl7.org/fhir/STU3/StructureDefinition/Bundle"],
        },
        "resourceType": "Bundle",
        "type": "searchset",
        "total": len(free),
        "link": links,
        "entry": entries,
    }
    return fhir_response(bundle)
