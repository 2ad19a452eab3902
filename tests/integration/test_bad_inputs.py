"""A corpus of bad referral requests through the real worker, RabbitMQ and the e-RS sandbox.

Every bad input is published in one run of the conftest ``harness`` (taken by whichever test
here comes first), then one valid request to show the worker goes on; after ``settle`` each
case's test checks what came back for its correlation id: one REJECTED outcome naming the
field, one parked message without the token, no e-RS call, no leak of the input.

The field a case expects is the path, in the message, of the value that has to change to make
the request valid (``patient.nhs_number``); for a rule between fields where either may change,
the nearest section holding them all (``action.booking_window`` when its dates are reversed).
The raw body is ``(body)`` and AMQP properties are ``(properties).<name>``.
"""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
import pytest

from schemas.referral_request import (
    MAX_ATTACHMENT_BASE64_CHARS,
    MAX_ATTACHMENT_BYTES,
    MAX_MESSAGE_BYTES,
)
from tests.harness import TEST_TOKEN, Harness, sample
from worker.messaging.headers import TOKEN_HEADER
from worker.messaging.tokens import MAX_TOKEN_LENGTH

BASE_SAMPLE = "01-dbs-booked.json"
VALID_SAMPLE = "03-ibs-shortlisted.json"
_MISSING = object()


@dataclass(frozen=True, eq=False)
class Bad:
    name: str
    body: dict[str, Any] | bytes
    field: str
    reply: bool = True
    secrets: tuple[str, ...] = ()
    token: str = TEST_TOKEN
    problem: str | None = None  # words the problem at the field must hold, when they matter


def base() -> dict[str, Any]:
    """The valid DBS sample with a fresh request id."""
    return sample(BASE_SAMPLE)


def changed(changes: dict[str, Any]) -> dict[str, Any]:
    """The base request with dotted paths set to new values (or removed with ``_MISSING``)."""
    data = base()
    for path, value in changes.items():
        *parents, last = path.split(".")
        node: Any = data
        for part in parents:
            node = node[int(part)] if isinstance(node, list) else node[part]
        key: int | str = int(last) if isinstance(node, list) else last
        if value is _MISSING:
            del node[key]
        else:
            node[key] = value
    return data


def attachment(
    file_name: str = "referral-letter.txt",
    media_type: str = "text/plain",
    content: bytes = b"Confidential referral letter body for the corpus",
    description: str = "Referral letter",
) -> dict[str, Any]:
    return {
        "file_name": file_name,
        "media_type": media_type,
        "description": description,
        "content": base64.b64encode(content).decode("ascii"),
    }


def secrets_of(body: dict[str, Any] | bytes) -> tuple[str, ...]:
    """What must never reach an event: the NHS number and attachment content, as sent."""
    if not isinstance(body, dict):
        return ()
    found: list[str] = []
    patient = body.get("patient")
    nhs = patient.get("nhs_number") if isinstance(patient, dict) else patient
    if isinstance(nhs, str | int) and len(str(nhs)) >= 6:
        found.append(str(nhs))
    attachments = body.get("attachments")
    items = attachments if isinstance(attachments, list) else [attachments]
    for item in items:
        content = item.get("content") if isinstance(item, dict) else None
        if isinstance(content, str) and len(content) >= 8:
            found.append(content)
            try:
                decoded = base64.b64decode(content, validate=True)[:24].decode("utf-8", "ignore")
            except (binascii.Error, ValueError):
                continue
            if len(decoded) >= 8:
                found.append(decoded)
    return tuple(found)


def bad(
    name: str,
    body: dict[str, Any] | bytes,
    field: str,
    *,
    reply: bool = True,
    token: str = TEST_TOKEN,
    problem: str | None = None,
) -> Bad:
    secrets = secrets_of(body) + ((token,) if token != TEST_TOKEN else ())
    return Bad(name, body, field, reply=reply, secrets=secrets, token=token, problem=problem)


def _now_iso(delta: timedelta) -> str:
    return (datetime.now(UTC) + delta).isoformat()


_VALID_BYTES = orjson.dumps(base())
_OVERSIZED = (b"Confidential letter body. " * (MAX_ATTACHMENT_BYTES // 26 + 2))[
    : MAX_ATTACHMENT_BYTES + 1
]
_MEGABYTE = 1024 * 1024
_PDF = b"%PDF-1.7\n1 0 obj << /Type /Catalog >> endobj\ntrailer << /Root 1 0 R >>\n%%EOF\n"
_EXE = b"MZ\x90\x00\x03\x00\x00\x00\x04\x00\x00\x00\xff\xff This program cannot be run in DOS"
# Valid JSON holding an NHS number, one byte over the contract's largest body.
_OVER_THE_LIMIT = orjson.dumps({**base(), "attachments": [attachment(content=b"x" * 3)]})
_OVER_THE_LIMIT = (
    _OVER_THE_LIMIT[:-1] + b" " * (MAX_MESSAGE_BYTES - len(_OVER_THE_LIMIT) + 1) + b"}"
)

BAD_INPUTS: list[Bad] = [
    # The body is not a JSON object.
    bad("body-truncated-json", _VALID_BYTES[: len(_VALID_BYTES) // 2], "(body)"),
    bad("body-not-json-bytes", b"\x00\xff\xfeMSH|^~\\&|not json", "(body)"),
    bad("body-empty", b"", "(body)"),
    bad("body-whitespace-only", b" \r\n\t ", "(body)"),
    bad(
        "body-json-not-utf8",
        b'{"schema_version": "1", "request_id": "\xff\xfe"}',
        "(body)",
        problem="not valid UTF-8: invalid start byte at byte 39",
    ),
    bad("body-json-array", orjson.dumps([base()]), "(body)"),
    bad("body-json-string", b'"referral"', "(body)"),
    bad("body-json-number", b"42", "(body)"),
    bad("body-json-null", b"null", "(body)"),
    # Refused before it is parsed, with the limit the broker is given too.
    bad(
        "body-over-the-contract-limit",
        _OVER_THE_LIMIT,
        "(body)",
        problem=f"over the {MAX_MESSAGE_BYTES} bytes the contract allows",
    ),
    # Schema version.
    bad("schema-version-2", changed({"schema_version": "2"}), "schema_version"),
    bad("schema-version-number-1", changed({"schema_version": 1}), "schema_version"),
    bad("schema-version-missing", changed({"schema_version": _MISSING}), "schema_version"),
    # Wrong types for each top-level section.
    bad("type-request-id-number", changed({"request_id": 12345}), "request_id"),
    bad("type-source-system-list", changed({"source_system": ["rhapsody"]}), "source_system"),
    bad("type-user-string", changed({"user": "R69"}), "user"),
    bad("type-patient-string", changed({"patient": "9990010005"}), "patient"),
    bad("type-search-list", changed({"search": ["CARDIOLOGY"]}), "search"),
    bad("type-shortlist-string", changed({"shortlist": "11002"}), "shortlist"),
    bad("type-action-string", changed({"action": "BOOK_EARLIEST"}), "action"),
    bad("type-referral-number", changed({"referral": 5}), "referral"),
    bad("type-attachments-object", changed({"attachments": attachment()}), "attachments"),
    bad(
        "type-generate-patient-letter-string",
        changed({"generate_patient_letter": "sometimes"}),
        "generate_patient_letter",
    ),
    # Wrong types for key nested fields.
    bad("type-user-ods-code-number", changed({"user.ods_code": 69}), "user.ods_code"),
    bad(
        "type-nhs-number-integer", changed({"patient.nhs_number": 9990010005}), "patient.nhs_number"
    ),
    bad(
        "type-search-age-gender-string",
        changed({"search.age_and_gender_appropriate": "sometimes"}),
        "search.age_and_gender_appropriate",
    ),
    bad(
        "type-service-ids-string",
        changed({"shortlist.service_ids": "11002"}),
        "shortlist.service_ids",
    ),
    bad(
        "type-service-id-integer",
        changed({"shortlist.service_ids": [11002]}),
        "shortlist.service_ids.0",
    ),
    bad(
        "type-auto-count-string",
        changed({"shortlist": {"mode": "auto", "count": "three"}}),
        "shortlist.count",
    ),
    bad("type-action-kind-number", changed({"action.kind": 1}), "action.kind"),
    bad(
        "type-booking-window-string",
        changed({"action.booking_window": "next week"}),
        "action.booking_window",
    ),
    bad(
        "type-follow-up-days-string",
        changed({"referral.first_reminder_letter_follow_up_days": "ten"}),
        "referral.first_reminder_letter_follow_up_days",
    ),
    bad("type-attachment-string", changed({"attachments.0": "letter.txt"}), "attachments.0"),
    bad(
        "type-attachment-content-number",
        changed({"attachments.0.content": 12345}),
        "attachments.0.content",
    ),
    # Missing required fields.
    bad("missing-request-id", changed({"request_id": _MISSING}), "request_id"),
    bad("missing-source-system", changed({"source_system": _MISSING}), "source_system"),
    bad("missing-user", changed({"user": _MISSING}), "user"),
    bad("missing-patient", changed({"patient": _MISSING}), "patient"),
    bad("missing-search", changed({"search": _MISSING}), "search"),
    bad("missing-shortlist", changed({"shortlist": _MISSING}), "shortlist"),
    bad("missing-action", changed({"action": _MISSING}), "action"),
    bad("missing-user-ods-code", changed({"user.ods_code": _MISSING}), "user.ods_code"),
    bad(
        "missing-user-business-function",
        changed({"user.business_function": _MISSING}),
        "user.business_function",
    ),
    bad("missing-nhs-number", changed({"patient.nhs_number": _MISSING}), "patient.nhs_number"),
    bad("missing-search-priority", changed({"search.priority": _MISSING}), "search.priority"),
    bad(
        "missing-specialty-and-clinical-term",
        changed({"search.specialty": _MISSING}),
        "search",
    ),
    bad(
        "missing-attachment-content",
        changed({"attachments.0.content": _MISSING}),
        "attachments.0.content",
    ),
    # NHS numbers.
    bad(
        "nhs-number-wrong-check-digit",
        changed({"patient.nhs_number": "9990010006"}),
        "patient.nhs_number",
    ),
    bad("nhs-number-9-digits", changed({"patient.nhs_number": "999001000"}), "patient.nhs_number"),
    bad(
        "nhs-number-11-digits", changed({"patient.nhs_number": "99900100051"}), "patient.nhs_number"
    ),
    bad("nhs-number-letters", changed({"patient.nhs_number": "999001000A"}), "patient.nhs_number"),
    bad("nhs-number-spaces", changed({"patient.nhs_number": "999 001 0005"}), "patient.nhs_number"),
    bad(
        "nhs-number-full-width-digits",
        changed({"patient.nhs_number": "９９９００１０００５"}),
        "patient.nhs_number",
    ),
    # 999001003: the weighted sum leaves a check digit of 10, which no NHS number has.
    bad(
        "nhs-number-check-digit-10",
        changed({"patient.nhs_number": "9990010030"}),
        "patient.nhs_number",
    ),
    # Modulus 11 passes, but no range issues it: a referral was COMPLETED for it once.
    bad(
        "nhs-number-all-zeros", changed({"patient.nhs_number": "0000000000"}), "patient.nhs_number"
    ),
    # Reserved, never issued (5000000005 passes Modulus 11).
    bad(
        "nhs-number-reserved-range",
        changed({"patient.nhs_number": "5000000005"}),
        "patient.nhs_number",
    ),
    # ODS codes.
    bad("ods-code-lowercase", changed({"user.ods_code": "r69"}), "user.ods_code"),
    bad("ods-code-too-short", changed({"user.ods_code": "R6"}), "user.ods_code"),
    bad("ods-code-punctuation", changed({"user.ods_code": "RR-8"}), "user.ods_code"),
    bad(
        "ods-code-search-organisation-too-long",
        changed({"search.organisation_ods_code": "ABCDEFGHIJK"}),
        "search.organisation_ods_code",
    ),
    # The acting user.
    bad(
        "business-function-unknown",
        changed({"user.business_function": "REFERRING_ADMIN"}),
        "user.business_function",
    ),
    # Either the business function or the named clinician has to change: the section.
    bad(
        "admin-without-named-clinician",
        changed({"user.business_function": "REFERRING_CLINICIAN_ADMIN"}),
        "user",
    ),
    # Unknown enumerated values.
    bad("priority-unknown", changed({"search.priority": "SOON"}), "search.priority"),
    bad("sort-by-unknown", changed({"search.sort_by": "NAME"}), "search.sort_by"),
    bad("action-kind-unknown", changed({"action.kind": "BOOK_LATEST"}), "action.kind"),
    # Shortlists.
    bad(
        "shortlist-explicit-empty",
        changed({"shortlist.service_ids": []}),
        "shortlist.service_ids",
    ),
    bad(
        "shortlist-explicit-21-services",
        changed({"shortlist.service_ids": [str(11000 + i) for i in range(21)]}),
        "shortlist.service_ids",
    ),
    bad(
        "shortlist-explicit-repeated-service",
        changed({"shortlist.service_ids": ["11002", "11003", "11002"]}),
        "shortlist.service_ids",
    ),
    bad(
        "shortlist-explicit-non-numeric-id",
        changed({"shortlist.service_ids": ["11002", "cardio-1"]}),
        "shortlist.service_ids.1",
    ),
    bad(
        "shortlist-auto-count-0",
        changed({"shortlist": {"mode": "auto", "count": 0}}),
        "shortlist.count",
    ),
    bad(
        "shortlist-auto-count-21",
        changed({"shortlist": {"mode": "auto", "count": 21}}),
        "shortlist.count",
    ),
    # Either the action or the shortlist has to change: the whole message.
    bad(
        "triage-with-two-services",
        changed({"action.kind": "SEND_FOR_TRIAGE", "shortlist.service_ids": ["11004", "11002"]}),
        "(message)",
    ),
    # Actions and booking windows.
    bad(
        "booking-window-with-defer",
        changed(
            {
                "action": {
                    "kind": "DEFER_TO_PROVIDER",
                    "booking_window": {"not_before": "2030-01-01", "not_after": "2030-01-31"},
                }
            }
        ),
        "action",
    ),
    bad(
        "deferral-comment-with-book-earliest",
        changed({"action.comment": "Patient prefers mornings"}),
        "action",
    ),
    bad(
        "requested-slot-id-not-a-fhir-id",
        changed({"action": {"kind": "DEFER_TO_PROVIDER", "requested_slot_id": "Slot/1 2"}}),
        "action.requested_slot_id",
    ),
    bad(
        "booking-window-end-before-start",
        changed({"action.booking_window": {"not_before": "2030-01-31", "not_after": "2030-01-01"}}),
        "action.booking_window",
    ),
    # Referral details.
    bad(
        "pathway-start-in-future",
        changed({"referral.pathway_start": _now_iso(timedelta(days=2))}),
        "referral.pathway_start",
    ),
    bad(
        "pathway-start-older-than-365-days",
        changed({"referral.pathway_start": _now_iso(-timedelta(days=400))}),
        "referral.pathway_start",
    ),
    bad(
        "pathway-start-without-time-zone",
        changed(
            {
                "referral.pathway_start": (datetime.now(UTC) - timedelta(days=10)).strftime(
                    "%Y-%m-%dT%H:%M:%S"
                )
            }
        ),
        "referral.pathway_start",
    ),
    bad(
        "follow-up-days-negative",
        changed({"referral.first_reminder_letter_follow_up_days": -1}),
        "referral.first_reminder_letter_follow_up_days",
    ),
    # Attachments.
    bad(
        "attachment-media-type-not-accepted",
        changed(
            {
                "attachments": [
                    attachment(
                        "referral-letter.exe",
                        "application/x-msdownload",
                        b"MZ\x90\x00 This program cannot be run in DOS mode.",
                    )
                ]
            }
        ),
        "attachments.0.media_type",
    ),
    # Either the file name or the media type has to change: the attachment.
    bad(
        "attachment-extension-not-media-type",
        changed({"attachments": [attachment("referral-letter.txt", "application/pdf", _PDF)]}),
        "attachments.0",
    ),
    # The content is not the declared type: the finding, a .pdf holding an executable.
    bad(
        "attachment-pdf-holding-an-executable",
        changed({"attachments": [attachment("referral-letter.pdf", "application/pdf", _EXE)]}),
        "attachments.0.content",
    ),
    bad(
        "attachment-text-holding-an-elf-binary",
        changed(
            {
                "attachments": [
                    attachment(),
                    attachment("notes.txt", "text/plain", b"\x7fELF\x02\x01\x01" + bytes(64)),
                ]
            }
        ),
        "attachments.1.content",
    ),
    bad(
        "attachment-over-5-mib",
        changed({"attachments": [attachment(content=_OVERSIZED)]}),
        "attachments.0.content",
    ),
    # Longer base64 than any 5 MiB file has: refused before it is decoded.
    bad(
        "attachment-base64-longer-than-5-mib-can-be",
        changed({"attachments.0.content": "QUJD" * (MAX_ATTACHMENT_BASE64_CHARS // 4 + 1)}),
        "attachments.0.content",
    ),
    bad(
        "attachment-empty-content",
        changed({"attachments": [attachment(content=b"")]}),
        "attachments.0.content",
    ),
    bad(
        "attachment-invalid-base64",
        changed({"attachments.0.content": "Confidential letter!!not*base64"}),
        "attachments.0.content",
    ),
    bad(
        "attachment-duplicate-file-names",
        changed({"attachments": [attachment(), attachment(content=b"Second letter, same name")]}),
        "attachments",
    ),
    bad(
        "attachments-more-than-10",
        changed({"attachments": [attachment(f"letter-{i}.txt") for i in range(11)]}),
        "attachments",
    ),
    # Unknown fields.
    bad("unknown-field-top-level", changed({"priority_override": True}), "priority_override"),
    bad(
        "unknown-field-in-patient",
        changed({"patient.date_of_birth": "1970-01-01"}),
        "patient.date_of_birth",
    ),
    bad(
        "unknown-field-in-attachment",
        changed({"attachments.0.checksum": "abc"}),
        "attachments.0.checksum",
    ),
    # Huge strings, each about 1 MB.
    bad("huge-request-id", changed({"request_id": "r" * _MEGABYTE}), "request_id"),
    bad("huge-source-system", changed({"source_system": "s" * _MEGABYTE}), "source_system"),
    bad(
        "huge-attachment-description",
        changed({"attachments.0.description": "d" * _MEGABYTE}),
        "attachments.0.description",
    ),
    # A valid body with a 100 KB token: refused at intake, not sent for e-RS to answer 400.
    bad(
        "token-100-kb",
        changed({}),
        f"(headers).{TOKEN_HEADER}",
        token="t" * 100_000,
        problem=f"longer than {MAX_TOKEN_LENGTH} characters",
    ),
    # A valid body, but nowhere to send its outcome but the topic exchange.
    bad("no-reply-to", base(), "(properties).reply_to", reply=False),
]

CASES = [pytest.param(case, id=case.name) for case in BAD_INPUTS]


@dataclass(frozen=True)
class CorpusRun:
    """The harness after ``settle`` (everything the worker published), and e-RS' request log."""

    harness: Harness
    cids: dict[str, str]
    good_cid: str
    ers_calls: list[dict[str, Any]]


# The corpus runs once per session, in whichever of this module's tests comes first.
_runs: list[CorpusRun | Exception] = []


@pytest.fixture
def corpus_harness(request: pytest.FixtureRequest) -> Harness | None:
    """The conftest ``harness`` for the test that runs the corpus; None once it has run."""
    if _runs:
        return None
    harness: Harness = request.getfixturevalue("harness")
    return harness


async def corpus(harness: Harness | None) -> CorpusRun:
    """Every bad input, then one valid request, through one worker; read back after settling."""
    if not _runs:
        assert harness is not None
        try:
            _runs.append(await _run_corpus(harness))
        except Exception as exc:
            _runs.append(exc)
            raise
    run = _runs[0]
    if isinstance(run, Exception):
        pytest.fail(f"the corpus run failed in an earlier test: {run!r}")
    return run


async def _run_corpus(harness: Harness) -> CorpusRun:
    cids = {
        case.name: await harness.publish(case.body, reply=case.reply, token=case.token)
        for case in BAD_INPUTS
    }
    good_cid = await harness.publish(sample(VALID_SAMPLE))
    no_reply = {case.name for case in BAD_INPUTS if not case.reply}

    def all_answered() -> bool:
        return bool(harness.outcomes(good_cid)) and all(
            harness.outcomes(cid, harness.topic if name in no_reply else None)
            for name, cid in cids.items()
        )

    await harness.wait_until(all_answered, timeout=60)
    await harness.settle()
    return CorpusRun(harness, cids, good_cid, await harness.sandbox.requests())


@pytest.mark.parametrize("case", CASES)
async def test_bad_input_is_rejected_parked_and_never_sent_to_e_rs(
    case: Bad, corpus_harness: Harness | None
) -> None:
    run = await corpus(corpus_harness)
    cid = run.cids[case.name]
    harness = run.harness

    replies = harness.outcomes(cid)
    on_topic = harness.outcomes(cid, harness.topic)
    assert len(replies) == (1 if case.reply else 0)
    assert len(on_topic) == 1
    outcome = on_topic[0]
    if case.reply:
        assert replies[0] == outcome
    assert outcome["status"] == "REJECTED"
    assert outcome["error"]["code"] == "INVALID_MESSAGE"
    assert outcome["correlation_id"] == cid

    problems = [outcome["error"]["text"], *(e["problem"] for e in outcome["validation_errors"])]
    whole = orjson.dumps(outcome).decode()
    for secret in case.secrets:
        assert all(secret not in text for text in problems), "a problem quotes the input"
        assert secret not in whole, "the outcome event quotes the input"

    parked = [p for p in harness.parked if p.correlation_id == cid]
    assert len(parked) == 1
    headers = parked[0].headers
    assert headers["x-ers-reason"] == "INVALID_MESSAGE"
    assert TOKEN_HEADER not in headers
    assert "x-ers-access-token" not in {k.lower() for k in headers}
    assert TEST_TOKEN not in str(headers)
    for secret in case.secrets:
        assert secret not in str(headers), "a parked header quotes the input"

    assert [c for c in run.ers_calls if c["correlation_id"] == cid] == []

    # Last, so an expected failure here cannot hide a failure above.
    fields = [e["field"] for e in outcome["validation_errors"]]
    assert case.field in fields, f"expected {case.field!r} among {fields}"
    if case.problem is not None:
        said = [e["problem"] for e in outcome["validation_errors"] if e["field"] == case.field]
        assert any(case.problem in text for text in said), said


def _without_fresh_id(body: dict[str, Any] | bytes) -> bytes:
    if isinstance(body, bytes):
        return body
    fresh = str(body.get("request_id", "")).startswith("demo-dbs-booked-")
    return orjson.dumps({**body, "request_id": "fresh"} if fresh else body)


def test_the_corpus_holds_distinct_inputs_with_distinct_ids() -> None:
    names = [case.name for case in BAD_INPUTS]
    assert len(names) == len(set(names)) >= 45
    # The no-reply_to and token cases are the valid base request: their faults are in the
    # AMQP properties and headers.
    bodies = [
        _without_fresh_id(case.body)
        for case in BAD_INPUTS
        if case.reply and case.token == TEST_TOKEN
    ]
    assert len(set(bodies)) == len(bodies)


async def test_the_worker_went_on_and_only_the_valid_request_reached_e_rs(
    corpus_harness: Harness | None,
) -> None:
    run = await corpus(corpus_harness)
    harness = run.harness
    (good,) = harness.outcomes(run.good_cid)
    assert good["status"] == "COMPLETED", good["error"]
    assert run.ers_calls, "the valid request made no e-RS call"
    assert {c["correlation_id"] for c in run.ers_calls} == {run.good_cid}
    assert sorted(p.correlation_id or "" for p in harness.parked) == sorted(run.cids.values())
