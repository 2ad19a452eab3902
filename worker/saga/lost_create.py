"""Finding a create whose answer was lost (A011/A021 sent, effect unknown) on e-RS' own
worklists, instead of asking a person.

e-RS has no idempotency key and no lookup by our request, but its referrer worklists hold
every referral just made: Awaiting Booking (not booked, deferred, awaiting triage) and, when
a letter is intended, Letters Outstanding. Rules (doubt always goes to a person):
1. A candidate is an item for the request's patient, created at or after the send (less
   ``clock_skew_seconds``), with the request's priority and referrer (where e-RS names one
   and the request knows it), whose UBRN no other saga of ours holds. Each is confirmed with
   A005: the same patient, shortlist, priority and specialty, all present.
2. Exactly one candidate, confirmed, its creation time known: adopt its UBRN and version,
   note how, and carry on.
3. Any other candidate set (several; one A005 does not confirm; one e-RS does not date):
   ``NeedsReconciliation`` naming the candidate UBRNs (nothing else) for a person. A
   referral for the patient made since the call that is not provably someone else's is
   never ignored, since sending again could then refer twice.
4. No candidate: not concluded while e-RS may still be completing the request. Before the horizon
   (``create_horizon_seconds`` after the send, longer than any request timeout) the saga
   waits in a delay queue, its mark kept, and looks again. Between the horizon and
   ``create_window_seconds`` after the send, the create did not happen: the mark goes and
   the step sends it again. Later than that, a referral made then could have moved on
   (booked, triaged) and left the worklists: a person decides.
5. An e-RS refusal while looking (a 4xx on A008 or A005) is doubt too: a person decides.
   Transient faults wait, as anywhere.
See docs/reliability.md (hazard log, H-01 and H-02).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from worker.fhir import build as fb
from worker.fhir.read import ReferralFacts, referral_facts
from worker.fhir.read_worklist import WorklistItem, worklist_items
from worker.fhir.vocabulary import Endpoint, Worklist
from worker.saga.appointment import after_appointment
from worker.saga.context import SagaContext
from worker.saga.errors import (
    CreateNotYetVisible,
    Disposition,
    NeedsReconciliation,
    SagaError,
)
from worker.saga.state import PendingWrite, Reconciliation, SagaState
from worker.saga.working_days import HolidayRegion

# Faults that only mean "look again later" (or with a fresh token); anything else is doubt.
_PASSING = frozenset({Disposition.RETRY_NOW, Disposition.WAIT, Disposition.REAUTHENTICATE})


@dataclass(frozen=True, slots=True)
class _Found:
    facts: ReferralFacts
    confirmed: bool  # A005 shows what this request asked for
    created_known: bool


async def settle_lost_create(state: SagaState, ctx: SagaContext) -> tuple[SagaState, bool]:
    """The saga after looking for its create: adopted (True: the step is done), or cleared
    to send it again (False). Raises to wait (before the horizon) or to ask a person."""
    pending = state.pending
    assert pending is not None
    endpoint = Endpoint(pending.endpoint)
    lost = f"{endpoint} was sent in step {pending.step.value} and its answer lost"
    try:
        found = await _look(state, ctx, pending)
    except SagaError as exc:
        if exc.disposition in _PASSING:
            raise
        raise NeedsReconciliation(
            f"{lost}; looking for it on e-RS failed ({exc.code}): a person checks"
        ) from None
    now = ctx.now()
    if len(found) == 1 and found[0].confirmed and found[0].created_known:
        return _adopt(state, endpoint, found[0].facts, now, ctx.options.holiday_region), True
    if found:
        # Several that fit, or one A005 does not confirm or e-RS does not date: e-RS
        # cannot tell us, and sending again could refer twice.
        ubrns = ", ".join(f.facts.ubrn for f in found)
        raise NeedsReconciliation(
            f"{lost}; e-RS shows {len(found)} referral(s) for the patient since the call "
            f"({ubrns}) and cannot say which is this request's: a person decides"
        )
    options = ctx.options
    if now < pending.at + timedelta(seconds=options.create_horizon_seconds):
        raise CreateNotYetVisible(
            f"{lost}; no referral for it on the worklists yet: looking again after the horizon"
        )
    if now > pending.at + timedelta(seconds=options.create_window_seconds):
        raise NeedsReconciliation(
            f"{lost}; no referral for it on the worklists, but so long after the call that "
            "one made then could have left them: a person checks"
        )
    note = Reconciliation(
        endpoint=endpoint.value,
        decision="NOT_CREATED",
        how=f"no referral for the patient on the worklists {options.create_horizon_seconds:g}s "
        "or more after sending: sent again",
        at=now,
    )
    cleared = state.model_copy(
        update={"pending": None, "reconciliations": (*state.reconciliations, note)}
    )
    return cleared, False


async def _look(state: SagaState, ctx: SagaContext, pending: PendingWrite) -> list[_Found]:
    found: list[_Found] = []
    for item in await _candidates(ctx, pending):
        if ctx.ubrn_holder is not None:
            holder = await ctx.ubrn_holder(item.ubrn)
            if holder is not None and holder != state.request_id:
                continue  # another request's referral, made by another saga of ours
        facts, confirmed = await _confirmed(ctx, state, item.ubrn)
        found.append(_Found(facts, confirmed, created_known=item.created is not None))
    return found


def _lists(ctx: SagaContext) -> list[Worklist]:
    req = ctx.request
    intends_letter = bool(req.attachments) or req.referral.intention_to_add_referral_letter
    if intends_letter:
        return [Worklist.AWAITING_BOOKING, Worklist.LETTERS_OUTSTANDING]
    return [Worklist.AWAITING_BOOKING]


async def _candidates(ctx: SagaContext, pending: PendingWrite) -> list[WorklistItem]:
    seen: dict[str, WorklistItem] = {}  # in worklist order, each UBRN once
    for worklist in _lists(ctx):
        reply = await ctx.ers.retrieve_worklist(fb.fetch_worklist(worklist.value))
        for item in worklist_items(reply.body):
            if _may_be_ours(ctx, pending, item):
                seen.setdefault(item.ubrn, item)
    return list(seen.values())


def _may_be_ours(ctx: SagaContext, pending: PendingWrite, item: WorklistItem) -> bool:
    req = ctx.request
    if item.nhs_number != req.patient.nhs_number:
        return False
    earliest = pending.at - timedelta(seconds=ctx.options.clock_skew_seconds)
    if item.created is not None and item.created < earliest:
        return False
    if item.priority is not None and item.priority != req.search.priority.value:
        return False
    referrer = req.user.referring_clinician_sds_user_id or req.user.sds_user_id
    return item.referrer is None or referrer is None or item.referrer == referrer


async def _confirmed(ctx: SagaContext, state: SagaState, ubrn: str) -> tuple[ReferralFacts, bool]:
    """A005: the candidate, and whether it is what this request asked for (every fact
    present and the same)."""
    reply = await ctx.ers.retrieve_referral(ubrn)
    facts = referral_facts(reply.body, reply.etag)
    req = ctx.request
    confirmed = (
        facts.nhs_number == req.patient.nhs_number
        and set(facts.service_ids) == {s.service_id for s in state.shortlist}
        and facts.priority == req.search.priority.value
        and facts.specialty == req.search.specialty
    )
    return facts, confirmed


def _adopt(
    state: SagaState,
    endpoint: Endpoint,
    facts: ReferralFacts,
    now: datetime,
    region: HolidayRegion,
) -> SagaState:
    """The saga as if it had heard the create's answer: A005's facts of the referral."""
    note = Reconciliation(
        endpoint=endpoint.value,
        decision="ADOPTED",
        ubrns=(facts.ubrn,),
        how="the only referral on the worklists for this patient, referrer and priority "
        "since the call, held by no other request, confirmed by A005 (patient, shortlist, "
        "priority, specialty)",
        at=now,
    )
    adopted = state.model_copy(
        update={
            "pending": None,
            "ubrn": facts.ubrn,
            "referral_version": facts.version,
            "referral_state": facts.state,
            "commissioning_rule_org": facts.commissioning_rule_org,
            "reconciliations": (*state.reconciliations, note),
        }
    )
    if endpoint is Endpoint.A021 and facts.appointment is not None:
        # A021 sent for triage in the same call: the referral holds the triage appointment.
        triaged = after_appointment(adopted, facts.appointment, region)
        return triaged.model_copy(update={"referral_version": facts.version})
    return adopted
