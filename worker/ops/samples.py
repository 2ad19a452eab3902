"""The shipped sample requests, and batches made from them for demos and benchmarks.

The samples live in the ``samples`` package (so they ship with a plain ``pip install``).
"""

from __future__ import annotations

import uuid
from typing import Any

import orjson

import samples
from schemas.nhs_number import is_valid_nhs_number

SAMPLES = samples.DIR


def sample(name: str, **changes: Any) -> dict[str, Any]:
    """A shipped sample request with a fresh request id and top-level fields replaced."""
    data: dict[str, Any] = orjson.loads((SAMPLES / name).read_bytes())
    data["request_id"] = f"{data['request_id']}-{uuid.uuid4().hex[:8]}"
    data.update(changes)
    return data


def nhs_numbers(count: int, start: int = 999_100_000) -> list[str]:
    """Valid (Modulus 11) NHS numbers in the 999 test range."""
    found: list[str] = []
    stem = start
    while len(found) < count:
        found.extend(n for n in (f"{stem}{d}" for d in range(10)) if is_valid_nhs_number(n))
        stem += 1
    return found[:count]


def mixed_batch(count: int, samples: list[str]) -> list[dict[str, Any]]:
    """``count`` requests cycling through ``samples``, each for a patient of its own (so the
    one-saga-per-patient rule does not serialise the batch)."""
    patients = nhs_numbers(count)
    return [
        sample(samples[i % len(samples)], patient={"nhs_number": patients[i]}) for i in range(count)
    ]
