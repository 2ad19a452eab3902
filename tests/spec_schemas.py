"""Validators for the e-RS specification's own request schemas (OpenAPI YAML, relative $refs).

For bodies whose example the specification names but does not ship (``Not every example
referenced by the specification is present``): the body is checked against the schema the
example would have been drawn from. OpenAPI's own keywords (``nullable``, ``example``) are
ones JSON Schema ignores.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml
from jsonschema import Draft7Validator
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT7

from tests.spec_examples import SPEC_DIR

SCHEMAS = SPEC_DIR / "specification" / "components" / "stu3" / "schemas"


def _retrieve(uri: str) -> Resource[Any]:
    path = Path(uri.removeprefix("file://"))
    return Resource.from_contents(yaml.safe_load(path.read_text()), default_specification=DRAFT7)


def spec_validator(relative: str) -> Draft7Validator:
    """A validator for ``schemas/<relative>`` of the specification, its $refs resolved."""
    path = SCHEMAS / relative
    if not path.exists():
        pytest.skip(f"e-RS schema {relative} not present in {SPEC_DIR}")
    schema = yaml.safe_load(path.read_text())
    schema["$id"] = path.as_uri()
    return Draft7Validator(schema, registry=Registry(retrieve=_retrieve))


def schema_problems(relative: str, body: Any) -> list[str]:
    return [
        f"{'/'.join(map(str, e.absolute_path)) or '$'}: {e.message}"
        for e in spec_validator(relative).iter_errors(body)
    ]
