"""The one kind of failure an operator is told about in a line, not a traceback.

Raise :class:`OperatorError` where the cause is something the person running ``ers-worker``
can fix (a setting, a file, an unreachable broker). The CLI prints its message as one line
and exits with its code; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations


class OperatorError(Exception):
    """What is wrong and what to do, in one line; never a patient identifier or a secret."""

    #: The documented exit code for usage or environment errors.
    exit_code: int = 2
