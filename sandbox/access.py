"""Per-endpoint header rules: bearer token, ODS code and business function, from each endpoint's
`parameters` and `Pre-requisites` in the specification."""

from __future__ import annotations

import re
from dataclasses import dataclass

from aiohttp import web

from sandbox.outcomes import ErsError

RC = "REFERRING_CLINICIAN"
RCA = "REFERRING_CLINICIAN_ADMIN"
RA = "REFERRING_ADMIN"
SPC = "SERVICE_PROVIDER_CLINICIAN"
SPCA = "SERVICE_PROVIDER_CLINICIAN_ADMIN"

ODS_HEADER = "NHSD-End-User-Organisation-ODS"
BUSINESS_FUNCTION_HEADER = "NHSD-eRS-Business-Function"
ON_BEHALF_OF_HEADER = "NHSD-eRS-On-Behalf-Of-User-ID"

_BEARER = re.compile(r"^Bearer ([\x21-\x7e]+)$")


@dataclass(frozen=True)
class Endpoint:
    id: str
    roles: frozenset[str]
    # Endpoints that also allow application-restricted access (A004, A005) take the ODS and
    # business-function headers only from user-restricted callers, so they are optional there.
    user_headers_optional: bool = False


ENDPOINTS = {
    endpoint.id: endpoint
    for endpoint in (
        Endpoint("A004", frozenset({RC, RCA, SPC, SPCA}), user_headers_optional=True),
        Endpoint("A005", frozenset({RC, RCA, SPC, SPCA}), user_headers_optional=True),
        Endpoint("A008", frozenset({RC, RCA, RA, SPC, SPCA})),
        Endpoint("A010", frozenset({RC, RCA})),
        Endpoint("A011", frozenset({RC, RCA})),
        Endpoint("A012", frozenset({RC, RCA})),
        Endpoint("A015", frozenset({RC, RCA})),
        Endpoint("A016", frozenset({RC, RCA})),
        Endpoint("A019", frozenset({RC, RCA})),
        Endpoint("A020", frozenset({RC, RCA, SPC, SPCA})),
        Endpoint("A021", frozenset({RC, RCA})),
    )
}


def check_headers(endpoint: Endpoint, request: web.Request) -> None:
    """Raise the e-RS error a real gateway would give for the caller's headers, if any."""
    authorization = request.headers.get("Authorization", "")
    match = _BEARER.match(authorization)
    if match is None:
        raise ErsError(401, "NO_ACCESS", "Missing or invalid Authorization bearer token.")
    # Lets tests act out an expired CIS2 session without a real identity provider.
    if match.group(1).lower().startswith("expired"):
        raise ErsError(401, "NO_ACCESS", "Access token has expired.")

    ods = request.headers.get(ODS_HEADER)
    business_function = request.headers.get(BUSINESS_FUNCTION_HEADER)
    if endpoint.user_headers_optional and ods is None and business_function is None:
        return
    if not ods:
        raise ErsError(400, "MISSING_HEADER", f"Missing mandatory header '{ODS_HEADER}'.")
    if not business_function:
        raise ErsError(
            400, "MISSING_HEADER", f"Missing mandatory header '{BUSINESS_FUNCTION_HEADER}'."
        )
    if business_function not in endpoint.roles:
        raise ErsError(
            403,
            "FORBIDDEN",
            f"Business function '{business_function}' is not permitted to use {endpoint.id}.",
        )
