"""The saga's steps: each takes the state and the context and returns the next state.

Steps know e-RS only through ``ErsPort`` and storage only through ``LetterStore``; they know
nothing of RabbitMQ. They raise the errors of ``worker.saga.errors``; the runner decides what an
error means for the saga, in one place.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import date, datetime
from zoneinfo import ZoneInfo

from schemas.events import AppointmentInfo, Path, Step
from schemas.referral_request import (
    AutomaticShortlist,
    BookingWindow,
    IntendedAction,
    ReferralRequestV1,
)
from worker.fhir import build as fb
from worker.fhir.read import (
    AppointmentFacts,
    FoundService,
    FreeSlot,
    ReferralFacts,
    appointment_facts,
    parse_instant,
    referral_facts,
    services_from_search,
    slots_from_bundle,
)
from worker.saga.errors import (
    BusinessRuleFailure,
    ErsOutcomeUnknown,
    ErsRejected,
    NeedsReconciliation,
)
from worker.saga.ports import ErsPort, LetterStore
from worker.saga.reference_data import ReferenceData
from worker.saga.state import SagaState, ShortlistedService, TriageRoute, planned_path
from worker.saga.working_days import add_working_days


@dataclass(frozen=True, slots=True)
class SagaOptions:
    specialty_cs: str
    triage_route: TriageRoute = TriageRoute.A021
    slot_page_size: int = 20
    max_slot_pages: int = 5
    max_booking_attempts: int = 3


class SlotClaims:
    """Slots a saga of this process is booking, or has seen taken: other sagas here pick
    another one instead of racing for it (e-RS would refuse all but one of them), even from
    a slot list read before the slot went. The most recent ``limit`` are remembered."""

    def __init__(self, limit: int = 10_000) -> None:
        self._held: dict[str, None] = {}
        self._limit = limit

    def take(self, slot_id: str) -> bool:
        if slot_id in self._held:
            return False
        self._held[slot_id] = None
        if len(self._held) > self._limit:
            del self._held[next(iter(self._held))]
        return True

    def drop(self, slot_id: str) -> None:
        self._held.pop(slot_id, None)


@dataclass(frozen=True, slots=True)
class SagaContext:
    request: ReferralRequestV1
    ers: ErsPort
    letters: LetterStore
    reference: ReferenceData
    options: SagaOptions
    now: Callable[[], datetime]
    slot_claims: SlotClaims = field(default_factory=SlotClaims)


StepFn = Callable[[SagaState, SagaContext], Awaitable[SagaState]]
# Dates patients and clinicians see (booking windows, contact-by dates) are English dates.
LONDON = ZoneInfo("Europe/London")

_ALREADY_LINKED = frozenset({"DUPLICATE_FILENAME", "NO_CHANGES_DETECTED"})
# e-RS refuses a booking with these when the slot went between A015 and A016.
_SLOT_GONE = frozenset({"SLOT_NOT_AVAILABLE", "INAPPROPRIATE_SLOT"})


async def reference_data(state: SagaState, ctx: SagaContext) -> SagaState:
    table = await ctx.reference.priority_contact_days(ctx.ers)
    days = table.get(ctx.request.search.priority.value)
    return state.model_copy(
        update={
            "defer_contact_days": days.defer_to_provider if days else None,
            "triage_contact_days": days.triage if days else None,
        }
    )


def _suits(action: IntendedAction, service: FoundService) -> bool:
    if action is IntendedAction.SEND_FOR_TRIAGE:
        return service.triage
    if action is IntendedAction.SHORTLIST_ONLY:
        return True
    return service.directly_bookable and "APPOINTMENT_REQUEST" in service.request_flow_types


def choose_shortlist(
    request: ReferralRequestV1, found: list[FoundService]
) -> tuple[ShortlistedService, ...]:
    action = request.action.kind
    if isinstance(request.shortlist, AutomaticShortlist):
        chosen = [s for s in found if _suits(action, s)][: request.shortlist.count]
        if not chosen:
            raise BusinessRuleFailure(
                f"the service search found no service suitable for {action.value}",
                code="NO_SUITABLE_SERVICE",
            )
    else:
        by_id = {s.service_id: s for s in found}
        missing = [sid for sid in request.shortlist.service_ids if sid not in by_id]
        if missing:
            raise BusinessRuleFailure(
                f"service(s) {', '.join(missing)} not returned by the patient's service search: "
                "not commissioned for this patient or not matching the criteria",
                code="SERVICE_NOT_IN_SEARCH_RESULTS",
            )
        chosen = [by_id[sid] for sid in request.shortlist.service_ids]
    return tuple(
        ShortlistedService(
            service_id=s.service_id,
            name=s.name,
            bookable_type=s.bookable_type,
            triage=s.triage,
            appointments="APPOINTMENT_REQUEST" in s.request_flow_types,
        )
        for s in chosen
    )


async def search(state: SagaState, ctx: SagaContext) -> SagaState:
    req = ctx.request
    body = fb.patient_service_search(
        nhs_number=req.patient.nhs_number,
        user=req.user,
        criteria=req.search,
        specialty_cs=ctx.options.specialty_cs,
    )
    reply = await ctx.ers.search_services(body)
    shortlist = choose_shortlist(req, services_from_search(reply.body))
    path = planned_path(req.action.kind, shortlist[0])
    if path is None:
        raise BusinessRuleFailure(
            f"service {shortlist[0].service_id} cannot take {req.action.kind.value} "
            f"(bookable type {shortlist[0].bookable_type}, triage {shortlist[0].triage})",
            code="SERVICE_NOT_SUITABLE",
        )
    return state.model_copy(update={"shortlist": shortlist, "path": path})


def _contact_by(created: datetime | None, days: int | None) -> date | None:
    if created is None or days is None:
        return None
    return add_working_days(created.astimezone(LONDON).date(), days)


async def create(state: SagaState, ctx: SagaContext) -> SagaState:
    req = ctx.request
    referral = fb.NewReferral(
        nhs_number=req.patient.nhs_number,
        user=req.user,
        criteria=req.search,
        service_ids=[s.service_id for s in state.shortlist],
        intends_to_add_letter=bool(req.attachments)
        or req.referral.intention_to_add_referral_letter,
        first_reminder_letter_follow_up_days=req.referral.first_reminder_letter_follow_up_days,
        pathway_start=req.referral.pathway_start,
    )
    via_a021 = state.path is Path.RAS_TRIAGE and ctx.options.triage_route is TriageRoute.A021
    if via_a021:
        body = fb.create_referral_and_send_for_triage(referral, ctx.options.specialty_cs)
        reply = await ctx.ers.create_referral_and_send_for_triage(body)
    else:
        body = fb.create_referral(referral, ctx.options.specialty_cs)
        reply = await ctx.ers.create_referral(body)
    facts = referral_facts(reply.body, reply.etag)
    created = state.model_copy(
        update={
            "ubrn": facts.ubrn,
            "referral_version": facts.version,
            "referral_state": facts.state,
            "commissioning_rule_org": facts.commissioning_rule_org,
        }
    )
    if via_a021 and facts.appointment is not None:
        # A021 sends for triage in the same call: its referral holds the triage appointment.
        triaged = _after_appointment(created, facts.appointment)
        return triaged.model_copy(update={"referral_version": facts.version})
    return created


def _binary_url(location: str | None) -> str:
    """A020's Location is ``Binary/<id>``; tolerate an absolute URL ending in one."""
    if not location or "Binary/" not in location:
        raise BusinessRuleFailure("A020 answered without a Binary Location", code="NO_LOCATION")
    return location[location.rindex("Binary/") :]


async def upload(state: SagaState, ctx: SagaContext) -> SagaState:
    attachment = ctx.request.attachments[len(state.uploaded_urls)]
    assert state.ubrn is not None
    reply = await ctx.ers.upload_file(
        ubrn=state.ubrn,
        file_name=attachment.file_name,
        media_type=attachment.media_type,
        content=attachment.content,
    )
    return state.model_copy(
        update={"uploaded_urls": (*state.uploaded_urls, _binary_url(reply.location))}
    )


async def link_letter(state: SagaState, ctx: SagaContext) -> SagaState:
    assert state.ubrn is not None and state.referral_version is not None
    indexed = ctx.now()
    files = [
        fb.LetterFile(url, attachment.description, indexed)
        for url, attachment in zip(state.uploaded_urls, ctx.request.attachments, strict=True)
    ]
    try:
        reply = await ctx.ers.maintain_referral_letter(
            state.ubrn, state.referral_version, fb.maintain_referral_letter(files)
        )
    except ErsRejected as exc:
        # e-RS' own guard: the set is already linked (an earlier attempt worked).
        if exc.code in _ALREADY_LINKED:
            checked, linked = await check_letters(state, ctx)
            if linked:
                return checked
        raise
    facts = referral_facts(reply.body, reply.etag)
    return state.model_copy(
        update={
            "referral_version": facts.version,
            "referral_state": facts.state or state.referral_state,
            "attachments_linked": len(files),
        }
    )


def _in_window(slot: FreeSlot, window: BookingWindow | None) -> bool:
    if window is None:
        return True
    day = slot.starts_at.astimezone(LONDON).date()
    if window.not_before and day < window.not_before:
        return False
    return not (window.not_after and day > window.not_after)


async def _free_slots(state: SagaState, ctx: SagaContext) -> tuple[list[FreeSlot], int]:
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
            if page > 1 and exc.status == 400 and exc.code == "INVALID_VALUE":
                break
            raise
        page_slots, total = slots_from_bundle(reply.body)
        slots.extend(page_slots)
        if not page_slots or len(slots) >= total:
            break
    slots.sort(key=lambda s: s.starts_at)
    return slots, total


def _after_appointment(
    state: SagaState, facts: AppointmentFacts, slot: FreeSlot | None = None
) -> SagaState:
    """The saga once A016 has booked, deferred or triaged (read from its answer or A005)."""
    if facts.status == "booked":
        path, referral_state, contact_by = Path.DBS_BOOKED, "BOOKED", None
    elif facts.reason == "TRIAGE":
        path, referral_state = Path.RAS_TRIAGE, "AWAITING_TRIAGE"
        contact_by = _contact_by(facts.created, state.triage_contact_days)
    else:
        path, referral_state = Path.DBS_DEFERRED, "DEFERRED_TO_PROVIDER"
        contact_by = _contact_by(facts.created, state.defer_contact_days)
    appointment = AppointmentInfo(
        appointment_id=facts.appointment_id,
        service_id=state.target.service_id,
        slot_id=slot.slot_id if slot else None,
        start=_instant_or_none(facts.start or (slot.start if slot else None)),
        end=_instant_or_none(facts.end or (slot.end if slot else None)),
        status=facts.status,
        reason=facts.reason,
    )
    return state.model_copy(
        update={
            "path": path,
            "booking_done": True,
            "appointment": appointment,
            "referral_state": referral_state,
            "referral_version": facts.referral_version or state.referral_version,
            "contact_by": contact_by,
        }
    )


def _instant_or_none(value: str | None) -> datetime | None:
    return parse_instant(value) if value else None


def _appointment_args(state: SagaState, ctx: SagaContext) -> dict[str, str]:
    assert state.ubrn is not None and state.referral_version is not None
    return {
        "ubrn": state.ubrn,
        "version": state.referral_version,
        "service_id": state.target.service_id,
        "nhs_number": ctx.request.patient.nhs_number,
    }


async def _defer(state: SagaState, ctx: SagaContext, reason: str) -> SagaState:
    body = fb.defer_appointment(**_appointment_args(state, ctx), reason=reason)
    reply = await ctx.ers.book_or_defer(body)
    return _after_appointment(state, appointment_facts(reply.body))


async def _book_earliest(state: SagaState, ctx: SagaContext) -> SagaState:
    """Book the earliest free slot in the window. A slot taken by someone else between A015
    and A016 sends us back to A015 for a fresh list, a bounded number of times; then defer
    with SLOT_NOT_AVAILABLE, as e-RS prescribes."""
    tried: set[str] = set()
    for _ in range(ctx.options.max_booking_attempts):
        slots, total = await _free_slots(state, ctx)
        if total == 0 or not slots:
            reason = "SLOT_NOT_AVAILABLE" if tried else "NO_SLOTS_AT_SERVICE"
            return await _defer(state, ctx, reason)
        window = ctx.request.action.booking_window
        candidates = [s for s in slots if _in_window(s, window) and s.slot_id not in tried]
        if not candidates:
            if tried:
                break
            # e-RS allows deferral only when the service has no slots at all, so a referral
            # whose window holds none stays unbooked: the patient books from the letter.
            return _not_booked(state, "NO_SLOT_IN_WINDOW")
        claimed = next((c for c in candidates if ctx.slot_claims.take(c.slot_id)), None)
        # When every one is being booked by another saga here, race for the earliest.
        slot = claimed or candidates[0]
        tried.add(slot.slot_id)
        try:
            return await _book(state, ctx, slot)  # booked: the claim stays, the slot is gone
        except ErsRejected as exc:
            if exc.code not in _SLOT_GONE:
                if claimed is not None:
                    ctx.slot_claims.drop(claimed.slot_id)
                raise
        except BaseException:
            if claimed is not None:
                ctx.slot_claims.drop(claimed.slot_id)
            raise
    return await _defer(state, ctx, "SLOT_NOT_AVAILABLE")


async def _book(state: SagaState, ctx: SagaContext, slot: FreeSlot) -> SagaState:
    body = fb.book_appointment(
        **_appointment_args(state, ctx),
        slot_id=slot.slot_id,
        start=slot.start,
        end=slot.end,
        clinician=slot.clinician,
    )
    try:
        reply = await ctx.ers.book_or_defer(body)
    except ErsOutcomeUnknown:
        # PAS erred or was silent (502/504/timeout). The booking may have been made after
        # all: look before deferring, as e-RS asks us to defer only when it was not.
        checked, booked = await check_booking(state, ctx)
        if booked:
            return checked
        return await _defer(checked, ctx, "BOOKING_ATTEMPT_PROBLEM")
    return _after_appointment(state, appointment_facts(reply.body), slot=slot)


async def book_or_defer(state: SagaState, ctx: SagaContext) -> SagaState:
    if state.path is Path.RAS_TRIAGE:
        body = fb.send_for_triage(**_appointment_args(state, ctx))
        reply = await ctx.ers.book_or_defer(body)
        return _after_appointment(state, appointment_facts(reply.body))
    if state.path is Path.DBS_DEFERRED:
        return await _defer_if_no_slots(state, ctx)
    return await _book_earliest(state, ctx)


async def _defer_if_no_slots(state: SagaState, ctx: SagaContext) -> SagaState:
    """DEFER_TO_PROVIDER: e-RS allows deferral only to a service with no free slots.

    With slots free, the referral stays unbooked (the patient books from the letter)
    rather than failing after it was created.
    """
    _, total = await _free_slots(state, ctx)
    if total == 0:
        try:
            return await _defer(state, ctx, "NO_SLOTS_AT_SERVICE")
        except ErsRejected as exc:
            if exc.code != "SLOTS_CURRENTLY_AVAILABLE":
                raise
    return _not_booked(state, "SLOTS_AVAILABLE_DEFERRAL_NOT_ALLOWED")


def _not_booked(state: SagaState, reason: str) -> SagaState:
    return state.model_copy(
        update={"path": Path.DBS_NOT_BOOKED, "path_reason": reason, "booking_done": True}
    )


async def patient_letter(state: SagaState, ctx: SagaContext) -> SagaState:
    assert state.ubrn is not None
    reply = await ctx.ers.generate_patient_letter(state.ubrn)
    letter = await ctx.letters.save(
        ubrn=state.ubrn,
        request_id=state.request_id,
        file_name=reply.file_name,
        content=reply.content,
    )
    return state.model_copy(update={"letter": letter})


async def _reread(state: SagaState, ctx: SagaContext) -> tuple[SagaState, ReferralFacts]:
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
    refreshed, _ = await _reread(state, ctx)
    return refreshed


async def check_letters(state: SagaState, ctx: SagaContext) -> tuple[SagaState, bool]:
    """Whether every file we uploaded is already linked to the referral (A005)."""
    refreshed, facts = await _reread(state, ctx)
    if set(state.uploaded_urls) <= set(facts.attachment_urls):
        return refreshed.model_copy(update={"attachments_linked": len(state.uploaded_urls)}), True
    return refreshed, False


async def check_booking(state: SagaState, ctx: SagaContext) -> tuple[SagaState, bool]:
    """Whether the referral was already booked, deferred or sent for triage (A005)."""
    refreshed, facts = await _reread(state, ctx)
    if facts.state in _ARRANGED and facts.appointment is not None:
        return _after_appointment(refreshed, facts.appointment), True
    return refreshed, False


_ARRANGED = frozenset({"BOOKED", "DEFERRED_TO_PROVIDER", "AWAITING_TRIAGE"})
# Effects e-RS gives no way to look up: a second call could refer twice, so a person decides.
_UNCHECKABLE = frozenset({"A011", "A021", "A020"})


async def reconcile(state: SagaState, ctx: SagaContext) -> tuple[SagaState, bool]:
    """A state-changing call went out and its effect is unknown: look before going on.

    Returns the state and whether the pending call's effect is there (the step is done);
    when it is not, the step runs again. Raises NeedsReconciliation when e-RS cannot tell.
    """
    pending = state.pending
    assert pending is not None
    if pending.endpoint in _UNCHECKABLE or state.ubrn is None:
        raise NeedsReconciliation(
            f"{pending.endpoint} was sent in step {pending.step.value} and its effect is "
            "unknown; it is not repeated, as that could refer or upload twice"
        )
    cleared = state.model_copy(update={"pending": None})
    if pending.endpoint == "A012":
        return await check_letters(cleared, ctx)
    return await check_booking(cleared, ctx)


STEPS: dict[Step, StepFn] = {
    Step.REFERENCE_DATA: reference_data,
    Step.SEARCH: search,
    Step.CREATE: create,
    Step.UPLOAD: upload,
    Step.LINK_LETTER: link_letter,
    Step.BOOK_OR_DEFER: book_or_defer,
    Step.PATIENT_LETTER: patient_letter,
}
