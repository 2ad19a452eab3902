"""A create whose answer was lost, found on e-RS' worklists (``worker.saga.lost_create``):
adopted when exactly one referral fits, a person asked when several do, looked for again
after the horizon when none does, and sent again only then."""

from __future__ import annotations

import dataclasses
from datetime import datetime, timedelta
from typing import Any

import pytest

from schemas.events import Step
from tests.unit.fakes import NOW, FakeErs, dbs_service, make_context, ok, saga_state, sample_request
from worker.fhir.build import ERS_SERVICE
from worker.saga.context import SagaOptions
from worker.saga.errors import (
    CreateNotYetVisible,
    ErsRejected,
    ErsTransientError,
    NeedsReconciliation,
)
from worker.saga.recovery import reconcile
from worker.saga.state import PendingWrite, SagaState

PATIENT = "9990010005"  # samples/01-dbs-booked.json
REFERRER = "021600556514"
HORIZON = 300.0
SD = "https://fhir.nhs.uk/STU3/StructureDefinition/"
CS = "https://fhir.nhs.uk/STU3/CodeSystem/"


def item(
    ubrn: str,
    *,
    patient: str = PATIENT,
    created: datetime = NOW,
    priority: str = "ROUTINE",
    referrer: str | None = REFERRER,
) -> dict[str, Any]:
    parts: list[dict[str, Any]] = [
        {
            "url": "patient",
            "valueReference": {
                "identifier": {"system": "http://fhir.nhs.net/Id/nhs-number", "value": patient}
            },
        },
        {
            "url": "priority",
            "valueCodeableConcept": {
                "coding": [{"system": f"{CS}eRS-Priority-1", "code": priority}]
            },
        },
        {"url": "referralCreated", "valueDateTime": created.isoformat()},
    ]
    if referrer is not None:
        parts.append(
            {
                "url": "referrer",
                "valueReference": {
                    "identifier": {
                        "system": "http://fhir.nhs.net/Id/sds-user-id",
                        "value": referrer,
                    }
                },
            }
        )
    return {
        "extension": [
            {"url": f"{SD}Extension-eRS-AwaitingBooking-WorkListItem-1", "extension": parts}
        ],
        "item": {"reference": f"ReferralRequest/{ubrn}"},
    }


def worklist(*items: dict[str, Any]) -> dict[str, Any]:
    return {"resourceType": "List", "status": "current", "mode": "snapshot", "entry": list(items)}


def referral(
    ubrn: str,
    *,
    patient: str = PATIENT,
    services: tuple[str, ...] = ("11002",),
    priority: str = "ROUTINE",
    specialty: str = "CARDIOLOGY",
    version: str = "1",
) -> dict[str, Any]:
    """A005's ReferralRequest, with what confirmation reads (retrieveReferralRequest shape)."""
    return {
        "resourceType": "ReferralRequest",
        "id": ubrn,
        "meta": {"versionId": version},
        "extension": [
            {
                "url": f"{SD}Extension-eRS-ReferralState-1",
                "extension": [{"url": "state", "valueCoding": {"code": "NOT_BOOKED"}}],
            },
            {
                "url": f"{SD}Extension-eRS-Commissioning-Rule-Org-1",
                "valueIdentifier": {
                    "system": "https://fhir.nhs.uk/Id/ods-organization-code",
                    "value": "R69",
                },
            },
        ],
        "contained": [
            {
                "resourceType": "Parameters",
                "id": "serviceSearchCriteria",
                "parameter": [
                    {"name": "priority", "valueCoding": {"code": priority}},
                ],
            },
            {
                "resourceType": "List",
                "id": "shortlist",
                "entry": [
                    {"item": {"identifier": {"system": ERS_SERVICE, "value": s}}} for s in services
                ],
            },
        ],
        "specialty": {"coding": [{"code": specialty}]},
        "subject": {
            "identifier": {"system": "http://fhir.nhs.net/Id/nhs-number", "value": patient}
        },
    }


def lost(sent: datetime = NOW) -> SagaState:
    """The saga with its A011 sent at ``sent`` and the answer lost."""
    return saga_state(
        sample_request(),
        Step.CREATE,
        shortlist=(dbs_service(),),
        pending=PendingWrite(step=Step.CREATE, endpoint="A011", at=sent),
    )


def context(ers: FakeErs, now: datetime = NOW) -> Any:
    options = SagaOptions(specialty_cs="x", create_horizon_seconds=HORIZON)
    return make_context(ers=ers, options=options, now=lambda: now)


def worklists(ers: FakeErs, *items: dict[str, Any]) -> None:
    # 01-dbs-booked intends a letter: Awaiting Booking, then Letters Outstanding.
    ers.script("A008", ok(worklist(*items)), ok(worklist(*items)))


async def test_the_one_referral_that_fits_is_adopted_and_the_saga_goes_on() -> None:
    ers = FakeErs()
    worklists(ers, item("000000100007"))
    ers.script("A005", ok(referral("000000100007", version="2"), etag='W/"2"'))

    state, done = await reconcile(lost(), context(ers))

    assert done
    assert ers.endpoints() == ["A008", "A008", "A005"]  # A011 is not sent again
    assert (state.ubrn, state.referral_version, state.referral_state) == (
        "000000100007",
        "2",
        "NOT_BOOKED",
    )
    assert state.commissioning_rule_org == "R69"
    assert state.pending is None
    (note,) = state.reconciliations
    assert (note.endpoint, note.decision, note.ubrns) == ("A011", "ADOPTED", ("000000100007",))
    assert PATIENT not in note.how


@pytest.mark.parametrize(
    ("unfit", "why"),
    [
        (item("000000100001", patient="9990010013"), "another patient"),
        (item("000000100002", created=NOW - timedelta(minutes=5)), "made before the call"),
        (item("000000100003", priority="URGENT"), "another priority"),
        (item("000000100004", referrer="999999999999"), "another referrer"),
    ],
)
async def test_items_that_cannot_be_ours_are_not_even_read(unfit: dict[str, Any], why: str) -> None:
    ers = FakeErs()
    worklists(ers, unfit, item("000000100007"))
    ers.script("A005", ok(referral("000000100007")))

    state, done = await reconcile(lost(), context(ers))

    assert done, why
    assert ers.endpoints() == ["A008", "A008", "A005"]
    assert state.ubrn == "000000100007"


async def test_an_item_within_the_clock_skew_still_counts() -> None:
    ers = FakeErs()
    worklists(ers, item("000000100007", created=NOW - timedelta(seconds=30)))
    ers.script("A005", ok(referral("000000100007")))

    state, done = await reconcile(lost(), context(ers))

    assert done and state.ubrn == "000000100007"


@pytest.mark.parametrize(
    "other",
    [
        {"services": ("11003",)},
        {"priority": "URGENT"},
        {"specialty": "DERMATOLOGY"},
        {"patient": "9990010013"},
    ],
)
async def test_a_candidate_a005_does_not_confirm_is_neither_adopted_nor_ignored(
    other: dict[str, Any],
) -> None:
    # Not provably ours, not provably another's: sending again could refer twice.
    ers = FakeErs()
    worklists(ers, item("000000100007"))
    ers.script("A005", ok(referral("000000100007", **other)))

    with pytest.raises(NeedsReconciliation, match="000000100007"):
        await reconcile(lost(), context(ers, now=NOW + timedelta(seconds=HORIZON)))


async def test_several_that_fit_ask_a_person_naming_only_their_ubrns() -> None:
    ers = FakeErs()
    worklists(ers, item("000000100007"), item("000000100008"))
    ers.script("A005", ok(referral("000000100007")), ok(referral("000000100008")))

    with pytest.raises(NeedsReconciliation) as raised:
        await reconcile(lost(), context(ers))

    text = str(raised.value)
    assert "000000100007" in text and "000000100008" in text
    assert PATIENT not in text


async def test_none_before_the_horizon_waits_keeping_the_mark() -> None:
    ers = FakeErs()
    worklists(ers)

    with pytest.raises(CreateNotYetVisible):
        await reconcile(lost(), context(ers, now=NOW + timedelta(seconds=HORIZON - 1)))


async def test_none_after_the_horizon_sends_it_again() -> None:
    ers = FakeErs()
    worklists(ers)

    state, done = await reconcile(lost(), context(ers, now=NOW + timedelta(seconds=HORIZON)))

    assert not done  # the step runs again: A011 is sent once more
    assert state.pending is None and state.ubrn is None
    (note,) = state.reconciliations
    assert note.decision == "NOT_CREATED"


async def test_a_lost_a021_adopts_the_triage_appointment_too() -> None:
    ers = FakeErs()
    worklists(ers, item("000000100007"))
    body = referral("000000100007", version="2")
    body["contained"].append(
        {
            "resourceType": "Appointment",
            "id": "appointment",
            "status": "proposed",
            "created": NOW.isoformat(),
            "reason": [{"coding": [{"code": "TRIAGE"}]}],
        }
    )
    ers.script("A005", ok(body, etag='W/"2"'))
    state = lost().model_copy(
        update={"pending": PendingWrite(step=Step.CREATE, endpoint="A021", at=NOW)}
    )

    adopted, done = await reconcile(state, context(ers))

    assert done
    assert adopted.booking_done and adopted.referral_state == "AWAITING_TRIAGE"
    assert adopted.referral_version == "2"


# --- doubt goes to a person (review fixes) ----------------------------------------------------


async def test_a_candidate_whose_creation_time_e_rs_does_not_give_asks_a_person() -> None:
    undated = item("000000100007")
    parts = undated["extension"][0]["extension"]
    undated["extension"][0]["extension"] = [p for p in parts if p["url"] != "referralCreated"]
    ers = FakeErs()
    worklists(ers, undated)
    ers.script("A005", ok(referral("000000100007")))

    with pytest.raises(NeedsReconciliation, match="000000100007"):
        await reconcile(lost(), context(ers))


async def test_a_referral_another_request_holds_is_never_adopted() -> None:
    ers = FakeErs()
    worklists(ers, item("000000100007"))

    async def holder(ubrn: str) -> str | None:
        return "another-request" if ubrn == "000000100007" else None

    ctx = dataclasses.replace(context(ers), ubrn_holder=holder)

    with pytest.raises(CreateNotYetVisible):  # not ours: as if nothing were there
        await reconcile(lost(), ctx)
    assert "A005" not in ers.endpoints()


async def test_none_long_after_the_call_asks_a_person_rather_than_send_again() -> None:
    ers = FakeErs()
    worklists(ers)
    later = NOW + timedelta(seconds=SagaOptions(specialty_cs="x").create_window_seconds + 1)

    with pytest.raises(NeedsReconciliation, match="so long after"):
        await reconcile(lost(), context(ers, now=later))


async def test_a_refusal_while_looking_asks_a_person() -> None:
    ers = FakeErs()
    ers.script("A008", ErsRejected("A008", 403, "FORBIDDEN"))

    with pytest.raises(NeedsReconciliation, match="FORBIDDEN"):
        await reconcile(lost(), context(ers))


async def test_a_transient_fault_while_looking_only_waits() -> None:
    ers = FakeErs()
    ers.script("A008", ErsTransientError("A008", 503, "SERVICE_UNAVAILABLE"))

    with pytest.raises(ErsTransientError):
        await reconcile(lost(), context(ers))


async def test_an_a005_without_the_priority_does_not_confirm() -> None:
    ers = FakeErs()
    worklists(ers, item("000000100007"))
    body = referral("000000100007")
    body["contained"] = [c for c in body["contained"] if c["resourceType"] != "Parameters"]
    ers.script("A005", ok(body))

    with pytest.raises(NeedsReconciliation, match="000000100007"):
        await reconcile(lost(), context(ers))


async def test_an_unbooked_referral_is_confirmed_by_the_specialty_it_was_made_with() -> None:
    # e-RS shows the top-level specialty only once there is an appointment: before that,
    # the search criteria the referral was made with say it.
    ers = FakeErs()
    worklists(ers, item("000000100007"))
    body = referral("000000100007")
    del body["specialty"]
    body["contained"][0]["parameter"].append(
        {"name": "specialty", "valueCoding": {"code": "CARDIOLOGY"}}
    )
    ers.script("A005", ok(body))

    state, done = await reconcile(lost(), context(ers))

    assert done and state.ubrn == "000000100007"
