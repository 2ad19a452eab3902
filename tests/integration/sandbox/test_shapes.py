"""The shape comparison the example tests rely on."""

from __future__ import annotations

from tests.integration.sandbox.shapes import shape_mismatches


def test_same_keys_and_types_match_whatever_the_values() -> None:
    example = {"a": 1, "b": {"c": "x"}, "d": [{"e": True}]}
    assert (
        shape_mismatches({"a": 2, "b": {"c": "y"}, "d": [{"e": False}, {"e": True}]}, [example])
        == []
    )


def test_missing_or_extra_keys_and_wrong_types_are_reported() -> None:
    example = {"a": 1, "b": [{"c": "x"}]}
    assert shape_mismatches({"a": 1}, [example])
    assert shape_mismatches({"a": 1, "b": [], "z": 0}, [example])
    assert shape_mismatches({"a": "1", "b": [{"c": "x"}]}, [example])
    assert shape_mismatches({"a": 1, "b": [{"c": 3}]}, [example])


def test_array_elements_may_match_any_example_element() -> None:
    example = {"extension": [{"url": "u", "valueBoolean": True}, {"url": "u", "valueString": "s"}]}
    assert shape_mismatches({"extension": [{"url": "u", "valueString": "t"}]}, [example]) == []
    assert shape_mismatches({"extension": [{"url": "u", "valueInteger": 1}]}, [example])
    assert shape_mismatches({"extension": []}, [example])


def test_vocabulary_must_be_the_examples() -> None:
    example = {"resourceType": "List", "coding": [{"system": "s", "code": "A"}]}
    assert (
        shape_mismatches(
            {"resourceType": "List", "coding": [{"system": "s", "code": "B"}]}, [example]
        )
        == []
    )
    assert shape_mismatches(
        {"resourceType": "Bundle", "coding": [{"system": "s", "code": "A"}]}, [example]
    )
    assert shape_mismatches(
        {"resourceType": "List", "coding": [{"system": "t", "code": "A"}]}, [example]
    )
