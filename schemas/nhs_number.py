"""NHS number check-digit validation (Modulus 11), as NHS Digital's data dictionary defines it.

Error messages never repeat the number: they reach outcome events and may reach logs.
"""

from __future__ import annotations

_WEIGHTS = (10, 9, 8, 7, 6, 5, 4, 3, 2)


def nhs_number_problem(value: str) -> str | None:
    """Return why ``value`` is not a valid NHS number, or None when it is valid."""
    if len(value) != 10 or not value.isascii() or not value.isdigit():
        return "must be exactly 10 digits"
    total = sum(int(d) * w for d, w in zip(value[:9], _WEIGHTS, strict=True))
    check = 11 - total % 11
    if check == 11:
        check = 0
    if check == 10 or check != int(value[9]):
        return "fails the Modulus 11 check digit"
    return None


def is_valid_nhs_number(value: str) -> bool:
    return nhs_number_problem(value) is None
