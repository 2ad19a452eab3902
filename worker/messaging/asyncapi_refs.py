"""Names the AsyncAPI modules share: where components live, and the parked headers that are
always set."""

from __future__ import annotations

from worker.messaging.headers import PARKED_HEADERS

SCHEMAS_REF = "#/components/schemas/"
MESSAGES_REF = "#/components/messages/"
AMQP_BINDING_VERSION = "0.2.0"
# Set by the worker on every message it parks (consumer.parked_headers); the problem text
# is set only for the worker's own findings.
PARKED_HEADERS_ALWAYS = PARKED_HEADERS[:-1]


def ref(path: str, name: str) -> dict[str, str]:
    return {"$ref": f"{path}{name}"}
