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
- anything else (a bug): ``FAILED`` with ``INTERNAL_ERROR``, the state kept.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable

from schemas.events import ErrorInfo, OutcomeStatus, Step
from schemas.privacy import redact, where
from worker.observability.metrics import Metrics, bounded_code
from worker.saga.errors import (
    ErsAuthError,
    ErsConflict,
    ErsError,
    ErsLocked,
    ErsOutcomeUnknown,
    ErsTransientError,
    ErsUnexpected,
    NeedsReconciliation,
    SagaError,
    TokenExpired,
)
from worker.saga.ports import ErsCall
from worker.saga.state import CallRecord, PendingWrite, SagaState, finish, next_step, transition
from worker.saga.steps import STEPS, SagaContext, check_booking, reconcile, refresh_version

log = logging.getLogger("worker.saga.runner")
Checkpoint = Callable[[SagaState], Awaitable[None]]
MAX_VERSION_CONFLICTS = 3


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
            retryable=exc.retryable,
        )
    return ErrorInfo(step=step, code=exc.code, text=redact(str(exc)), retryable=exc.retryable)


def status_for(exc: SagaError) -> OutcomeStatus:
    if isinstance(exc, ErsAuthError | TokenExpired):
        return OutcomeStatus.REAUTHENTICATION_NEEDED
    if isinstance(exc, NeedsReconciliation):
        return OutcomeStatus.NEEDS_RECONCILIATION
    return OutcomeStatus.FAILED


async def _nothing(_: SagaState) -> None:
    return None


async def run_saga(
    state: SagaState,
    ctx: SagaContext,
    *,
    drain_calls: Callable[[], list[ErsCall]] | None = None,
    checkpoint: Checkpoint = _nothing,
    metrics: Metrics | None = None,
) -> SagaState:
    """Run from ``state.step`` until the saga finishes or waits; returns that state."""
    conflicts = 0
    while state.running:
        step = state.step
        started = time.perf_counter()
        if metrics is not None:
            metrics.step_attempts.labels(step.value).inc()
        try:
            if state.pending is not None:
                state, done = await reconcile(state, ctx)
            else:
                state, done = await STEPS[step](state, ctx), True
            if done:
                state = transition(state, next_step(state, ctx.request, ctx.options.triage_route))
        except ErsConflict as exc:
            conflicts += 1
            if conflicts > MAX_VERSION_CONFLICTS:
                state = finish(state, OutcomeStatus.FAILED, error_info(step, exc))
            elif step is Step.BOOK_OR_DEFER:
                # The referral changed under us: maybe our own booking or deferral landed
                # after a call that seemed to fail. Look before booking again.
                state = await _guarded(_check_then_move_on, state, ctx, step)
            else:
                state = await _guarded(refresh_version, state, ctx, step)
        except ErsOutcomeUnknown as exc:
            state = state.model_copy(
                update={"pending": PendingWrite(step=step, endpoint=exc.endpoint, at=ctx.now())}
            )
        except (ErsTransientError, ErsLocked) as exc:
            state = state.model_copy(update={"waiting": error_info(step, exc)})
        except SagaError as exc:
            state = finish(state, status_for(exc), error_info(step, exc))
        except Exception as exc:
            state = finish(state, OutcomeStatus.FAILED, internal_error(step, exc))
        finally:
            if drain_calls is not None:
                state = _with_history(state, step, drain_calls())
        if metrics is not None:
            _count_failure(metrics, step, state)
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


def _count_failure(metrics: Metrics, step: Step, state: SagaState) -> None:
    problem = state.waiting or state.error
    if problem is not None and problem.step is step:
        metrics.step_failures.labels(step.value, bounded_code(problem.code)).inc()
    elif state.pending is not None and state.pending.step is step:
        metrics.step_failures.labels(step.value, "OUTCOME_UNKNOWN").inc()


async def _guarded(
    action: Callable[[SagaState, SagaContext], Awaitable[SagaState]],
    state: SagaState,
    ctx: SagaContext,
    step: Step,
) -> SagaState:
    """Run a recovery action; if it fails too, the saga waits or ends as that error says."""
    try:
        return await action(state, ctx)
    except (ErsTransientError, ErsLocked) as exc:
        return state.model_copy(update={"waiting": error_info(step, exc)})
    except SagaError as exc:
        return finish(state, status_for(exc), error_info(step, exc))


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
