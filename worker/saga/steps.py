"""The saga's steps: each takes the state and the context and returns the next state.

The booking step lives in ``booking``; the reads that settle unknown effects in ``recovery``.

Steps know e-RS only through ``ErsPort`` and storage only through ``LetterStore``; they know
nothing of RabbitMQ. They raise the errors of ``worker.saga.errors``; the runner decides what an
error means for the saga, in one place.
"""

from __future__ import annotations

from schemas.events import Path, Step
from schemas.referral_request import AutomaticShortlist, IntendedAction, ReferralRequestV1
from worker.fhir import build as fb
from worker.fhir.read import FoundService, referral_facts, services_from_search
from worker.fhir.vocabulary import ALREADY_LINKED, APPOINTMENT_REQUEST
from worker.saga.appointment import after_appointment
from worker.saga.booking import book_or_defer
from worker.saga.context import SagaContext, StepFn
from worker.saga.errors import BusinessRuleFailure, ErsRejected
from worker.saga.recovery import check_letters
from worker.saga.state import SagaState, ShortlistedService, TriageRoute, planned_path


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
    return service.directly_bookable and APPOINTMENT_REQUEST in service.request_flow_types


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
            appointments=APPOINTMENT_REQUEST in s.request_flow_types,
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
        triaged = after_appointment(created, facts.appointment, ctx.options.holiday_region)
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
        if exc.code in ALREADY_LINKED:
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


STEPS: dict[Step, StepFn] = {
    Step.REFERENCE_DATA: reference_data,
    Step.SEARCH: search,
    Step.CREATE: create,
    Step.UPLOAD: upload,
    Step.LINK_LETTER: link_letter,
    Step.BOOK_OR_DEFER: book_or_defer,
    Step.PATIENT_LETTER: patient_letter,
}
