"""Every failure the saga can meet, with its retry meaning carried by the class.

    SagaError
    ├── ErsError                      an answer (or silence) from e-RS, classified once
    │   ├── ErsTransientError         retry may help: 429, 5xx, connection, timeout
    │   │   └── ErsRateLimited        429, with the Retry-After e-RS asked for
    │   ├── ErsAuthError              401: the user must re-authenticate
    │   ├── ErsConflict               409/412: the referral version we hold is stale
    │   ├── ErsLocked                 423: someone else is updating the referral
    │   ├── ErsRejected               other 4xx: e-RS refused the request as it stands
    │   ├── ErsUnexpected             an answer the spec does not list: a person must look
    │   └── ErsOutcomeUnknown         a non-idempotent call whose effect is unknown
    ├── TokenExpired                  the token expired before the call was made
    ├── NeedsReconciliation           an unknown effect the worker cannot check for itself
    └── BusinessRuleFailure           the worker refused to go on (e.g. service not found)

Messages hold endpoint, status and e-RS codes only: never tokens or patient identifiers.
The e-RS diagnostics text is kept apart (``diagnostics``) for outcome events, not logs.
"""

from __future__ import annotations


class SagaError(Exception):
    """Base of every failure that ends or pauses a saga."""

    code: str = "ERROR"
    retryable: bool = False

    def __init__(self, message: str, *, code: str | None = None) -> None:
        super().__init__(message)
        if code is not None:
            self.code = code


class ErsError(SagaError):
    def __init__(
        self,
        endpoint: str,
        status: int | None,
        code: str,
        *,
        diagnostics: str = "",
        request_id: str | None = None,
    ) -> None:
        super().__init__(f"{endpoint} answered {status if status else 'nothing'}: {code}")
        self.endpoint = endpoint
        self.status = status
        self.code = code
        self.diagnostics = diagnostics
        self.request_id = request_id


class ErsTransientError(ErsError):
    retryable = True


class ErsRateLimited(ErsTransientError):
    def __init__(
        self,
        endpoint: str,
        retry_after: float | None,
        *,
        diagnostics: str = "",
        request_id: str | None = None,
    ) -> None:
        super().__init__(
            endpoint, 429, "TOO_MANY_REQUESTS", diagnostics=diagnostics, request_id=request_id
        )
        self.retry_after = retry_after


class ErsAuthError(ErsError):
    retryable = True  # with a fresh token from the user, not as it stands


class ErsConflict(ErsError):
    retryable = True


class ErsLocked(ErsError):
    retryable = True


class ErsRejected(ErsError):
    retryable = False


class ErsUnexpected(ErsError):
    retryable = False


class ErsOutcomeUnknown(ErsError):
    """Sent, but no answer: repeating could refer or book twice, so a person must reconcile."""

    retryable = False


class TokenExpired(SagaError):
    code = "TOKEN_EXPIRED"
    retryable = True


class NeedsReconciliation(SagaError):
    code = "NEEDS_RECONCILIATION"
    retryable = False


class BusinessRuleFailure(SagaError):
    retryable = False
