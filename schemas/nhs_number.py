"""NHS number validation, with NHS England's maintained ``nhs-number`` package.

The package knows which ranges numbers are issued from, which the Modulus 11 check alone
does not: ``0000000000`` passes Modulus 11, yet no patient has it. The contract accepts the
ranges e-RS patients can hold: England, Wales and the Isle of Man (the numbers PDS issues),
and the 999 synthetic range that NHS test environments (and our samples) use.

Error messages never repeat the number: they reach outcome events and may reach logs.
"""

from __future__ import annotations

import re

from nhs_number.constants import REGION_ENGLAND_WALES_IOM, REGION_SYNTHETIC
from nhs_number.validate import calculate_checksum, is_valid

# ASCII digits only: str.isdigit() would let full-width and other Unicode digits through.
TEN_DIGITS = re.compile(r"^[0-9]{10}$")
ACCEPTED_REGIONS = (REGION_ENGLAND_WALES_IOM, REGION_SYNTHETIC)


def nhs_number_problem(value: str) -> str | None:
    """Return why ``value`` is not an NHS number e-RS could know, or None when it is one."""
    if not TEN_DIGITS.match(value):
        return "must be exactly 10 digits"
    if not passes_check_digit(value):
        return "fails the Modulus 11 check digit"
    if not any(is_valid(value, for_region=r) for r in ACCEPTED_REGIONS):
        return "is not in an issued range (England, Wales, Isle of Man, or the 999 test range)"
    return None


def is_valid_nhs_number(value: str) -> bool:
    return nhs_number_problem(value) is None


def passes_check_digit(value: str) -> bool:
    """Ten ASCII digits whose last is the Modulus 11 check digit of the other nine, whatever
    their range: what redaction looks for, since any such run may be someone's number."""
    return bool(TEN_DIGITS.match(value)) and calculate_checksum(value[:9]) == int(value[9])
