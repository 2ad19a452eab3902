"""Fakes at the saga's seams, for unit tests with no broker, no HTTP and no database.

``FakeErs`` implements ``worker.saga.ports.ErsPort``. Each endpoint (by its e-RS id, "A015")
has a queue of scripted outcomes, consumed in order, and optionally a default used once the
queue is empty. An outcome is an ``ErsReply`` (returned), an exception (raised: normally one
of ``worker.saga.errors``), or a callable taking the ``Call`` and returning (or awaiting) an
``ErsReply``. Every call is recorded (``calls``), and, like the real client, every HTTP
attempt (a reply or an ``ErsError``) is kept for ``drain_calls``.

A call nobody scripted raises ``UnscriptedCall``, a BaseException, so that the runner's
catch-all for bugs cannot turn a test's missing script into an INTERNAL_ERROR outcome.

The FHIR builders below make minimal bodies of the shapes in NHS Digital's e-RS examples
(``../shared/ers-spec/examples/stu3``) that ``worker.fhir.read`` parses.
"""

from __future__ import annotations

import hashlib
import inspect
from collections import deque
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from schemas.events import LetterInfo, Path, Step
from schemas.referral_request import ReferralRequestV1
from worker.fhir.build import (
    ERS_SERVICE,
    NHS_NUMBER,
    ODS_ORGANIZATION_CODE,
    SDS_USER_ID,
    specialty_system,
)
from worker.fhir.vocabulary import STATE_CHANGING, Endpoint
from worker.ops.samples import sample
from worker.saga.context import SagaContext, SagaOptions
from worker.saga.errors import ErsError
from worker.saga.ports import BeforeWrite, ErsCall, ErsReply
from worker.saga.reference_data import ReferenceData
from worker.saga.slot_claims import SlotClaims
from worker.saga.state import SagaState, ShortlistedService

Json = dict[str, Any]
NOW = datetime(2025, 6, 2, 9, 0, tzinfo=UTC)  # a Monday
SPECIALTY_CS = specialty_system("https://ers.example")
UBRN = "000000070000"
COMMISSIONING_ORG = "R69"
_SD = "https://fhir.nhs.uk/STU3/StructureDefinition/"
_CS = "https://fhir.nhs.uk/STU3/CodeSystem/"


def fixed_now() -> datetime:
    return NOW


# --- the e-RS port ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Call:
    """One call the saga made through the port: endpoint id, method name and arguments."""

    endpoint: str
    method: str
    args: dict[str, Any]


Outcome = ErsReply | BaseException | Callable[[Call], ErsReply | Awaitable[ErsReply]]


class UnscriptedCall(BaseException):
    """The saga called an endpoint the test gave no outcome for."""


class FakeErs:
    """A scriptable ``ErsPort`` that records every call."""

    METHODS: dict[str, Endpoint] = {
        "retrieve_reference_data": Endpoint.A004,
        "retrieve_referral": Endpoint.A005,
        "retrieve_worklist": Endpoint.A008,
        "search_services": Endpoint.A010,
        "create_referral": Endpoint.A011,
        "maintain_referral_letter": Endpoint.A012,
        "retrieve_slots": Endpoint.A015,
        "book_or_defer": Endpoint.A016,
        "generate_patient_letter": Endpoint.A019,
        "upload_file": Endpoint.A020,
        "create_referral_and_send_for_triage": Endpoint.A021,
    }

    def __init__(
        self,
        *,
        now: Callable[[], datetime] = fixed_now,
        before_write: BeforeWrite | None = None,
        before_call: BeforeWrite | None = None,
    ) -> None:
        self._now = now
        self._before_write = before_write
        self._before_call = before_call
        self._queues: dict[str, deque[Outcome]] = {e.value: deque() for e in Endpoint}
        self._defaults: dict[str, Outcome] = {}
        self._undrained: list[ErsCall] = []
        self.calls: list[Call] = []
        self.attempts: list[ErsCall] = []
        """Every HTTP attempt, drained or not."""

    # scripting

    def script(self, endpoint: str, *outcomes: Outcome) -> FakeErs:
        """Queue outcomes for the next calls of ``endpoint``, in order."""
        self._queues[Endpoint(endpoint).value].extend(outcomes)
        return self

    def always(self, endpoint: str, outcome: Outcome) -> FakeErs:
        """The outcome of every call of ``endpoint`` once its queue is empty."""
        self._defaults[Endpoint(endpoint).value] = outcome
        return self

    def unconsumed(self) -> dict[str, int]:
        """Scripted outcomes not yet used, per endpoint (defaults not counted)."""
        return {e: len(q) for e, q in self._queues.items() if q}

    # what was called

    def endpoints(self) -> list[str]:
        return [c.endpoint for c in self.calls]

    def calls_to(self, endpoint: str) -> list[Call]:
        return [c for c in self.calls if c.endpoint == Endpoint(endpoint).value]

    def bodies(self, endpoint: str) -> list[Json]:
        """The ``body`` argument of each call of ``endpoint`` (A010, A011, A012, A016, A021)."""
        return [c.args["body"] for c in self.calls_to(endpoint)]

    # ErsPort

    def drain_calls(self) -> list[ErsCall]:
        drained, self._undrained = self._undrained, []
        return drained

    async def retrieve_reference_data(self, code_system: str) -> ErsReply:
        return await self._answer("retrieve_reference_data", code_system=code_system)

    async def retrieve_referral(self, ubrn: str) -> ErsReply:
        return await self._answer("retrieve_referral", ubrn=ubrn)

    async def retrieve_worklist(self, body: dict[str, Any]) -> ErsReply:
        return await self._answer("retrieve_worklist", body=body)

    async def search_services(self, body: dict[str, Any]) -> ErsReply:
        return await self._answer("search_services", body=body)

    async def create_referral(self, body: dict[str, Any]) -> ErsReply:
        return await self._answer("create_referral", body=body)

    async def maintain_referral_letter(
        self, ubrn: str, version: str, body: dict[str, Any]
    ) -> ErsReply:
        return await self._answer("maintain_referral_letter", ubrn=ubrn, version=version, body=body)

    async def retrieve_slots(
        self,
        *,
        service_id: str,
        priority: str,
        commissioning_rule_org: str,
        page: int,
        page_size: int,
        named_clinician: str | None = None,
    ) -> ErsReply:
        return await self._answer(
            "retrieve_slots",
            service_id=service_id,
            priority=priority,
            commissioning_rule_org=commissioning_rule_org,
            page=page,
            page_size=page_size,
            named_clinician=named_clinician,
        )

    async def book_or_defer(self, body: dict[str, Any]) -> ErsReply:
        return await self._answer("book_or_defer", body=body)

    async def generate_patient_letter(self, ubrn: str) -> ErsReply:
        return await self._answer("generate_patient_letter", ubrn=ubrn)

    async def upload_file(
        self, *, ubrn: str, file_name: str, media_type: str, content: bytes
    ) -> ErsReply:
        return await self._answer(
            "upload_file", ubrn=ubrn, file_name=file_name, media_type=media_type, content=content
        )

    async def create_referral_and_send_for_triage(self, body: dict[str, Any]) -> ErsReply:
        return await self._answer("create_referral_and_send_for_triage", body=body)

    # the one place calls are answered

    async def _answer(self, method: str, **args: Any) -> ErsReply:
        endpoint = self.METHODS[method]
        call = Call(endpoint.value, method, args)
        self.calls.append(call)
        if endpoint in STATE_CHANGING and self._before_write is not None:
            await self._before_write(endpoint.value)
        elif endpoint not in STATE_CHANGING and self._before_call is not None:
            await self._before_call(endpoint.value)
        queue = self._queues[endpoint.value]
        if queue:
            outcome = queue.popleft()
        elif endpoint.value in self._defaults:
            outcome = self._defaults[endpoint.value]
        else:
            raise UnscriptedCall(f"{endpoint.value} ({method}) called with no outcome scripted")
        at = self._now()
        try:
            if isinstance(outcome, BaseException):
                raise outcome
            if isinstance(outcome, ErsReply):
                reply = outcome
            else:
                produced = outcome(call)
                reply = await produced if inspect.isawaitable(produced) else produced
        except ErsError as exc:
            self._record(ErsCall(endpoint.value, exc.status, at, 0, exc.request_id, exc.code))
            raise
        self._record(ErsCall(endpoint.value, reply.status, at, 0, reply.request_id, None))
        return reply

    def _record(self, call: ErsCall) -> None:
        self._undrained.append(call)
        self.attempts.append(call)


# --- the other ports ------------------------------------------------------------------------


@dataclass
class FakeLetters:
    """A ``LetterStore`` in memory."""

    saved: list[dict[str, Any]] = field(default_factory=list)

    async def save(
        self, *, ubrn: str, request_id: str, file_name: str | None, content: bytes
    ) -> LetterInfo:
        self.saved.append(
            {"ubrn": ubrn, "request_id": request_id, "file_name": file_name, "content": content}
        )
        return LetterInfo(
            location=f"memory://letters/{request_id}.pdf",
            file_name=file_name or f"{ubrn}.pdf",
            size_bytes=len(content),
            sha256=hashlib.sha256(content).hexdigest(),
        )


class RecordingObserver:
    """A ``SagaObserver`` that remembers what it was told."""

    def __init__(self) -> None:
        self.started: list[Step] = []
        self.failed: list[tuple[Step, str]] = []

    def step_started(self, step: Step) -> None:
        self.started.append(step)

    def step_failed(self, step: Step, reason: str) -> None:
        self.failed.append((step, reason))


class RecordingCheckpoint:
    """A runner checkpoint that keeps every state it is given."""

    def __init__(self) -> None:
        self.states: list[SagaState] = []

    async def __call__(self, state: SagaState) -> None:
        self.states.append(state)


# --- requests, contexts and states ----------------------------------------------------------


def sample_request(name: str = "01-dbs-booked.json", **changes: Any) -> ReferralRequestV1:
    """A shipped sample, validated. A dict value is merged into the sample's own dict of that
    name (``search={"named_clinician_sds_user_id": ...}``); any other value replaces it."""
    data = sample(name)
    for key, value in changes.items():
        if isinstance(value, dict) and isinstance(data.get(key), dict):
            data[key] = {**data[key], **value}
        else:
            data[key] = value
    return ReferralRequestV1.model_validate(data)


def make_context(
    request: ReferralRequestV1 | None = None,
    ers: FakeErs | None = None,
    *,
    options: SagaOptions | None = None,
    letters: FakeLetters | None = None,
    reference: ReferenceData | None = None,
    slot_claims: SlotClaims | None = None,
    now: Callable[[], datetime] = fixed_now,
) -> SagaContext:
    return SagaContext(
        request=request if request is not None else sample_request(),
        ers=ers if ers is not None else FakeErs(),
        letters=letters if letters is not None else FakeLetters(),
        reference=reference if reference is not None else ReferenceData(),
        options=options if options is not None else SagaOptions(specialty_cs=SPECIALTY_CS),
        now=now,
        slot_claims=slot_claims if slot_claims is not None else SlotClaims(),
    )


def dbs_service(service_id: str = "11002") -> ShortlistedService:
    return ShortlistedService(
        service_id=service_id,
        name="Good Cardiology Business Service",
        bookable_type="DIRECTLY_BOOKABLE",
        triage=False,
    )


def saga_state(request: ReferralRequestV1, step: Step, **fields: Any) -> SagaState:
    """A saga of ``request`` at ``step``, with the given fields."""
    return SagaState(
        request_id=request.request_id, correlation_id=f"corr-{request.request_id}", step=step
    ).model_copy(update=fields)


def created_fields(
    *, service: ShortlistedService | None = None, version: str = "3", **more: Any
) -> dict[str, Any]:
    """The fields a DBS saga holds once its referral is created (A004, A010, A011 done)."""
    return {
        "defer_contact_days": 40,
        "triage_contact_days": 40,
        "shortlist": (service or dbs_service(),),
        "path": Path.DBS_BOOKED,
        "ubrn": UBRN,
        "referral_version": version,
        "referral_state": "NOT_BOOKED",
        "commissioning_rule_org": COMMISSIONING_ORG,
        **more,
    }


# --- replies --------------------------------------------------------------------------------


def ok(
    body: Any = None,
    *,
    status: int = 200,
    etag: str | None = None,
    location: str | None = None,
    content: bytes = b"",
    file_name: str | None = None,
    request_id: str | None = None,
) -> ErsReply:
    return ErsReply(
        status=status,
        body=body,
        content=content,
        etag=etag,
        location=location,
        file_name=file_name,
        request_id=request_id,
    )


def priority_code_system(days: dict[str, tuple[int | None, int | None]] | None = None) -> Json:
    """A004 PRIORITY (getCodeSystem/PriorityCodeSystem.json): per priority, the
    (deferToProviderContactDays, triageContactDays). Defaults are the example's."""
    table = days or {"ROUTINE": (40, 40), "URGENT": (10, 5), "TWO_WEEK_WAIT": (5, 2)}
    concepts = []
    for code, (defer, triage) in table.items():
        props: list[Json] = [{"code": "effectiveFrom", "valueDateTime": "2004-06-01T00:00:00.000Z"}]
        if defer is not None:
            props.append({"code": "deferToProviderContactDays", "valueInteger": defer})
        if triage is not None:
            props.append({"code": "triageContactDays", "valueInteger": triage})
        concepts.append({"code": code, "display": code.title(), "property": props})
    return {"resourceType": "CodeSystem", "id": "PRIORITY", "concept": concepts}


def service_entry(
    service_id: str,
    *,
    name: str = "Good Cardiology Business Service",
    bookable_type: str = "DIRECTLY_BOOKABLE",
    flows: Iterable[str] = ("APPOINTMENT_REQUEST",),
) -> Json:
    """One entry of A010's FetchServices List (patientServiceSearch responses)."""
    subs: list[Json] = [
        {"url": "serviceName", "valueString": name},
        {
            "url": "bookableType",
            "valueCodeableConcept": {
                "coding": [{"system": f"{_CS}eRS-BookableType-1", "code": bookable_type}]
            },
        },
    ]
    subs.extend(
        {
            "url": "supportedRequestFlowType",
            "valueCodeableConcept": {
                "coding": [{"system": f"{_CS}eRS-RequestFlowType-1", "code": flow}]
            },
        }
        for flow in flows
    )
    return {
        "item": {
            "identifier": {"system": ERS_SERVICE, "value": service_id},
            "extension": [{"url": f"{_SD}Extension-eRS-ServiceSummaryView-1", "extension": subs}],
        }
    }


def service_list(*entries: Json) -> Json:
    return {"resourceType": "List", "status": "current", "mode": "snapshot", "entry": list(entries)}


@dataclass(frozen=True, slots=True)
class SlotSpec:
    slot_id: str
    start: str
    end: str
    clinician: str | None = None


def slot(
    slot_id: str, start: str, end: str | None = None, clinician: str | None = None
) -> SlotSpec:
    """A free slot; ``end`` defaults to ``start`` with the hour moved on by one."""
    if end is None:
        begins = datetime.fromisoformat(start.replace("Z", "+00:00"))
        end = (begins + timedelta(hours=1)).strftime("%Y-%m-%dT%H:%M:%S.000Z")
    return SlotSpec(slot_id, start, end, clinician)


def slot_bundle(
    slots: Sequence[SlotSpec], total: int | None = None, service_id: str = "11002"
) -> Json:
    """A015's searchset (retrieveAppointmentSlots responses): Slot entries and the Schedules
    they reference; a slot with a clinician is on a Schedule whose actor names them."""
    entries: list[Json] = []
    schedules: dict[str, str | None] = {}
    for s in slots:
        schedule_id = f"{service_id}-{s.clinician}" if s.clinician else service_id
        schedules[schedule_id] = s.clinician
        entries.append(
            {
                "fullUrl": f"_baseUrl_/STU3/Slot/{s.slot_id}",
                "resource": {
                    "id": s.slot_id,
                    "resourceType": "Slot",
                    "schedule": {"reference": f"Schedule/{schedule_id}"},
                    "status": "free",
                    "start": s.start,
                    "end": s.end,
                },
                "search": {"mode": "match"},
            }
        )
    for schedule_id, clinician in schedules.items():
        actors: list[Json] = [{"identifier": {"system": ERS_SERVICE, "value": service_id}}]
        if clinician:
            actors.append({"identifier": {"system": SDS_USER_ID, "value": clinician}})
        entries.append(
            {
                "fullUrl": f"_baseUrl_/STU3/Schedule/{schedule_id}",
                "resource": {"id": schedule_id, "resourceType": "Schedule", "actor": actors},
                "search": {"mode": "include"},
            }
        )
    return {
        "resourceType": "Bundle",
        "type": "searchset",
        "total": len(slots) if total is None else total,
        "entry": entries,
    }


def appointment(
    *,
    status: str,
    version: str,
    appointment_id: str = "70000",
    reason: str | None = None,
    start: str | None = None,
    end: str | None = None,
    slot_id: str | None = None,
    created: str = "2025-06-02T09:00:05.000+00:00",
    service_id: str = "11002",
    ubrn: str = UBRN,
) -> Json:
    """An e-RS Appointment (bookOrDeferAppointment responses; contained in A005's referral).
    ``version`` is the referral's new version, carried in ``incomingReferral``."""
    body: Json = {
        "id": appointment_id,
        "resourceType": "Appointment",
        "status": status,
        "created": created,
        "incomingReferral": [{"reference": f"ReferralRequest/{ubrn}/_history/{version}"}],
        "participant": [
            {"actor": {"identifier": {"system": ERS_SERVICE, "value": service_id}}},
            {"actor": {"identifier": {"system": NHS_NUMBER, "value": "9912003888"}}},
        ],
    }
    if reason is not None:
        body["reason"] = [{"coding": [{"system": f"{_CS}eRS-ReviewReason-1", "code": reason}]}]
    if start is not None:
        body["start"] = start
    if end is not None:
        body["end"] = end
    if slot_id is not None:
        body["slot"] = [{"reference": f"Slot/{slot_id}"}]
    return body


def booked(s: SlotSpec, *, version: str = "6", appointment_id: str = "70000") -> Json:
    """A016's answer to a booking of ``s`` (MinimalBooking.json)."""
    return appointment(
        status="booked",
        version=version,
        appointment_id=appointment_id,
        start=s.start,
        end=s.end,
        slot_id=s.slot_id,
    )


def deferred(reason: str, *, version: str = "6", appointment_id: str = "70001") -> Json:
    """A016's answer to a deferral (MinimalDeferral.json) or a triage referral (TRIAGE)."""
    return appointment(
        status="proposed", version=version, appointment_id=appointment_id, reason=reason
    )


def referral(
    *,
    version: str = "3",
    state: str = "NOT_BOOKED",
    ubrn: str = UBRN,
    commissioning_org: str | None = COMMISSIONING_ORG,
    contained_appointment: Json | None = None,
    attachment_urls: Sequence[str] = (),
) -> Json:
    """An e-RS ReferralRequest (A005, A011, A012, A021 answers; retrieveReferralRequest)."""
    extensions: list[Json] = [
        {
            "url": f"{_SD}Extension-eRS-ReferralState-1",
            "extension": [
                {
                    "url": "state",
                    "valueCoding": {"system": f"{_CS}eRS-ReferralState-1", "code": state},
                }
            ],
        }
    ]
    if commissioning_org is not None:
        extensions.append(
            {
                "url": f"{_SD}Extension-eRS-Commissioning-Rule-Org-1",
                "valueIdentifier": {"system": ODS_ORGANIZATION_CODE, "value": commissioning_org},
            }
        )
    contained: list[Json] = []
    if contained_appointment is not None:
        contained.append({**contained_appointment, "id": "appointment"})
        extensions.append(
            {
                "url": f"{_SD}Extension-eRS-Appointment-1",
                "valueReference": {"reference": "#appointment"},
            }
        )
        extensions.append(
            {
                "url": f"{_SD}Extension-eRS-Appointment-Reference-1",
                "valueReference": {"reference": f"Appointment/{contained_appointment['id']}"},
            }
        )
    for i, url in enumerate(attachment_urls):
        contained.append(
            {
                "id": f"DocumentReference-{i}",
                "resourceType": "DocumentReference",
                "status": "current",
                "content": [{"attachment": {"url": url, "contentType": "text/plain"}}],
            }
        )
    return {
        "resourceType": "ReferralRequest",
        "id": ubrn,
        "meta": {"versionId": version},
        "extension": extensions,
        "contained": contained,
    }
