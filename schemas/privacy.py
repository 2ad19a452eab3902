"""Keep patient identifiers out of text that leaves the saga (events, headers, logs).

e-RS diagnostics are free text written for humans and may quote an NHS number; before such
text is copied anywhere we replace every 10-digit run that passes the NHS number check.
"""

from __future__ import annotations

import re
import traceback

from schemas.nhs_number import passes_check_digit

_TEN_DIGITS = re.compile(r"(?<!\d)(\d{3})[ -]?(\d{3})[ -]?(\d{4})(?!\d)")
REDACTED = "[NHS number]"


def redact(text: str) -> str:
    def replace(match: re.Match[str]) -> str:
        digits = "".join(match.groups())
        return REDACTED if passes_check_digit(digits) else match.group(0)

    return _TEN_DIGITS.sub(replace, text)


def where(exc: BaseException) -> str:
    """Where an exception was raised (file:line in function), without its message."""
    frames = traceback.extract_tb(exc.__traceback__)[-3:]
    return " <- ".join(
        f"{f.filename.rsplit('/', 1)[-1]}:{f.lineno} in {f.name}" for f in reversed(frames)
    )
