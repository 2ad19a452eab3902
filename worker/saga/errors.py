"""Every failure the saga can meet, each class carrying the one thing it means: its
``Disposition``. Nothing else decides retries; the runner, the e-RS client and the outcome
event all read it from here.

    SagaError                                          disposition
    ├── ErsError                      an answer (or silence) from e-RS, classified once
    │   ├── ErsTransientError         429, 5xx, connection, timeout        RETRY_NOW
    │   │   └── ErsRateLimited        429, with the Retry-After e-RS asked for
    │   ├── ErsAuthError              401: the user must re-authenticate   REAUTHENTICATE
    │   │   └── ExchangeRefused       the API platform refused the token exchange
    │   ├── ErsConflict               409/412: our referral version is stale   REFRESH
    │   ├── ErsLocked                 423: someone else is updating it     WAIT
    │   ├── ErsRejected               other 4xx: refused as it stands      FAIL
    │   ├── ErsUnexpected             an answer the spec does not list     FAIL (parked)
    │   ├── ErsOutcomeUnknown         sent, effect unknown                 RECONCILE
    │   └── RequestNotSendable        httpx refused to send what we built  FAIL (parked)
    ├── TokenExpired                  expired before the call was made     REAUTHENTICATE
    ├── IdTokenExpired                the CIS2 ID token, before an exchange  REAUTHENTICATE
    ├── NeedsReconciliation           an unknown effect e-RS cannot tell   ASK_A_PERSON
    ├── CreateNotYetVisible           a create not (yet) on the worklists  WAIT
    └── BusinessRuleFailure           the worker refused to go on          FAIL

Messages hold endpoint, status and e-RS codes only: never tokens or patient identifiers.
The e-RS diagnostics text is kept apart (``diagnostics``) for outcome events, not logs.
"""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum


class Disposition(StrEnum):
    """What a failure means for the saga: the one reading of an error class."""

    RETRY_NOW = "retry_now"
    """Transient: the client retries in process; if that does not cure it, WAIT."""
    WAIT = "wait"
    """Pause the saga in a delay queue and resume it from its checkpoint."""
    REFRESH = "refresh"
    """Re-read the referral's version (A005) and run the step again."""
    REAUTHENTICATE = "reauthenticate"
    """End REAUTHENTICATION_NEEDED: a re-send with a fresh token resumes the saga."""
    RECONCILE = "reconcile"
    """Mark the call pending and check e-RS (A005) before going on."""
    ASK_A_PERSON = "ask_a_person"
    """e-RS cannot tell us what happened: end NEEDS_RECONCILIATION, parked for a person."""
    FAIL = "fail"
    """A final refusal: end FAILED with the code."""

    @property
    def retryable(self) -> bool:
        """``ErrorInfo.retryable`` in the outcome event: would trying again (as it is, or with
        a fresh token) help?"""
        return self in _RETRYABLE


_RETRYABLE = frozenset(
    {Disposition.RETRY_NOW, Disposition.WAIT, Disposition.REFRESH, Disposition.REAUTHENTICATE}
)


class SagaError(Exception):
    """Base of every failure that ends or pauses a saga."""

    code: str = "ERROR"
    disposition: Disposition = Disposition.FAIL

    def __init__(self, message: str, *, code: str | None = None) -> None:
        super().__init__(message)
        if code is not None:
            self.code = code

    @property
    def proves_not_taken(self) -> bool:
        """Whether the error proves the failed call had no effect: e-RS refused it or never
        saw it. So a state-changing call's write-ahead mark can go (the client withdraws it),
        and a saga it ends need not check e-RS first should it run again."""
        return self.disposition is not Disposition.RECONCILE


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
        # When the attempt was sent (set by the client): an unknown effect's pending mark
        # dates from the send, not from when the silence ended.
        self.sent_at: datetime | None = None


class ErsTransientError(ErsError):
    disposition = Disposition.RETRY_NOW


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
    disposition = Disposition.REAUTHENTICATE


TOKEN_EXCHANGE = "TOKEN_EXCHANGE"  # the API platform's /oauth2/token, as errors name it
# Which token an OAuth error is about, for the outcome's text, when the platform's answer does
# not name the part of the request it refused.
CLIENT_ASSERTION = "client_assertion"
SUBJECT_TOKEN = "subject_token"


class ExchangeRefused(ErsAuthError):
    """The platform refused the exchange: the outcome is REAUTHENTICATION_NEEDED, its code
    naming the OAuth error (``TOKEN_EXCHANGE_INVALID_GRANT``...), its text which token.

    ``about`` is the form field the platform's answer names (``CLIENT_ASSERTION`` or
    ``SUBJECT_TOKEN``), if any: the OAuth error alone cannot say, since ``invalid_request``
    covers a replayed ``jti`` in the assertion as well as a malformed ID token. It is kept,
    so the exchange's metric counts the ID token's refusals apart from the worker's own."""

    disposition = Disposition.REAUTHENTICATE

    def __init__(self, status: int, error: str, about: str | None = None) -> None:
        self.error = error
        self.about = about
        which = (
            "the CIS2 ID token was not accepted; re-send with a fresh CIS2 ID token"
            if self.id_token_at_fault
            else "the worker's own request (its client assertion: API key, key, kid or jti, "
            "as the API platform checks them) was not accepted: the worker's to put right, "
            "then a re-send resumes"
        )
        super().__init__(
            TOKEN_EXCHANGE,
            status,
            f"TOKEN_EXCHANGE_{error.upper()}",
            diagnostics=f"the API platform refused to exchange the CIS2 ID token "
            f"({error}): {which}",
        )

    @property
    def id_token_at_fault(self) -> bool:
        """Whose refusal this is, for the outcome's text and the exchange metric alike: the
        ID token's (upstream re-sends a fresh one) or the worker's own (an operator's to fix).
        The platform's description names the token it refused; without a name, only
        ``invalid_grant`` is about the grant, the ID token, and anything else is taken as
        the worker's own request (its form or its assertion), which re-sending cannot cure."""
        if self.about is not None:
            return self.about == SUBJECT_TOKEN
        return self.error == "invalid_grant"


class ErsConflict(ErsError):
    disposition = Disposition.REFRESH


class ErsLocked(ErsError):
    disposition = Disposition.WAIT


class ErsRejected(ErsError):
    disposition = Disposition.FAIL


class ErsUnexpected(ErsError):
    # Final, and parked for a person by its outcome code (``policy``): nobody expected it.
    disposition = Disposition.FAIL

    @property
    def proves_not_taken(self) -> bool:
        return False  # an answer the spec does not list: nobody knows what that call did


class ErsOutcomeUnknown(ErsError):
    """Sent, but no answer: repeating could refer or book twice, so reconcile first."""

    disposition = Disposition.RECONCILE


class RequestNotSendable(ErsError):
    """Our own request could not be sent (httpx's LocalProtocolError): never sent, and a
    retry would fail the same way; a bug or bad input for a person to look at."""

    disposition = Disposition.FAIL


class TokenExpired(SagaError):
    code = "TOKEN_EXPIRED"
    disposition = Disposition.REAUTHENTICATE


class IdTokenExpired(SagaError):
    """The CIS2 ID token expired before an exchange was needed: only a re-send cures it."""

    code = "ID_TOKEN_EXPIRED"
    disposition = Disposition.REAUTHENTICATE


class NeedsReconciliation(SagaError):
    code = "NEEDS_RECONCILIATION"
    disposition = Disposition.ASK_A_PERSON


class CreateNotYetVisible(SagaError):
    """A create whose answer was lost is not on the worklists yet: e-RS may still be
    completing it, so look again after the horizon rather than conclude."""

    code = "CREATE_NOT_YET_VISIBLE"
    disposition = Disposition.WAIT


class BusinessRuleFailure(SagaError):
    disposition = Disposition.FAIL
