"""The sandbox's services (data/catalogue.json) and the slot inventory seeded for them."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime, time, timedelta
from importlib import resources
from typing import Any

import orjson

DIRECTLY_BOOKABLE = "DIRECTLY_BOOKABLE"
INDIRECTLY_BOOKABLE = "INDIRECTLY_BOOKABLE"
APPOINTMENT_REQUEST = "APPOINTMENT_REQUEST"
TRIAGE_REQUEST = "TRIAGE_REQUEST"
ADVICE_REQUEST = "ADVICE_AND_GUIDANCE_REQUEST"

FIRST_SLOT_HOUR = 9
SLOTS_PER_DAY = 8
SLOT_LENGTH = timedelta(hours=1)


@dataclass(frozen=True)
class Service:
    id: str
    name: str
    specialty: str
    clinic_types: tuple[str, ...]
    bookable_type: str
    request_flow_types: tuple[str, ...]
    appointment_type: str
    referral_letter_required: bool
    location_ods: str
    location_display: str
    indicative_wait_days: int | None
    slot_count: int
    slot_clinicians: tuple[str | None, ...]
    busy_slot_numbers: frozenset[int] = frozenset()
    # SNOMED CT codes an A010 clinicalTerm search finds this service by.
    clinical_terms: tuple[str, ...] = ()
    # SDS user ids of the service's named clinicians (A010 namedClinician finds it by them).
    clinicians: tuple[str, ...] = ()

    @property
    def directly_bookable(self) -> bool:
        return self.bookable_type == DIRECTLY_BOOKABLE

    def supports(self, flow_type: str) -> bool:
        return flow_type in self.request_flow_types


@dataclass
class Slot:
    id: str
    service_id: str
    start: datetime
    end: datetime
    clinician: str | None = None
    status: str = "free"

    @property
    def schedule_id(self) -> str:
        return f"{self.service_id}-{self.clinician}" if self.clinician else self.service_id

    def bookable(self, now: datetime) -> bool:
        return self.status == "free" and self.start > now


@dataclass(frozen=True)
class Catalogue:
    services: dict[str, Service] = field(default_factory=dict)

    def get(self, service_id: str) -> Service | None:
        return self.services.get(service_id)


def _service(raw: dict[str, Any]) -> Service:
    return Service(
        id=str(raw["id"]),
        name=raw["name"],
        specialty=raw["specialty"],
        clinic_types=tuple(raw.get("clinic_types", ())),
        bookable_type=raw["bookable_type"],
        request_flow_types=tuple(raw["request_flow_types"]),
        appointment_type=raw.get("appointment_type", "DIAGNOSTIC"),
        referral_letter_required=bool(raw.get("referral_letter_required", False)),
        location_ods=raw["location"]["ods"],
        location_display=raw["location"]["display"],
        indicative_wait_days=raw.get("indicative_wait_days"),
        slot_count=int(raw.get("slot_count", 0)),
        slot_clinicians=tuple(raw.get("slot_clinicians") or (None,)),
        busy_slot_numbers=frozenset(raw.get("busy_slot_numbers", ())),
        clinical_terms=tuple(str(term) for term in raw.get("clinical_terms", ())),
        clinicians=_clinicians(raw),
    )


def _clinicians(raw: dict[str, Any]) -> tuple[str, ...]:
    # A clinician who has slots at a service is one of its named clinicians.
    named = [*raw.get("clinicians", ()), *(c for c in raw.get("slot_clinicians") or () if c)]
    return tuple(dict.fromkeys(str(c) for c in named))


def service_from_json(raw: dict[str, Any]) -> Service:
    """A service as data/catalogue.json or the admin API describes it (KeyError if incomplete)."""
    return _service(raw)


def load_catalogue() -> Catalogue:
    raw = orjson.loads(resources.files("sandbox").joinpath("data/catalogue.json").read_bytes())
    services = [_service(item) for item in raw["services"]]
    return Catalogue({service.id: service for service in services})


def slot_id(service_id: str, number: int) -> str:
    return f"{service_id}{number:03d}"


def working_slot_starts(now: datetime, count: int) -> list[datetime]:
    """Hourly starts from 09:00 UTC on the working days after `now`'s date."""
    starts: list[datetime] = []
    day = now.astimezone(UTC).date()
    while len(starts) < count:
        day += timedelta(days=1)
        if day.weekday() >= 5:
            continue
        opening = datetime.combine(day, time(FIRST_SLOT_HOUR), tzinfo=UTC)
        for hour in range(SLOTS_PER_DAY):
            if len(starts) == count:
                break
            starts.append(opening + hour * SLOT_LENGTH)
    return starts


def seed_slots(service: Service, now: datetime) -> list[Slot]:
    clinicians = service.slot_clinicians
    return [
        Slot(
            id=slot_id(service.id, n),
            service_id=service.id,
            start=start,
            end=start + SLOT_LENGTH,
            clinician=clinicians[(n - 1) % len(clinicians)],
            status="busy" if n in service.busy_slot_numbers else "free",
        )
        for n, start in enumerate(working_slot_starts(now, service.slot_count), start=1)
    ]
