"""Referral endpoints: A011 create, A021 create and send for triage, A005 retrieve, A012 maintain
referral letter."""

from __future__ import annotations

import re
import uuid
from datetime import datetime, timedelta
from typing import Any

from aiohttp import web

from sandbox.access import ON_BEHALF_OF_HEADER
from sandbox.catalogue import TRIAGE_REQUEST
from sandbox.context import caller, own_base_url, read_fhir_json, state
from sandbox.fhir import (
    SERVICE_SYSTEM,
    Json,
    dig,
    instant,
    parameter,
    parameters,
    parse_instant,
)
from sandbox.outcomes import ErsError, fhir_response, unprocessable
from sandbox.resources import referral_resource
from sandbox.search import parse_search_criteria, patient_nhs_number, require_parameters_resource
from sandbox.state import Appointment, Attachment, Referral, SandboxState

MAX_SHORTLIST = 20
PATHWAY_START_MAX_AGE = timedelta(days=365)
_IF_MATCH = re.compile(r'^W/"(\d+)"$')
_BINARY_URL = re.compile(r"(?:^|/)Binary/([A-Za-z0-9-]+)$")


def etag(version: int) -> dict[str, str]:
    return {"ETag": f'W/"{version}"'}


def find_referral(store: SandboxState, ubrn: str) -> Referral:
    referral = store.referrals.get(ubrn)
    if referral is None:
        raise ErsError(404, "REFERENCE_NOT_FOUND", f"ReferralRequest ({ubrn}) not found.")
    return referral


def _shortlist_search_criteria(shortlist: Json) -> Any:
    contained = shortlist.get("contained")
    if not isinstance(contained, list):
        return None
    wanted = dig(shortlist, "extension", 0, "valueReference", "reference")
    candidates = [
        c for c in contained if isinstance(c, dict) and c.get("resourceType") == "Parameters"
    ]
    for candidate in candidates:
        if isinstance(wanted, str) and wanted == f"#{candidate.get('id')}":
            return candidate
    return candidates[0] if candidates else None


def _shortlist_service_ids(shortlist: Json) -> list[str]:
    entries = shortlist.get("entry")
    if not isinstance(entries, list) or not entries:
        raise unprocessable("MISSING_VALUE", "'shortlist' must contain at least one service.")
    if len(entries) > MAX_SHORTLIST:
        raise unprocessable(
            "TOO_MANY_ITEMS",
            f"'shortlist' contains {len(entries)} services; at most {MAX_SHORTLIST} are allowed.",
        )
    service_ids: list[str] = []
    for index, entry in enumerate(entries):
        identifier = dig(entry, "item", "identifier")
        value = dig(identifier, "value")
        if not isinstance(value, str) or dig(identifier, "system") != SERVICE_SYSTEM:
            raise unprocessable(
                "MISSING_VALUE", f"'shortlist/entry[{index}]/item/identifier' is required."
            )
        service_ids.append(value)
    return service_ids


def _pathway_start(body: Json, now: datetime) -> str | None:
    found = parameter(body, "eReferralPathwayStart")
    if found is None:
        return None
    text = found.get("valueInstant")
    moment = parse_instant(text) if isinstance(text, str) else None
    if moment is None:
        raise unprocessable("INVALID_VALUE", "'eReferralPathwayStart' must be a FHIR instant.")
    if moment > now:
        raise unprocessable("INVALID_VALUE", "'eReferralPathwayStart' cannot be in the future.")
    if moment < now - PATHWAY_START_MAX_AGE:
        raise unprocessable(
            "INVALID_VALUE", "'eReferralPathwayStart' cannot be more than 365 days ago."
        )
    assert isinstance(text, str)
    return text


async def create_referral(request: web.Request) -> web.Response:
    """A011: POST /STU3/ReferralRequest/$ers.createReferral"""
    return await _create(request, send_for_triage=False)


async def create_referral_and_send_for_triage(request: web.Request) -> web.Response:
    """A021 (deprecated): POST /STU3/ReferralRequest/$ers.createReferralAndSendForTriage"""
    return await _create(request, send_for_triage=True)


async def _create(request: web.Request, *, send_for_triage: bool) -> web.Response:
    body = require_parameters_resource(await read_fhir_json(request))
    store = state(request)
    base_url = own_base_url(request)
    who = caller(request)
    now = store.clock()

    nhs_number = patient_nhs_number(body)
    shortlist = dig(parameter(body, "shortlist"), "resource")
    if not isinstance(shortlist, dict):
        raise unprocessable("MISSING_VALUE", "'shortlist' parameter is required.")
    for required in ("intentionToAddReferralLetter", "firstReminderLetterFollowUpDays"):
        if parameter(body, required) is None:
            raise unprocessable("MISSING_VALUE", f"'{required}' parameter is required.")
    criteria = parse_search_criteria(
        _shortlist_search_criteria(shortlist), base_url, "shortlist/searchCriteria"
    )
    pathway_start = _pathway_start(body, now)
    service_ids = _shortlist_service_ids(shortlist)

    seen: set[str] = set()
    for service_id in service_ids:
        if service_id in seen:
            raise unprocessable(
                "DUPLICATE_SERVICE",
                f"'Shortlist/Service Id' ({service_id}) cannot be added to a shortlist "
                "more than once.",
            )
        seen.add(service_id)
    results = store.search_results.get((who.ods_code or "", nhs_number), frozenset())
    for service_id in service_ids:
        if service_id not in results or store.catalogue.get(service_id) is None:
            raise unprocessable(
                "SHORTLISTED_SERVICE_NOT_IN_RESULTS",
                f"'Shortlist/Service Id' ({service_id}) was not in the latest service search "
                "results for this patient.",
            )
    services = [store.catalogue.services[service_id] for service_id in service_ids]
    if send_for_triage and (len(services) != 1 or not services[0].supports(TRIAGE_REQUEST)):
        raise unprocessable(
            "INAPPROPRIATE_VALUE",
            "The shortlist must contain exactly one service supporting the triage request flow.",
        )

    clinician = dig(parameter(body, "referringClinician"), "valueIdentifier", "value")
    intention = dig(parameter(body, "intentionToAddReferralLetter"), "valueCoding", "code")
    reminder = dig(parameter(body, "firstReminderLetterFollowUpDays"), "valueUnsignedInt")
    acted_for = request.headers.get(ON_BEHALF_OF_HEADER)
    referral = Referral(
        ubrn=store.new_ubrn(),
        version=1,
        state="NOT_BOOKED",
        nhs_number=nhs_number,
        ods_code=who.ods_code or "",
        priority=criteria.priority,
        specialty=criteria.specialty or services[0].specialty,
        search_criteria=criteria.stored_parameters,
        service_ids=service_ids,
        created_via="A021" if send_for_triage else "A011",
        request_id=f"r.{uuid.uuid4()}",
        created=now,
        correlation_id=who.correlation_id,
        pathway_start=pathway_start,
        referring_clinician=clinician if isinstance(clinician, str) else None,
        intends_letter=intention == "NEED_TO_ADD_LATER",
        referrer=clinician if isinstance(clinician, str) else acted_for,
        first_reminder_days=reminder if isinstance(reminder, int) else 0,
    )
    if send_for_triage:
        # The RTT clock starts when the provider receives the referral: e-RS derives the
        # pathway start as the moment it is sent for triage (A021 takes no pathway start).
        referral.pathway_start = referral.pathway_start or instant(now)
        appointment = Appointment(
            id=store.new_appointment_id(),
            ubrn=referral.ubrn,
            service_id=services[0].id,
            status="proposed",
            reason="TRIAGE",
            slot_id=None,
            start=None,
            end=None,
            comment=None,
            created=now,
            referral_version=referral.version,
        )
        store.appointments[appointment.id] = appointment
        referral.appointment_id = appointment.id
        referral.state = "AWAITING_TRIAGE"
        referral.state_reason = "TRIAGE"
    store.referrals[referral.ubrn] = referral
    return fhir_response(referral_resource(store, referral, base_url), 201, etag(referral.version))


async def retrieve_referral(request: web.Request) -> web.Response:
    """A005: GET /STU3/ReferralRequest/{ubrn} (and .../_history/{version})"""
    store = state(request)
    referral = find_referral(store, request.match_info["ubrn"])
    version = request.match_info.get("version")
    if version is not None and version != str(referral.version):
        raise ErsError(
            404,
            "HISTORY_NOT_SUPPORTED",
            f"Only the current version ({referral.version}) of the referral can be retrieved.",
        )
    return fhir_response(
        referral_resource(store, referral, own_base_url(request)), 200, etag(referral.version)
    )


def _requested_letters(body: Any) -> list[tuple[str, str | None]]:
    files = parameters(body, "referralLetterFile")
    if not files:
        raise unprocessable("MISSING_VALUE", "At least one 'referralLetterFile' is required.")
    requested: list[tuple[str, str | None]] = []
    for index, file in enumerate(files):
        url = dig(file, "resource", "content", 0, "attachment", "url")
        if not isinstance(url, str):
            raise unprocessable(
                "MISSING_VALUE",
                f"'referralLetterFile[{index}]/content/attachment/url' is required.",
            )
        match = _BINARY_URL.search(url)
        if match is None:
            raise unprocessable("INVALID_VALUE", f"'{url}' is not a Binary reference.")
        description = dig(file, "resource", "description")
        requested.append((match.group(1), description if isinstance(description, str) else None))
    return requested


async def maintain_referral_letter(request: web.Request) -> web.Response:
    """A012: POST /STU3/ReferralRequest/{ubrn}/$ers.maintainReferralLetter"""
    if_match = request.headers.get("If-Match")
    if if_match is None:
        raise ErsError(412, "MISSING_HEADER", "Missing mandatory header 'If-Match'.")
    matched = _IF_MATCH.match(if_match.strip())
    if matched is None:
        raise ErsError(412, "INVALID_VALUE", f"'If-Match' ({if_match}) must look like W/\"n\".")
    body = await read_fhir_json(request)
    store = state(request)
    who = caller(request)
    ubrn = request.match_info["ubrn"]
    referral = find_referral(store, ubrn)
    if int(matched.group(1)) != referral.version:
        raise ErsError(
            409,
            "CONFLICT",
            f"Version {matched.group(1)} does not match the current version ({referral.version}).",
        )

    requested = _requested_letters(body)
    names: list[str] = []
    for binary_id, _ in requested:
        binary = store.binaries.get(binary_id)
        if binary is None or binary.referral_id != ubrn:
            raise unprocessable(
                "INAPPROPRIATE_VALUE",
                f"Binary/{binary_id} was not uploaded for referral {ubrn} (NHSD-eRS-Referral-ID).",
            )
        names.append(binary.file_name)
    requested_ids = [binary_id for binary_id, _ in requested]
    if len(set(requested_ids)) != len(requested_ids) or len(set(names)) != len(names):
        raise unprocessable("DUPLICATE_FILENAME", "Two referral letter files share a file name.")
    linked = {attachment.binary_id: attachment for attachment in referral.attachments}
    if set(requested_ids) == set(linked) and all(
        description is None or description == linked[binary_id].description
        for binary_id, description in requested
    ):
        # Same files and no new description: nothing for e-RS to record.
        raise unprocessable(
            "NO_CHANGES_DETECTED", "The referral letter files and their descriptions are unchanged."
        )
    linked_names = {
        store.binaries[binary_id].file_name for binary_id in linked if binary_id in store.binaries
    }
    for binary_id, name in zip(requested_ids, names, strict=True):
        if binary_id not in linked and name in linked_names:
            raise unprocessable(
                "DUPLICATE_FILENAME", f"A file named '{name}' is already linked to the referral."
            )

    now = store.clock()
    attachments: list[Attachment] = []
    for (binary_id, description), name in zip(requested, names, strict=True):
        existing = linked.get(binary_id)
        if existing is not None:
            if description is not None:
                existing.description = description
            attachments.append(existing)
        else:
            attachments.append(
                Attachment(
                    store.new_attachment_id(), binary_id, description or name, now, who.ods_code
                )
            )
    referral.attachments = attachments
    if referral.clinical_info_first_submitted is None:
        referral.clinical_info_first_submitted = now
    else:
        referral.clinical_info_last_updated = now
    referral.version += 1
    return fhir_response(
        referral_resource(store, referral, own_base_url(request)), 200, etag(referral.version)
    )
