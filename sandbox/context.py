"""What every handler needs from a request: the store, the sandbox's own base URL, the caller's
headers and a parsed FHIR JSON body."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import orjson
from aiohttp import web

from sandbox.access import BUSINESS_FUNCTION_HEADER, ODS_HEADER
from sandbox.fhir import BASE_PATH
from sandbox.outcomes import ErsError, PlainError
from sandbox.state import SandboxState


@dataclass
class Sandbox:
    state: SandboxState
    # When None the base URL is derived from each request's Host, which is what a client that
    # reached the sandbox under that name will also use in `_baseUrl_`-style code systems.
    public_base_url: str | None = None


SANDBOX = web.AppKey("sandbox", Sandbox)


@dataclass(frozen=True)
class Caller:
    request_id: str
    correlation_id: str | None
    ods_code: str | None
    business_function: str | None


CALLER = web.RequestKey("ers_caller", Caller)


def sandbox(request: web.Request) -> Sandbox:
    return request.app[SANDBOX]


def state(request: web.Request) -> SandboxState:
    return request.app[SANDBOX].state


def own_base_url(request: web.Request) -> str:
    configured = request.app[SANDBOX].public_base_url
    if configured:
        return configured.rstrip("/")
    return f"{request.scheme}://{request.host}{BASE_PATH}"


def caller(request: web.Request) -> Caller:
    if CALLER in request:
        return request[CALLER]
    return Caller(
        request_id="",
        correlation_id=request.headers.get("X-Correlation-ID"),
        ods_code=request.headers.get(ODS_HEADER),
        business_function=request.headers.get(BUSINESS_FUNCTION_HEADER),
    )


def _media_type(request: web.Request) -> str:
    return request.headers.get("Content-Type", "").split(";")[0].strip().lower()


async def read_fhir_json(request: web.Request) -> Any:
    if _media_type(request) != "application/fhir+json":
        raise PlainError(415, "Unsupported Media Type")
    raw = await request.read()
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise ErsError(
            422, "INVALID_FHIR_STRUCTURE", f"Request body is not valid JSON: {exc}"
        ) from None
