"""``worker.ers.classify``: what each e-RS answer (or silence) means, per endpoint kind."""

from __future__ import annotations

import math
from typing import Any

import httpx
import pytest

from worker.ers.classify import classify_status, classify_transport
from worker.fhir.vocabulary import Endpoint
from worker.saga.errors import (
    Disposition,
    ErsAuthError,
    ErsConflict,
    ErsError,
    ErsLocked,
    ErsOutcomeUnknown,
    ErsRateLimited,
    ErsRejected,
    ErsTransientError,
    ErsUnexpected,
    RequestNotSendable,
)

# Written out here rather than read from the vocabulary, so that a change to it shows.
READS = (
    Endpoint.A004,
    Endpoint.A005,
    Endpoint.A008,
    Endpoint.A010,
    Endpoint.A015,
    Endpoint.A019,
)
WRITES = (Endpoint.A011, Endpoint.A012, Endpoint.A016, Endpoint.A020, Endpoint.A021)


def outcome(code: str, diagnostics: str = "why", issue_code: str = "value") -> dict[str, Any]:
    """An e-RS OperationOutcome, shaped as in the specification's examples."""
    return {
        "resourceType": "OperationOutcome",
        "issue": [
            {
                "severity": "error",
                "code": issue_code,
                "details": {
                    "coding": [
                        {
                            "system": "https://fhir.nhs.uk/STU3/CodeSystem/eRS-APIErrorCode-1",
                            "code": code,
                        }
                    ]
                },
                "diagnostics": diagnostics,
            }
        ],
    }


def test_the_state_changing_endpoints_are_the_writes() -> None:
    assert {e for e in Endpoint if e.changes_state} == set(WRITES)
    assert set(READS) | set(WRITES) == set(Endpoint)


# status -> (error class on a read, error class on a write)
STATUS_TABLE: list[tuple[int, type[ErsError], type[ErsError]]] = [
    (400, ErsRejected, ErsRejected),
    (401, ErsAuthError, ErsAuthError),
    (403, ErsRejected, ErsRejected),
    (404, ErsRejected, ErsRejected),
    (406, ErsRejected, ErsRejected),
    (409, ErsConflict, ErsConflict),
    (412, ErsConflict, ErsConflict),
    (415, ErsRejected, ErsRejected),
    (422, ErsRejected, ErsRejected),
    (423, ErsLocked, ErsLocked),
    (429, ErsRateLimited, ErsRateLimited),
    (500, ErsTransientError, ErsOutcomeUnknown),
    (502, ErsTransientError, ErsOutcomeUnknown),
    # 503: e-RS (or its gateway) did not take the request on, so even a write is repeatable.
    (503, ErsTransientError, ErsTransientError),
    (504, ErsTransientError, ErsOutcomeUnknown),
    # Statuses the specification does not list for these endpoints.
    (301, ErsUnexpected, ErsUnexpected),
    (405, ErsUnexpected, ErsUnexpected),
    (410, ErsUnexpected, ErsUnexpected),
    (418, ErsUnexpected, ErsUnexpected),
    (501, ErsUnexpected, ErsUnexpected),
    (505, ErsUnexpected, ErsUnexpected),
]


@pytest.mark.parametrize("endpoint", [*READS, *WRITES])
@pytest.mark.parametrize(("status", "on_read", "on_write"), STATUS_TABLE)
def test_each_status_means_one_error_per_endpoint_kind(
    endpoint: Endpoint, status: int, on_read: type[ErsError], on_write: type[ErsError]
) -> None:
    error = classify_status(endpoint, status, None, request_id="rid-1")

    expected = on_write if endpoint.changes_state else on_read
    assert type(error) is expected  # exact: ErsRateLimited is also an ErsTransientError
    assert error.endpoint == endpoint
    assert error.status == status
    assert error.request_id == "rid-1"


DISPOSITIONS = {
    ErsRejected: Disposition.FAIL,
    ErsAuthError: Disposition.REAUTHENTICATE,
    ErsConflict: Disposition.REFRESH,
    ErsLocked: Disposition.WAIT,
    ErsRateLimited: Disposition.RETRY_NOW,
    ErsTransientError: Disposition.RETRY_NOW,
    ErsOutcomeUnknown: Disposition.RECONCILE,
    ErsUnexpected: Disposition.FAIL,
}


@pytest.mark.parametrize(("status", "on_read", "on_write"), STATUS_TABLE)
def test_the_error_carries_the_disposition_of_its_class(
    status: int, on_read: type[ErsError], on_write: type[ErsError]
) -> None:
    assert classify_status(Endpoint.A005, status, None).disposition is DISPOSITIONS[on_read]
    assert classify_status(Endpoint.A011, status, None).disposition is DISPOSITIONS[on_write]


@pytest.mark.parametrize("status", [400, 403, 404, 409, 412, 422, 423, 500, 503])
def test_the_ers_code_and_diagnostics_come_from_the_operation_outcome(status: int) -> None:
    body = outcome("SLOT_NOT_AVAILABLE", "the slot was taken")

    error = classify_status(Endpoint.A016, status, body)

    assert error.code == "SLOT_NOT_AVAILABLE"
    assert error.diagnostics == "the slot was taken"
    assert "SLOT_NOT_AVAILABLE" in str(error)
    assert "the slot was taken" not in str(error)  # diagnostics are kept apart from messages


def test_without_a_coding_the_issue_code_is_used() -> None:
    body = {"resourceType": "OperationOutcome", "issue": [{"code": "business-rule"}]}

    assert classify_status(Endpoint.A012, 422, body).code == "business-rule"


@pytest.mark.parametrize(
    "body",
    [
        None,
        b"not json",
        "<html>502 Bad Gateway</html>",
        [1, 2],
        {"resourceType": "Bundle"},
        {"resourceType": "OperationOutcome", "issue": []},
    ],
)
def test_without_an_operation_outcome_the_code_is_the_http_status(body: Any) -> None:
    error = classify_status(Endpoint.A010, 422, body)

    assert type(error) is ErsRejected
    assert error.code == "HTTP_422"
    assert error.diagnostics == ""


def test_a_rate_limit_is_too_many_requests_whatever_the_body_says() -> None:
    error = classify_status(Endpoint.A015, 429, outcome("SOMETHING_ELSE"), retry_after="3")

    assert isinstance(error, ErsRateLimited)
    assert error.code == "TOO_MANY_REQUESTS"
    assert error.retry_after == 3.0


@pytest.mark.parametrize(
    ("header", "seconds"),
    [
        ("7", 7.0),
        ("0", 0.0),
        ("1.5", 1.5),
        (" 12 ", 12.0),
        (None, None),
        ("", None),
        ("Wed, 21 Oct 2015 07:28:00 GMT", 0.0),  # an HTTP-date in the past: now
        ("-1", None),
        ("-0.5", None),
        ("soon", None),
        ("nan", None),
        ("inf", None),  # would pause every replica for ever
        ("1e400", None),
    ],
)
def test_retry_after_seconds_are_read_and_anything_else_is_ignored(
    header: str | None, seconds: float | None
) -> None:
    error = classify_status(Endpoint.A010, 429, None, retry_after=header)

    assert isinstance(error, ErsRateLimited)
    assert error.retry_after == seconds
    assert error.retry_after is None or not math.isnan(error.retry_after)


def _transport_error(kind: type[httpx.TransportError]) -> httpx.TransportError:
    return kind("boom", request=httpx.Request("POST", "https://ers.test/STU3/x"))


# exception -> (code, surely not sent)
TRANSPORT_TABLE: list[tuple[type[httpx.TransportError], str, bool]] = [
    (httpx.ConnectError, "CONNECTION_ERROR", True),
    (httpx.ConnectTimeout, "TIMEOUT", True),
    (httpx.PoolTimeout, "TIMEOUT", True),
    (httpx.ReadTimeout, "TIMEOUT", False),
    (httpx.WriteTimeout, "TIMEOUT", False),
    (httpx.ReadError, "CONNECTION_ERROR", False),
    (httpx.WriteError, "CONNECTION_ERROR", False),
    (httpx.RemoteProtocolError, "CONNECTION_ERROR", False),
]


@pytest.mark.parametrize("endpoint", [*READS, *WRITES])
@pytest.mark.parametrize(("kind", "code", "not_sent"), TRANSPORT_TABLE)
def test_a_failure_without_an_answer_is_retryable_unless_a_write_may_have_landed(
    endpoint: Endpoint, kind: type[httpx.TransportError], code: str, not_sent: bool
) -> None:
    error = classify_transport(endpoint, _transport_error(kind))

    if endpoint.changes_state and not not_sent:
        assert type(error) is ErsOutcomeUnknown
        assert error.disposition is Disposition.RECONCILE
    else:
        assert type(error) is ErsTransientError
        assert error.disposition is Disposition.RETRY_NOW
    assert error.code == code
    assert error.status is None
    assert error.diagnostics == kind.__name__
    assert error.endpoint == endpoint
    assert "answered nothing" in str(error)


@pytest.mark.parametrize("endpoint", [*READS, *WRITES])
def test_a_request_httpx_refuses_to_send_is_not_sent_and_not_retried(endpoint: Endpoint) -> None:
    # e.g. a header value with a line break: httpx raises before anything leaves the process.
    error = classify_transport(endpoint, _transport_error(httpx.LocalProtocolError))

    assert type(error) is RequestNotSendable
    assert error.disposition is Disposition.FAIL
    assert error.code == "REQUEST_NOT_SENDABLE"
    assert error.diagnostics == "LocalProtocolError"
