"""The seams between the saga's pure logic and the I/O that serves it.

Steps talk only to these Protocols; ``ers_client`` implements ``ErsPort`` over HTTP,
``letter_store`` implements ``LetterStore`` on disk, and tests may supply their own.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol

from schemas.events import LetterInfo


@dataclass(frozen=True, slots=True)
class ErsReply:
    """One successful e-RS answer: the parsed JSON body, or raw bytes for PDFs."""

    status: int
    body: Any = None
    content: bytes = b""
    etag: str | None = None
    location: str | None = None
    file_name: str | None = None
    request_id: str | None = None


@dataclass(frozen=True, slots=True)
class ErsCall:
    """One HTTP attempt, as the saga's history keeps it (no headers, no bodies)."""

    endpoint: str
    status: int | None
    at: datetime
    duration_ms: int
    x_request_id: str | None
    error_code: str | None


class ErsPort(Protocol):
    """The e-RS endpoints of the referrer flow, bound to one user and one correlation id."""

    async def retrieve_reference_data(self, code_system: str) -> ErsReply: ...  # A004

    async def retrieve_referral(self, ubrn: str) -> ErsReply: ...  # A005

    async def search_services(self, body: dict[str, Any]) -> ErsReply: ...  # A010

    async def create_referral(self, body: dict[str, Any]) -> ErsReply: ...  # A011

    async def maintain_referral_letter(
        self, ubrn: str, version: str, body: dict[str, Any]
    ) -> ErsReply: ...  # A012

    async def retrieve_slots(
        self,
        *,
        service_id: str,
        priority: str,
        commissioning_rule_org: str,
        page: int,
        page_size: int,
        named_clinician: str | None = None,
    ) -> ErsReply: ...  # A015

    async def book_or_defer(self, body: dict[str, Any]) -> ErsReply: ...  # A016

    async def generate_patient_letter(self, ubrn: str) -> ErsReply: ...  # A019

    async def upload_file(
        self, *, ubrn: str, file_name: str, media_type: str, content: bytes
    ) -> ErsReply: ...  # A020

    async def create_referral_and_send_for_triage(
        self, body: dict[str, Any]
    ) -> ErsReply: ...  # A021


class LetterStore(Protocol):
    async def save(
        self, *, ubrn: str, request_id: str, file_name: str | None, content: bytes
    ) -> LetterInfo: ...
