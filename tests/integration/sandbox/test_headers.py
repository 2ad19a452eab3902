"""Header rules every e-RS endpoint applies: bearer token, ODS code, business function,
correlation and request ids."""

from __future__ import annotations

import time

import httpx
import pytest

from sandbox.testing import SandboxAdmin
from tests.integration.sandbox.flows import (
    FHIR_JSON,
    RC,
    RCA,
    base_url,
    create_body,
    error_code,
    ers_headers,
)

SLOT_QUERY = {
    "schedule.actor:HealthcareService": "11002",
    "appointmentType": "ROUTINE",
    "_count": "5",
    "status": "free",
    "page": "1",
}


async def test_missing_bearer_token_is_401_no_access(ers: httpx.AsyncClient) -> None:
    response = await ers.get("/STU3/ReferralRequest/000000070000", headers=ers_headers(token=None))

    assert response.status_code == 401
    assert response.headers["Content-Type"].startswith("application/fhir+json")
    assert error_code(response) == "NO_ACCESS"
    assert response.json()["issue"][0]["code"] == "login"


async def test_malformed_authorization_is_401(ers: httpx.AsyncClient) -> None:
    headers = {**ers_headers(), "Authorization": "Basic dXNlcjpwYXNz"}
    response = await ers.get("/STU3/ReferralRequest/000000070000", headers=headers)

    assert response.status_code == 401
    assert error_code(response) == "NO_ACCESS"


async def test_expired_token_is_401(ers: httpx.AsyncClient) -> None:
    response = await ers.get(
        "/STU3/ReferralRequest/000000070000", headers=ers_headers(token="expired-cis2-session")
    )

    assert response.status_code == 401
    assert error_code(response) == "NO_ACCESS"


async def test_business_function_outside_the_endpoint_roles_is_403(
    ers: httpx.AsyncClient,
) -> None:
    response = await ers.post(
        "/STU3/ReferralRequest/$ers.createReferral",
        json=create_body(base_url(ers), ["11002"]),
        headers={**ers_headers("SERVICE_PROVIDER_CLINICIAN"), **FHIR_JSON},
    )

    assert response.status_code == 403
    assert error_code(response) == "FORBIDDEN"
    assert response.json()["issue"][0]["code"] == "forbidden"


async def test_upload_accepts_service_provider_roles_the_a020_spec_lists(
    ers: httpx.AsyncClient,
) -> None:
    response = await ers.post(
        "/STU3/Binary",
        content=b"notes",
        headers=ers_headers(
            "SERVICE_PROVIDER_CLINICIAN",
            extra={"Content-Type": "text/plain", "NHSD-eRS-File-Name": "notes.txt"},
        ),
    )

    assert response.status_code == 201, response.text


@pytest.mark.parametrize(("ods", "business_function"), [(None, RC), ("R69", None)])
async def test_missing_ods_or_business_function_is_400(
    ers: httpx.AsyncClient, ods: str | None, business_function: str | None
) -> None:
    response = await ers.get(
        "/STU3/Slot", params=SLOT_QUERY, headers=ers_headers(business_function, ods=ods)
    )

    assert response.status_code == 400
    assert error_code(response) == "MISSING_HEADER"


async def test_reference_data_allows_application_restricted_callers(ers: httpx.AsyncClient) -> None:
    app_restricted = await ers.get("/STU3/CodeSystem/PRIORITY", headers=ers_headers(None, ods=None))
    half_user = await ers.get("/STU3/CodeSystem/PRIORITY", headers=ers_headers(RCA, ods=None))

    assert app_restricted.status_code == 200
    assert half_user.status_code == 400


async def test_slot_search_requires_the_commissioning_rule_org_header(
    ers: httpx.AsyncClient,
) -> None:
    response = await ers.get("/STU3/Slot", params=SLOT_QUERY, headers=ers_headers(RC))

    assert response.status_code == 400
    assert error_code(response) == "MISSING_HEADER"


async def test_correlation_id_is_echoed_and_request_id_is_fresh(
    ers: httpx.AsyncClient, admin: SandboxAdmin
) -> None:
    headers = ers_headers(RC, extra={"X-Correlation-ID": "11C46F5F-CDEF-4865-94B2-0EE0EDCC26DA"})
    ok = await ers.get("/STU3/ReferralRequest/000000070000", headers=headers)
    failed = await ers.get("/STU3/ReferralRequest/000000099999", headers=headers)
    uncorrelated = await ers.get("/STU3/ReferralRequest/000000070000", headers=ers_headers(RC))

    assert ok.headers["X-Correlation-ID"] == "11C46F5F-CDEF-4865-94B2-0EE0EDCC26DA"
    assert failed.status_code == 404
    assert failed.headers["X-Correlation-ID"] == "11C46F5F-CDEF-4865-94B2-0EE0EDCC26DA"
    assert "X-Correlation-ID" not in uncorrelated.headers
    request_ids = [r.headers["X-Request-ID"] for r in (ok, failed, uncorrelated)]
    assert len(set(request_ids)) == 3

    log = await admin.requests()
    assert [entry["request_id"] for entry in log] == request_ids
    arrived = [entry.pop("at") for entry in log]  # when each call arrived, in order
    assert arrived == sorted(arrived) and abs(arrived[-1] - time.time()) < 60
    assert log[0] == {
        "endpoint": "A005",
        "method": "GET",
        "path": "/referrals/FHIR/STU3/ReferralRequest/000000070000",
        "status": 200,
        "correlation_id": "11C46F5F-CDEF-4865-94B2-0EE0EDCC26DA",
        "request_id": request_ids[0],
        "business_function": RC,
        "ods_code": "R69",
    }
    assert "sandbox-test-token" not in str(log)


async def test_json_endpoints_want_fhir_json(ers: httpx.AsyncClient) -> None:
    response = await ers.post(
        "/STU3/ReferralRequest/$ers.createReferral",
        content=b"{}",
        headers={**ers_headers(RC), "Content-Type": "text/plain"},
    )

    assert response.status_code == 415


async def test_unknown_e_rs_path_is_404_operation_outcome(ers: httpx.AsyncClient) -> None:
    response = await ers.get("/STU3/Nonsense", headers=ers_headers(RC))

    assert response.status_code == 404
    assert error_code(response) == "REFERENCE_NOT_FOUND"
    assert "X-Request-ID" in response.headers
