from schemas.privacy import REDACTED, redact, where


def test_valid_nhs_numbers_are_redacted_in_any_common_spelling() -> None:
    text = "patient 9912003888 / 991 200 3888 / 991-200-3888 failed"
    assert redact(text) == f"patient {REDACTED} / {REDACTED} / {REDACTED} failed"


def test_other_numbers_are_kept() -> None:
    text = "UBRN 000000070001, slot 11000021, phone 0123456780, longer 99120038881"
    assert redact(text) == text


def test_where_names_the_place_not_the_message() -> None:
    try:
        raise ValueError("nhs 9912003888")
    except ValueError as exc:
        location = where(exc)
    assert "test_privacy.py" in location
    assert "9912003888" not in location
