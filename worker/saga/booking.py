"""The booking step: book the earliest free slot, defer to the provider, or send for triage.

Rules e-RS sets, which this module keeps:
1. Deferral (A016 with a deferral reason) is allowed only to a service with no free slots.
   So a referral whose booking window holds no slot, or a DEFER_TO_PROVIDER request while
   slots are free, stays unbooked (``DBS_NOT_BOOKED``): the patient books from the letter.
2. A slot taken by someone else between A015 and A016 sends us back to A015 for a fresh list,
   a bounded number of times; then we defer with SLOT_NOT_AVAILABLE, as e-RS prescribes.
3. A booking whose answer was lost (PAS silent, 502/504, timeout) may have been made: look
   (A005) before deferring with BOOKING_ATTEMPT_PROBLEM.
4. A DEFER_TO_PROVIDER naming the slot the patient asked about defers with that slot
   referenced: NO_SLOTS_AT_SERVICE when the service has none free, SLOT_NOT_AVAILABLE when
   it has others but not that one (A016's second reason to defer); when that slot is free,
   rule 1 holds and the referral stays unbooked.
"""

from __future__ import annotations

from schemas.events import Path
from schemas.referral_request import BookingWindow
from worker.fhir import build_appointment as fa
from worker.fhir.read import FreeSlot, appointment_facts, slots_from_bundle
from worker.fhir.vocabulary import SLOT_GONE, DeferReason, ErsCode
from worker.saga.appointment import after_appointment
from worker.saga.context import LONDON, SagaContext
from worker.saga.errors import ErsOutcomeUnknown, ErsRejected, SagaError
from worker.saga.recovery import check_booking
from worker.saga.state import SagaState


async def book_or_defer(state: SagaState, ctx: SagaContext) -> SagaState:
    if state.path is Path.RAS_TRIAGE:
        body = fa.send_for_triage(**_appointment_args(state, ctx))
        reply = await ctx.ers.book_or_defer(body)
        return after_appointment(state, appointment_facts(reply.body), ctx.options.holiday_region)
    if state.path is Path.DBS_DEFERRED:
        return await _defer_if_no_slots(state, ctx)
    return await _book_earliest(state, ctx)


def in_window(slot: FreeSlot, window: BookingWindow | None) -> bool:
    if window is None:
        return True
    day = slot.starts_at.astimezone(LONDON).date()
    if window.not_before and day < window.not_before:
        return False
    return not (window.not_after and day > window.not_after)


async def free_slots(state: SagaState, ctx: SagaContext) -> tuple[list[FreeSlot], int]:
    """Every free slot e-RS offers the target service (bounded pages), earliest first."""
    assert state.commissioning_rule_org is not None
    opts = ctx.options
    slots: list[FreeSlot] = []
    total = 0
    for page in range(1, opts.max_slot_pages + 1):
        try:
            reply = await ctx.ers.retrieve_slots(
                service_id=state.target.service_id,
                priority=ctx.request.search.priority.value,
                commissioning_rule_org=state.commissioning_rule_org,
                page=page,
                page_size=opts.slot_page_size,
                named_clinician=ctx.request.search.named_clinician_sds_user_id,
            )
        except ErsRejected as exc:
            # Slots booked by others while we paged can shrink the list under us: a page
            # past its new end is refused (400 INVALID_VALUE). What we have read is the list.
            if page > 1 and exc.status == 400 and exc.code == ErsCode.INVALID_VALUE:
                break
            raise
        page_slots, total = slots_from_bundle(reply.body)
        slots.extend(page_slots)
        if not page_slots or len(slots) >= total:
            break
    slots.sort(key=lambda s: s.starts_at)
    return slots, total


def _appointment_args(state: SagaState, ctx: SagaContext) -> dict[str, str]:
    assert state.ubrn is not None and state.referral_version is not None
    return {
        "ubrn": state.ubrn,
        "version": state.referral_version,
        "service_id": state.target.service_id,
        "nhs_number": ctx.request.patient.nhs_number,
    }


async def _defer(state: SagaState, ctx: SagaContext, reason: DeferReason) -> SagaState:
    action = ctx.request.action  # comment and slot are only ever set with DEFER_TO_PROVIDER
    body = fa.defer_appointment(
        **_appointment_args(state, ctx),
        reason=reason.value,
        comment=action.comment,
        slot_id=action.requested_slot_id,
    )
    reply = await ctx.ers.book_or_defer(body)
    return after_appointment(state, appointment_facts(reply.body), ctx.options.holiday_region)


async def _book_earliest(state: SagaState, ctx: SagaContext) -> SagaState:
    """Book the earliest free slot in the window (rule 2 above)."""
    tried: set[str] = set()
    for _ in range(ctx.options.max_booking_attempts):
        slots, total = await free_slots(state, ctx)
        if total == 0 or not slots:
            reason = DeferReason.SLOT_NOT_AVAILABLE if tried else DeferReason.NO_SLOTS_AT_SERVICE
            return await _defer(state, ctx, reason)
        window = ctx.request.action.booking_window
        candidates = [s for s in slots if in_window(s, window) and s.slot_id not in tried]
        if not candidates:
            if tried:
                break
            return not_booked(state, "NO_SLOT_IN_WINDOW")  # rule 1
        claimed = next((c for c in candidates if ctx.slot_claims.take(c.slot_id)), None)
        # When every one is being booked by another saga here, race for the earliest.
        slot = claimed or candidates[0]
        tried.add(slot.slot_id)
        try:
            return await _book(state, ctx, slot)  # booked: the claim stays, the slot is gone
        except ErsRejected as exc:
            if exc.code not in SLOT_GONE:
                if claimed is not None:
                    ctx.slot_claims.drop(claimed.slot_id)
                raise
        except BaseException:
            if claimed is not None:
                ctx.slot_claims.drop(claimed.slot_id)
            raise
    return await _defer(state, ctx, DeferReason.SLOT_NOT_AVAILABLE)


async def _book(state: SagaState, ctx: SagaContext, slot: FreeSlot) -> SagaState:
    body = fa.book_appointment(
        **_appointment_args(state, ctx),
        slot_id=slot.slot_id,
        start=slot.start,
        end=slot.end,
        clinician=slot.clinician,
    )
    try:
        reply = await ctx.ers.book_or_defer(body)
    except ErsOutcomeUnknown as unknown:
        try:
            checked, booked = await check_booking(state, ctx)  # rule 3
        except SagaError:
            # Still unknown: the runner marks A016 pending and reconciles, or waits with
            # the mark, rather than book again on the next run.
            raise unknown from None
        if booked:
            return checked
        return await _defer(checked, ctx, DeferReason.BOOKING_ATTEMPT_PROBLEM)
    return after_appointment(
        state, appointment_facts(reply.body), ctx.options.holiday_region, slot=slot
    )


async def _defer_if_no_slots(state: SagaState, ctx: SagaContext) -> SagaState:
    """DEFER_TO_PROVIDER: defer only when the service has no free slots (rule 1), or none
    free that the patient asked for (rule 4)."""
    slots, total = await free_slots(state, ctx)
    if total == 0:
        try:
            return await _defer(state, ctx, DeferReason.NO_SLOTS_AT_SERVICE)
        except ErsRejected as exc:
            if exc.code != ErsCode.SLOTS_CURRENTLY_AVAILABLE:
                raise
        return not_booked(state, "SLOTS_AVAILABLE_DEFERRAL_NOT_ALLOWED")
    asked = ctx.request.action.requested_slot_id
    if asked is not None and asked not in {s.slot_id for s in slots}:
        return await _defer(state, ctx, DeferReason.SLOT_NOT_AVAILABLE)
    return not_booked(state, "SLOTS_AVAILABLE_DEFERRAL_NOT_ALLOWED")


def not_booked(state: SagaState, reason: str) -> SagaState:
    return state.model_copy(
        update={"path": Path.DBS_NOT_BOOKED, "path_reason": reason, "booking_done": True}
    )
