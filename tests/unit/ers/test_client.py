"""``ErsClient`` and ``ErsSession`` over a scripted transport (the only fake).

The client's seam is ``worker.ers.transport.Wire``; here an ``HttpxWire`` puts
``httpx.MockTransport`` behind it, so that each test reads the request as it would leave
(method, URL, headers, body, timeouts) and scripts answers and transport failures in httpx's
terms, the names ``worker.ers.classify`` reads.

Built as ``worker.ops.app`` builds them, with retry waits of a millisecond or so, so that
retries cost no time; where a wait's length matters, ``asyncio.sleep`` is recorded instead.
"""

from __future__ import annotations

import asyncio
import re
import time
import traceback
from collections.abc import Awaitable, Callable, Iterator, Mapping
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from pydantic import SecretStr

from schemas.referral_request import ActingUser
from tests.spec_examples import SPEC_DIR
from worker.ers.budget import CallBudget
from worker.ers.client import ErsClient, RetryPolicy
from worker.ers.session import ErsSession
from worker.ers.transport import Answer as WireAnswer
from worker.ers.transport import Ready
from worker.observability.metrics import Metrics
from worker.saga.errors import (
    ErsAuthError,
    ErsConflict,
    ErsError,
    ErsLocked,
    ErsOutcomeUnknown,
    ErsRateLimited,
    ErsRejected,
    ErsTransientError,
    ErsUnexpected,
    SagaError,
    TokenExpired,
)
from worker.saga.ports import AccessToken, BeforeWrite, ErsCall, ErsPort, ErsReply

BASE_URL = "https://ers.test/ers-api/"  # the client strips the slash and adds /STU3/
TOKEN = "tok-5ecr3t-2b9f0e71"  # a test token, looked for in every message
CORRELATION_ID = "corr-7f3a"
UBRN = "000000070000"
NOW = datetime(2025, 3, 3, 9, 30, tzinfo=UTC)
FHIR_JSON = "application/fhir+json"
FAST = RetryPolicy(max_attempts=4, initial_wait=0.001, max_wait=0.01)
USER = ActingUser.model_validate(
    {"ods_code": "R69", "business_function": "REFERRING_CLINICIAN", "sds_user_id": "021600556514"}
)
BODY = {"resourceType": "Parameters", "parameter": [{"name": "x", "valueString": "y"}]}
PDF_NAME = "000000070000_Appointment_Confirmation_Summary_20210603121353.pdf"

Answer = httpx.Response | Exception | Callable[[httpx.Request], httpx.Response]


def fhir(status: int = 200, body: Any = None, **headers: str) -> httpx.Response:
    """An e-RS answer with a FHIR JSON body (or none) and an X-Request-ID."""
    named = {"X-Request-ID": f"rid-{status}"} | {k.replace("_", "-"): v for k, v in headers.items()}
    content = b"" if body is None else orjson.dumps(body)
    return httpx.Response(status, content=content, headers={"Content-Type": FHIR_JSON, **named})


def outcome(code: str, diagnostics: str = "refused as it stands") -> dict[str, Any]:
    return {
        "resourceType": "OperationOutcome",
        "issue": [
            {
                "severity": "error",
                "code": "value",
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


class FakeErs:
    """The transport: answers in the order scripted, and every request it saw."""

    def __init__(self) -> None:
        self.answers: list[Answer] = []
        self.seen: list[httpx.Request] = []
        # ("sent", path), ("before_write", id), ("before_call", id) and ("not_taken", id)
        self.events: list[tuple[str, str]] = []

    def script(self, *answers: Answer) -> None:
        self.answers.extend(answers)

    def handle(self, request: httpx.Request) -> httpx.Response:
        self.seen.append(request)
        self.events.append(("sent", request.url.path))
        if not self.answers:
            raise AssertionError(f"unscripted request {request.method} {request.url.path}")
        answer = self.answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        if callable(answer):
            return answer(request)
        return answer

    async def before_write(self, endpoint: str) -> None:
        self.events.append(("before_write", endpoint))

    async def not_taken(self, endpoint: str) -> None:
        self.events.append(("not_taken", endpoint))

    async def before_call(self, endpoint: str) -> None:
        self.events.append(("before_call", endpoint))

    @property
    def writes(self) -> list[str]:
        return [value for kind, value in self.events if kind == "before_write"]


class HttpxWire:
    """The ``Wire`` of these tests: what the client hands it goes out as an httpx request
    over the fake transport, with the wire's default timeouts unless the call names one."""

    def __init__(self, http: httpx.AsyncClient) -> None:
        self._http = http
        self.readies = 0  # calls handed a ``ready`` (the budget's last word) with them

    async def send(
        self,
        method: str,
        url: str,
        headers: Mapping[str, str],
        body: bytes | None,
        *,
        timeout: float | None = None,
        ready: Ready | None = None,
    ) -> WireAnswer:
        if ready is not None:
            self.readies += 1
            await ready()  # as AiohttpWire does once it has a connection
        response = await self._http.request(
            method,
            url,
            headers=dict(headers),
            content=body,
            timeout=httpx.USE_CLIENT_DEFAULT if timeout is None else timeout,
        )
        return WireAnswer(response.status_code, response.headers, response.content)

    async def aclose(self) -> None:
        await self._http.aclose()


class Rig:
    def __init__(self, http: httpx.AsyncClient, fake: FakeErs) -> None:
        self.http = HttpxWire(http)
        self.fake = fake
        self.metrics = Metrics()
        self.waited: list[float] = []  # what ``waits`` did not sleep: the budget's clock counts it

    def clock(self) -> float:
        return time.time() + sum(self.waited)

    def client(self, retry: RetryPolicy = FAST, booking_timeout: float = 120.0) -> ErsClient:
        return ErsClient(
            self.http,
            base_url=BASE_URL,
            budget=CallBudget(1e6, metrics=self.metrics, key="unit", clock=self.clock),
            retry=retry,
            booking_timeout_seconds=booking_timeout,
            metrics=self.metrics,
        )

    def session(
        self,
        client: ErsClient | None = None,
        *,
        token: AccessToken | None = None,
        now: Callable[[], datetime] = lambda: NOW,
        before_write: BeforeWrite | None = None,
        before_call: BeforeWrite | None = None,
    ) -> ErsSession:
        return (client or self.client()).session(
            USER,
            token or AccessToken(SecretStr(TOKEN)),
            CORRELATION_ID,
            now=now,
            before_write=before_write or self.fake.before_write,
            not_taken=self.fake.not_taken,
            before_call=before_call or self.fake.before_call,
        )

    def retries(self, endpoint: str, reason: str) -> float:
        value = self.metrics.registry.get_sample_value(
            "ers_worker_api_retries_total", {"endpoint": endpoint, "reason": reason}
        )
        return value or 0.0

    def requests(self, endpoint: str, status_class: str) -> float:
        value = self.metrics.registry.get_sample_value(
            "ers_worker_api_requests_total", {"endpoint": endpoint, "status_class": status_class}
        )
        return value or 0.0


@pytest.fixture
async def rig() -> Any:
    fake = FakeErs()
    async with httpx.AsyncClient(
        transport=httpx.MockTransport(fake.handle), timeout=httpx.Timeout(5.0)
    ) as http:
        yield Rig(http, fake)


@pytest.fixture
def waits(monkeypatch: pytest.MonkeyPatch, rig: Rig) -> list[float]:
    """The waits tenacity asks for (it sleeps through ``asyncio.sleep``), without waiting;
    the rig's clock moves on by them, so that the budget's pause after a 429 is over when
    tenacity's wait is, as in real time."""
    recorded: list[float] = []
    real_sleep = asyncio.sleep

    async def sleep(seconds: float, result: Any = None) -> Any:
        recorded.append(seconds)
        rig.waited.append(seconds)
        return await real_sleep(0, result)

    monkeypatch.setattr(asyncio, "sleep", sleep)
    return recorded


# --- every endpoint: method, path, headers, body ---

Call = Callable[[ErsPort], Awaitable[ErsReply]]


def _slots(named_clinician: str | None = None) -> Call:
    return lambda s: s.retrieve_slots(
        service_id="11002",
        priority="ROUTINE",
        commissioning_rule_org="R68",
        page=2,
        page_size=20,
        named_clinician=named_clinician,
    )


def _upload(s: ErsPort) -> Awaitable[ErsReply]:
    return s.upload_file(
        ubrn=UBRN, file_name="letter.pdf", media_type="application/pdf", content=b"%PDF-1.4 x"
    )


# endpoint, method, path below the FHIR base, the call, whether it sends a JSON body
ENDPOINTS: list[tuple[str, str, str, Call, bool]] = [
    (
        "A004",
        "GET",
        "/STU3/CodeSystem/PRIORITY",
        lambda s: s.retrieve_reference_data("PRIORITY"),
        False,
    ),
    ("A005", "GET", f"/STU3/ReferralRequest/{UBRN}", lambda s: s.retrieve_referral(UBRN), False),
    (
        "A010",
        "POST",
        "/STU3/HealthcareService/$ers.searchHealthcareServicesForPatient",
        lambda s: s.search_services(BODY),
        True,
    ),
    (
        "A011",
        "POST",
        "/STU3/ReferralRequest/$ers.createReferral",
        lambda s: s.create_referral(BODY),
        True,
    ),
    (
        "A012",
        "POST",
        f"/STU3/ReferralRequest/{UBRN}/$ers.maintainReferralLetter",
        lambda s: s.maintain_referral_letter(UBRN, "4", BODY),
        True,
    ),
    ("A015", "GET", "/STU3/Slot", _slots(), False),
    ("A016", "POST", "/STU3/Appointment", lambda s: s.book_or_defer(BODY), True),
    (
        "A019",
        "POST",
        f"/STU3/ReferralRequest/{UBRN}/$ers.generatePatientLetter",
        lambda s: s.generate_patient_letter(UBRN),
        False,
    ),
    ("A020", "POST", "/STU3/Binary", _upload, False),
    (
        "A021",
        "POST",
        "/STU3/ReferralRequest/$ers.createReferralAndSendForTriage",
        lambda s: s.create_referral_and_send_for_triage(BODY),
        True,
    ),
]
WRITES = {"A011", "A012", "A016", "A020", "A021"}
BY_ID = {row[0]: row for row in ENDPOINTS}


def call_of(endpoint: str) -> Call:
    return BY_ID[endpoint][3]


@pytest.mark.parametrize(
    ("endpoint", "method", "path", "call", "json_body"), ENDPOINTS, ids=[e[0] for e in ENDPOINTS]
)
async def test_each_endpoint_is_sent_to_its_url_with_the_session_headers(
    rig: Rig, endpoint: str, method: str, path: str, call: Call, json_body: bool
) -> None:
    rig.fake.script(fhir(200, {"resourceType": "Whatever"}))

    reply = await call(rig.session())

    (request,) = rig.fake.seen
    assert request.method == method
    assert request.url.host == "ers.test"
    assert request.url.path == "/ers-api" + path
    h = request.headers
    assert h["Authorization"] == f"Bearer {TOKEN}"
    assert h["NHSD-End-User-Organisation-ODS"] == "R69"
    assert h["NHSD-eRS-Business-Function"] == "REFERRING_CLINICIAN"
    assert h["X-Correlation-ID"] == CORRELATION_ID
    expected_accept = f"application/pdf, {FHIR_JSON}" if endpoint == "A019" else FHIR_JSON
    assert h["Accept"] == expected_accept
    if json_body:
        assert h["Content-Type"] == FHIR_JSON
        assert orjson.loads(request.content) == BODY
    elif endpoint != "A020":
        assert "Content-Type" not in h
        assert request.content == b""
    assert ("If-Match" in h) == (endpoint == "A012")
    assert ("NHSD-eRS-Comm-Rule-Org" in h) == (endpoint == "A015")
    assert reply.status == 200
    assert reply.body == {"resourceType": "Whatever"}
    assert reply.request_id == "rid-200"
    assert rig.http.readies == 1  # its permit's at_the_wire went with it


async def test_a012_names_the_version_it_changes_in_if_match(rig: Rig) -> None:
    rig.fake.script(fhir(200, {}))

    await rig.session().maintain_referral_letter(UBRN, "17", BODY)

    assert rig.fake.seen[0].headers["If-Match"] == 'W/"17"'


async def test_a015_asks_for_free_slots_of_one_service_page_by_page(rig: Rig) -> None:
    rig.fake.script(fhir(200, {}), fhir(200, {}))
    session = rig.session()

    await _slots()(session)
    await _slots(named_clinician="921600556514")(session)

    plain, named = rig.fake.seen
    assert plain.headers["NHSD-eRS-Comm-Rule-Org"] == "R68"
    assert dict(plain.url.params) == {
        "schedule.actor:HealthcareService": "11002",
        "appointmentType": "ROUTINE",
        "_count": "20",
        "status": "free",
        "page": "2",
        "_include": "Slot:schedule",
    }
    assert named.url.params["schedule.actor:Practitioner"] == "921600556514"


async def test_a020_sends_the_file_as_it_is_with_its_name_and_referral(rig: Rig) -> None:
    rig.fake.script(fhir(201, None, Location="Binary/9e55-4611"))

    reply = await _upload(rig.session())

    (request,) = rig.fake.seen
    assert request.content == b"%PDF-1.4 x"
    assert request.headers["Content-Type"] == "application/pdf"
    assert request.headers["NHSD-eRS-File-Name"] == "letter.pdf"
    assert request.headers["NHSD-eRS-Referral-ID"] == UBRN
    assert reply.status == 201
    assert reply.location == "Binary/9e55-4611"
    assert reply.body is None


async def test_a019_answers_with_the_pdf_and_its_file_name(rig: Rig) -> None:
    pdf = b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n1 0 obj\n<<>>\nendobj\n%%EOF\n"
    rig.fake.script(
        httpx.Response(
            200,
            content=pdf,
            headers={
                "Content-Type": "application/pdf",
                "Content-Disposition": f'attachment; filename="{PDF_NAME}"',
                "X-Request-ID": "rid-pdf",
            },
        )
    )

    reply = await rig.session().generate_patient_letter(UBRN)

    assert reply.content == pdf
    assert reply.body is None
    assert reply.file_name == PDF_NAME
    assert reply.request_id == "rid-pdf"


async def test_a_reply_carries_the_etag_and_location(rig: Rig) -> None:
    rig.fake.script(fhir(201, {"id": UBRN}, ETag='W/"3"', Location=f"ReferralRequest/{UBRN}"))

    reply = await rig.session().create_referral(BODY)

    assert (reply.etag, reply.location, reply.body) == (
        'W/"3"',
        f"ReferralRequest/{UBRN}",
        {"id": UBRN},
    )


async def test_a016_waits_as_long_as_a_booking_may_take(rig: Rig) -> None:
    rig.fake.script(fhir(200, {}), fhir(200, {}))
    session = rig.session(rig.client(booking_timeout=123.0))

    await session.book_or_defer(BODY)
    await session.create_referral(BODY)

    booking, create = rig.fake.seen
    assert booking.extensions["timeout"]["read"] == 123.0
    assert create.extensions["timeout"]["read"] == 5.0  # the HTTP client's own default


# --- the specification agrees with the table above ---

SPEC = SPEC_DIR / "specification"
requires_spec = pytest.mark.skipif(not SPEC.is_dir(), reason=f"{SPEC} not present")


def _spec_operations() -> Iterator[tuple[str, str, str]]:
    """(endpoint file stem, method, path template) of every operation in the spec."""
    yaml = pytest.importorskip("yaml")
    doc = yaml.safe_load((SPEC / "e-referrals-service-api.yaml").read_text())
    for template, operations in doc["paths"].items():
        for method, operation in operations.items():
            if isinstance(operation, dict) and "$ref" in operation:
                yield Path(operation["$ref"]).stem, method.upper(), template


def _endpoint_file(endpoint: str) -> Path:
    folder = SPEC / "components/stu3/schemas/endpoints"
    (found,) = [
        p for p in folder.glob(f"{endpoint.lower()}-*.yaml") if not p.stem.endswith("versioned")
    ]
    return found


def _spec_parameter_names(endpoint: str, kind: str) -> set[str]:
    yaml = pytest.importorskip("yaml")
    path = _endpoint_file(endpoint)
    refs = [p["$ref"] for p in yaml.safe_load(path.read_text())["parameters"] if "$ref" in p]
    names = set()
    for ref in refs:
        if f"/{kind}/" in ref:
            names.add(yaml.safe_load((path.parent / ref).read_text())["name"])
    return names


@requires_spec
@pytest.mark.parametrize(("endpoint", "method", "path"), [e[:3] for e in ENDPOINTS])
def test_the_specification_has_each_endpoint_at_that_method_and_path(
    endpoint: str, method: str, path: str
) -> None:
    stem = _endpoint_file(endpoint).stem
    (spec_method, template), *more = [(m, t) for s, m, t in _spec_operations() if s == stem]
    assert not more
    pattern = re.escape(template)
    pattern = re.sub(r"\\\{[^}]+\\\}", "[^/]+", pattern)
    assert spec_method == method
    assert re.fullmatch(pattern, path), (template, path)


@requires_spec
@pytest.mark.parametrize(
    ("endpoint", "method", "path", "call", "json_body"), ENDPOINTS, ids=[e[0] for e in ENDPOINTS]
)
async def test_the_specification_names_every_header_we_send(
    rig: Rig, endpoint: str, method: str, path: str, call: Call, json_body: bool
) -> None:
    rig.fake.script(fhir(200, {}))
    await call(rig.session())

    sent = {
        name
        for name in rig.fake.seen[0].headers
        if name.lower().startswith("nhsd-")
        or name.lower() in ("authorization", "x-correlation-id", "if-match")
    }
    spec_names = {name.lower() for name in _spec_parameter_names(endpoint, "headers")}
    assert sent <= spec_names


@requires_spec
async def test_the_specification_names_every_slot_query_parameter(rig: Rig) -> None:
    rig.fake.script(fhir(200, {}))
    await _slots(named_clinician="921600556514")(rig.session())

    assert set(rig.fake.seen[0].url.params) <= _spec_parameter_names("A015", "queryParameters")


# --- write-ahead: before_write, and before_call ---


@pytest.mark.parametrize("endpoint", BY_ID)
async def test_before_write_comes_before_every_state_changing_call_before_call_every_read(
    rig: Rig, endpoint: str
) -> None:
    rig.fake.script(fhir(200, {}))

    await call_of(endpoint)(rig.session())

    kinds = [kind for kind, _ in rig.fake.events]
    if endpoint in WRITES:
        assert kinds == ["before_write", "sent"]
        assert rig.fake.writes == [endpoint]
    else:
        assert kinds == ["before_call", "sent"]
        assert rig.fake.writes == []


async def test_each_attempt_is_written_ahead_and_withdrawn_when_e_rs_did_not_take_it(
    rig: Rig,
) -> None:
    # A 503 proves e-RS did not take the request on: a crash while waiting to retry must
    # resume by sending again, not end NEEDS_RECONCILIATION (issue 9's false reconciliations).
    rig.fake.script(fhir(503), httpx.ConnectError("refused"), fhir(201, {}))

    await rig.session().create_referral(BODY)

    assert [kind for kind, _ in rig.fake.events] == [
        *("before_write", "sent", "not_taken"),
        *("before_write", "sent", "not_taken"),
        *("before_write", "sent"),
    ]


@pytest.mark.parametrize(
    "answer",
    [fhir(500), fhir(504), httpx.ReadTimeout("silent"), fhir(418)],
    ids=["500", "504", "read-timeout", "unlisted-418"],
)
async def test_a_mark_stays_when_the_attempt_may_have_been_acted_on(
    rig: Rig, answer: Answer
) -> None:
    rig.fake.script(answer)

    with pytest.raises(ErsError):
        await rig.session().create_referral(BODY)

    assert [kind for kind, _ in rig.fake.events] == ["before_write", "sent"]


async def cannot_checkpoint(endpoint: str) -> None:
    raise RuntimeError("lease lost")


@pytest.mark.parametrize("hook", ["before_write", "before_call"])
async def test_nothing_is_sent_when_the_journal_cannot_store_first(rig: Rig, hook: str) -> None:
    # A write's mark, or before a read what earlier writes did: not stored, nothing sent.
    session = rig.session(**{hook: cannot_checkpoint})
    call = (
        session.create_referral(BODY) if hook == "before_write" else session.retrieve_referral(UBRN)
    )
    with pytest.raises(RuntimeError, match="lease lost"):
        await call

    assert rig.fake.seen == []


# --- in-process retries of what is safe ---


async def test_a_503_is_retried_up_to_max_attempts_then_raised(rig: Rig) -> None:
    rig.fake.script(*[fhir(503, outcome("SYSTEM_UNAVAILABLE")) for _ in range(4)])
    session = rig.session()

    with pytest.raises(ErsTransientError) as caught:
        await session.retrieve_referral(UBRN)

    assert type(caught.value) is ErsTransientError
    assert caught.value.status == 503
    assert caught.value.code == "SYSTEM_UNAVAILABLE"
    assert len(rig.fake.seen) == FAST.max_attempts
    assert rig.retries("A005", "unavailable") == FAST.max_attempts - 1
    assert rig.requests("A005", "5xx") == FAST.max_attempts


async def test_a_503_on_a_write_is_retried_too(rig: Rig) -> None:
    rig.fake.script(fhir(503), fhir(201, {"id": UBRN}))

    reply = await rig.session().create_referral(BODY)

    assert reply.status == 201
    assert len(rig.fake.seen) == 2
    assert rig.retries("A011", "unavailable") == 1


async def test_a_500_on_a_read_is_retried(rig: Rig) -> None:
    rig.fake.script(fhir(500), fhir(502), fhir(200, {"concept": []}))

    reply = await rig.session().retrieve_reference_data("PRIORITY")

    assert reply.body == {"concept": []}
    assert len(rig.fake.seen) == 3
    assert rig.retries("A004", "server_error") == 2


async def test_a_connection_failure_is_retried_then_raised(rig: Rig) -> None:
    rig.fake.script(*[httpx.ConnectError("connection refused") for _ in range(4)])

    with pytest.raises(ErsTransientError) as caught:
        await rig.session().search_services(BODY)

    assert caught.value.code == "CONNECTION_ERROR"
    assert caught.value.status is None
    assert len(rig.fake.seen) == 4
    assert rig.retries("A010", "connection_error") == 3
    assert rig.requests("A010", "no_response") == 4


async def test_a_read_timeout_on_a_read_is_retried(rig: Rig) -> None:
    rig.fake.script(httpx.ReadTimeout("slow"), fhir(200, {"id": UBRN}))

    reply = await rig.session().retrieve_referral(UBRN)

    assert reply.body == {"id": UBRN}
    assert rig.retries("A005", "timeout") == 1


async def test_a_connection_failure_on_a_write_is_retried_as_it_was_not_sent(rig: Rig) -> None:
    rig.fake.script(httpx.ConnectError("connection refused"), fhir(201, {"id": UBRN}))

    reply = await rig.session().create_referral(BODY)

    assert reply.status == 201
    assert len(rig.fake.seen) == 2
    assert rig.fake.writes == ["A011", "A011"]  # a mark per attempt, the first withdrawn
    assert [kind for kind, _ in rig.fake.events].count("not_taken") == 1


async def test_a_429_waits_as_long_as_retry_after_says(rig: Rig, waits: list[float]) -> None:
    rig.fake.script(fhir(429, Retry_After="7"), fhir(200, {}))
    client = rig.client(RetryPolicy(max_attempts=4, initial_wait=0.001, max_wait=60.0))

    reply = await rig.session(client).search_services(BODY)

    assert reply.status == 200
    assert waits == [7.0]
    assert rig.retries("A010", "rate_limited") == 1


async def test_a_429_asking_longer_than_max_wait_is_not_retried_too_soon(
    rig: Rig, waits: list[float]
) -> None:
    # Issue 9: Retry-After: 120 is not answered after max_wait; the saga waits in a delay
    # queue for at least what e-RS asked.
    rig.fake.script(fhir(429, Retry_After="120"))

    with pytest.raises(ErsRateLimited) as raised:
        await rig.session(rig.client(FAST)).search_services(BODY)

    assert raised.value.retry_after == 120.0
    assert waits == []
    assert len(rig.fake.seen) == 1


async def test_a_429_with_an_http_date_waits_until_then(rig: Rig, waits: list[float]) -> None:
    then = format_datetime(NOW + timedelta(seconds=7), usegmt=True)
    rig.fake.script(fhir(429, Retry_After=then), fhir(200, {}))
    client = rig.client(RetryPolicy(max_attempts=4, initial_wait=0.001, max_wait=60.0))

    await rig.session(client).search_services(BODY)

    assert waits == [7.0]


async def test_an_unreadable_retry_after_backs_off_on_its_own(rig: Rig, waits: list[float]) -> None:
    rig.fake.script(fhir(429, Retry_After="soon"), fhir(200, {}))
    client = rig.client(RetryPolicy(max_attempts=4, initial_wait=0.001, max_wait=60.0))

    await rig.session(client).search_services(BODY)

    (wait,) = waits
    assert 0 < wait <= 0.002  # the first exponential step (initial_wait, plus jitter)


async def test_a_429_that_persists_is_raised_as_rate_limited(rig: Rig) -> None:
    rig.fake.script(*[fhir(429, Retry_After="0") for _ in range(4)])

    with pytest.raises(ErsRateLimited) as caught:
        await rig.session().retrieve_slots(
            service_id="1", priority="ROUTINE", commissioning_rule_org="R68", page=1, page_size=5
        )

    assert caught.value.retry_after == 0.0
    assert len(rig.fake.seen) == 4
    assert rig.retries("A015", "rate_limited") == 3


# --- state-changing calls whose effect is unknown are never repeated ---


@pytest.mark.parametrize("status", [500, 502, 504])
async def test_a_server_fault_on_a_write_is_outcome_unknown_and_not_retried(
    rig: Rig, status: int
) -> None:
    rig.fake.script(fhir(status), fhir(201, {}))

    with pytest.raises(ErsOutcomeUnknown) as caught:
        await rig.session().create_referral(BODY)

    assert caught.value.status == status
    assert caught.value.request_id == f"rid-{status}"
    assert len(rig.fake.seen) == 1
    assert rig.retries("A011", "server_error") == 0


@pytest.mark.parametrize(
    "timeout", [httpx.ReadTimeout("no answer"), httpx.WriteTimeout("half sent")]
)
async def test_a_timeout_on_a_write_is_outcome_unknown_and_not_retried(
    rig: Rig, timeout: Exception
) -> None:
    rig.fake.script(timeout, fhir(201, {}))

    with pytest.raises(ErsOutcomeUnknown) as caught:
        await rig.session().create_referral(BODY)

    assert caught.value.code == "TIMEOUT"
    assert caught.value.status is None
    assert len(rig.fake.seen) == 1


@pytest.mark.parametrize("endpoint", ["A012", "A016", "A020", "A021"])
async def test_every_write_is_sent_once_when_its_answer_is_a_504(rig: Rig, endpoint: str) -> None:
    rig.fake.script(fhir(504), fhir(200, {}))

    with pytest.raises(ErsOutcomeUnknown):
        await call_of(endpoint)(rig.session())

    assert len(rig.fake.seen) == 1


# --- answers that are not retried in process ---


@pytest.mark.parametrize(
    ("status", "kind"),
    [
        (401, ErsAuthError),
        (409, ErsConflict),
        (412, ErsConflict),
        (423, ErsLocked),
        (403, ErsRejected),
        (404, ErsRejected),
        (418, ErsUnexpected),
    ],
)
async def test_final_and_waiting_answers_are_raised_at_once(
    rig: Rig, status: int, kind: type[ErsError]
) -> None:
    rig.fake.script(fhir(status, outcome("SOME_CODE")), fhir(200, {}))

    with pytest.raises(kind) as caught:
        await rig.session().maintain_referral_letter(UBRN, "4", BODY)

    assert type(caught.value) is kind
    assert caught.value.status == status
    assert caught.value.endpoint == "A012"
    assert len(rig.fake.seen) == 1


@pytest.mark.parametrize("status", [400, 422])
async def test_a_refusal_carries_the_e_rs_code_and_diagnostics(rig: Rig, status: int) -> None:
    rig.fake.script(fhir(status, outcome("SLOT_NOT_AVAILABLE", "slot 11002026 is taken")))

    with pytest.raises(ErsRejected) as caught:
        await rig.session().book_or_defer(BODY)

    error = caught.value
    assert (error.status, error.code) == (status, "SLOT_NOT_AVAILABLE")
    assert error.diagnostics == "slot 11002026 is taken"
    assert error.request_id == f"rid-{status}"
    assert len(rig.fake.seen) == 1


async def test_an_unlisted_status_without_a_body_is_unexpected(rig: Rig) -> None:
    rig.fake.script(httpx.Response(418, content=b"I'm a teapot", headers={"X-Request-ID": "t"}))

    with pytest.raises(ErsUnexpected) as caught:
        await rig.session().retrieve_referral(UBRN)

    assert caught.value.code == "HTTP_418"


async def test_a_success_unreadable_on_a_write_is_outcome_unknown(rig: Rig) -> None:
    rig.fake.script(
        httpx.Response(
            201, content=b'{"resourceType": "Referr', headers={"Content-Type": FHIR_JSON}
        )
    )
    session = rig.session()

    with pytest.raises(ErsOutcomeUnknown) as caught:
        await session.create_referral(BODY)

    assert (caught.value.status, caught.value.code) == (201, "UNREADABLE_BODY")
    assert len(rig.fake.seen) == 1
    (call,) = session.drain_calls()
    assert (call.status, call.error_code) == (201, "UNREADABLE_BODY")


async def test_a_success_unreadable_on_a_read_is_unexpected_and_not_retried(rig: Rig) -> None:
    rig.fake.script(
        httpx.Response(200, content=b"<html>proxy</html>", headers={"Content-Type": FHIR_JSON}),
        fhir(200, {}),
    )

    with pytest.raises(ErsUnexpected) as caught:
        await rig.session().retrieve_referral(UBRN)

    assert (caught.value.status, caught.value.code) == (200, "UNREADABLE_BODY")
    assert len(rig.fake.seen) == 1


@pytest.mark.parametrize(
    ("endpoint", "kind"), [("A011", ErsOutcomeUnknown), ("A005", ErsUnexpected)]
)
@pytest.mark.parametrize(
    ("content", "content_type"),
    [(b"", FHIR_JSON), (b"<html><body>OK</body></html>", "text/html")],
    ids=["empty", "html"],
)
async def test_a_success_without_the_fhir_body_the_spec_promises_cannot_be_read(
    rig: Rig, endpoint: str, kind: type[ErsError], content: bytes, content_type: str
) -> None:
    # A011 and A005 answer with a FHIR resource (the spec: application/fhir+json).
    rig.fake.script(httpx.Response(200, content=content, headers={"Content-Type": content_type}))

    with pytest.raises(kind):
        await call_of(endpoint)(rig.session())


# --- the token ---


async def test_an_expired_token_sends_nothing(rig: Rig) -> None:
    expired = AccessToken(SecretStr(TOKEN), expires_at=NOW - timedelta(seconds=1))
    session = rig.session(token=expired)

    with pytest.raises(TokenExpired):
        await session.retrieve_referral(UBRN)

    assert rig.fake.seen == []
    assert session.drain_calls() == []


async def test_a_token_expiring_between_attempts_stops_the_retries(rig: Rig) -> None:
    rig.fake.script(fhir(503), fhir(200, {}))
    token = AccessToken(SecretStr(TOKEN), expires_at=NOW + timedelta(minutes=1))
    # token check, call record, the answer's classification, token check
    times = iter([NOW, NOW, NOW, NOW + timedelta(hours=1)])

    with pytest.raises(TokenExpired):
        await rig.session(token=token, now=lambda: next(times)).retrieve_referral(UBRN)

    assert len(rig.fake.seen) == 1


async def test_the_token_is_in_no_error_and_no_history(rig: Rig) -> None:
    failures: list[tuple[Answer, Call]] = [
        (fhir(401, outcome("NO_ACCESS")), call_of("A005")),
        (fhir(422, outcome("INVALID_VALUE", "bad value")), call_of("A011")),
        (fhir(418), call_of("A004")),
        (fhir(504), call_of("A016")),
        (httpx.ReadTimeout("no answer"), call_of("A021")),
        (httpx.Response(200, content=b"{", headers={"Content-Type": FHIR_JSON}), call_of("A010")),
    ]
    errors: list[SagaError] = []
    histories: list[list[ErsCall]] = []
    for answer, call in failures:
        rig.fake.script(answer)
        session = rig.session()
        with pytest.raises(SagaError) as caught:
            await call(session)
        errors.append(caught.value)
        histories.append(session.drain_calls())
    rig.fake.script(*[httpx.ConnectError("refused") for _ in range(4)])
    session = rig.session()
    with pytest.raises(ErsTransientError) as caught_transient:
        await session.search_services(BODY)
    errors.append(caught_transient.value)
    histories.append(session.drain_calls())
    expired = AccessToken(SecretStr(TOKEN), expires_at=NOW)
    with pytest.raises(TokenExpired) as caught_expired:
        await rig.session(token=expired).retrieve_referral(UBRN)
    errors.append(caught_expired.value)

    assert len(errors) == 8
    for error in errors:
        shown = [
            str(error),
            repr(error),
            repr(error.args),
            "".join(traceback.format_exception(error)),
        ]
        if isinstance(error, ErsError):
            shown.append(error.diagnostics)
        assert all(TOKEN not in text for text in shown), error
    assert all(TOKEN not in repr(history) for history in histories)
    assert TOKEN not in repr(AccessToken(SecretStr(TOKEN)))
    assert all(h.headers["Authorization"] == f"Bearer {TOKEN}" for h in rig.fake.seen)


# --- the call history ---


async def test_the_history_has_one_entry_per_attempt_and_drains(rig: Rig) -> None:
    rig.fake.script(
        fhir(503, outcome("SYSTEM_UNAVAILABLE"), X_Request_ID="rid-a"),
        httpx.ConnectError("refused"),
        fhir(200, {"id": UBRN}, X_Request_ID="rid-c"),
    )
    session = rig.session()

    await session.retrieve_referral(UBRN)
    calls = session.drain_calls()

    assert [(c.endpoint, c.status, c.x_request_id, c.error_code) for c in calls] == [
        ("A005", 503, "rid-a", "SYSTEM_UNAVAILABLE"),
        ("A005", None, None, "CONNECTION_ERROR"),
        ("A005", 200, "rid-c", None),
    ]
    assert all(c.at == NOW and c.duration_ms >= 0 for c in calls)
    assert session.drain_calls() == []


async def test_each_session_keeps_its_own_history(rig: Rig) -> None:
    rig.fake.script(fhir(200, {}), fhir(201, {}))
    client = rig.client()
    first, second = rig.session(client), rig.session(client)

    await first.retrieve_referral(UBRN)
    await second.create_referral(BODY)

    assert [c.endpoint for c in first.drain_calls()] == ["A005"]
    assert [c.endpoint for c in second.drain_calls()] == ["A011"]


async def test_the_history_of_a_call_that_raised_is_kept(rig: Rig) -> None:
    rig.fake.script(fhir(409, outcome("VERSION_MISMATCH"), X_Request_ID="rid-409"))
    session = rig.session()

    with pytest.raises(ErsConflict):
        await session.maintain_referral_letter(UBRN, "3", BODY)

    (call,) = session.drain_calls()
    assert (call.endpoint, call.status, call.x_request_id, call.error_code) == (
        "A012",
        409,
        "rid-409",
        "VERSION_MISMATCH",
    )
