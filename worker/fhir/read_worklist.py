"""A008's worklists as the saga needs them: which referrals, for whom, made when."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from worker.fhir.build import Json
from worker.fhir.read import _codes, parse_instant


@dataclass(frozen=True, slots=True)
class WorklistItem:
    """One referral on an A008 referrer worklist."""

    ubrn: str
    nhs_number: str | None
    priority: str | None
    created: datetime | None
    referrer: str | None


def worklist_items(body: Json) -> list[WorklistItem]:
    """A008's List: each entry's referral and the facts its work-list-item extension holds."""
    items: list[WorklistItem] = []
    for entry in body.get("entry", []):
        reference = str(entry.get("item", {}).get("reference", ""))
        if not reference.startswith("ReferralRequest/"):
            continue
        parts: dict[str, Json] = {}
        for ext in entry.get("extension", []):
            for part in ext.get("extension", []):
                parts.setdefault(str(part.get("url")), part)
        created = parts.get("referralCreated", {}).get("valueDateTime")
        items.append(
            WorklistItem(
                ubrn=reference.removeprefix("ReferralRequest/"),
                nhs_number=parts.get("patient", {})
                .get("valueReference", {})
                .get("identifier", {})
                .get("value"),
                priority=next(
                    iter(_codes(parts.get("priority", {}).get("valueCodeableConcept", {}))), None
                ),
                created=parse_instant(created) if created else None,
                referrer=parts.get("referrer", {})
                .get("valueReference", {})
                .get("identifier", {})
                .get("value"),
            )
        )
    return items
