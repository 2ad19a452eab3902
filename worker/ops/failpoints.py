"""Crash points for fault-injection tests: the process kills itself with SIGKILL there.

Off unless ``ERS_FAILPOINTS`` names points (comma-separated), which only the crash-recovery
tests do. The setting is read with the others (``Settings.failpoints``) and the composition
root hands a ``Failpoints`` to the parts that have crash points (they see only the
``worker.saga.ports.Failpoints`` protocol). Points:

- ``after_checkpoint:<STEP>``  the saga's state was stored on its own as having reached STEP:
                               before a read, when the step before it wrote (the journal's
                               rule, ``worker.saga.journal``; a DBS saga reaches BOOK_OR_DEFER
                               and PATIENT_LETTER so, and a saga whose last step wrote, DONE;
                               other steps are stored with a write's mark);
- ``before_send:<Axxx>``       a state-changing call is recorded as pending, not yet sent;
- ``after_send:<Axxx>``        e-RS has answered (and acted); the answer is not yet read;
- ``not_taken:<Axxx>``         e-RS answered that it did not act (e.g. 503); the mark is gone,
                               the in-process retry not yet made;
- ``after_finish``             the saga's outcome is stored, its events not yet published.
"""

from __future__ import annotations

import os
import signal

ENV = "ERS_FAILPOINTS"


class Failpoints:
    def __init__(self, spec: str = "") -> None:
        self._points = frozenset(p.strip() for p in spec.split(",") if p.strip())

    def hit(self, point: str) -> None:
        if point in self._points:
            os.kill(os.getpid(), signal.SIGKILL)
