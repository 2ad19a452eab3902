"""``worker.saga.journal.Journal``'s one rule, checked against a real SQLite store: before any
e-RS call the store holds every effect of the saga's earlier writes, and before a write the
write itself, marked pending; a step that only read is not written on its own.

Each test runs the real runner over a scripted e-RS and, at each call, reads the saga back
from the store as a successor process would find it if this one died there.
"""

from __future__ import annotations

import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from pydantic import SecretStr

from schemas.events import OutcomeStatus, Step
from schemas.referral_request import Priority
from tests.unit.fakes import (
    NOW,
    UBRN,
    FakeErs,
    created_fields,
    make_context,
    ok,
    referral,
    sample_request,
)
from tests.unit.saga.test_runner import BINARY, happy_dbs, uploaded
from worker.ers.request import Caller, ErsRequest
from worker.ers.session import ErsSession
from worker.saga.claims import resumable
from worker.saga.errors import ErsOutcomeUnknown
from worker.saga.journal import Journal
from worker.saga.ports import AccessToken, ErsReply
from worker.saga.runner import run_saga
from worker.saga.state import PendingWrite, SagaState, new_saga
from worker.saga.store import ClaimKind, NotStored
from worker.store.sqlite import SqliteSagaStore

OWNER = "replica-1"
CLOCK = 1_000_000.0
# What e-RS holds because of the saga's writes: what a successor must find before any call.
EFFECTS = {"ubrn", "referral_version", "referral_state", "uploaded_urls", "attachments_linked"}


class CountingStore(SqliteSagaStore):
    """The real SQLite store, keeping every state the journal writes; ``fail_at`` makes that
    write (counting from 0) fail as a lost database connection would."""

    written: list[SagaState]
    fail_at: int | None = None

    async def checkpoint(
        self, state: SagaState, owner: str, lease_seconds: float, now: float
    ) -> None:
        if len(self.written) == self.fail_at:
            raise sqlite3.OperationalError("disk I/O error")
        self.written.append(state)
        await super().checkpoint(state, owner, lease_seconds, now)


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[CountingStore]:
    opened = await CountingStore.open(tmp_path / "sagas.db")
    assert isinstance(opened, CountingStore)
    opened.written = []
    try:
        yield opened
    finally:
        await opened.close()


class Saga:
    """One saga run through a ``Journal``, with the store read back at every e-RS call."""

    def __init__(self, store: CountingStore) -> None:
        self.store = store
        # The hooks the e-RS client calls before each attempt, as the handler wires them.
        self.ers = FakeErs(before_write=self.before_write, before_call=self.before_call)
        self.request = sample_request()
        self.seen: list[tuple[str, SagaState, SagaState]] = []
        """Per call: the endpoint, the saga as stored, the runner's latest step state."""
        self.handed: SagaState | None = None
        self.journal: Journal | None = None

    async def run(self, start: SagaState | None = None) -> SagaState:
        initial = new_saga(self.request.request_id, "corr-1")
        claim = await self.store.claim(initial, "patient-key", OWNER, 60.0, CLOCK)
        assert claim.kind is ClaimKind.STARTED and claim.state is not None
        state = start or claim.state
        if start is not None:
            await self.store.checkpoint(start, OWNER, 60.0, CLOCK)  # as a resumed saga's row
            self.store.written.clear()
        self.handed = state
        self.journal = journal = Journal(self.store, state, owner=OWNER, lease_seconds=60.0,
                                         now=lambda: NOW, clock=lambda: CLOCK)  # fmt: skip

        async def checkpoint(after: SagaState) -> None:
            self.handed = after
            await journal.checkpoint(after)

        return await run_saga(state, make_context(self.request, self.ers), checkpoint=checkpoint)

    async def before_write(self, endpoint: str) -> None:
        assert self.journal is not None
        await self.journal.before_write(endpoint)
        await self._look(endpoint)

    async def before_call(self, endpoint: str) -> None:
        assert self.journal is not None
        await self.journal.before_call(endpoint)
        await self._look(endpoint)

    async def _look(self, endpoint: str) -> None:
        stored = await self.store.load(self.request.request_id)
        assert stored is not None and self.handed is not None
        self.seen.append((endpoint, stored.state, self.handed))

    def written(self) -> list[tuple[Step, str | None]]:
        return [(s.step, s.pending.endpoint if s.pending else None) for s in self.store.written]


def effects(state: SagaState) -> dict[str, Any]:
    return state.model_dump(include=EFFECTS)


def saga_over(store: CountingStore, script: Any = None) -> Saga:
    saga = Saga(store)
    happy_dbs(saga.ers)
    if script is not None:
        script(saga.ers)
    return saga


async def test_a_dbs_saga_is_written_only_where_a_crash_would_lose_something(
    store: CountingStore,
) -> None:
    saga = saga_over(store)

    state = await saga.run()

    assert state.status is OutcomeStatus.COMPLETED
    # Six writes between the claim and the outcome (which the handler stores): each write's
    # mark carries the step before it; A015 and A019 find the write before them stored first.
    assert saga.written() == [
        (Step.CREATE, "A011"),
        (Step.UPLOAD, "A020"),
        (Step.LINK_LETTER, "A012"),
        (Step.BOOK_OR_DEFER, None),
        (Step.BOOK_OR_DEFER, "A016"),
        (Step.PATIENT_LETTER, None),
    ]
    # The mark before A020 holds A011's UBRN; the one before A012, A020's Binary.
    assert store.written[1].ubrn == UBRN
    assert store.written[2].uploaded_urls == (BINARY,)


async def test_before_every_call_the_store_holds_every_earlier_writes_effect(
    store: CountingStore,
) -> None:
    saga = saga_over(store)

    await saga.run()

    assert [endpoint for endpoint, _, _ in saga.seen] == [
        *("A004", "A010", "A011", "A020", "A012", "A015", "A016", "A019")
    ]
    for endpoint, stored, handed in saga.seen:
        assert effects(stored) == effects(handed), endpoint
        if endpoint in ("A011", "A020", "A012", "A016"):
            assert stored.pending is not None and stored.pending.endpoint == endpoint
        else:
            assert stored.pending is None, endpoint
    # The reads before the first write find nothing written: repeating them changes nothing.
    assert [stored.step for _, stored, _ in saga.seen[:2]] == [Step.REFERENCE_DATA] * 2


async def test_a_write_settled_by_reconciliation_is_stored_before_the_next_read(
    store: CountingStore,
) -> None:
    def unknown_link_found_done(ers: FakeErs) -> None:
        ers.script("A012", ErsOutcomeUnknown("A012", 504, "HTTP_504"))
        ers.script("A005", ok(referral(version="4", attachment_urls=[BINARY]), etag='W/"4"'))

    saga = saga_over(store, unknown_link_found_done)
    start = resumable(new_saga(saga.request.request_id, "corr-1")).model_copy(
        update={"step": Step.LINK_LETTER, **uploaded()}
    )

    state = await saga.run(start)

    assert state.status is OutcomeStatus.COMPLETED
    assert saga.ers.endpoints() == ["A012", "A005", "A015", "A016", "A019"]
    # A005 reads with the mark still stored; A015 finds it cleared, the letter linked.
    (_, at_a005, _), (_, at_a015, _) = saga.seen[1:3]
    assert at_a005.pending == PendingWrite(step=Step.LINK_LETTER, endpoint="A012", at=NOW)
    assert at_a015.pending is None and at_a015.attachments_linked == 1
    assert at_a015.step is Step.BOOK_OR_DEFER


@pytest.mark.parametrize(
    ("fail_at", "last_sent", "stored_step", "stored_mark"),
    [
        (0, "A010", Step.REFERENCE_DATA, None),  # the mark before A011
        (3, "A012", Step.LINK_LETTER, "A012"),  # before A015, A012's effect on its own
    ],
)
async def test_a_store_that_fails_before_a_call_stops_the_run_with_nothing_sent(
    store: CountingStore,
    fail_at: int,
    last_sent: str,
    stored_step: Step,
    stored_mark: str | None,
) -> None:
    # Not the saga's fault: it does not end FAILED INTERNAL_ERROR (final, parked for a
    # person). The error goes through, the message goes back, and the saga resumes from
    # what the store holds.
    saga = saga_over(store)
    store.fail_at = fail_at

    with pytest.raises(NotStored, match="OperationalError"):
        await saga.run()

    assert saga.seen[-1][0] == last_sent  # the call after it was never sent
    stored = await store.load(saga.request.request_id)
    assert stored is not None and not stored.final and stored.state.status is None
    assert stored.state.step is stored_step
    assert (stored.state.pending.endpoint if stored.state.pending else None) == stored_mark


class Answering:
    """The e-RS client behind a session: every call answered at once."""

    def __init__(self) -> None:
        self.sent: list[str] = []

    async def call(self, request: ErsRequest, caller: Caller) -> ErsReply:
        self.sent.append(request.endpoint.value)
        return ErsReply(status=201, body={})


async def test_a_token_exchange_after_a_write_finds_its_effect_stored(
    store: CountingStore,
) -> None:
    # The session exchanges the CIS2 ID token before a call (message-id-token); a process
    # killed during that exchange must leave A011's UBRN stored, not its mark: a mark would
    # send the saga looking on the worklists for a referral it holds, or to a person.
    request = sample_request()
    claim = await store.claim(
        new_saga(request.request_id, "corr-1"), "patient-key", OWNER, 60.0, CLOCK
    )
    assert claim.state is not None
    journal = Journal(store, claim.state, owner=OWNER, lease_seconds=60.0,
                      now=lambda: NOW, clock=lambda: CLOCK)  # fmt: skip
    await journal.before_write("A011")
    created = claim.state.model_copy(update={"step": Step.UPLOAD, **created_fields()})
    await journal.checkpoint(created)  # the runner hands over CREATE's result
    at_exchange: list[SagaState] = []

    async def exchange(refused: AccessToken | None, _: Priority, __: float | None) -> AccessToken:
        stored = await store.load(request.request_id)
        assert stored is not None
        at_exchange.append(stored.state)
        return AccessToken(SecretStr("access-1"))

    sender = Answering()
    session = ErsSession(
        sender, request.user, AccessToken(SecretStr(""), renew=exchange), "corr-1",
        now=lambda: NOW, before_write=journal.before_write, before_call=journal.before_call,
    )  # fmt: skip

    await session.upload_file(ubrn=UBRN, file_name="l.pdf", media_type="text/plain", content=b"")

    (stored,) = at_exchange
    assert stored.pending is None and stored.step is Step.UPLOAD
    assert effects(stored) == effects(created) and stored.ubrn == UBRN
    assert sender.sent == ["A020"]


async def test_a_store_failing_under_a_lost_create_search_is_not_stored(
    store: CountingStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A step asks the store who holds a UBRN (worker.saga.lost_create): its failure, too,
    # goes back as the store's, not as the saga's bug.
    async def down(ubrn: str) -> str | None:
        raise sqlite3.OperationalError("disk I/O error")

    monkeypatch.setattr(store, "ubrn_holder", down)
    journal = Journal(store, new_saga("req-1", "corr-1"), owner=OWNER, lease_seconds=60.0,
                      now=lambda: NOW, clock=lambda: CLOCK)  # fmt: skip

    with pytest.raises(NotStored, match="OperationalError"):
        await journal.ubrn_holder(UBRN)
