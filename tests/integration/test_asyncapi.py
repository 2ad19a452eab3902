"""schemas/asyncapi.json: current, a valid AsyncAPI 2.6 document, and true to the worker.

No AsyncAPI 2.6 validator on PyPI works offline and follows the specification (the official
JSON Schemas are published on npm only; pydantic-asyncapi's models reject the AMQP bindings'
`is: routingKey` and a server's security requirement, both valid), so the document is checked
here against the rules of AsyncAPI 2.6 this test spells out as JSON Schema, plus what a schema
cannot say: every $ref resolves, every channel's messages resolve to messages with a payload,
channel parameters match the channel names, payload schemas are valid JSON Schema, and real
messages (the samples, events and parked headers the worker makes) validate against them.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from datetime import UTC, datetime
from functools import cache
from pathlib import Path
from typing import Any

import pytest
from jsonschema import Draft7Validator
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT7

from schemas.events import (
    ErrorInfo,
    LetterInfo,
    LetterReadyEventV1,
    OutcomeEventV1,
    OutcomeStatus,
    Step,
)
from schemas.referral_request import ReferralRequestV1
from worker.messaging import asyncapi
from worker.messaging.fate import Fate, Handled
from worker.messaging.headers import EXPIRES_HEADER, TOKEN_HEADER
from worker.messaging.outgoing import event_message, parked_headers, routing_key
from worker.messaging.topology import Names, definitions
from worker.ops.settings import Settings

SAMPLES = Path(__file__).resolve().parents[2] / "samples"
DEFINITIONS = Path(__file__).resolve().parents[2] / "deploy" / "rabbitmq" / "definitions.json"
DOCUMENT_URI = "urn:ers-worker:asyncapi"
TRACE_CONTEXT = {"traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"}

_EXTENSIONS: dict[str, Any] = {"^x-[\\w\\d.\\-_]+$": {}}
_REF = {
    "type": "object",
    "required": ["$ref"],
    "properties": {"$ref": {"type": "string", "format": "uri-reference"}},
}
_CORRELATION_ID = {
    "type": "object",
    "required": ["location"],
    "additionalProperties": False,
    "patternProperties": _EXTENSIONS,
    "properties": {
        "description": {"type": "string"},
        "location": {"type": "string", "pattern": r"^\$message\.(header|payload)#(/[^/]*)*$"},
    },
}
_BINDINGS = {"type": "object", "additionalProperties": {"type": "object"}}
_AMQP_EXCHANGE = {
    "type": "object",
    "additionalProperties": False,
    "properties": {
        "name": {"type": "string", "maxLength": 255},
        "type": {"enum": ["topic", "direct", "fanout", "default", "headers"]},
        "durable": {"type": "boolean"},
        "autoDelete": {"type": "boolean"},
        "vhost": {"type": "string"},
    },
}
_AMQP_QUEUE = {
    "type": "object",
    "additionalProperties": False,
    "properties": {
        "name": {"type": "string", "maxLength": 255},
        "durable": {"type": "boolean"},
        "exclusive": {"type": "boolean"},
        "autoDelete": {"type": "boolean"},
        "vhost": {"type": "string"},
    },
}
# The AMQP 0-9-1 channel binding, version 0.2.0.
AMQP_CHANNEL_BINDING: dict[str, Any] = {
    "type": "object",
    "additionalProperties": False,
    "required": ["is", "bindingVersion"],
    "properties": {
        "is": {"enum": ["queue", "routingKey"]},
        "exchange": _AMQP_EXCHANGE,
        "queue": _AMQP_QUEUE,
        "bindingVersion": {"const": "0.2.0"},
    },
    "oneOf": [
        {"properties": {"is": {"const": "routingKey"}}, "required": ["exchange"]},
        {"properties": {"is": {"const": "queue"}}, "required": ["queue"]},
    ],
}
AMQP_OPERATION_BINDING: dict[str, Any] = {
    "type": "object",
    "additionalProperties": False,
    "properties": {
        "expiration": {"type": "integer", "minimum": 0},
        "userId": {"type": "string"},
        "cc": {"type": "array", "items": {"type": "string"}},
        "priority": {"type": "integer"},
        "deliveryMode": {"enum": [1, 2]},
        "mandatory": {"type": "boolean"},
        "bcc": {"type": "array", "items": {"type": "string"}},
        "timestamp": {"type": "boolean"},
        "ack": {"type": "boolean"},
        "bindingVersion": {"const": "0.2.0"},
    },
}
AMQP_MESSAGE_BINDING: dict[str, Any] = {
    "type": "object",
    "additionalProperties": False,
    "properties": {
        "contentEncoding": {"type": "string"},
        "messageType": {"type": "string"},
        "bindingVersion": {"const": "0.2.0"},
    },
}
_MESSAGE = {
    "type": "object",
    "additionalProperties": False,
    "patternProperties": _EXTENSIONS,
    "required": ["payload"],
    "properties": {
        "schemaFormat": {"type": "string"},
        "contentType": {"type": "string"},
        "headers": {"type": "object"},
        "payload": {},
        "correlationId": {"oneOf": [_REF, _CORRELATION_ID]},
        "tags": {"type": "array"},
        "summary": {"type": "string"},
        "name": {"type": "string"},
        "title": {"type": "string"},
        "description": {"type": "string"},
        "externalDocs": {"type": "object"},
        "deprecated": {"type": "boolean"},
        "examples": {"type": "array"},
        "bindings": _BINDINGS,
        "traits": {"type": "array"},
        "messageId": {"type": "string"},
    },
}
_OPERATION = {
    "type": "object",
    "additionalProperties": False,
    "patternProperties": _EXTENSIONS,
    "required": ["message"],
    "properties": {
        "traits": {"type": "array"},
        "summary": {"type": "string"},
        "description": {"type": "string"},
        "security": {"type": "array"},
        "tags": {"type": "array"},
        "externalDocs": {"type": "object"},
        "operationId": {"type": "string"},
        "bindings": _BINDINGS,
        "message": {
            "oneOf": [
                _REF,
                {
                    "type": "object",
                    "required": ["oneOf"],
                    "additionalProperties": False,
                    "properties": {"oneOf": {"type": "array", "minItems": 2, "items": _REF}},
                },
                _MESSAGE,
            ]
        },
    },
}
_PARAMETER = {
    "type": "object",
    "additionalProperties": False,
    "patternProperties": _EXTENSIONS,
    "properties": {
        "description": {"type": "string"},
        "schema": {"type": "object"},
        "location": {"type": "string"},
    },
}
_CHANNEL = {
    "type": "object",
    "additionalProperties": False,
    "patternProperties": _EXTENSIONS,
    "anyOf": [{"required": ["publish"]}, {"required": ["subscribe"]}],
    "properties": {
        "$ref": {"type": "string"},
        "parameters": {
            "type": "object",
            "propertyNames": {"pattern": "^[\\w\\d.\\-_]+$"},
            "additionalProperties": _PARAMETER,
        },
        "description": {"type": "string"},
        "servers": {"type": "array", "items": {"type": "string"}},
        "publish": _OPERATION,
        "subscribe": _OPERATION,
        "deprecated": {"type": "boolean"},
        "bindings": _BINDINGS,
    },
}
_SERVER = {
    "type": "object",
    "required": ["url", "protocol"],
    "additionalProperties": False,
    "patternProperties": _EXTENSIONS,
    "properties": {
        "url": {"type": "string"},
        "description": {"type": "string"},
        "protocol": {"type": "string"},
        "protocolVersion": {"type": "string"},
        "variables": {
            "type": "object",
            "additionalProperties": {
                "type": "object",
                "additionalProperties": False,
                "properties": {
                    "enum": {"type": "array", "items": {"type": "string"}, "uniqueItems": True},
                    "default": {"type": "string"},
                    "description": {"type": "string"},
                    "examples": {"type": "array", "items": {"type": "string"}},
                },
            },
        },
        "security": {
            "type": "array",
            "items": {
                "type": "object",
                "additionalProperties": {"type": "array", "items": {"type": "string"}},
            },
        },
        "tags": {"type": "array"},
        "bindings": _BINDINGS,
    },
}
_COMPONENT_NAMES = {"pattern": "^[a-zA-Z0-9.\\-_]+$"}
# The rules of AsyncAPI 2.6.0 this document relies on, after the specification's text.
ASYNCAPI_2_6: dict[str, Any] = {
    "$schema": "http://json-schema.org/draft-07/schema#",
    "type": "object",
    "required": ["asyncapi", "info", "channels"],
    "additionalProperties": False,
    "patternProperties": _EXTENSIONS,
    "properties": {
        "asyncapi": {"const": "2.6.0"},
        "id": {"type": "string", "format": "uri"},
        "info": {
            "type": "object",
            "required": ["title", "version"],
            "additionalProperties": False,
            "patternProperties": _EXTENSIONS,
            "properties": {
                "title": {"type": "string"},
                "version": {"type": "string"},
                "description": {"type": "string"},
                "termsOfService": {"type": "string"},
                "contact": {"type": "object"},
                "license": {
                    "type": "object",
                    "required": ["name"],
                    "properties": {"name": {"type": "string"}, "url": {"type": "string"}},
                },
            },
        },
        "servers": {"type": "object", "additionalProperties": _SERVER},
        "defaultContentType": {"type": "string"},
        "channels": {
            "type": "object",
            "propertyNames": {"pattern": "^[^{}]*(\\{[^{}]+\\}[^{}]*)*$"},
            "additionalProperties": _CHANNEL,
        },
        "components": {
            "type": "object",
            "additionalProperties": False,
            "patternProperties": _EXTENSIONS,
            "properties": {
                "schemas": {
                    "type": "object",
                    "propertyNames": _COMPONENT_NAMES,
                    "additionalProperties": {"type": "object"},
                },
                "messages": {
                    "type": "object",
                    "propertyNames": _COMPONENT_NAMES,
                    "additionalProperties": _MESSAGE,
                },
                "securitySchemes": {
                    "type": "object",
                    "propertyNames": _COMPONENT_NAMES,
                    "additionalProperties": {
                        "type": "object",
                        "required": ["type"],
                        "properties": {
                            "type": {
                                "enum": [
                                    "userPassword",
                                    "apiKey",
                                    "X509",
                                    "symmetricEncryption",
                                    "asymmetricEncryption",
                                    "httpApiKey",
                                    "http",
                                    "oauth2",
                                    "openIdConnect",
                                    "plain",
                                    "scramSha256",
                                    "scramSha512",
                                    "gssapi",
                                ]
                            },
                            "description": {"type": "string"},
                        },
                    },
                },
            },
        },
        "tags": {"type": "array"},
        "externalDocs": {"type": "object"},
    },
}


@cache
def document() -> dict[str, Any]:
    return asyncapi.build()


def walk(node: Any, path: str = "#") -> Iterator[tuple[str, Any]]:
    yield path, node
    if isinstance(node, dict):
        for key, value in node.items():
            yield from walk(value, f"{path}/{str(key).replace('~', '~0').replace('/', '~1')}")
    elif isinstance(node, list):
        for index, value in enumerate(node):
            yield from walk(value, f"{path}/{index}")


def resolve(ref: str) -> Any:
    assert ref.startswith("#/"), f"only local references: {ref}"
    node: Any = document()
    for part in ref[2:].split("/"):
        part = part.replace("~1", "/").replace("~0", "~")
        assert isinstance(node, dict) and part in node, f"{ref} does not resolve"
        node = node[part]
    return node


def deref(node: Any) -> Any:
    while isinstance(node, dict) and set(node) == {"$ref"}:
        node = resolve(node["$ref"])
    return node


def channel_messages(channel: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any]]]:
    for operation in ("publish", "subscribe"):
        if operation in channel:
            message = channel[operation]["message"]
            for item in message.get("oneOf", [message]):
                yield operation, deref(item)


def payload_validator(schema_name: str) -> Draft7Validator:
    """A validator for one component schema, resolving its $refs within the document (AsyncAPI
    2.6's default schema format is a superset of JSON Schema draft 7)."""
    registry: Registry[Any] = Registry().with_resource(
        DOCUMENT_URI, Resource.from_contents(document(), default_specification=DRAFT7)
    )
    return Draft7Validator(
        {"$ref": f"{DOCUMENT_URI}#/components/schemas/{schema_name}"}, registry=registry
    )


def assert_valid(schema_name: str, instance: Any) -> None:
    errors = list(payload_validator(schema_name).iter_errors(instance))
    assert not errors, [f"{list(e.absolute_path)}: {e.message}" for e in errors]


# --- the file ------------------------------------------------------------------------------


def test_committed_file_is_what_the_code_generates() -> None:
    assert asyncapi.OUTPUT.read_bytes() == asyncapi.render(), (
        "schemas/asyncapi.json is stale: run `python -m worker.messaging.asyncapi`"
    )


def test_main_writes_the_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "asyncapi.json"
    monkeypatch.setattr(asyncapi, "OUTPUT", out)
    assert asyncapi.main() == 0
    assert json.loads(out.read_bytes()) == json.loads(asyncapi.render())


def test_the_environment_does_not_change_the_document(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TOPOLOGY_PREFIX", "elsewhere")
    monkeypatch.setenv("RETRY_DELAYS_SECONDS", "1,2")
    assert asyncapi.render() == asyncapi.OUTPUT.read_bytes()


# --- AsyncAPI 2.6 ----------------------------------------------------------------------------


def test_document_follows_asyncapi_2_6() -> None:
    Draft7Validator.check_schema(ASYNCAPI_2_6)
    errors = list(Draft7Validator(ASYNCAPI_2_6).iter_errors(document()))
    assert not errors, [f"{list(e.absolute_path)}: {e.message}" for e in errors]


def test_the_rules_refuse_a_mistake() -> None:
    broken = json.loads(asyncapi.render())
    broken["channels"]["referral.request"]["publish"]["mesage"] = broken["channels"][
        "referral.request"
    ]["publish"].pop("message")
    assert not Draft7Validator(ASYNCAPI_2_6).is_valid(broken)


def test_every_ref_resolves() -> None:
    refs = [
        node["$ref"] for _, node in walk(document()) if isinstance(node, dict) and "$ref" in node
    ]
    assert len(refs) > 20
    for ref in refs:
        resolve(ref)


def test_every_component_is_used() -> None:
    refs = {
        node["$ref"] for _, node in walk(document()) if isinstance(node, dict) and "$ref" in node
    }
    for kind in ("schemas", "messages"):
        for name in document()["components"][kind]:
            assert f"#/components/{kind}/{name}" in refs, f"{kind}/{name} is never used"


def test_every_channel_message_resolves_to_a_message_with_payload_and_headers() -> None:
    for name, channel in document()["channels"].items():
        messages = list(channel_messages(channel))
        assert messages, name
        for _, message in messages:
            assert "payload" in message, name
            headers = deref(message["headers"])
            assert headers["type"] == "object", name
            if "correlationId" in message:
                location = message["correlationId"]["location"]
                assert location.startswith("$message.payload#/")
                payload = deref(message["payload"])
                assert location.removeprefix("$message.payload#/") in payload["properties"]


def test_channel_parameters_match_the_channel_names() -> None:
    for name, channel in document()["channels"].items():
        assert set(re.findall(r"\{([^{}]+)\}", name)) == set(channel.get("parameters", {})), name


def test_operation_ids_are_unique() -> None:
    ids = [
        channel[op]["operationId"]
        for channel in document()["channels"].values()
        for op in ("publish", "subscribe")
        if op in channel
    ]
    assert len(ids) == len(set(ids))


def test_amqp_bindings_follow_the_amqp_binding_0_2_0() -> None:
    for name, channel in document()["channels"].items():
        Draft7Validator(AMQP_CHANNEL_BINDING).validate(channel["bindings"]["amqp"])
        for op in ("publish", "subscribe"):
            if "bindings" in channel.get(op, {}):
                Draft7Validator(AMQP_OPERATION_BINDING).validate(channel[op]["bindings"]["amqp"])
        assert name
    for message in document()["components"]["messages"].values():
        if "bindings" in message:
            Draft7Validator(AMQP_MESSAGE_BINDING).validate(message["bindings"]["amqp"])


def test_component_schemas_are_valid_json_schema() -> None:
    for name, schema in document()["components"]["schemas"].items():
        Draft7Validator.check_schema(schema)
        for path, node in walk(schema, f"#/components/schemas/{name}"):
            if isinstance(node, dict) and "discriminator" in node:
                # AsyncAPI 2.x's Schema Object takes the property name, not OpenAPI's object.
                assert isinstance(node["discriminator"], str), path
            assert not (isinstance(node, dict) and "$defs" in node), path


def test_payloads_are_the_models_json_schemas() -> None:
    schemas = document()["components"]["schemas"]
    for model in (ReferralRequestV1, OutcomeEventV1, LetterReadyEventV1):
        own = model.model_json_schema(mode="validation")
        assert schemas[model.__name__]["properties"].keys() == own["properties"].keys()
        assert schemas[model.__name__].get("required") == own.get("required")
        for name in own.get("$defs", {}):
            assert name in schemas, name


# --- true to the worker ------------------------------------------------------------------


def test_channels_are_the_worker_topology() -> None:
    channels = document()["channels"]
    names = Names(Settings.model_fields["topology_prefix"].default)
    request = channels["referral.request"]
    assert request["bindings"]["amqp"]["exchange"]["name"] == names.requests_exchange
    assert request["bindings"]["amqp"]["exchange"]["type"] == "direct"
    broker = json.loads(DEFINITIONS.read_text())
    queues = {q["name"]: q["arguments"] for q in broker["queues"]}
    exchanges = {e["name"]: e["type"] for e in broker["exchanges"]}
    assert request["x-ers-queue"]["arguments"] == queues[names.requests_queue]
    for key in ("referral.outcome.{status}", "referral.letter_ready"):
        exchange = channels[key]["bindings"]["amqp"]["exchange"]
        assert exchanges[exchange["name"]] == exchange["type"] == "topic"
    parked = channels[names.dead_letter_queue]
    assert parked["bindings"]["amqp"]["queue"]["name"] == names.dead_letter_queue
    assert exchanges[parked["x-ers-exchange"]["name"]] == parked["x-ers-exchange"]["type"]
    delays = channels[f"{names.prefix}.delay.{{seconds}}s"]
    tiers = delays["parameters"]["seconds"]["schema"]["enum"]
    assert {names.delay_queue(float(t)) for t in tiers} == {q for q in queues if ".delay." in q}
    for tier, arguments in delays["x-ers-queue-arguments"].items():
        assert arguments == queues[names.delay_queue(float(tier))]
    assert broker == definitions(
        names,
        delivery_limit=Settings.model_fields["delivery_limit"].default,
        delays=tuple(float(t) for t in tiers),
    )


def test_outcome_routing_keys_match_the_channel() -> None:
    channel = document()["channels"]["referral.outcome.{status}"]
    statuses = channel["parameters"]["status"]["schema"]["enum"]
    for status in OutcomeStatus:
        key = routing_key(outcome(status))
        assert key.rsplit(".", 1)[0] == "referral.outcome"
        assert key.rsplit(".", 1)[1] in statuses
    assert routing_key(letter_ready()) in document()["channels"]


def test_request_headers_name_the_token_headers() -> None:
    properties = document()["components"]["schemas"]["RequestHeaders"]["properties"]
    assert {TOKEN_HEADER, EXPIRES_HEADER} <= properties.keys()
    headers = {TOKEN_HEADER: "token", EXPIRES_HEADER: "2030-01-01T00:00:00Z"}
    assert_valid("RequestHeaders", headers)
    assert_valid("RequestHeaders", {**headers, EXPIRES_HEADER: 1893456000, **TRACE_CONTEXT})


def test_samples_validate_against_the_request_payload() -> None:
    checked = 0
    for path in sorted(SAMPLES.glob("*.json")):
        body = json.loads(path.read_bytes())
        try:
            ReferralRequestV1.model_validate(body)
        except ValueError:
            continue  # the worker rejects it: only valid requests must match the schema
        assert_valid("ReferralRequestV1", body)
        checked += 1
    assert checked >= 3
    assert not payload_validator("ReferralRequestV1").is_valid({"schema_version": "1"})


def outcome(status: OutcomeStatus = OutcomeStatus.FAILED) -> OutcomeEventV1:
    return OutcomeEventV1(
        event_id="event-1",
        request_id="request-1",
        correlation_id="correlation-1",
        status=status,
        error=ErrorInfo(
            step=Step.VALIDATE, code="VALIDATION_FAILED", text="patient.nhs_number", retryable=False
        ),
        occurred_at=datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC),
    )


def letter_ready() -> LetterReadyEventV1:
    return LetterReadyEventV1(
        event_id="event-2",
        request_id="request-1",
        correlation_id="correlation-1",
        ubrn="000000100000",
        letter=LetterInfo(location="letters/x.pdf", file_name="x.pdf", size_bytes=1, sha256="0"),
        occurred_at=datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC),
    )


def test_the_events_the_worker_publishes_validate() -> None:
    messages = document()["components"]["messages"]
    for event, message_name in ((outcome(), "OutcomeEvent"), (letter_ready(), "LetterReadyEvent")):
        message = messages[message_name]
        amqp = event_message(event, "correlation-1", TRACE_CONTEXT)
        payload = json.loads(amqp.body)
        assert_valid(message["payload"]["$ref"].rsplit("/", 1)[1], payload)
        assert_valid(message["headers"]["$ref"].rsplit("/", 1)[1], dict(amqp.headers))
        assert amqp.type == message["bindings"]["amqp"]["messageType"] == event.event_type
        assert amqp.content_type == message["contentType"]


def test_parked_headers_are_the_ones_the_worker_sets() -> None:
    incoming = {TOKEN_HEADER: "secret", EXPIRES_HEADER: "2030-01-01T00:00:00Z", "x-ers-attempt": 2}
    handled = Handled(events=[], fate=Fate.DEAD_LETTER, outcome=outcome(OutcomeStatus.REJECTED))
    headers = parked_headers(incoming, handled)
    added = set(headers) - set(incoming)
    assert added == set(asyncapi.PARKED_HEADERS)
    assert_valid("ParkedHeaders", headers)
    schema = document()["components"]["schemas"]["ParkedHeaders"]
    assert set(asyncapi.PARKED_HEADERS) <= schema["properties"].keys()
    # Nothing parked may carry the token.
    assert not payload_validator("ParkedHeaders").is_valid({**headers, TOKEN_HEADER: "secret"})
    unknown = parked_headers({}, Handled(events=[], fate=Fate.DEAD_LETTER, reason="POISONED"))
    assert_valid("ParkedHeaders", unknown)
