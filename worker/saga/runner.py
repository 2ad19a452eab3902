"""Drives a saga through its steps, checkpointing it, and turns every error into what it
means for the saga, in this one place:

- a token refused or expired: ``REAUTHENTICATION_NEEDED`` (resumable by a re-send);
- a transient fault that in-process retries did not cure (5xx on reads, 503, 429, 423,
  network): the saga *waits* (``state.waiting``) and the consumer sends the message to a
  delay queue; it resumes from its checkpoint;
- a stale referral version (409/412): re-read the referral (A005) and run the step again;
- a state-changing call whose effect is unknown: mark it pending and reconcile (A005) before
  going on, or end ``NEEDS_RECONCILIATION`` when e-RS cannot tell;
- any other e-RS refusal or worker rule: ``FAILED`` with the code;
- the journal unable to store the saga before a call (``NotStored``, ``LeaseLost``): not the
  saga's to answer for; the run stops and the message goes back;
- anything else (a bug): ``FAILED`` with ``INTERNAL_ERROR``, the state kept.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable

from schemas.events import ErrorInfo, OutcomeStatus, Step
from schemas.privacy import redact, where
from worker.fhir.vocabulary import STATE_CHANGING
from worker.saga.context import SagaContext
from worker.saga.errors import Disposition, ErsError, ErsRateLimited, ErsUnexpected, SagaError
from worker.saga.policy import status_for
from worker.saga.ports import ErsCall, SagaObserver
from worker.saga.recovery import check_booking, reconcile, refresh_version
from worker.saga.state import CallRecord, PendingWrite, SagaState, finish, next_step, transition
from worker.saga.steps import STEPS
from worker.saga.store import NotStored

log = logging.getLogger("worker.saga.runner")
Checkpoint = Callable[[SagaState], Awaitable[None]]
MAX_VERSION_CONFLICTS = 3
# Unknown effects settled in one run before the saga waits in a delay queue instead: an A020
# that keeps timing out is re-sent at the pace of the delay tiers, within the retry budget.
MAX_UNKNOWN_EFFECTS = 3


def error_info(step: Step, exc: SagaError) -> ErrorInfo:
    if isinstance(exc, ErsUnexpected):
        return ErrorInfo(
            step=step,
            code="UNEXPECTED_RESPONSE",
            text=f"{exc.endpoint} answered {exc.status} {exc.code}, which the e-RS "
            "specification does not list for it",
            http_status=exc.status,
            retryable=False,
        )
    if isinstance(exc, ErsError):
        return ErrorInfo(
            step=step,
            code=exc.code,
            text=redact(exc.diagnostics) or str(exc),
            http_status=exc.status,
            retryable=exc.disposition.retryable,
        )
    return ErrorInfo(
        step=step, code=exc.code, text=redact(str(exc)), retryable=exc.disposition.retryable
    )


async def _nothing(_: SagaState) -> None:
    return None


async def run_saga(
    state: SagaState,
    ctx: SagaContext,
    *,
    checkpoint: Checkpoint = _nothing,
    observer: SagaObserver | None = None,
) -> SagaState:
    """Run from ``state.step`` until the saga finishes or waits; returns that state."""
    conflicts = unknowns = 0
    while state.running:
        step = state.step
        started = time.perf_counter()
        if observer is not None:
            observer.step_started(step)
        try:
            if state.pending is not None:
                state, done = await reconcile(state, ctx)
            else:
                state, done = await STEPS[step](state, ctx), True
            if done:
                state = transition(state, next_step(state, ctx.request, ctx.options.triage_route))
        except SagaError as exc:
            if exc.disposition is Disposition.REFRESH:
                conflicts += 1
            if exc.disposition is Disposition.RECONCILE:
                unknowns += 1
            state = await _settle(state, ctx, step, exc, conflicts, unknowns)
        except NotStored:
            raise  # the store, not the saga, failed: the message goes back (journal)
        except Exception as exc:
            state = finish(state, OutcomeStatus.FAILED, internal_error(step, exc))
        finally:
            state = _with_history(state, step, ctx.ers.drain_calls())
        if observer is not None:
            _report_failure(observer, step, state)
        log.info(
            "step ended",
            extra={
                "request_id": state.request_id,
                "correlation_id": state.correlation_id,
                "step": step.value,
                "duration_ms": int((time.perf_counter() - started) * 1000),
                "status": (state.status.value if state.status else None)
                or ("WAITING" if state.waiting else "NEXT:" + state.step.value),
            },
        )
        await checkpoint(state)
    return state


async def _settle(
    state: SagaState,
    ctx: SagaContext,
    step: Step,
    exc: SagaError,
    conflicts: int,
    unknowns: int = 0,
) -> SagaState:
    """What the error's disposition makes of the saga: the one reading of it."""
    disposition = exc.disposition
    if disposition is Disposition.REFRESH:
        if conflicts > MAX_VERSION_CONFLICTS:
            return finish(state, OutcomeStatus.FAILED, error_info(step, exc))
        if step is Step.BOOK_OR_DEFER:
            # The referral changed under us: maybe our own booking or deferral landed
            # after a call that seemed to fail. Look before booking again.
            return await _guarded(_check_then_move_on, state, ctx, step)
        return await _guarded(refresh_version, state, ctx, step)
    if disposition is Disposition.RECONCILE and isinstance(exc, ErsError):
        pending = _mark(step, exc, ctx)
        if unknowns > MAX_UNKNOWN_EFFECTS:
            # Keep the mark (the next run reconciles first) and wait out the fault; waiting
            # is worth it, so a spent budget parks it for a person.
            waiting = error_info(step, exc).model_copy(update={"retryable": True})
            return state.model_copy(update={"pending": pending, "waiting": waiting})
        return state.model_copy(update={"pending": pending})
    if disposition in (Disposition.RETRY_NOW, Disposition.WAIT):
        # RETRY_NOW reaching the runner: the client's in-process retries did not cure it.
        return _waiting(state, step, exc)
    ended = finish(state, status_for(disposition), error_info(step, exc))
    if isinstance(exc, ErsError) and _kept_mark(exc):
        # The client kept this call's mark (an answer the spec does not list): so does the
        # ending, so that a later run (storing the outcome failed, or an operator reopened
        # it) asks e-RS first.
        return ended.model_copy(update={"pending": _mark(step, exc, ctx)})
    return ended


def _mark(step: Step, exc: ErsError, ctx: SagaContext) -> PendingWrite:
    """The pending mark of the call ``exc`` answered, dated from when it was sent."""
    return PendingWrite(step=step, endpoint=exc.endpoint, at=exc.sent_at or ctx.now())


def _kept_mark(exc: ErsError) -> bool:
    # Not every ErsError names an e-RS endpoint: a refused token exchange names TOKEN_EXCHANGE.
    return exc.endpoint in STATE_CHANGING and not exc.proves_not_taken


def _waiting(state: SagaState, step: Step, exc: SagaError) -> SagaState:
    """The saga paused on ``exc``, for at least as long as e-RS asked (Retry-After)."""
    asked = exc.retry_after if isinstance(exc, ErsRateLimited) else None
    return state.model_copy(update={"waiting": error_info(step, exc), "waiting_at_least": asked})


def _report_failure(observer: SagaObserver, step: Step, state: SagaState) -> None:
    problem = state.waiting or state.error
    if problem is not None and problem.step is step:
        observer.step_failed(step, problem.code)
    elif state.pending is not None and state.pending.step is step:
        observer.step_failed(step, "OUTCOME_UNKNOWN")


async def _guarded(
    action: Callable[[SagaState, SagaContext], Awaitable[SagaState]],
    state: SagaState,
    ctx: SagaContext,
    step: Step,
) -> SagaState:
    """Run a recovery action; if it fails too, the saga waits or ends as that error says."""
    try:
        return await action(state, ctx)
    except SagaError as exc:
        if exc.disposition in (Disposition.RETRY_NOW, Disposition.WAIT):
            return _waiting(state, step, exc)
        return finish(state, status_for(exc.disposition), error_info(step, exc))


async def _check_then_move_on(state: SagaState, ctx: SagaContext) -> SagaState:
    checked, arranged = await check_booking(state, ctx)
    if not arranged:
        return checked
    return transition(checked, next_step(checked, ctx.request, ctx.options.triage_route))


def internal_error(step: Step, exc: BaseException) -> ErrorInfo:
    # Only the type and place: an unexpected error's message may quote patient data.
    return ErrorInfo(
        step=step,
        code="INTERNAL_ERROR",
        text=f"the worker failed unexpectedly ({type(exc).__name__} at {where(exc)})",
        retryable=False,
    )


def _with_history(state: SagaState, step: Step, calls: list[ErsCall]) -> SagaState:
    if not calls:
        return state
    records = tuple(
        CallRecord(
            step=step,
            endpoint=c.endpoint,
            status=c.status,
            at=c.at,
            duration_ms=c.duration_ms,
            x_request_id=c.x_request_id,
            error_code=c.error_code,
        )
        for c in calls
    )
    return state.model_copy(update={"history": (*state.history, *records)})
