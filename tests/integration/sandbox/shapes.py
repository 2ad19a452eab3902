"""Structural comparison of JSON bodies with the specification's example bodies.

Two bodies have the same shape when objects have the same keys (recursively), values have the same
JSON types, and every element of an array has the shape of some element of the example's array.
Values themselves may differ, except the ones that say what a thing is: `resourceType`, a
coding's or identifier's `system`, and an extension's `url` must each be one the example has in
the same place (an identifier's system and an attachment's url are data).
"""

from __future__ import annotations

from typing import Any


def _vocabulary_keys(keys: set[str]) -> set[str]:
    """Keys whose value is vocabulary, not data: a resource's type, a coding's system (an object
    with a `code`), an extension's url (an object with a value or nested extensions)."""
    found = {"resourceType"} & keys
    if {"system", "code"} <= keys:
        found.add("system")
    rest = keys - {"url", "extension", "id"}
    if "url" in keys and all(k.startswith("value") for k in rest) and len(keys) > 1:
        found.add("url")
    return found


def _kind(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int | float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    if isinstance(value, dict):
        return "object"
    raise TypeError(f"not a JSON value: {value!r}")


def shape_mismatches(actual: Any, examples: list[Any], path: str = "$") -> list[str]:
    """Where `actual` departs from the shape of the examples (any one of them may match)."""
    kind = _kind(actual)
    options = [example for example in examples if _kind(example) == kind]
    if not options:
        kinds = sorted({_kind(example) for example in examples})
        return [f"{path}: {kind}, example has {kinds}"]
    if kind == "object":
        keys = set(actual)
        same_keys = [option for option in options if set(option) == keys]
        if not same_keys:
            closest = min(options, key=lambda option: len(set(option) ^ keys))
            return [
                f"{path}: keys differ from the example: "
                f"unexpected {sorted(keys - set(closest))}, missing {sorted(set(closest) - keys)}"
            ]
        problems: list[str] = []
        for key in _vocabulary_keys(keys):
            allowed = {option[key] for option in same_keys if isinstance(option[key], str)}
            if isinstance(actual[key], str) and allowed and actual[key] not in allowed:
                problems.append(f"{path}.{key}: {actual[key]!r}, example has {sorted(allowed)}")
        for key, value in actual.items():
            problems += shape_mismatches(
                value, [option[key] for option in same_keys], f"{path}.{key}"
            )
        return problems
    if kind == "array":
        pool = [item for option in options for item in option]
        if not pool:
            return []
        if not actual:
            return [] if any(not option for option in options) else [f"{path}: empty array"]
        problems = []
        for index, item in enumerate(actual):
            problems += shape_mismatches(item, pool, f"{path}[{index}]")
        return problems
    return []


def assert_same_shape(actual: Any, *examples: Any) -> None:
    problems = shape_mismatches(actual, list(examples))
    assert not problems, "response shape differs from the e-RS example:\n" + "\n".join(problems)
