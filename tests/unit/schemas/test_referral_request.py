"""The referral-request contract: what it accepts, and how precisely it says what it refuses."""

from __future__ import annotations

import base64
import copy
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
import pytest

from schemas.nhs_number import is_valid_nhs_number
from schemas.referral_request import (
    MAX_ATTACHMENT_BASE64_CHARS,
    MAX_ATTACHMENT_BYTES,
    MAX_MESSAGE_BYTES,
    ReferralRequestV1,
)
from worker.messaging.intake import Rejection, parse_request

SAMPLES = Path(__file__).resolve().parents[3] / "samples"


def valid() -> dict[str, Any]:
    return orjson.loads((SAMPLES / "01-dbs-booked.json").read_bytes())


def problems(data: Any) -> dict[str, str]:
    body = data if isinstance(data, bytes) else orjson.dumps(data)
    result = parse_request(body)
    assert isinstance(result, Rejection), "expected a rejection"
    return {p.field: p.problem for p in result.problems}


@pytest.mark.parametrize(
    ("number", "ok"),
    [
        ("9912003888", True),
        ("9434765919", True),
        ("9434765910", False),
        ("123", False),
        ("99120038a8", False),
        ("９９１２００３８８８", False),
        # Modulus 11 passes but no range issues these (found: a referral COMPLETED for 0000000000).
        ("0000000000", False),
        ("0123456789", False),
        ("5000000005", False),  # reserved, never issued
        ("8000000008", False),  # the Republic of Ireland's IHI range, not PDS
        ("4010232137", True),  # England, Wales and the Isle of Man
    ],
)
def test_nhs_number_modulus_11_and_issued_range(number: str, ok: bool) -> None:
    assert is_valid_nhs_number(number) is ok


def test_an_unissued_nhs_number_is_refused_naming_the_range_rule_not_the_number() -> None:
    data = valid()
    data["patient"]["nhs_number"] = "0000000000"
    found = problems(data)
    assert "issued range" in found["patient.nhs_number"]
    assert "0000000000" not in str(found)


def test_the_published_schema_gives_the_nhs_number_its_10_digit_pattern() -> None:
    schema = ReferralRequestV1.model_json_schema()
    nhs = schema["$defs"]["Patient"]["properties"]["nhs_number"]
    assert nhs["pattern"] == "^[0-9]{10}$"


def test_every_shipped_sample_but_the_invalid_one_is_valid() -> None:
    for path in sorted(SAMPLES.glob("*.json")):
        result = parse_request(path.read_bytes())
        assert isinstance(result, Rejection) == ("invalid" in path.name), path.name


def test_attachment_content_is_decoded_once() -> None:
    result = parse_request(orjson.dumps(valid()))
    assert isinstance(result, ReferralRequestV1)
    assert result.attachments[0].content.startswith(b"Referral letter")


def test_bad_nhs_number_is_named_without_its_value() -> None:
    data = valid()
    data["patient"]["nhs_number"] = "9990010006"
    found = problems(data)
    assert "Modulus 11" in found["patient.nhs_number"]
    assert "9990010006" not in str(found)


def test_every_field_at_fault_is_named() -> None:
    data = valid()
    data["search"]["priority"] = "SOON"
    data["user"]["ods_code"] = "r69!"
    del data["source_system"]
    data["unexpected"] = 1
    assert set(problems(data)) == {
        "search.priority",
        "user.ods_code",
        "source_system",
        "unexpected",
    }


@pytest.mark.parametrize(
    ("mutate", "field", "words"),
    [
        (
            lambda d: d["attachments"][0].update(
                media_type="application/x-msdownload", file_name="a.exe"
            ),
            "attachments.0.media_type",
            "file type e-RS accepts",
        ),
        (
            lambda d: d["attachments"][0].update(file_name="letter.pdf"),
            "attachments.0",
            "extension does not match",
        ),
        (
            lambda d: d["attachments"][0].update(
                content=base64.b64encode(b"x" * (MAX_ATTACHMENT_BYTES + 1)).decode()
            ),
            "attachments.0.content",
            "larger than e-RS accepts",
        ),
        (
            lambda d: d["attachments"][0].update(content="not base64!"),
            "attachments.0.content",
            "not valid base64",
        ),
        (
            lambda d: d["shortlist"].update(service_ids=[str(i) for i in range(21)]),
            "shortlist.service_ids",
            "at most 20",
        ),
        (
            lambda d: d["shortlist"].update(service_ids=["11002", "11002"]),
            "shortlist.service_ids",
            "must not repeat",
        ),
        (
            lambda d: d["referral"].update(
                pathway_start=(datetime.now(UTC) + timedelta(days=1)).isoformat()
            ),
            "referral.pathway_start",
            "in the past",
        ),
        (
            lambda d: d["referral"].update(
                pathway_start=(datetime.now(UTC) - timedelta(days=366)).isoformat()
            ),
            "referral.pathway_start",
            "365 days",
        ),
        (
            lambda d: d["user"].update(business_function="REFERRING_CLINICIAN_ADMIN"),
            "user",
            "referring_clinician_sds_user_id is required",
        ),
        (
            lambda d: (
                d["action"].update(
                    kind="SEND_FOR_TRIAGE",
                )
                or d["shortlist"].update(service_ids=["11004", "11002"])
            ),
            "(message)",
            "exactly one triage service",
        ),
        (
            lambda d: d["search"].pop("specialty"),
            "search",
            "specialty, clinical_term or named_clinician_sds_user_id",
        ),
        (
            lambda d: d["action"].update(
                kind="SHORTLIST_ONLY", booking_window={"not_before": "2030-01-01"}
            ),
            "action",
            "only allowed with BOOK_EARLIEST",
        ),
    ],
)
def test_rules_e_rs_would_enforce_are_enforced_first(mutate: Any, field: str, words: str) -> None:
    data = copy.deepcopy(valid())
    mutate(data)
    found = problems(data)
    assert field in found, found
    assert words in found[field]


@pytest.mark.parametrize(
    ("body", "field", "words"),
    [
        (b'{"schema_version": "1", "request_id": ', "(body)", "not valid JSON"),
        (b"[1, 2]", "(body)", "JSON object"),
        (b'{"schema_version": "2"}', "schema_version", "'2' is not supported"),
        (b'{"request_id": "x"}', "schema_version", "missing or unreadable"),
    ],
)
def test_unreadable_messages(body: bytes, field: str, words: str) -> None:
    found = problems(body)
    assert words in found[field]


def test_rejection_keeps_a_safe_request_id_only() -> None:
    data = valid()
    data["patient"]["nhs_number"] = "1"
    result = parse_request(orjson.dumps(data))
    assert isinstance(result, Rejection) and result.request_id == "demo-dbs-booked"
    data["request_id"] = "9912003888 <script>"
    result = parse_request(orjson.dumps(data))
    assert isinstance(result, Rejection) and result.request_id is None


def test_a_search_by_named_clinician_alone_is_accepted() -> None:
    data = valid()
    data["search"] = {"priority": "URGENT", "named_clinician_sds_user_id": "021600556514"}
    result = parse_request(orjson.dumps(data))
    assert isinstance(result, ReferralRequestV1)
    assert result.search.specialty is None and result.search.clinical_term is None


def test_a_search_for_nothing_in_particular_is_refused_naming_the_section() -> None:
    data = valid()
    data["search"] = {"priority": "URGENT", "clinic_type": "HEART_FAILURE"}
    assert "named_clinician_sds_user_id" in problems(data)["search"]


def test_a_deferral_carries_the_clinicians_comment_and_the_slot_asked_about() -> None:
    data = valid()
    data["action"] = {
        "kind": "DEFER_TO_PROVIDER",
        "comment": "Patient asked for the Tuesday clinic",
        "requested_slot_id": "11000021",
    }
    result = parse_request(orjson.dumps(data))
    assert isinstance(result, ReferralRequestV1)
    assert result.action.comment == "Patient asked for the Tuesday clinic"
    assert result.action.requested_slot_id == "11000021"


@pytest.mark.parametrize("name", ["comment", "requested_slot_id"])
def test_deferral_details_are_refused_with_another_action(name: str) -> None:
    data = valid()
    data["action"] = {"kind": "BOOK_EARLIEST", name: "11000021"}
    assert "only allowed with DEFER_TO_PROVIDER" in problems(data)["action"]


def test_a_requested_slot_id_is_a_fhir_id() -> None:
    data = valid()
    data["action"] = {"kind": "DEFER_TO_PROVIDER", "requested_slot_id": "Slot/1 2"}
    assert "action.requested_slot_id" in problems(data)


def test_an_over_size_body_is_refused_before_it_is_parsed() -> None:
    # Not even JSON: a parse would say so; the size is what is reported.
    body = b"{" + b" " * MAX_MESSAGE_BYTES
    found = problems(body)
    assert list(found) == ["(body)"]
    assert f"over the {MAX_MESSAGE_BYTES} bytes" in found["(body)"]


def test_a_body_at_the_limit_is_parsed() -> None:
    data = valid()
    text = orjson.dumps(data)
    padded = text[:-1] + b" " * (MAX_MESSAGE_BYTES - len(text)) + b"}"
    assert len(padded) == MAX_MESSAGE_BYTES
    assert isinstance(parse_request(padded), ReferralRequestV1)


def test_an_over_size_attachment_is_refused_before_it_is_decoded(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def no_decoding(*args: object, **kwargs: object) -> bytes:
        raise AssertionError("decoded an attachment known to be too large")

    data = valid()
    data["attachments"][0]["content"] = "A" * (MAX_ATTACHMENT_BASE64_CHARS + 4)
    monkeypatch.setattr("schemas.referral_request.base64.b64decode", no_decoding)
    assert "larger than e-RS accepts" in problems(data)["attachments.0.content"]


def test_the_longest_base64_of_a_5_mib_file_decodes_and_one_byte_more_does_not() -> None:
    data = valid()
    data["attachments"][0]["content"] = base64.b64encode(b"x" * MAX_ATTACHMENT_BYTES).decode()
    assert isinstance(parse_request(orjson.dumps(data)), ReferralRequestV1)
    data["attachments"][0]["content"] = base64.b64encode(b"x" * (MAX_ATTACHMENT_BYTES + 1)).decode()
    assert len(data["attachments"][0]["content"]) == MAX_ATTACHMENT_BASE64_CHARS
    assert "larger than e-RS accepts" in problems(data)["attachments.0.content"]


@pytest.mark.parametrize(
    ("body", "where"),
    [
        (b'{"schema_version": "1", "request_id": "\xff\xfe"}', "invalid start byte at byte 39"),
        (b'{"request_id": "abcdefgh", "x": "\xc3"}', "invalid continuation byte at byte 33"),
        (b"\xff{}", "invalid start byte at byte 0"),
    ],
)
def test_invalid_utf8_is_reported_at_its_byte(body: bytes, where: str) -> None:
    assert problems(body) == {"(body)": f"body is not valid UTF-8: {where}"}


def test_invalid_json_is_reported_at_its_character() -> None:
    assert "at character 8" in problems(b'{"a": 1,,}')["(body)"]
