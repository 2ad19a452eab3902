"""Access to NHS Digital's e-RS example bodies in ../shared/ers-spec (beside the checkout)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson
import pytest

SPEC_DIR = Path(__file__).resolve().parents[2] / "shared" / "ers-spec"
EXAMPLES = SPEC_DIR / "examples" / "stu3"


def example(relative: str) -> Any:
    path = EXAMPLES / relative
    if not path.exists():
        pytest.skip(f"e-RS example {relative} not present in {SPEC_DIR}")
    return orjson.loads(path.read_bytes())
