"""The sandbox's in-memory store: referrals, files, appointments, slots, searches, request log.

Everything here is mutated from handlers running on one asyncio loop; handlers finish each
check-then-mutate sequence without awaiting, so no locks are needed.
"""

from __future__ import annotations

import base64
import hashlib
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from importlib import resources
from typing import Any

import orjson

from sandbox.budget import Budget
from sandbox.catalogue import (
    Catalogue,
    Service,
    Slot,
    load_catalogue,
    seed_slots,
    service_from_json,
    slot_id,
)
from sandbox.faults import FaultQueue
from sandbox.fhir import BASE_URL_PLACEHOLDER, PRIORITY_SYSTEM, Json, specialty_system

FIRST_UBRN = 100000
FIRST_APPOINTMENT_ID = 70000
FIRST_ATTACHMENT_ID = 80000
CLINIC_TYPE_SYSTEM = "https://fhir.nhs.uk/STU3/CodeSystem/eRS-ClinicType-1"


def utc_now() -> datetime:
    return datetime.now(UTC)


@dataclass
class Binary:
    id: str
    data: bytes
    file_name: str
    content_type: str
    referral_id: str | None
    uploaded: datetime
    ods_code: str | None
    sha256: str = ""

    def __post_init__(self) -> None:
        self.sha256 = hashlib.sha256(self.data).hexdigest()

    @property
    def size(self) -> int:
        return len(self.data)


@dataclass
class Attachment:
    """A binary linked to a referral as a referral letter (a contained DocumentReference)."""

    attachment_id: str
    binary_id: str
    description: str
    indexed: datetime
    ods_code: str | None


@dataclass
class Appointment:
    id: str
    ubrn: str
    service_id: str
    status: str
    reason: str | None
    slot_id: str | None
    start: datetime | None
    end: datetime | None
    comment: str | None
    created: datetime
    referral_version: int
    version: int = 1
    extra_participants: list[Json] = field(default_factory=list)


@dataclass
class Referral:
    ubrn: str
    version: int
    state: str
    nhs_number: str
    ods_code: str
    priority: str
    specialty: str | None
    search_criteria: list[Json]
    service_ids: list[str]
    created_via: str
    request_id: str
    created: datetime
    correlation_id: str | None = None
    state_reason: str | None = None
    pathway_start: str | None = None
    referring_clinician: str | None = None
    attachments: list[Attachment] = field(default_factory=list)
    appointment_id: str | None = None
    # A011/A021's intentionToAddReferralLetter: the referral waits on Letters Outstanding
    # until a letter is linked.
    intends_letter: bool = False
    # The referring user's SDS id, as A008's worklists show it (referringClinician, or the
    # user acted for), when the sandbox knows it.
    referrer: str | None = None
    first_reminder_days: int = 0
    # e-RS shows commissioningProvisioning in the stored criteria of referrals it created with
    # it; the specification's examples of the seeded referrals have none.
    commissioning_provisioning: bool = True
    clinical_info_first_submitted: datetime | None = None
    clinical_info_last_updated: datetime | None = None


@dataclass(frozen=True)
class LogEntry:
    endpoint: str
    method: str
    path: str
    status: int
    correlation_id: str | None
    request_id: str
    business_function: str | None
    ods_code: str | None
    at: float = field(default_factory=time.time)  # epoch seconds the call arrived


def _load_seed() -> dict[str, Any]:
    data: dict[str, Any] = orjson.loads(
        resources.files("sandbox").joinpath("data/seed.json").read_bytes()
    )
    return data


def seed_search_criteria(
    priority: str, specialty: str | None, clinic_type: str | None
) -> list[Json]:
    """Search criteria for seeded referrals; the specialty system keeps the base-URL placeholder."""
    criteria: list[Json] = [
        {"name": "priority", "valueCoding": {"system": PRIORITY_SYSTEM, "code": priority}}
    ]
    if specialty:
        criteria.append(
            {
                "name": "specialty",
                "valueCoding": {
                    "system": specialty_system(BASE_URL_PLACEHOLDER),
                    "code": specialty,
                },
            }
        )
    if clinic_type:
        criteria.append(
            {
                "name": "clinicType",
                "valueCoding": {"system": CLINIC_TYPE_SYSTEM, "code": clinic_type},
            }
        )
    criteria.append({"name": "ageAndGenderAppropriate", "valueBoolean": True})
    return criteria


class SandboxState:
    def __init__(
        self, clock: Callable[[], datetime] = utc_now, rate_limit: int | None = None
    ) -> None:
        self.clock = clock
        self.rate_limit = rate_limit  # the budget a reset returns to
        self.catalogue: Catalogue = load_catalogue()
        self._seed = _load_seed()
        self.faults = FaultQueue()
        self.budget = Budget(rate_limit)
        self.slots: dict[str, list[Slot]] = {}
        self.slot_index: dict[str, Slot] = {}
        self.referrals: dict[str, Referral] = {}
        self.binaries: dict[str, Binary] = {}
        self.appointments: dict[str, Appointment] = {}
        self.search_results: dict[tuple[str, str], frozenset[str]] = {}
        self.request_log: list[LogEntry] = []
        self._next_ubrn = FIRST_UBRN
        self._next_appointment = FIRST_APPOINTMENT_ID
        self._next_attachment = FIRST_ATTACHMENT_ID
        self.reset()

    def reset(self) -> None:
        now = self.clock()
        self.faults.clear()
        self.budget.set(self.rate_limit)
        self.referrals.clear()
        self.binaries.clear()
        self.appointments.clear()
        self.search_results.clear()
        self.request_log.clear()
        self._next_ubrn = FIRST_UBRN
        self._next_appointment = FIRST_APPOINTMENT_ID
        self._next_attachment = FIRST_ATTACHMENT_ID
        self.catalogue = load_catalogue()
        self.slots = {
            service.id: seed_slots(service, now) for service in self.catalogue.services.values()
        }
        self._reindex_slots()
        for raw in self._seed["binaries"]:
            self.add_binary(raw)
        for raw in self._seed["referrals"]:
            self.add_referral(raw)

    def add_service(self, raw: dict[str, Any]) -> Service:
        """Add or replace a service (catalogue.json's form), with its seeded slots."""
        service = service_from_json(raw)
        self.catalogue.services[service.id] = service
        self.slots[service.id] = seed_slots(service, self.clock())
        self._reindex_slots()
        return service

    def add_binary(self, raw: dict[str, Any]) -> Binary:
        """An uploaded file, as if A020 took it: `content` (text) or `content_base64`."""
        data = (
            base64.b64decode(raw["content_base64"], validate=True)
            if "content_base64" in raw
            else str(raw["content"]).encode()
        )
        binary = Binary(
            id=str(raw["id"]),
            data=data,
            file_name=str(raw["file_name"]),
            content_type=str(raw["content_type"]),
            referral_id=raw.get("referral_id"),
            uploaded=self.clock(),
            ods_code=raw.get("ods_code"),
        )
        self.binaries[binary.id] = binary
        return binary

    def add_referral(self, raw: dict[str, Any]) -> Referral:
        """A referral with a chosen UBRN, version and state (seed.json's form)."""
        now = self.clock()
        referral = Referral(
            ubrn=str(raw["ubrn"]),
            version=int(raw["version"]),
            state=str(raw["state"]),
            nhs_number=str(raw["nhs_number"]),
            ods_code=str(raw["ods_code"]),
            priority=str(raw["priority"]),
            specialty=raw.get("specialty"),
            search_criteria=seed_search_criteria(
                raw["priority"], raw.get("specialty"), raw.get("clinic_type")
            ),
            service_ids=[str(service_id) for service_id in raw["service_ids"]],
            created_via="seed",
            request_id=str(raw.get("request_id") or f"r.{uuid.uuid4()}"),
            created=now,
            state_reason=raw.get("state_reason"),
            pathway_start=raw.get("pathway_start"),
            intends_letter=bool(raw.get("intends_letter", False)),
            commissioning_provisioning=bool(raw.get("commissioning_provisioning", False)),
        )
        for binary_id in raw.get("letter_binary_ids", ()):
            binary = self.binaries[str(binary_id)]
            referral.attachments.append(
                Attachment(self.new_attachment_id(), binary.id, binary.file_name, now, None)
            )
        self.referrals[referral.ubrn] = referral
        return referral

    def _reindex_slots(self) -> None:
        self.slot_index = {slot.id: slot for slots in self.slots.values() for slot in slots}

    def new_ubrn(self) -> str:
        ubrn = f"{self._next_ubrn:012d}"
        self._next_ubrn += 1
        return ubrn

    def new_appointment_id(self) -> str:
        appointment_id = str(self._next_appointment)
        self._next_appointment += 1
        return appointment_id

    def new_attachment_id(self) -> str:
        attachment_id = str(self._next_attachment)
        self._next_attachment += 1
        return attachment_id

    def bookable_slots(self, service_id: str, now: datetime) -> list[Slot]:
        slots = [slot for slot in self.slots.get(service_id, []) if slot.bookable(now)]
        return sorted(slots, key=lambda slot: (slot.start, slot.id))

    def replace_slots(
        self, service_id: str, times: list[tuple[datetime, datetime, str | None]]
    ) -> list[Slot]:
        self.slots[service_id] = [
            Slot(
                id=slot_id(service_id, n),
                service_id=service_id,
                start=start,
                end=end,
                clinician=who,
            )
            for n, (start, end, who) in enumerate(times, start=1)
        ]
        self._reindex_slots()
        return self.slots[service_id]
