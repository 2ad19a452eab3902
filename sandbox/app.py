"""The sandbox web application: e-RS routes under /referrals/FHIR, the cross-cutting e-RS
behaviour (headers, request ids, injected faults, request log) and the admin API."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import Awaitable, Callable
from datetime import datetime

from aiohttp import web

from sandbox import (
    admin,
    appointments,
    binaries,
    letters,
    oauth,
    reference,
    referrals,
    search,
    slots,
    worklists,
)
from sandbox.access import (
    BUSINESS_FUNCTION_HEADER,
    ENDPOINTS,
    ODS_HEADER,
    Endpoint,
    check_headers,
)
from sandbox.context import CALLER, SANDBOX, Caller, Sandbox, state
from sandbox.fhir import BASE_PATH
from sandbox.outcomes import STATUS_DEFAULT_CODE, ErsError, PlainError
from sandbox.state import LogEntry, SandboxState, utc_now

log = logging.getLogger("sandbox")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

# Large enough for any JSON body e-RS accepts; A020 uploads are streamed and capped separately.
CLIENT_MAX_SIZE = 8 * 1024 * 1024

ROUTES: list[tuple[str, str, Handler, str]] = [
    ("GET", "/STU3/CodeSystem/{codeSystemType}", reference.retrieve_code_system, "A004"),
    ("GET", "/STU3/ReferralRequest/{ubrn}", referrals.retrieve_referral, "A005"),
    (
        "GET",
        "/STU3/ReferralRequest/{ubrn}/_history/{version}",
        referrals.retrieve_referral,
        "A005",
    ),
    (
        "POST",
        "/STU3/HealthcareService/$ers.searchHealthcareServicesForPatient",
        search.search_healthcare_services,
        "A010",
    ),
    ("POST", "/STU3/ReferralRequest/$ers.fetchworklist", worklists.fetch_worklist, "A008"),
    ("POST", "/STU3/ReferralRequest/$ers.createReferral", referrals.create_referral, "A011"),
    (
        "POST",
        "/STU3/ReferralRequest/$ers.createReferralAndSendForTriage",
        referrals.create_referral_and_send_for_triage,
        "A021",
    ),
    (
        "POST",
        "/STU3/ReferralRequest/{ubrn}/$ers.maintainReferralLetter",
        referrals.maintain_referral_letter,
        "A012",
    ),
    (
        "POST",
        "/STU3/ReferralRequest/{ubrn}/$ers.generatePatientLetter",
        letters.generate_patient_letter,
        "A019",
    ),
    ("GET", "/STU3/Slot", slots.retrieve_slots, "A015"),
    ("POST", "/STU3/Appointment", appointments.book_or_defer, "A016"),
    ("POST", "/STU3/Binary", binaries.upload_file, "A020"),
]

_ENDPOINT_OF_HANDLER: dict[Handler, Endpoint] = {
    handler: ENDPOINTS[endpoint_id] for _, _, handler, endpoint_id in ROUTES
}


def _new_request_id() -> str:
    # Same form as the specification's example X-Request-ID.
    return f"{uuid.uuid4()}-1"


async def _not_found(request: web.Request) -> web.StreamResponse:
    raise ErsError(404, "REFERENCE_NOT_FOUND", f"No e-RS resource at {request.path}.")


async def _answer(
    endpoint: Endpoint | None, request: web.Request, handler: Handler
) -> web.StreamResponse:
    if endpoint is None:
        return await handler(request)
    check_headers(endpoint, request)
    oauth.check_token(endpoint, request, request.headers.get("Authorization", "")[7:])
    wait = state(request).budget.admit()
    if wait is not None:
        raise ErsError(
            429,
            "TOO_MANY_REQUESTS",
            "The application's rate limit has been exceeded.",
            headers={"Retry-After": str(wait)},
        )
    fault = state(request).faults.take(endpoint.id)
    if fault is not None and fault.delay_seconds > 0:
        await asyncio.sleep(fault.delay_seconds)
    if fault is not None and fault.drop:
        # The operation happens, then the connection closes before any answer.
        for _ in range(fault.effects):
            with contextlib.suppress(ErsError, PlainError):
                await handler(request)
        if request.transport is not None:
            request.transport.close()
        raise _Dropped
    if fault is None or fault.status is None:
        return await handler(request)
    if not fault.after_effect:
        return fault.response()
    # The operation happens, but the caller never hears about it.
    for _ in range(fault.effects):
        with contextlib.suppress(ErsError, PlainError):
            await handler(request)
    return fault.response()


class _Dropped(Exception):
    """The answer to this request was dropped: the request log shows status 0."""


@web.middleware
async def ers_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    request_id = _new_request_id()
    if not request.path.startswith(BASE_PATH + "/"):
        admin_response = await handler(request)
        admin_response.headers["X-Request-ID"] = request_id
        return admin_response

    endpoint = _ENDPOINT_OF_HANDLER.get(request.match_info.handler)
    correlation_id = request.headers.get("X-Correlation-ID")
    who = Caller(
        request_id=request_id,
        correlation_id=correlation_id,
        ods_code=request.headers.get(ODS_HEADER),
        business_function=request.headers.get(BUSINESS_FUNCTION_HEADER),
    )
    request[CALLER] = who
    arrived = time.time()  # what a strict limiter counts: the arrival, not the answer
    response: web.StreamResponse
    try:
        response = await _answer(endpoint, request, handler)
    except _Dropped:
        assert endpoint is not None
        _log_call(request, endpoint.id, 0, correlation_id, request_id, who, arrived)
        raise asyncio.CancelledError from None  # aiohttp stops here: nothing is written
    except (ErsError, PlainError) as error:
        response = error.response()
    except web.HTTPException as error:
        code = STATUS_DEFAULT_CODE.get(error.status, "INVALID_VALUE")
        response = ErsError(error.status, code, error.reason).response()
    except Exception:
        log.exception("unexpected error handling %s %s", request.method, request.path)
        response = ErsError(500, "INTERNAL_SERVER_ERROR", "Unexpected sandbox error.").response()

    response.headers["X-Request-ID"] = request_id
    if correlation_id is not None:
        response.headers["X-Correlation-ID"] = correlation_id
    if endpoint is not None:
        _log_call(request, endpoint.id, response.status, correlation_id, request_id, who, arrived)
        log.info(
            "%s %s %s -> %d request_id=%s correlation_id=%s",
            endpoint.id,
            request.method,
            request.path,
            response.status,
            request_id,
            correlation_id,
        )
    return response


def _log_call(
    request: web.Request,
    endpoint_id: str,
    status: int,
    correlation_id: str | None,
    request_id: str,
    who: Caller,
    arrived: float,
) -> None:
    state(request).request_log.append(
        LogEntry(
            endpoint=endpoint_id,
            method=request.method,
            path=request.path,
            status=status,
            correlation_id=correlation_id,
            request_id=request_id,
            business_function=who.business_function,
            ods_code=who.ods_code,
            at=arrived,
        )
    )


def create_app(
    *,
    public_base_url: str | None = None,
    clock: Callable[[], datetime] = utc_now,
    rate_limit: int | None = None,
) -> web.Application:
    """The sandbox application. `public_base_url` pins the e-RS base URL the sandbox reports
    (and expects in SPECIALTY codings); by default it follows each request's Host."""
    app = web.Application(middlewares=[ers_middleware], client_max_size=CLIENT_MAX_SIZE)
    app[SANDBOX] = Sandbox(SandboxState(clock, rate_limit), public_base_url)
    for method, path, handler, _ in ROUTES:
        app.router.add_route(method, BASE_PATH + path, handler)
    admin.add_admin_routes(app)
    oauth.add_routes(app)  # the API platform's /oauth2/token and the test CIS2 issuer
    app.router.add_route("*", BASE_PATH + "/{tail:.*}", _not_found)
    return app
