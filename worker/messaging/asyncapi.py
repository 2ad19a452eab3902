"""The worker's messaging interface as an AsyncAPI 2.6 document, built from the code.

Channels (AsyncAPI 2.x reads ``publish`` as "others send this to the worker" and ``subscribe``
as "the worker sends this"):

- ``referral.request``: requests in, exchange ``ers.requests`` (direct) → quorum queue
  ``ers.requests``; the token in ``x-ers-access-token``, replies to ``reply_to``.
- ``{reply_to}``: the requester's queue, through the default exchange: the outcome and the
  letter-ready event, with the request's ``correlation_id``.
- ``referral.outcome.{status}`` and ``referral.letter_ready``: the same events on the topic
  exchange ``ers.events``.
- ``ers.delay.{seconds}s``: the worker's own delay queues (TTL, then back to the requests).
- ``ers.dead-letters``: parked messages (``ers.dlx``, fanout), the reason in ``x-ers-*``
  headers and the access token removed.

Payloads are the pydantic models' JSON Schemas (the same as ``schemas/*.schema.json``), their
``$defs`` moved under ``components/schemas``. Names, routing keys and header names come from
the worker's modules, with the default settings (prefix ``ers``). A test fails when
``schemas/asyncapi.json`` is stale; regenerate with ``python -m worker.messaging.asyncapi``.
"""

from __future__ import annotations

import sys
from importlib.metadata import version
from typing import Any

import orjson
from pydantic import BaseModel

from schemas.export import MODELS, SCHEMA_DIR
from worker.messaging.asyncapi_channels import channels, messages
from worker.messaging.asyncapi_headers import header_schemas
from worker.messaging.asyncapi_refs import PARKED_HEADERS_ALWAYS, SCHEMAS_REF
from worker.messaging.headers import (
    PARKED_HEADERS,
)
from worker.messaging.topology import (
    DEFAULT_DELIVERY_LIMIT,
    DEFAULT_PREFIX,
    DEFAULT_RETRY_DELAYS,
    Names,
)

__all__ = ["OUTPUT", "PARKED_HEADERS", "PARKED_HEADERS_ALWAYS", "build", "main", "render"]

ASYNCAPI_VERSION = "2.6.0"
OUTPUT = SCHEMA_DIR / "asyncapi.json"


def _asyncapi_schema(node: Any) -> Any:
    """AsyncAPI 2.x's Schema Object takes ``discriminator`` as the property name (a string),
    where pydantic writes OpenAPI 3's object; its ``oneOf`` with ``const`` says the rest."""
    if isinstance(node, dict):
        out = {key: _asyncapi_schema(value) for key, value in node.items()}
        discriminator = out.get("discriminator")
        if isinstance(discriminator, dict):
            out["discriminator"] = discriminator["propertyName"]
        return out
    if isinstance(node, list):
        return [_asyncapi_schema(item) for item in node]
    return node


def model_schemas(models: list[type[BaseModel]]) -> dict[str, Any]:
    """Each model's JSON Schema and its ``$defs``, as named component schemas, with every
    ``$ref`` pointing at ``#/components/schemas/<name>``."""
    out: dict[str, Any] = {}

    def put(name: str, schema: Any) -> None:
        if name in out and out[name] != schema:
            raise ValueError(f"two different schemas named {name}")
        out[name] = schema

    for model in models:
        schema = model.model_json_schema(mode="validation", ref_template=SCHEMAS_REF + "{model}")
        for name, definition in schema.pop("$defs", {}).items():
            put(name, _asyncapi_schema(definition))
        put(model.__name__, _asyncapi_schema(schema))
    return dict(sorted(out.items()))


def build() -> dict[str, Any]:
    """The AsyncAPI document, with the default settings (not the environment's)."""
    names = Names(DEFAULT_PREFIX)
    delays = tuple(float(d) for d in DEFAULT_RETRY_DELAYS.split(","))
    schemas = model_schemas(list(MODELS.values()))
    headers = header_schemas()
    clash = schemas.keys() & headers.keys()
    if clash:
        raise ValueError(f"header schemas clash with model schemas: {sorted(clash)}")
    return {
        "asyncapi": ASYNCAPI_VERSION,
        "id": "urn:nhs:ers-worker",
        "info": {
            "title": "ers-worker",
            "version": version("ers-worker"),
            "description": "Referral requests in, one outcome event per request out, over "
            "RabbitMQ: the worker carries each request through the NHS e-Referral Service "
            "(e-RS) referrer flow as a durable saga.",
            "license": {"name": "MIT", "url": "https://opensource.org/licenses/MIT"},
        },
        "defaultContentType": "application/json",
        "servers": {
            "rabbitmq": {
                "url": "amqp://{host}:{port}/",
                "protocol": "amqp",
                "protocolVersion": "0.9.1",
                "description": "RabbitMQ 3.10 or later (quorum queues, at-least-once dead "
                "lettering); the worker's AMQP_URL.",
                "variables": {
                    "host": {"default": "127.0.0.1"},
                    "port": {"default": "5672"},
                },
                "security": [{"rabbitmqUser": []}],
            }
        },
        "channels": channels(names, DEFAULT_DELIVERY_LIMIT, delays),
        "components": {
            "schemas": {**schemas, **dict(sorted(headers.items()))},
            "messages": messages(names),
            "securitySchemes": {
                "rabbitmqUser": {
                    "type": "userPassword",
                    "description": "The RabbitMQ user and password in the AMQP URL.",
                }
            },
        },
    }


def render() -> bytes:
    return orjson.dumps(build(), option=orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS) + b"\n"


def main() -> int:
    OUTPUT.write_bytes(render())
    print(f"wrote schemas/{OUTPUT.name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
