"""The messaging contract's names, each spelled once: AMQP headers and routing keys.

``worker.messaging.asyncapi`` documents each of them; the CLI, the demo, the benchmarks and
the tests publish with these names, never with literals of their own.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from schemas.referral_request import Priority

# --- routing keys ---
REQUEST_ROUTING_KEY = "referral.request"  # upstream publishes every request with it
OUTCOME_ROUTING_PREFIX = "referral.outcome"  # + ".<status in lower case>"
LETTER_READY_ROUTING_KEY = "referral.letter_ready"

# --- set by the requester on a request ---
TOKEN_HEADER = "x-ers-access-token"  # the acting user's CIS2 access token (a secret)
EXPIRES_HEADER = "x-ers-token-expires-at"  # optional: ISO 8601, epoch seconds or timestamp
# ERS_TOKEN_PROVIDER=message-id-token: the acting user's CIS2 ID token (a secret), which the
# worker exchanges at the API platform for the access token (worker.ers.token_exchange).
ID_TOKEN_HEADER = "x-ers-id-token"
SECRET_HEADERS = frozenset({TOKEN_HEADER, EXPIRES_HEADER, ID_TOKEN_HEADER})  # never parked/shown

# --- set by the worker on a request it sends through a delay queue ---
ATTEMPT_HEADER = "x-ers-attempt"  # trips through a delay queue so far
# When the request was first received: the retry budget counts from it. As epoch
# MILLISECONDS, an integer (a float went through the broker as 32 bits: 1796163378.8 came
# back as 1796163328.0). The seconds header is still written, for replicas of the version
# before during a rolling upgrade (and after a rollback); it is read only when the
# milliseconds one is missing.
FIRST_SEEN_MS_HEADER = "x-ers-first-seen-ms"
FIRST_SEEN_HEADER = "x-ers-first-seen"

# --- set by the worker on a request it parks ---
REASON_HEADER = "x-ers-reason"
STEP_HEADER = "x-ers-step"
OUTCOME_STATUS_HEADER = "x-ers-outcome-status"
REQUEST_ID_HEADER = "x-ers-request-id"
PARKED_AT_HEADER = "x-ers-parked-at"
PROBLEM_HEADER = "x-ers-problem"  # our own text only (fields, rules), never e-RS diagnostics
PARKED_HEADERS = (
    REASON_HEADER,
    STEP_HEADER,
    OUTCOME_STATUS_HEADER,
    REQUEST_ID_HEADER,
    PARKED_AT_HEADER,
    PROBLEM_HEADER,
)
REPLAYED_AT_HEADER = "x-ers-replayed-at"  # set by `dead-letters replay`

# --- set by the worker on an event ---
SCHEMA_VERSION_HEADER = "x-ers-schema-version"

# --- set by RabbitMQ ---
DELIVERY_COUNT_HEADER = "x-delivery-count"  # quorum queues: earlier deliveries of this one
DEATH_HEADER = "x-death"  # the broker's own dead-lettering history
# What a replayed message must start without: the broker's and the delay trips' counts.
RESET_ON_REPLAY = frozenset(
    {DELIVERY_COUNT_HEADER, DEATH_HEADER, ATTEMPT_HEADER, FIRST_SEEN_HEADER, FIRST_SEEN_MS_HEADER}
)


def work_routing_key(priority: Priority) -> str:
    """The key the worker routes a request to its priority's work queue with, e.g.
    ``referral.request.two_week_wait`` (upstream never needs it)."""
    return f"{REQUEST_ROUTING_KEY}.{priority.value.lower()}"


def attempt_of(headers: Mapping[str, Any]) -> int:
    """How many times the message has been through a delay queue."""
    value = headers.get(ATTEMPT_HEADER, 0)
    return value if isinstance(value, int) and value >= 0 else 0


def first_seen_headers(now: float) -> dict[str, Any]:
    """The headers saying a message was first seen at ``now`` (epoch seconds)."""
    return {FIRST_SEEN_MS_HEADER: int(now * 1000), FIRST_SEEN_HEADER: now}


def first_seen_of(headers: Mapping[str, Any], default: float) -> float:
    """Epoch seconds the message was first seen: from the milliseconds header, else from the
    seconds one (messages delayed by the version before), else ``default``."""
    millis = headers.get(FIRST_SEEN_MS_HEADER)
    if isinstance(millis, int) and not isinstance(millis, bool):
        return millis / 1000
    value = headers.get(FIRST_SEEN_HEADER)
    if isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    return default
