"""Slots that sagas of one process are booking, so that they do not race each other."""

from __future__ import annotations


class SlotClaims:
    """Slots a saga of this process is booking, or has seen taken: other sagas here pick
    another one instead of racing for it (e-RS would refuse all but one of them), even from
    a slot list read before the slot went. The most recent ``limit`` are remembered.

    One instance belongs to one ``RequestHandler`` (the composition root makes one per
    process); nothing here is global.
    """

    def __init__(self, limit: int = 10_000) -> None:
        self._held: dict[str, None] = {}
        self._limit = limit

    def take(self, slot_id: str) -> bool:
        if slot_id in self._held:
            return False
        self._held[slot_id] = None
        if len(self._held) > self._limit:
            del self._held[next(iter(self._held))]
        return True

    def drop(self, slot_id: str) -> None:
        self._held.pop(slot_id, None)
