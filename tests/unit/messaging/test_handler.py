"""``RequestHandler`` without a broker or e-RS: a real SQLite saga store in ``tmp_path``, a
scripted e-RS port, the real token provider, reference data, retry schedule and metrics.

Messages are the shipped samples; e-RS answers are the specification's own examples.
"""

from __future__ import annotations

import hashlib
import sqlite3
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
import pytest

from schemas.events import LetterInfo, LetterReadyEventV1, OutcomeEventV1, OutcomeStatus, Step
from schemas.events import Path as SagaPath
from schemas.referral_request import ActingUser, Priority
from tests.spec_examples import example
from worker.fhir.build import specialty_system
from worker.fhir.vocabulary import STATE_CHANGING, Endpoint
from worker.messaging.fate import Fate, Handled, Incoming
from worker.messaging.handler import Durability, RequestHandler
from worker.messaging.headers import (
    ATTEMPT_HEADER,
    EXPIRES_HEADER,
    FIRST_SEEN_HEADER,
    FIRST_SEEN_MS_HEADER,
    TOKEN_HEADER,
)
from worker.messaging.tokens import MessageHeaderTokenProvider
from worker.observability.metrics import (
    ALREADY_FINISHED,
    DELAYED,
    POISONED,
    PROCESSED,
    REJECTED,
    Metrics,
)
from worker.ops.samples import sample
from worker.saga import outcomes
from worker.saga.context import SagaOptions
from worker.saga.errors import ErsOutcomeUnknown, ErsTransientError
from worker.saga.policy import PARK_REASONS
from worker.saga.ports import AccessToken, BeforeWrite, ErsCall, ErsReply
from worker.saga.reference_data import ReferenceData
from worker.saga.retry import RetrySchedule
from worker.saga.store import LeaseLost, NotStored
from worker.store.sqlite import SqliteSagaStore

CLOCK = 1_750_000_000.0  # the handler's epoch-seconds clock, fixed
NOW = datetime.fromtimestamp(CLOCK, UTC)
TOKEN = "cis2-tok-0d5e9a"  # a test token
SCHEDULE = RetrySchedule(delays=(30.0, 300.0, 1800.0), budget_seconds=3600.0)
SHORTLIST_ONLY = "05-shortlist-only.json"
UBRN = "000000070000"  # the createReferral example's referral
WORKLIST = "retrieveWorklist/responses/AwaitingBooking.json"
PDF = b"%PDF-1.4\n%%EOF\n"


class UnscriptedCall(BaseException):  # a BaseException: the runner cannot catch it
    """An e-RS call the test did not expect; not an Exception, so no outcome can hide it."""


class FakeErs:
    """``ErsSessions``: hands out sessions that answer from one script, and records them."""

    def __init__(self, defaults: dict[Endpoint, ErsReply]) -> None:
        self.defaults = defaults
        self.queued: dict[Endpoint, list[ErsReply | Exception]] = {}
        self.calls: list[Endpoint] = []
        self.bodies: dict[Endpoint, list[Any]] = {}
        self.sessions: list[tuple[str, str, str]] = []  # ods code, token, correlation id
        self.priorities: list[tuple[Priority, float | None]] = []  # each session's
        self.written_ahead: list[str] = []

    def script(self, endpoint: Endpoint, *answers: ErsReply | Exception) -> None:
        self.queued.setdefault(endpoint, []).extend(answers)

    def session(
        self,
        user: ActingUser,
        token: AccessToken,
        correlation_id: str,
        *,
        now: Callable[[], datetime],
        before_write: BeforeWrite | None = None,
        not_taken: BeforeWrite | None = None,
        before_call: BeforeWrite | None = None,
        priority: Priority = Priority.ROUTINE,
        turn: float | None = None,
    ) -> FakeSession:
        self.sessions.append((user.ods_code, token.value.get_secret_value(), correlation_id))
        self.priorities.append((priority, turn))
        return FakeSession(self, now, before_write, before_call)

    def answer(self, endpoint: Endpoint) -> ErsReply | Exception:
        queue = self.queued.get(endpoint)
        if queue:
            return queue.pop(0)
        if endpoint in self.defaults:
            return self.defaults[endpoint]
        raise UnscriptedCall(endpoint.value)


class FakeSession:
    """One saga's ``ErsPort``: before_write ahead of writes and before_call ahead of reads, as
    the real client calls them; a call record per call."""

    def __init__(
        self,
        ers: FakeErs,
        now: Callable[[], datetime],
        before_write: BeforeWrite | None,
        before_call: BeforeWrite | None = None,
    ) -> None:
        self._ers = ers
        self._now = now
        self._before_write = before_write
        self._before_call = before_call
        self._calls: list[ErsCall] = []

    def drain_calls(self) -> list[ErsCall]:
        calls, self._calls = self._calls, []
        return calls

    async def _call(self, endpoint: Endpoint, body: Any = None) -> ErsReply:
        if endpoint in STATE_CHANGING and self._before_write is not None:
            await self._before_write(endpoint.value)
            self._ers.written_ahead.append(endpoint.value)
        elif endpoint not in STATE_CHANGING and self._before_call is not None:
            await self._before_call(endpoint.value)
        self._ers.calls.append(endpoint)
        self._ers.bodies.setdefault(endpoint, []).append(body)
        answer = self._ers.answer(endpoint)
        if isinstance(answer, Exception):
            status, code = getattr(answer, "status", None), getattr(answer, "code", "ERROR")
            self._calls.append(ErsCall(endpoint.value, status, self._now(), 1, None, code))
            raise answer
        self._calls.append(
            ErsCall(endpoint.value, answer.status, self._now(), 1, answer.request_id, None)
        )
        return answer

    async def retrieve_reference_data(self, code_system: str) -> ErsReply:
        return await self._call(Endpoint.A004, code_system)

    async def retrieve_referral(self, ubrn: str) -> ErsReply:
        return await self._call(Endpoint.A005, ubrn)

    async def retrieve_worklist(self, body: dict[str, Any]) -> ErsReply:
        return await self._call(Endpoint.A008, body)

    async def search_services(self, body: dict[str, Any]) -> ErsReply:
        return await self._call(Endpoint.A010, body)

    async def create_referral(self, body: dict[str, Any]) -> ErsReply:
        return await self._call(Endpoint.A011, body)

    async def maintain_referral_letter(
        self, ubrn: str, version: str, body: dict[str, Any]
    ) -> ErsReply:
        return await self._call(Endpoint.A012, body)

    async def retrieve_slots(self, **query: Any) -> ErsReply:
        return await self._call(Endpoint.A015, query)

    async def book_or_defer(self, body: dict[str, Any]) -> ErsReply:
        return await self._call(Endpoint.A016, body)

    async def generate_patient_letter(self, ubrn: str) -> ErsReply:
        return await self._call(Endpoint.A019, ubrn)

    async def upload_file(
        self, *, ubrn: str, file_name: str, media_type: str, content: bytes
    ) -> ErsReply:
        return await self._call(Endpoint.A020, file_name)

    async def create_referral_and_send_for_triage(self, body: dict[str, Any]) -> ErsReply:
        return await self._call(Endpoint.A021, body)


class MemoryLetters:
    """A ``LetterStore`` in memory."""

    def __init__(self) -> None:
        self.saved: dict[str, tuple[str, str | None, bytes]] = {}

    async def save(
        self, *, ubrn: str, request_id: str, file_name: str | None, content: bytes
    ) -> LetterInfo:
        self.saved[request_id] = (ubrn, file_name, content)
        return LetterInfo(
            location=f"memory:{request_id}",
            file_name=file_name or "letter.pdf",
            size_bytes=len(content),
            sha256=hashlib.sha256(content).hexdigest(),
        )


def happy_ers() -> FakeErs:
    """e-RS answering a shortlist-only request with the specification's example bodies."""
    return FakeErs(
        {
            Endpoint.A004: ErsReply(
                200, body=example("getCodeSystem/responses/PriorityCodeSystem.json")
            ),
            Endpoint.A010: ErsReply(
                200,
                body=example(
                    "patientServiceSearch/responses/FetchServiceListWithMultipleServices.json"
                ),
            ),
            Endpoint.A011: ErsReply(
                201,
                body=example("createReferral/responses/ReferralRequest.json"),
                etag='W/"4"',
                request_id="rid-a011",
            ),
            Endpoint.A019: ErsReply(
                200, content=PDF, file_name=f"{UBRN}_Patient_Letter.pdf", request_id="rid-a019"
            ),
        }
    )


class Rig:
    def __init__(self, store: SqliteSagaStore, ers: FakeErs) -> None:
        self.store = store
        self.ers = ers
        self.letters = MemoryLetters()
        self.metrics = Metrics(park_reasons=PARK_REASONS)
        self.handler = RequestHandler(
            ers=ers,
            tokens=MessageHeaderTokenProvider(),
            letters=self.letters,
            # ttl 0: a saga that ran its reference-data step again would call A004 again
            reference=ReferenceData(ttl_seconds=0),
            options=SagaOptions(specialty_cs=specialty_system("https://ers.test")),
            durability=Durability(
                store=store,
                owner="replica-1",
                lease_seconds=60.0,
                patient_key_secret=b"test-patient-key",
                retry=SCHEDULE,
            ),
            metrics=self.metrics,
            now=lambda: NOW,
            clock=lambda: CLOCK,
        )

    def finished(self, outcome: str, path: str) -> float:
        value = self.metrics.registry.get_sample_value(
            "ers_worker_sagas_finished_total", {"outcome": outcome, "path": path}
        )
        return value or 0.0


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[SqliteSagaStore]:
    opened = await SqliteSagaStore.open(tmp_path / "sagas.db")
    try:
        yield opened
    finally:
        await opened.close()


@pytest.fixture
def rig(store: SqliteSagaStore) -> Rig:
    return Rig(store, happy_ers())


def message(
    body: dict[str, Any],
    *,
    token: str | None = TOKEN,
    reply_to: str | None = "requester.outcomes",
    **headers: Any,
) -> Incoming:
    all_headers: dict[str, Any] = {TOKEN_HEADER: f"Bearer {token}"} if token else {}
    all_headers.update(headers)
    return Incoming(
        body=orjson.dumps(body),
        headers=all_headers,
        correlation_id="corr-42",
        message_id="msg-42",
        reply_to=reply_to,
    )


def only_outcome(handled: Handled) -> OutcomeEventV1:
    (event,) = handled.events
    assert isinstance(event, OutcomeEventV1)
    assert handled.outcome is event
    return event


# --- messages refused before any saga ---


async def test_an_invalid_message_is_rejected_and_parked(rig: Rig) -> None:
    body = sample("06-invalid-nhs-number.json")

    handled = await rig.handler.handle(message(body))

    outcome = only_outcome(handled)
    assert outcome.status is OutcomeStatus.REJECTED
    assert handled.fate is Fate.DEAD_LETTER
    assert handled.reason == "INVALID_MESSAGE"
    assert handled.result == REJECTED
    assert outcome.request_id == body["request_id"]
    assert outcome.correlation_id == "corr-42"
    assert outcome.error is not None and outcome.error.code == "INVALID_MESSAGE"
    # the sample is wrong twice: a bad NHS number check digit and a priority e-RS lacks
    assert [e.field for e in outcome.validation_errors] == ["patient.nhs_number", "search.priority"]
    assert body["patient"]["nhs_number"] not in outcome.model_dump_json()
    assert rig.ers.calls == [] and rig.ers.sessions == []
    assert await rig.store.load(body["request_id"]) is None


async def test_a_body_that_is_not_json_is_rejected(rig: Rig) -> None:
    msg = Incoming(body=b"{not json", headers={TOKEN_HEADER: TOKEN}, reply_to="q")

    handled = await rig.handler.handle(msg)

    outcome = only_outcome(handled)
    assert (outcome.status, handled.fate, handled.reason) == (
        OutcomeStatus.REJECTED,
        Fate.DEAD_LETTER,
        "INVALID_MESSAGE",
    )
    assert outcome.request_id is None
    assert [e.field for e in outcome.validation_errors] == ["(body)"]


async def test_a_request_without_reply_to_is_rejected_naming_the_field(rig: Rig) -> None:
    body = sample(SHORTLIST_ONLY)

    handled = await rig.handler.handle(message(body, reply_to=None))

    outcome = only_outcome(handled)
    assert outcome.status is OutcomeStatus.REJECTED
    assert handled.fate is Fate.DEAD_LETTER
    assert handled.reason == "INVALID_MESSAGE"
    assert [e.field for e in outcome.validation_errors] == ["(properties).reply_to"]
    assert outcome.error is not None and "reply_to" in outcome.error.text
    assert rig.ers.calls == []
    assert await rig.store.load(body["request_id"]) is None


async def test_an_invalid_message_without_reply_to_names_both(rig: Rig) -> None:
    handled = await rig.handler.handle(message(sample("06-invalid-nhs-number.json"), reply_to=None))

    assert [e.field for e in only_outcome(handled).validation_errors] == [
        "patient.nhs_number",
        "search.priority",
        "(properties).reply_to",
    ]


# --- the token ---


async def test_a_request_without_a_token_needs_reauthentication(rig: Rig) -> None:
    body = sample(SHORTLIST_ONLY)

    handled = await rig.handler.handle(message(body, token=None))

    outcome = only_outcome(handled)
    assert outcome.status is OutcomeStatus.REAUTHENTICATION_NEEDED
    assert handled.fate is Fate.ACK
    assert handled.reason == "TOKEN_MISSING"
    assert outcome.error is not None and outcome.error.retryable
    assert rig.ers.calls == [] and rig.ers.sessions == []
    stored = await rig.store.load(body["request_id"])
    assert stored is not None and not stored.final and stored.owner is None


async def test_an_expired_token_needs_reauthentication(rig: Rig) -> None:
    msg = message(sample(SHORTLIST_ONLY), **{EXPIRES_HEADER: "2020-01-01T00:00:00Z"})

    handled = await rig.handler.handle(msg)

    assert only_outcome(handled).status is OutcomeStatus.REAUTHENTICATION_NEEDED
    assert handled.reason == "TOKEN_EXPIRED"
    assert rig.ers.calls == []


async def test_a_re_send_with_a_token_runs_the_saga(rig: Rig) -> None:
    body = sample(SHORTLIST_ONLY)
    await rig.handler.handle(message(body, token=None))

    handled = await rig.handler.handle(message(body))

    assert only_outcome_of(handled).status is OutcomeStatus.COMPLETED
    assert rig.ers.sessions == [("R69", TOKEN, "corr-42")]


async def test_the_saga_queues_for_e_rs_by_its_priority_and_first_sight(rig: Rig) -> None:
    body = sample(SHORTLIST_ONLY)
    body["search"]["priority"] = "TWO_WEEK_WAIT"
    seen_ms = 1_796_000_000_000

    await rig.handler.handle(message(body, **{FIRST_SEEN_MS_HEADER: seen_ms}))

    # A two-week-wait referral's turn is its first sight: no allowance (worker.saga.priority).
    assert rig.ers.priorities == [(Priority.TWO_WEEK_WAIT, seen_ms / 1000)]


def only_outcome_of(handled: Handled) -> OutcomeEventV1:
    assert handled.outcome is not None
    assert handled.events[-1] is handled.outcome
    return handled.outcome


# --- a saga that completes, and its replay ---


async def test_a_shortlist_only_request_completes(rig: Rig) -> None:
    body = sample(SHORTLIST_ONLY)

    handled = await rig.handler.handle(message(body))

    assert handled.fate is Fate.ACK
    assert handled.reason == ""
    assert handled.result == PROCESSED
    letter_event, outcome = handled.events
    assert isinstance(letter_event, LetterReadyEventV1)
    assert isinstance(outcome, OutcomeEventV1) and handled.outcome is outcome
    assert outcome.status is OutcomeStatus.COMPLETED
    assert outcome.path is SagaPath.SHORTLIST_ONLY
    assert outcome.request_id == body["request_id"]
    assert outcome.correlation_id == "corr-42"
    assert outcome.source_system == "demo-rhapsody"
    assert outcome.ubrn == UBRN
    assert outcome.referral_version == "4"  # the ETag, not the body's meta.versionId 3
    assert outcome.referral_state == "NOT_BOOKED"
    # auto shortlist of 3: the first three services e-RS ranked
    assert outcome.service_ids == ["11030", "11021", "11010"]
    assert outcome.error is None
    assert outcome.letter is not None and outcome.letter.size_bytes == len(PDF)
    assert letter_event.ubrn == UBRN and letter_event.letter == outcome.letter
    assert rig.letters.saved[body["request_id"]] == (UBRN, f"{UBRN}_Patient_Letter.pdf", PDF)
    assert rig.ers.calls == [Endpoint.A004, Endpoint.A010, Endpoint.A011, Endpoint.A019]
    assert rig.ers.written_ahead == ["A011"]
    assert rig.ers.sessions == [("R69", TOKEN, "corr-42")]
    stored = await rig.store.load(body["request_id"])
    assert stored is not None and stored.final and stored.owner is None
    assert [c.endpoint for c in stored.state.history] == ["A004", "A010", "A011", "A019"]
    assert stored.state.pending is None
    assert OutcomeEventV1.model_validate_json(stored.outcome or b"") == outcome


async def test_a_create_that_ends_the_saga_is_stored_before_its_outcome_is_worked_out(
    rig: Rig, monkeypatch: pytest.MonkeyPatch
) -> None:
    # No patient letter: A011 is the saga's last call. Should working out or storing the
    # outcome fail, the message goes back; the run after must find the UBRN, not A011's
    # mark (which would send it to the worklists, or to a person).
    body = {**sample(SHORTLIST_ONLY), "generate_patient_letter": False}

    def broken(*args: Any, **kwargs: Any) -> OutcomeEventV1:
        raise RuntimeError("outcome")

    monkeypatch.setattr(outcomes, "from_saga", broken)
    with pytest.raises(RuntimeError, match="outcome"):
        await rig.handler.handle(message(body))
    monkeypatch.undo()

    stored = await rig.store.load(body["request_id"])
    assert stored is not None and not stored.final
    assert stored.state.step is Step.DONE and stored.state.pending is None
    assert stored.state.ubrn == UBRN and stored.state.referral_version == "4"
    assert rig.ers.calls == [Endpoint.A004, Endpoint.A010, Endpoint.A011]


async def test_a_saga_whose_lease_is_gone_stops_before_its_next_call(
    rig: Rig, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Another replica took the saga over: the write-ahead before A011 is refused, A011 is not
    # sent, and the message comes back later; the saga does not end as a bug of its own.
    async def taken_over(*args: Any) -> None:
        raise LeaseLost("replica-2 owns it")

    monkeypatch.setattr(rig.store, "checkpoint", taken_over)
    handled = await rig.handler.handle(message(sample(SHORTLIST_ONLY)))

    assert handled.events == [] and handled.outcome is None
    assert handled.fate is Fate.DELAY and handled.reason == "LEASE_LOST"
    assert rig.ers.calls == [Endpoint.A004, Endpoint.A010]
    assert rig.finished("failed", "shortlist_only") == 0


async def test_a_store_that_fails_mid_saga_hands_the_message_back(
    rig: Rig, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The consumer requeues on any error the handler raises; nothing final is stored.
    async def down(*args: Any) -> None:
        raise sqlite3.OperationalError("disk I/O error")

    body = sample(SHORTLIST_ONLY)
    monkeypatch.setattr(rig.store, "checkpoint", down)
    with pytest.raises(NotStored):
        await rig.handler.handle(message(body))

    assert rig.ers.calls == [Endpoint.A004, Endpoint.A010]
    stored = await rig.store.load(body["request_id"])
    assert stored is not None and not stored.final and stored.state.status is None


async def test_the_same_message_again_replays_the_stored_outcome(rig: Rig) -> None:
    msg = message(sample(SHORTLIST_ONLY))
    first = await rig.handler.handle(msg)
    calls = list(rig.ers.calls)

    again = await rig.handler.handle(msg)

    replayed = only_outcome(again)
    assert first.outcome is not None
    assert replayed.event_id == first.outcome.event_id
    assert replayed == first.outcome
    assert again.fate is Fate.ACK
    assert again.result == ALREADY_FINISHED
    assert rig.ers.calls == calls  # no e-RS call
    assert len(rig.ers.sessions) == 1
    assert rig.finished("completed", "shortlist_only") == 1  # counted once, not per replay


async def test_a_replay_needs_no_token(rig: Rig) -> None:
    body = sample(SHORTLIST_ONLY)
    first = await rig.handler.handle(message(body))

    again = await rig.handler.handle(message(body, token=None))

    assert first.outcome is not None
    assert only_outcome(again).event_id == first.outcome.event_id
    assert again.result == ALREADY_FINISHED


async def test_a_request_id_reused_for_another_request_is_refused(rig: Rig) -> None:
    body = sample(SHORTLIST_ONLY)
    await rig.handler.handle(message(body))
    calls = list(rig.ers.calls)
    other = {**body, "generate_patient_letter": False}

    handled = await rig.handler.handle(message(other))

    outcome = only_outcome(handled)
    assert outcome.status is OutcomeStatus.REJECTED
    assert handled.reason == "REQUEST_ID_REUSED"
    assert handled.fate is Fate.DEAD_LETTER
    assert handled.result == REJECTED
    assert [e.field for e in outcome.validation_errors] == ["request_id"]
    assert rig.ers.calls == calls
    stored = await rig.store.load(body["request_id"])
    assert stored is not None and stored.state.status is OutcomeStatus.COMPLETED


# --- transient faults: delay queues, within a budget ---


async def test_a_transient_fault_sends_the_message_to_the_first_delay_tier(rig: Rig) -> None:
    body = sample(SHORTLIST_ONLY)
    rig.ers.script(Endpoint.A010, ErsTransientError("A010", 503, "SYSTEM_UNAVAILABLE"))

    handled = await rig.handler.handle(message(body))

    assert handled.fate is Fate.DELAY
    assert handled.delay_seconds == SCHEDULE.delays[0]
    assert handled.reason == "SYSTEM_UNAVAILABLE"
    assert handled.result == DELAYED
    assert handled.events == [] and handled.outcome is None
    stored = await rig.store.load(body["request_id"])
    assert stored is not None and not stored.final and stored.owner is None
    assert stored.state.step is Step.SEARCH
    assert stored.state.waiting is not None and stored.state.waiting.code == "SYSTEM_UNAVAILABLE"


async def test_a_delayed_message_resumes_from_its_checkpoint(rig: Rig) -> None:
    body = sample(SHORTLIST_ONLY)
    rig.ers.script(Endpoint.A010, ErsTransientError("A010", 503, "SYSTEM_UNAVAILABLE"))
    await rig.handler.handle(message(body))
    rig.ers.calls.clear()

    handled = await rig.handler.handle(
        message(body, **{ATTEMPT_HEADER: 1, FIRST_SEEN_HEADER: CLOCK})
    )

    assert only_outcome_of(handled).status is OutcomeStatus.COMPLETED
    # A004 is not called again (ReferenceData caches nothing here): the saga resumed at SEARCH
    assert rig.ers.calls == [Endpoint.A010, Endpoint.A011, Endpoint.A019]


async def test_a_second_trip_waits_for_the_second_tier(rig: Rig) -> None:
    rig.ers.script(Endpoint.A010, ErsTransientError("A010", 503, "SYSTEM_UNAVAILABLE"))

    handled = await rig.handler.handle(
        message(sample(SHORTLIST_ONLY), **{ATTEMPT_HEADER: 1, FIRST_SEEN_HEADER: CLOCK - 30})
    )

    assert handled.fate is Fate.DELAY
    assert handled.delay_seconds == SCHEDULE.delays[1]


async def test_a_fault_past_the_retry_budget_fails_and_is_parked(rig: Rig) -> None:
    body = sample(SHORTLIST_ONLY)
    rig.ers.script(Endpoint.A010, ErsTransientError("A010", 503, "SYSTEM_UNAVAILABLE"))
    long_ago = CLOCK - SCHEDULE.budget_seconds - 1

    handled = await rig.handler.handle(
        message(body, **{ATTEMPT_HEADER: 2, FIRST_SEEN_HEADER: long_ago})
    )

    outcome = only_outcome(handled)
    assert outcome.status is OutcomeStatus.FAILED
    assert handled.fate is Fate.DEAD_LETTER
    assert handled.reason == "SYSTEM_UNAVAILABLE"
    assert outcome.error is not None
    assert outcome.error.step is Step.SEARCH
    assert outcome.error.retryable
    assert outcome.error.text.startswith("retry budget spent")
    stored = await rig.store.load(body["request_id"])
    assert stored is not None and not stored.final  # a replay by an operator resumes it


async def test_a_delay_that_would_end_past_the_budget_is_not_taken(rig: Rig) -> None:
    # 3000 s into a 3600 s budget, the 1800 s tier would end past it.
    rig.ers.script(Endpoint.A010, ErsTransientError("A010", 503, "SYSTEM_UNAVAILABLE"))

    handled = await rig.handler.handle(
        message(sample(SHORTLIST_ONLY), **{ATTEMPT_HEADER: 2, FIRST_SEEN_HEADER: CLOCK - 3000})
    )

    assert only_outcome(handled).status is OutcomeStatus.FAILED
    assert handled.fate is Fate.DEAD_LETTER


# --- a create whose effect is unknown ---


async def test_a_lost_create_not_on_the_worklists_waits_with_its_mark(rig: Rig) -> None:
    # Issue 9: e-RS may still be completing the create; the saga looks again after the
    # horizon, from a delay queue, and nobody is asked.
    body = sample(SHORTLIST_ONLY)
    rig.ers.script(Endpoint.A011, ErsOutcomeUnknown("A011", 504, "HTTP_504"))
    # The spec's worklists: referrals, but none for this patient (Awaiting Booking, and
    # Letters Outstanding since the request intends a letter).
    worklist = ErsReply(200, example(WORKLIST))
    rig.ers.script(Endpoint.A008, worklist, worklist)

    handled = await rig.handler.handle(message(body))

    assert handled.events == []
    assert handled.fate is Fate.DELAY
    assert handled.reason == "CREATE_NOT_YET_VISIBLE"
    assert handled.delay_seconds == SCHEDULE.delays[0]
    assert rig.ers.calls.count(Endpoint.A011) == 1  # not repeated before the horizon
    assert Endpoint.A005 not in rig.ers.calls  # no candidate to confirm
    stored = await rig.store.load(body["request_id"])
    assert stored is not None and not stored.final
    assert stored.state.pending is not None and stored.state.pending.endpoint == "A011"


# --- the last delivery of a message that never settled ---


async def test_a_poisoned_message_fails_and_is_parked(rig: Rig) -> None:
    body = sample(SHORTLIST_ONLY)

    handled = await rig.handler.poisoned(message(body))

    outcome = only_outcome(handled)
    assert outcome.status is OutcomeStatus.FAILED
    assert handled.fate is Fate.DEAD_LETTER
    assert handled.reason == "REDELIVERY_LIMIT"
    assert handled.result == POISONED
    assert outcome.request_id == body["request_id"]
    assert outcome.error is not None and not outcome.error.retryable
    assert rig.ers.calls == []


async def test_a_poisoned_message_of_a_finished_saga_gets_its_outcome(rig: Rig) -> None:
    msg = message(sample(SHORTLIST_ONLY))
    first = await rig.handler.handle(msg)

    handled = await rig.handler.poisoned(msg)

    assert first.outcome is not None
    assert only_outcome(handled).event_id == first.outcome.event_id
    assert handled.fate is Fate.ACK
    assert handled.result == ALREADY_FINISHED


async def test_a_poisoned_message_that_is_not_json_is_parked(rig: Rig) -> None:
    handled = await rig.handler.poisoned(Incoming(body=b"\xff", reply_to="q"))

    outcome = only_outcome(handled)
    assert (outcome.status, handled.fate, handled.reason) == (
        OutcomeStatus.FAILED,
        Fate.DEAD_LETTER,
        "REDELIVERY_LIMIT",
    )
    assert outcome.request_id is None
