"""e-RS reference data (A004 CodeSystems) shipped in data/codesystem-<TYPE>.json.

The files are NHS Digital's example CodeSystems, with the specialty and clinic-type codes the
sandbox catalogue uses added so that every code the sandbox emits resolves through A004.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache
from importlib import resources

import orjson
from aiohttp import web

from sandbox.context import own_base_url
from sandbox.fhir import Json, substitute_base_url_text
from sandbox.outcomes import FHIR_JSON, ErsError

CODE_SYSTEM_TYPES = (
    "SPECIALTY",
    "APPOINTMENT-CANCELLATION-REASON",
    "CLINIC-TYPE",
    "REFERRAL-CANCELLATION-REASON",
    "APPOINTMENT-NON-ATTENDANCE-REASON",
    "PRIORITY",
)


@dataclass(frozen=True)
class CodeSystem:
    type: str
    text: str  # raw JSON text, `_baseUrl_` placeholders intact
    displays: dict[str, str]


def _load(code_system_type: str) -> CodeSystem:
    path = resources.files("sandbox").joinpath(f"data/codesystem-{code_system_type}.json")
    text = path.read_text(encoding="utf-8")
    parsed: Json = orjson.loads(text)
    displays = {
        concept["code"]: concept.get("display", concept["code"])
        for concept in parsed.get("concept", [])
    }
    return CodeSystem(code_system_type, text, displays)


@cache
def code_systems() -> dict[str, CodeSystem]:
    return {name: _load(name) for name in CODE_SYSTEM_TYPES}


def display(code_system_type: str, code: str) -> str | None:
    return code_systems()[code_system_type].displays.get(code)


def has_code(code_system_type: str, code: str) -> bool:
    return code in code_systems()[code_system_type].displays


async def retrieve_code_system(request: web.Request) -> web.Response:
    """A004: GET /STU3/CodeSystem/{codeSystemType}"""
    code_system_type = request.match_info["codeSystemType"]
    found = code_systems().get(code_system_type)
    if found is None:
        raise ErsError(404, "REFERENCE_NOT_FOUND", f"CodeSystem ({code_system_type}) not found.")
    text = substitute_base_url_text(found.text, own_base_url(request))
    return web.Response(body=text.encode(), content_type=FHIR_JSON)
