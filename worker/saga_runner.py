"""Drives a saga through its steps, and turns every saga error into its terminal outcome.

This is the one place that decides what an error means for the saga: re-authentication,
failure (with whether a retry could help), or a bug that propagates to the consumer.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from schemas.events import ErrorInfo, OutcomeStatus, Step
from worker.errors import ErsAuthError, ErsError, SagaError, TokenExpired
from worker.ports import ErsCall
from worker.privacy import redact
from worker.saga import CallRecord, SagaState, finish, next_step, transition
from worker.steps import STEPS, SagaContext

Checkpoint = Callable[[SagaState], Awaitable[None]]


def error_info(step: Step, exc: SagaError) -> ErrorInfo:
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
    return OutcomeStatus.FAILED


async def run_saga(
    state: SagaState,
    ctx: SagaContext,
    *,
    drain_calls: Callable[[], list[ErsCall]] | None = None,
    checkpoint: Checkpoint | None = None,
) -> SagaState:
    """Run from ``state.step`` until the saga is finished; returns the final state."""
    while not state.finished:
        step = state.step
        try:
            state = await STEPS[step](state, ctx)
        except SagaError as exc:
            state = finish(state, status_for(exc), error_info(step, exc))
        finally:
            if drain_calls is not None:
                state = _with_history(state, step, drain_calls())
        if not state.finished:
            state = transition(state, next_step(state, ctx.request, ctx.options.triage_route))
        if checkpoint is not None:
            await checkpoint(state)
    return state


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
