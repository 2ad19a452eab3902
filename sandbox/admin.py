"""The sandbox's own admin API under /_sandbox/ (plain JSON, no auth) for tests and operators."""

from __future__ import annotations

import binascii
from datetime import datetime
from typing import Any

import orjson
from aiohttp import web

from sandbox.catalogue import (
    ADVICE_REQUEST,
    APPOINTMENT_REQUEST,
    DIRECTLY_BOOKABLE,
    INDIRECTLY_BOOKABLE,
    TRIAGE_REQUEST,
    Service,
    Slot,
)
from sandbox.context import state
from sandbox.faults import Fault, FaultSpecError
from sandbox.fhir import instant, parse_instant
from sandbox.state import Binary, Referral, SandboxState

ADMIN_PATH = "/_sandbox"


def json_response(body: Any, status: int = 200) -> web.Response:
    return web.Response(status=status, body=orjson.dumps(body), content_type="application/json")


def _error(status: int, message: str) -> web.Response:
    return json_response({"error": message}, status)


def _binary_summary(binary: Binary) -> dict[str, Any]:
    return {
        "binary_id": binary.id,
        "file_name": binary.file_name,
        "content_type": binary.content_type,
        "size": binary.size,
        "sha256": binary.sha256,
        "referral_id": binary.referral_id,
    }


def _slot_summary(slot: Slot) -> dict[str, Any]:
    return {
        "id": slot.id,
        "start": instant(slot.start),
        "end": instant(slot.end),
        "status": slot.status,
        "clinician": slot.clinician,
    }


def referral_summary(store: SandboxState, referral: Referral) -> dict[str, Any]:
    attachments = []
    for attachment in referral.attachments:
        binary = store.binaries.get(attachment.binary_id)
        attachments.append(
            {
                "binary_id": attachment.binary_id,
                "file_name": binary.file_name if binary else None,
                "content_type": binary.content_type if binary else None,
                "size": binary.size if binary else None,
                "sha256": binary.sha256 if binary else None,
            }
        )
    appointment = store.appointments.get(referral.appointment_id or "")
    return {
        "ubrn": referral.ubrn,
        "version": referral.version,
        "state": referral.state,
        "nhs_number": referral.nhs_number,
        "ods_code": referral.ods_code,
        "service_ids": list(referral.service_ids),
        "attachments": attachments,
        "appointment": None
        if appointment is None
        else {
            "id": appointment.id,
            "service_id": appointment.service_id,
            "slot_id": appointment.slot_id,
            "start": instant(appointment.start) if appointment.start else None,
            "end": instant(appointment.end) if appointment.end else None,
            "status": appointment.status,
            "reason": appointment.reason,
            "comment": appointment.comment,
        },
        "created_via": referral.created_via,
        "request_id": referral.request_id,
        "correlation_id": referral.correlation_id,
    }


async def health(request: web.Request) -> web.Response:
    return json_response({"status": "ok"})


async def reset(request: web.Request) -> web.Response:
    state(request).reset()
    return json_response({"status": "reset"})


async def list_referrals(request: web.Request) -> web.Response:
    store = state(request)
    return json_response([referral_summary(store, r) for r in store.referrals.values()])


async def get_referral(request: web.Request) -> web.Response:
    store = state(request)
    referral = store.referrals.get(request.match_info["ubrn"])
    if referral is None:
        return _error(404, "no such referral")
    return json_response(referral_summary(store, referral))


async def get_slots(request: web.Request) -> web.Response:
    store = state(request)
    service_id = request.match_info["service_id"]
    if store.catalogue.get(service_id) is None:
        return _error(404, "no such service")
    slots = sorted(store.slots.get(service_id, []), key=lambda s: (s.start, s.id))
    return json_response([_slot_summary(slot) for slot in slots])


def _instant_field(item: Any, key: str) -> datetime | None:
    value = item.get(key) if isinstance(item, dict) else None
    return parse_instant(value) if isinstance(value, str) else None


def _slot_times(raw: Any) -> list[tuple[datetime, datetime, str | None]]:
    items = raw.get("slots") if isinstance(raw, dict) else None
    if not isinstance(items, list):
        raise ValueError('body must be {"slots": [{"start": iso, "end": iso}, ...]}')
    times: list[tuple[datetime, datetime, str | None]] = []
    for index, item in enumerate(items):
        start = _instant_field(item, "start")
        end = _instant_field(item, "end")
        if start is None or end is None or end <= start:
            raise ValueError(f"slots[{index}] needs timezone-aware ISO start < end")
        clinician = item.get("clinician")
        times.append((start, end, clinician if isinstance(clinician, str) else None))
    return times


async def put_slots(request: web.Request) -> web.Response:
    store = state(request)
    service_id = request.match_info["service_id"]
    if store.catalogue.get(service_id) is None:
        return _error(404, "no such service")
    try:
        times = _slot_times(orjson.loads(await request.read()))
    except (orjson.JSONDecodeError, ValueError) as exc:
        return _error(400, str(exc))
    slots = store.replace_slots(service_id, times)
    return json_response([_slot_summary(slot) for slot in slots])


async def list_binaries(request: web.Request) -> web.Response:
    return json_response([_binary_summary(b) for b in state(request).binaries.values()])


async def list_requests(request: web.Request) -> web.Response:
    return json_response(
        [
            {
                "endpoint": entry.endpoint,
                "method": entry.method,
                "path": entry.path,
                "status": entry.status,
                "correlation_id": entry.correlation_id,
                "request_id": entry.request_id,
                "business_function": entry.business_function,
                "ods_code": entry.ods_code,
                "at": entry.at,
            }
            for entry in state(request).request_log
        ]
    )


async def add_fault(request: web.Request) -> web.Response:
    try:
        fault = Fault.from_json(orjson.loads(await request.read()))
    except (orjson.JSONDecodeError, FaultSpecError) as exc:
        return _error(400, str(exc))
    state(request).faults.add(fault)
    return json_response(fault.to_json(), 201)


async def list_faults(request: web.Request) -> web.Response:
    return json_response([fault.to_json() for fault in state(request).faults.pending()])


async def clear_faults(request: web.Request) -> web.Response:
    state(request).faults.clear()
    return json_response({"status": "cleared"})


async def get_budget(request: web.Request) -> web.Response:
    budget = state(request).budget
    return json_response({"per_second": budget.per_second, "refused": budget.refused})


async def put_budget(request: web.Request) -> web.Response:
    """The application-wide rate limit: {"per_second": N} (beyond it, 429), or null: off."""
    raw = await request.json()
    per_second = raw.get("per_second") if isinstance(raw, dict) else None
    if per_second is not None and (
        isinstance(per_second, bool) or not isinstance(per_second, int) or per_second < 1
    ):
        return _error(400, "per_second must be a positive integer or null")
    state(request).budget.set(per_second)
    return await get_budget(request)


_REFERRAL_STATES = ("NOT_BOOKED", "BOOKED", "DEFERRED_TO_PROVIDER", "AWAITING_TRIAGE")
_BOOKABLE_TYPES = (DIRECTLY_BOOKABLE, INDIRECTLY_BOOKABLE)
_FLOW_TYPES = (APPOINTMENT_REQUEST, TRIAGE_REQUEST, ADVICE_REQUEST)


async def _json_object(request: web.Request) -> dict[str, Any]:
    try:
        raw = orjson.loads(await request.read())
    except orjson.JSONDecodeError as exc:
        raise ValueError(f"body is not JSON: {exc}") from None
    if not isinstance(raw, dict):
        raise ValueError("body must be a JSON object")
    return raw


def _check_service(raw: dict[str, Any]) -> None:
    if raw.get("bookable_type") not in _BOOKABLE_TYPES:
        raise ValueError(f"bookable_type must be one of {list(_BOOKABLE_TYPES)}")
    flows = raw.get("request_flow_types")
    if not isinstance(flows, list) or not flows or any(f not in _FLOW_TYPES for f in flows):
        raise ValueError(f"request_flow_types must be a non-empty list of {list(_FLOW_TYPES)}")


async def put_service(request: web.Request) -> web.Response:
    """Add or replace a service (data/catalogue.json's form); its slots are seeded afresh."""
    store = state(request)
    try:
        raw = await _json_object(request)
        raw["id"] = request.match_info["service_id"]
        _check_service(raw)
        service = store.add_service(raw)
    except ValueError as exc:
        return _error(400, str(exc))
    except (KeyError, TypeError) as exc:
        return _error(400, f"service needs {exc}")
    return json_response(_service_summary(service), 201)


def _service_summary(service: Service) -> dict[str, Any]:
    return {
        "id": service.id,
        "name": service.name,
        "specialty": service.specialty,
        "clinic_types": list(service.clinic_types),
        "clinical_terms": list(service.clinical_terms),
        "clinicians": list(service.clinicians),
        "bookable_type": service.bookable_type,
        "request_flow_types": list(service.request_flow_types),
        "location": {"ods": service.location_ods, "display": service.location_display},
        "indicative_wait_days": service.indicative_wait_days,
    }


async def list_services(request: web.Request) -> web.Response:
    services = state(request).catalogue.services.values()
    return json_response([_service_summary(s) for s in services])


async def put_referral(request: web.Request) -> web.Response:
    """A referral with a chosen UBRN, version and state (data/seed.json's form)."""
    store = state(request)
    try:
        raw = await _json_object(request)
        raw["ubrn"] = request.match_info["ubrn"]
        if raw.get("state") not in _REFERRAL_STATES:
            raise ValueError(f"state must be one of {list(_REFERRAL_STATES)}")
        version = raw.get("version")
        if isinstance(version, bool) or not isinstance(version, int) or version < 1:
            raise ValueError("version must be a positive integer")
        unknown = [s for s in raw.get("service_ids", ()) if store.catalogue.get(str(s)) is None]
        if unknown:
            raise ValueError(f"unknown service_ids {unknown}: PUT /_sandbox/services first")
        missing = [b for b in raw.get("letter_binary_ids", ()) if str(b) not in store.binaries]
        if missing:
            raise ValueError(f"unknown letter_binary_ids {missing}: POST /_sandbox/binaries first")
        referral = store.add_referral(raw)
    except ValueError as exc:
        return _error(400, str(exc))
    except (KeyError, TypeError) as exc:
        return _error(400, f"referral needs {exc}")
    return json_response(referral_summary(store, referral), 201)


async def add_binary(request: web.Request) -> web.Response:
    """A file as if uploaded by A020: {id, file_name, content_type, referral_id, content}."""
    try:
        binary = state(request).add_binary(await _json_object(request))
    except (ValueError, binascii.Error) as exc:
        return _error(400, str(exc))
    except (KeyError, TypeError) as exc:
        return _error(400, f"binary needs {exc}")
    return json_response(_binary_summary(binary), 201)


def add_admin_routes(app: web.Application) -> None:
    router = app.router
    router.add_get(f"{ADMIN_PATH}/health", health)
    router.add_post(f"{ADMIN_PATH}/reset", reset)
    router.add_get(f"{ADMIN_PATH}/referrals", list_referrals)
    router.add_get(f"{ADMIN_PATH}/referrals/{{ubrn}}", get_referral)
    router.add_put(f"{ADMIN_PATH}/referrals/{{ubrn}}", put_referral)
    router.add_get(f"{ADMIN_PATH}/services", list_services)
    router.add_put(f"{ADMIN_PATH}/services/{{service_id}}", put_service)
    router.add_post(f"{ADMIN_PATH}/binaries", add_binary)
    router.add_get(f"{ADMIN_PATH}/slots/{{service_id}}", get_slots)
    router.add_put(f"{ADMIN_PATH}/slots/{{service_id}}", put_slots)
    router.add_get(f"{ADMIN_PATH}/binaries", list_binaries)
    router.add_get(f"{ADMIN_PATH}/requests", list_requests)
    router.add_post(f"{ADMIN_PATH}/faults", add_fault)
    router.add_get(f"{ADMIN_PATH}/faults", list_faults)
    router.add_delete(f"{ADMIN_PATH}/faults", clear_faults)
    router.add_get(f"{ADMIN_PATH}/budget", get_budget)
    router.add_put(f"{ADMIN_PATH}/budget", put_budget)
