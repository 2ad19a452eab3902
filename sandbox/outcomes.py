"""eRS-OperationOutcome-1 error bodies and the exception handlers raise to produce them."""

from __future__ import annotations

from dataclasses import dataclass, field

import orjson
from aiohttp import web

from sandbox.fhir import ERROR_CODE_SYSTEM, Json

FHIR_JSON = "application/fhir+json"
OUTCOME_PROFILE = "https://fhir.nhs.uk/STU3/StructureDefinition/eRS-OperationOutcome-1"

# FHIR issue type per e-RS error code, as the specification's tables and examples pair them.
_ISSUE_TYPE = {
    "NO_ACCESS": "login",
    "FORBIDDEN": "forbidden",
    "MISSING_HEADER": "required",
    "MISSING_PARAMETER": "required",
    "MISSING_VALUE": "required",
    "INVALID_VALUE": "value",
    "INVALID_CODE": "code-invalid",
    "INVALID_FHIR_STRUCTURE": "structure",
    "TOO_MANY_ITEMS": "value",
    "FILE_SIZE_ERROR": "value",
    "CONFLICTING_VALUES": "value",
    "REFERENCE_NOT_FOUND": "not-found",
    "HISTORY_NOT_SUPPORTED": "not-found",
    "SYSTEM_UNAVAILABLE": "transient",
    "TOO_MANY_REQUESTS": "throttled",
    "CONFLICT": "conflict",
    "LOCKED": "lock-error",
    "PAS_NOT_RESPONDING": "timeout",
    "PAS_RESPONDED_WITH_ERROR": "exception",
    "INTERNAL_SERVER_ERROR": "exception",
}

_DISPLAY = {
    "NO_ACCESS": "No access",
    "SYSTEM_UNAVAILABLE": "System Unavailable",
    "PAS_NOT_RESPONDING": "No response from PAS",
    "PAS_RESPONDED_WITH_ERROR": "Error received from PAS",
    "DUPLICATE_SERVICE": "Duplicate service found in shortlist",
    "SHORTLISTED_SERVICE_NOT_IN_RESULTS": "Shortlisted service not in search results",
    "INVALID_FHIR_STRUCTURE": "Invalid FHIR structure",
}

# The error code an injected fault (or an unexpected failure) carries for each HTTP status.
STATUS_DEFAULT_CODE = {
    400: "INVALID_VALUE",
    401: "NO_ACCESS",
    403: "FORBIDDEN",
    404: "REFERENCE_NOT_FOUND",
    409: "CONFLICT",
    412: "MISSING_HEADER",
    422: "INVALID_VALUE",
    423: "LOCKED",
    429: "TOO_MANY_REQUESTS",
    500: "INTERNAL_SERVER_ERROR",
    502: "PAS_RESPONDED_WITH_ERROR",
    503: "SYSTEM_UNAVAILABLE",
    504: "PAS_NOT_RESPONDING",
}


def display_for(code: str) -> str:
    return _DISPLAY.get(code) or code.replace("_", " ").capitalize()


def operation_outcome(code: str, diagnostics: str | None, issue_type: str | None = None) -> Json:
    issue: Json = {
        "severity": "error",
        "code": issue_type or _ISSUE_TYPE.get(code, "business-rule"),
        "details": {
            "coding": [{"system": ERROR_CODE_SYSTEM, "code": code, "display": display_for(code)}]
        },
    }
    if diagnostics is not None:
        issue["diagnostics"] = diagnostics
    return {
        "meta": {"profile": [OUTCOME_PROFILE]},
        "resourceType": "OperationOutcome",
        "issue": [issue],
    }


@dataclass(eq=False)
class ErsError(Exception):
    """Raised anywhere in a handler to answer with an e-RS error."""

    status: int
    code: str
    diagnostics: str | None = None
    headers: dict[str, str] = field(default_factory=dict)
    issue_type: str | None = None

    def __str__(self) -> str:
        return f"{self.status} {self.code}: {self.diagnostics}"

    def response(self) -> web.Response:
        body = operation_outcome(self.code, self.diagnostics, self.issue_type)
        return web.Response(
            status=self.status,
            body=orjson.dumps(body),
            content_type=FHIR_JSON,
            headers=self.headers,
        )


class PlainError(Exception):
    """Statuses the specification answers with text/plain rather than an OperationOutcome."""

    def __init__(self, status: int, text: str) -> None:
        super().__init__(text)
        self.status = status
        self.text = text

    def response(self) -> web.Response:
        return web.Response(status=self.status, text=self.text, charset="utf-8")


def unprocessable(code: str, diagnostics: str) -> ErsError:
    return ErsError(422, code, diagnostics)


def fhir_response(
    body: Json, status: int = 200, headers: dict[str, str] | None = None
) -> web.Response:
    return web.Response(
        status=status, body=orjson.dumps(body), content_type=FHIR_JSON, headers=headers
    )
