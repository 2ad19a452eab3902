"""The e-RS port for one saga (``worker.saga.ports.ErsPort``): one acting user, one token,
one correlation id.

It builds each endpoint's ``ErsRequest`` once (URL path, headers, body) and hands it to the
shared ``ErsClient``, which owns the transport, the rate limit and the retries.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from typing import Any

import orjson

from schemas.referral_request import ActingUser, Priority
from worker.ers.request import FHIR_JSON, Caller, ErsRequest, Sender
from worker.fhir.vocabulary import Endpoint
from worker.saga.errors import ErsAuthError
from worker.saga.ports import AccessToken, BeforeCall, BeforeWrite, ErsCall, ErsReply, NotTaken


class ErsSession:
    def __init__(
        self,
        client: Sender,
        user: ActingUser,
        token: AccessToken,
        correlation_id: str,
        now: Callable[[], datetime],
        before_write: BeforeWrite | None = None,
        not_taken: NotTaken | None = None,
        before_call: BeforeCall | None = None,
        priority: Priority = Priority.ROUTINE,
        turn: float | None = None,
    ) -> None:
        self._client = client
        self._caller = Caller(
            token=token,
            now=now,
            before_write=before_write,
            not_taken=not_taken,
            before_call=before_call,
            priority=priority,
            turn=turn,
        )
        # Set when the worker exchanges the user's CIS2 ID token (worker.ers.token_exchange).
        self._renew = token.renew
        self._headers = {
            "NHSD-End-User-Organisation-ODS": user.ods_code,
            "NHSD-eRS-Business-Function": user.business_function.value,
            "X-Correlation-ID": correlation_id,
            "Accept": FHIR_JSON,
        }

    def drain_calls(self) -> list[ErsCall]:
        calls, self._caller.calls = self._caller.calls, []
        return calls

    async def _call(
        self,
        endpoint: Endpoint,
        method: str,
        path: str,
        *,
        json: Any = None,
        content: bytes | None = None,
        headers: dict[str, str] | None = None,
        params: dict[str, str | int] | None = None,
        long_running: bool = False,
    ) -> ErsReply:
        all_headers = {**self._headers, **(headers or {})}
        if json is not None:
            all_headers["Content-Type"] = FHIR_JSON
        request = ErsRequest(
            endpoint=endpoint,
            method=method,
            path=path,
            headers=all_headers,
            body=orjson.dumps(json) if json is not None else content,
            params=params,
            long_running=long_running,
        )
        renew = self._renew
        if renew is None:
            return await self._client.call(request, self._caller)
        caller = self._caller
        if caller.before_call is not None:
            # A token exchange is a call too, and may be the last thing a process does: what
            # the saga's earlier writes did is stored before it, not after (journal).
            await caller.before_call(endpoint.value)
        caller.token = await renew(None, caller.priority, caller.turn)
        try:
            return await self._client.call(request, caller)
        except ErsAuthError:
            # e-RS refused the token before acting (401): a fresh exchange, once, as long
            # as the ID token is good; a refusal of that raises REAUTHENTICATION_NEEDED.
            caller.token = await renew(caller.token, caller.priority, caller.turn)
            return await self._client.call(request, caller)

    # --- the endpoints of the referrer flow ---

    async def retrieve_reference_data(self, code_system: str) -> ErsReply:
        return await self._call(Endpoint.A004, "GET", f"CodeSystem/{code_system}")

    async def retrieve_referral(self, ubrn: str) -> ErsReply:
        return await self._call(Endpoint.A005, "GET", f"ReferralRequest/{ubrn}")

    async def retrieve_worklist(self, body: dict[str, Any]) -> ErsReply:
        path = "ReferralRequest/$ers.fetchworklist"
        return await self._call(Endpoint.A008, "POST", path, json=body)

    async def search_services(self, body: dict[str, Any]) -> ErsReply:
        path = "HealthcareService/$ers.searchHealthcareServicesForPatient"
        return await self._call(Endpoint.A010, "POST", path, json=body)

    async def create_referral(self, body: dict[str, Any]) -> ErsReply:
        return await self._call(
            Endpoint.A011, "POST", "ReferralRequest/$ers.createReferral", json=body
        )

    async def maintain_referral_letter(
        self, ubrn: str, version: str, body: dict[str, Any]
    ) -> ErsReply:
        return await self._call(
            Endpoint.A012,
            "POST",
            f"ReferralRequest/{ubrn}/$ers.maintainReferralLetter",
            json=body,
            headers={"If-Match": f'W/"{version}"'},
        )

    async def retrieve_slots(
        self,
        *,
        service_id: str,
        priority: str,
        commissioning_rule_org: str,
        page: int,
        page_size: int,
        named_clinician: str | None = None,
    ) -> ErsReply:
        params: dict[str, str | int] = {
            "schedule.actor:HealthcareService": service_id,
            "appointmentType": priority,
            "_count": page_size,
            "status": "free",
            "page": page,
            "_include": "Slot:schedule",
        }
        if named_clinician:
            params["schedule.actor:Practitioner"] = named_clinician
        return await self._call(
            Endpoint.A015,
            "GET",
            "Slot",
            params=params,
            headers={"NHSD-eRS-Comm-Rule-Org": commissioning_rule_org},
        )

    async def book_or_defer(self, body: dict[str, Any]) -> ErsReply:
        return await self._call(Endpoint.A016, "POST", "Appointment", json=body, long_running=True)

    async def generate_patient_letter(self, ubrn: str) -> ErsReply:
        return await self._call(
            Endpoint.A019,
            "POST",
            f"ReferralRequest/{ubrn}/$ers.generatePatientLetter",
            headers={"Accept": f"application/pdf, {FHIR_JSON}"},
        )

    async def upload_file(
        self, *, ubrn: str, file_name: str, media_type: str, content: bytes
    ) -> ErsReply:
        return await self._call(
            Endpoint.A020,
            "POST",
            "Binary",
            content=content,
            headers={
                "Content-Type": media_type,
                "NHSD-eRS-File-Name": file_name,
                "NHSD-eRS-Referral-ID": ubrn,
            },
        )

    async def create_referral_and_send_for_triage(self, body: dict[str, Any]) -> ErsReply:
        path = "ReferralRequest/$ers.createReferralAndSendForTriage"
        return await self._call(Endpoint.A021, "POST", path, json=body)
