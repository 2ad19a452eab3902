"""Finding out what e-RS did when we could not hear it: every look is a read (A005).

Rules:
1. A state-changing call whose effect is unknown is never simply repeated. The saga reads the
   referral and goes on from what e-RS has (``reconcile``).
2. Only A012 (letters linked) and A016 (appointment arranged) can be read back from A005.
   A create (A011/A021) is looked for on e-RS' worklists (``lost_create``); only when
   e-RS itself cannot tell (several candidates) does a person decide.
3. An upload (A020) is sent again: one that did land is an unlinked Binary, inert, and only
   the upload the saga records is linked by A012.
"""

from __future__ import annotations

from worker.fhir.read import ReferralFacts, referral_facts
from worker.fhir.vocabulary import ARRANGED_STATES, Endpoint
from worker.saga.appointment import after_appointment
from worker.saga.context import SagaContext
from worker.saga.errors import NeedsReconciliation
from worker.saga.lost_create import settle_lost_create
from worker.saga.state import SagaState


async def reread(state: SagaState, ctx: SagaContext) -> tuple[SagaState, ReferralFacts]:
    """A005: the referral as e-RS has it now, with its current version."""
    assert state.ubrn is not None
    reply = await ctx.ers.retrieve_referral(state.ubrn)
    facts = referral_facts(reply.body, reply.etag)
    return (
        state.model_copy(
            update={
                "referral_version": facts.version,
                "referral_state": facts.state or state.referral_state,
            }
        ),
        facts,
    )


async def refresh_version(state: SagaState, ctx: SagaContext) -> SagaState:
    """After a 409/412 on If-Match: take e-RS' current version and try the step again."""
    refreshed, _ = await reread(state, ctx)
    return refreshed


async def check_letters(state: SagaState, ctx: SagaContext) -> tuple[SagaState, bool]:
    """Whether every file we uploaded is already linked to the referral (A005)."""
    refreshed, facts = await reread(state, ctx)
    if set(state.uploaded_urls) <= set(facts.attachment_urls):
        return refreshed.model_copy(update={"attachments_linked": len(state.uploaded_urls)}), True
    return refreshed, False


async def check_booking(state: SagaState, ctx: SagaContext) -> tuple[SagaState, bool]:
    """Whether the referral was already booked, deferred or sent for triage (A005)."""
    refreshed, facts = await reread(state, ctx)
    if facts.state in ARRANGED_STATES and facts.appointment is not None:
        adopted = after_appointment(refreshed, facts.appointment, ctx.options.holiday_region)
        # The version A005 read is the referral's own; the appointment's reference to it may
        # be older.
        version = refreshed.referral_version or adopted.referral_version
        return adopted.model_copy(update={"referral_version": version}), True
    return refreshed, False


async def reconcile(state: SagaState, ctx: SagaContext) -> tuple[SagaState, bool]:
    """A state-changing call went out and its effect is unknown: look before going on.

    Returns the state and whether the pending call's effect is there (the step is done);
    when it is not, the step runs again. Raises NeedsReconciliation when e-RS cannot tell.
    """
    pending = state.pending
    assert pending is not None
    endpoint = Endpoint(pending.endpoint)
    cleared = state.model_copy(update={"pending": None})
    if endpoint.repeatable_when_unknown:
        return cleared, False  # rule 3: the step runs again
    if endpoint in (Endpoint.A011, Endpoint.A021) and state.ubrn is None:
        return await settle_lost_create(state, ctx)
    if not endpoint.checkable or state.ubrn is None:
        raise NeedsReconciliation(
            f"{pending.endpoint} was sent in step {pending.step.value} and its effect is "
            "unknown; it is not repeated, as that could refer twice"
        )
    if endpoint is Endpoint.A012:
        return await check_letters(cleared, ctx)
    return await check_booking(cleared, ctx)
