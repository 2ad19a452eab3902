"""Finding a create whose answer was lost (A011/A021 sent, effect unknown) on e-RS' own
worklists, instead of asking a person.

e-RS has no idempotency key and no lookup by our request, but its referrer worklists hold
every referral just made: Awaiting Booking (not booked, deferred, awaiting triage) and, when
a letter is intended, Letters Outstanding. Rules:
1. A candidate is an item for the request's patient, created at or after the pending mark
   (less ``clock_skew_seconds``), with the request's priority and referrer (where e-RS names
   one and the request knows it). Each candidate is confirmed with A005: the same patient,
   shortlist, priority and specialty.
2. Exactly one confirmed: adopt its UBRN and version, note how, and carry on.
3. Several: ``NeedsReconciliation`` naming the candidate UBRNs (nothing else) for a person.
4. None: not concluded while e-RS may still be completing the request. Before the horizon
   (``create_horizon_seconds`` after the send, longer than any request timeout) the saga
   waits in a delay queue, its mark kept, and looks again. After it, the create did not
   happen: the mark goes and the step sends it again.
See docs/reliability.md (hazard log, H-01) for why this is safe.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from worker.fhir import build as fb
from worker.fhir.read import ReferralFacts, referral_facts
from worker.fhir.read_worklist import WorklistItem, worklist_items
from worker.fhir.vocabulary import Endpoint, Worklist
from worker.saga.appointment import after_appointment
from worker.saga.context import SagaContext
from worker.saga.errors import CreateNotYetVisible, NeedsReconciliation
from worker.saga.state import PendingWrite, Reconciliation, SagaState


async def settle_lost_create(state: SagaState, ctx: SagaContext) -> tuple[SagaState, bool]:
    """The saga after looking for its create: adopted (True: the step is done), or cleared
    to send it again (False). Raises to wait (before the horizon) or to ask a person."""
    pending = state.pending
    assert pending is not None
    endpoint = Endpoint(pending.endpoint)
    candidates = await _candidates(ctx, pending)
    confirmed = [f for f in [await _confirmed(ctx, state, c) for c in candidates] if f]
    now = ctx.now()
    if len(confirmed) > 1:
        ubrns = ", ".join(f.ubrn for f in confirmed)
        raise NeedsReconciliation(
            f"{endpoint} was sent in step {pending.step.value} and its answer lost; e-RS "
            f"shows {len(confirmed)} referrals that could be it ({ubrns}): a person decides "
            "which is this request's"
        )
    if confirmed:
        return _adopt(state, endpoint, confirmed[0], now), True
    if now < pending.at + timedelta(seconds=ctx.options.create_horizon_seconds):
        raise CreateNotYetVisible(
            f"{endpoint} was sent in step {pending.step.value} and its answer lost; no "
            "referral for it on the worklists yet: looking again after the horizon"
        )
    note = Reconciliation(
        endpoint=endpoint.value,
        decision="NOT_CREATED",
        how=f"no matching referral on the worklists {ctx.options.create_horizon_seconds:g}s "
        "after sending: sent again",
        at=now,
    )
    cleared = state.model_copy(
        update={"pending": None, "reconciliations": (*state.reconciliations, note)}
    )
    return cleared, False


def _lists(ctx: SagaContext) -> list[Worklist]:
    req = ctx.request
    intends_letter = bool(req.attachments) or req.referral.intention_to_add_referral_letter
    if intends_letter:
        return [Worklist.AWAITING_BOOKING, Worklist.LETTERS_OUTSTANDING]
    return [Worklist.AWAITING_BOOKING]


async def _candidates(ctx: SagaContext, pending: PendingWrite) -> list[str]:
    seen: dict[str, None] = {}  # in worklist order, each UBRN once
    for worklist in _lists(ctx):
        reply = await ctx.ers.retrieve_worklist(fb.fetch_worklist(worklist.value))
        for item in worklist_items(reply.body):
            if _may_be_ours(ctx, pending, item):
                seen.setdefault(item.ubrn, None)
    return list(seen)


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


async def _confirmed(ctx: SagaContext, state: SagaState, ubrn: str) -> ReferralFacts | None:
    """A005: the candidate, if it is what this request asked for."""
    reply = await ctx.ers.retrieve_referral(ubrn)
    facts = referral_facts(reply.body, reply.etag)
    req = ctx.request
    if facts.nhs_number != req.patient.nhs_number:
        return None
    if set(facts.service_ids) != {s.service_id for s in state.shortlist}:
        return None
    if facts.priority not in (None, req.search.priority.value):
        return None
    if facts.specialty not in (None, req.search.specialty):
        return None
    return facts


def _adopt(state: SagaState, endpoint: Endpoint, facts: ReferralFacts, now: datetime) -> SagaState:
    """The saga as if it had heard the create's answer: A005's facts of the referral."""
    note = Reconciliation(
        endpoint=endpoint.value,
        decision="ADOPTED",
        ubrns=(facts.ubrn,),
        how="the only referral on the worklists for this patient, referrer and priority "
        "since the call, confirmed by A005 (patient, shortlist, priority, specialty)",
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
        triaged = after_appointment(adopted, facts.appointment)
        return triaged.model_copy(update={"referral_version": facts.version})
    return adopted
