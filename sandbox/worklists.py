"""A008 retrieve worklist, for referring organisations, kept from the sandbox's own state.

- **Awaiting Booking**: the organisation's referrals that could be booked and are not: not
  booked, deferred to the provider, or awaiting triage. A referral leaves it when booked.
- **Letters Outstanding**: its referrals created with the intention to add a letter, until one
  is linked.
- The other referrer lists (Rejected / Triage Response, Assessment Returned / Cancelled /
  DNA) hold nothing here, since the sandbox has no provider acting on referrals; the
  provider lists answer empty too.

Items are shaped as the specification's examples (``retrieveWorklist/responses``).
"""

from __future__ import annotations

from datetime import timedelta

from aiohttp import web

from sandbox.context import caller, read_fhir_json, state
from sandbox.fhir import (
    CS,
    NHS_NUMBER_SYSTEM,
    PRIORITY_SYSTEM,
    REFERRAL_STATE_SYSTEM,
    SD,
    SDS_USER_SYSTEM,
    STATE_DISPLAY,
    Json,
    dig,
    instant,
    parameter,
)
from sandbox.outcomes import fhir_response, unprocessable
from sandbox.state import Referral

LIST_SELECTOR = CS + "eRS-ReferralListSelector-1"
AWAITING_BOOKING = "AWAITING_BOOKING"
LETTERS_OUTSTANDING = "LETTERS_OUTSTANDING"
KNOWN_LISTS = frozenset(
    {
        AWAITING_BOOKING,
        LETTERS_OUTSTANDING,
        "REJECTED_TRIAGE_RESPONSE",
        "ASSESSMENT_RETURNED_CANCELLED_DNA",
        "REFERRALS_FOR_REVIEW",
        "APPOINTMENT_SLOT_ISSUES",
    }
)
_BOOKABLE = frozenset({"NOT_BOOKED", "DEFERRED_TO_PROVIDER", "AWAITING_TRIAGE"})
_ITEM_PROFILE = {
    AWAITING_BOOKING: SD + "Extension-eRS-AwaitingBooking-WorkListItem-1",
    LETTERS_OUTSTANDING: SD + "Extension-eRS-LettersOutstanding-WorkListItem-1",
}


async def fetch_worklist(request: web.Request) -> web.Response:
    """A008: POST /STU3/ReferralRequest/$ers.fetchworklist"""
    body = await read_fhir_json(request)
    if not isinstance(body, dict) or body.get("resourceType") != "Parameters":
        raise unprocessable("INVALID_FHIR_STRUCTURE", "The request body must be Parameters.")
    coding = dig(parameter(body, "listType"), "valueCodeableConcept", "coding", 0)
    if not isinstance(coding, dict) or coding.get("system") != LIST_SELECTOR:
        raise unprocessable("MISSING_VALUE", "'listType' parameter is required.")
    list_type = coding.get("code")
    if list_type not in KNOWN_LISTS:
        raise unprocessable("INVALID_VALUE", f"Unknown worklist '{list_type}'.")
    store = state(request)
    ods = caller(request).ods_code or ""
    mine = sorted(
        (r for r in store.referrals.values() if r.ods_code == ods), key=lambda r: r.created
    )
    if list_type == AWAITING_BOOKING:
        entries = [_item(r, list_type) for r in mine if r.state in _BOOKABLE]
    elif list_type == LETTERS_OUTSTANDING:
        entries = [_item(r, list_type) for r in mine if r.intends_letter and not r.attachments]
    else:
        entries = []
    return fhir_response(
        {
            "meta": {"profile": [SD + "eRS-FetchWorklist-List-1"]},
            "resourceType": "List",
            "status": "current",
            "mode": "snapshot",
            "entry": entries,
        }
    )


def _item(referral: Referral, list_type: str) -> Json:
    parts: list[Json] = [
        {
            "url": "patient",
            "valueReference": {
                "identifier": {"system": NHS_NUMBER_SYSTEM, "value": referral.nhs_number}
            },
        },
        {
            "url": "priority",
            "valueCodeableConcept": {
                "coding": [{"system": PRIORITY_SYSTEM, "code": referral.priority}]
            },
        },
        {"url": "referralCreated", "valueDateTime": instant(referral.created)},
        {"url": "clinicalContext", "valueString": referral.specialty or ""},
    ]
    if referral.referrer is not None:
        parts.append(
            {
                "url": "referrer",
                "valueReference": {
                    "identifier": {"system": SDS_USER_SYSTEM, "value": referral.referrer}
                },
            }
        )
    if list_type == AWAITING_BOOKING:
        parts += [
            {"url": "referralLastUpdated", "valueDateTime": instant(referral.created)},
            {
                "url": "status",
                "valueCodeableConcept": {
                    "coding": [
                        {
                            "system": REFERRAL_STATE_SYSTEM,
                            "code": referral.state,
                            "display": STATE_DISPLAY.get(referral.state, referral.state),
                        }
                    ]
                },
            },
        ]
    else:
        due = referral.created + timedelta(days=referral.first_reminder_days)
        parts.append({"url": "letterDue", "valueDate": due.date().isoformat()})
    return {
        "extension": [{"extension": parts, "url": _ITEM_PROFILE[list_type]}],
        "item": {"reference": f"ReferralRequest/{referral.ubrn}"},
    }
