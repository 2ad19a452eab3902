"""The committed JSON Schema files are what the models generate (regenerate: make schemas)."""

import pytest

from schemas.export import SCHEMA_DIR, render_all


@pytest.mark.parametrize(("name", "expected"), sorted(render_all().items()))
def test_committed_schema_is_current(name: str, expected: bytes) -> None:
    path = SCHEMA_DIR / name
    assert path.exists(), f"schemas/{name} missing: run `make schemas`"
    assert path.read_bytes() == expected, f"schemas/{name} is stale: run `make schemas`"
