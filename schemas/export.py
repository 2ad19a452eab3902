"""Render the message contracts as JSON Schema files, committed beside the models.

Interface engines read the files; ``tests/test_schemas_export.py`` fails when a file is stale.
Regenerate with ``make schemas`` (``python -m schemas.export``).
"""

from __future__ import annotations

import sys
from pathlib import Path

import orjson
from pydantic import BaseModel

from schemas.events import LetterReadyEventV1, OutcomeEventV1
from schemas.referral_request import ReferralRequestV1

SCHEMA_DIR = Path(__file__).resolve().parent
MODELS: dict[str, type[BaseModel]] = {
    "referral-request.v1.schema.json": ReferralRequestV1,
    "outcome-event.v1.schema.json": OutcomeEventV1,
    "letter-ready-event.v1.schema.json": LetterReadyEventV1,
}


def render(model: type[BaseModel]) -> bytes:
    schema = model.model_json_schema(mode="validation")
    schema = {"$schema": "https://json-schema.org/draft/2020-12/schema", **schema}
    return orjson.dumps(schema, option=orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS) + b"\n"


def render_all() -> dict[str, bytes]:
    return {name: render(model) for name, model in MODELS.items()}


def main() -> int:
    for name, text in render_all().items():
        (SCHEMA_DIR / name).write_bytes(text)
        print(f"wrote schemas/{name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
