"""A canned e-RS for the benchmarks: the sandbox's own answers, recorded, then replayed with
each referral's ids, after a fixed latency, for a fraction of the sandbox's CPU.

    python -m bench.stub --port PORT --upstream http://127.0.0.1:SANDBOX_PORT

Why: the sandbox computes every answer (a page of free slots, a referral with its contained
resources) and on this 2-core machine tops out near 220 calls/s, below what the latency run
asks of it (concurrency 50 at 100 ms is ~450 calls/s). A benchmark of the worker must not be
bound by its stub.

How it stays faithful: it starts as a recording proxy in front of the sandbox. One saga run
through it (bench.suite does this) records one answer per endpoint; `POST /_stub/replay`
then switches it to replaying them. On replay each answer gets the ids of the referral asked
about: a new UBRN per create, the patient's NHS number, the uploaded Binary, a new
appointment id. (The sandbox is asked with the stub's Host, so it answers with the stub's
address.) Answers are recorded
afresh each run, so they follow the sandbox as it changes (and the slots' dates are current).

It checks nothing: it is no stand-in for the sandbox's contract, only its answers' shapes and
sizes. Admin routes mirror the sandbox's where the suite uses them: `/_sandbox/health`,
`/_sandbox/requests` (the correlation id of every e-RS call since the last reset) and
`/_sandbox/reset`; `POST /_stub/latency` sets the delay before every answer.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import re
import sys
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import aiohttp
from aiohttp import web

BASE = "/referrals/FHIR"
# A UBRN in a path (A012, A019, ...) is the referral asked about; in a key it is a wildcard.
_UBRN_IN_PATH = re.compile(r"/ReferralRequest/(\d{12})/")
# How the worker's requests (orjson, compact) name the patient, the referral and the Binary.
_NHS_IN_BODY = re.compile(rb'nhs-number","value":"(\d{10})"')
_UBRN_IN_BODY = re.compile(rb"ReferralRequest/(\d{12})")
_BINARY_IN_BODY = re.compile(rb"Binary/([0-9a-f-]{36})")
_KEPT_HEADERS = ("Content-Type", "ETag", "Location", "Content-Disposition")
CREATES = ("$ers.createReferral", "$ers.createReferralAndSendForTriage")


def _first(pattern: bytes, body: bytes) -> bytes:
    """The first group of ``pattern`` in ``body``: a recorded answer without it cannot be
    replayed with another referral's ids, so the recording fails loudly."""
    found = re.search(pattern, body)
    if found is None:
        raise ValueError(f"no {pattern!r} in a recorded answer")
    return found.group(1)


def endpoint_key(method: str, path: str) -> str:
    return f"{method} {_UBRN_IN_PATH.sub('/ReferralRequest/*/', path)}"


@dataclass
class Answer:
    status: int
    headers: dict[str, str]
    body: bytes


@dataclass
class Recorded:
    """What the recording saga's ids were, so replay can put each referral's in their place."""

    ubrn: bytes = b""
    nhs_number: bytes = b""
    binary: bytes = b""
    appointment: bytes = b""


@dataclass
class Stub:
    upstream: str
    answers: dict[str, Answer] = field(default_factory=dict)
    recorded: Recorded = field(default_factory=Recorded)
    replaying: bool = False
    latency: float = 0.0
    calls: list[tuple[str | None, float]] = field(default_factory=list)  # (correlation id, at)
    patients: dict[bytes, bytes] = field(default_factory=dict)  # UBRN -> NHS number
    ubrns: itertools.count[int] = field(default_factory=lambda: itertools.count(900_000_000_000))
    appointments: itertools.count[int] = field(default_factory=lambda: itertools.count(80_000))
    http: aiohttp.ClientSession | None = None

    async def record(self, request: web.Request, body: bytes) -> web.Response:
        assert self.http is not None
        # The Host header goes too: the sandbox takes its base URL from it (and checks
        # SPECIALTY codings against it), so it answers as if it were at the stub's address.
        async with self.http.request(
            request.method, self.upstream + request.path_qs, data=body, headers=request.headers
        ) as response:
            answer = Answer(
                response.status,
                {k: response.headers[k] for k in _KEPT_HEADERS if k in response.headers},
                await response.read(),
            )
        self._learn(request.method, request.path, body, answer)
        return web.Response(status=answer.status, headers=answer.headers, body=answer.body)

    def _learn(self, method: str, path: str, body: bytes, answer: Answer) -> None:
        if not 200 <= answer.status < 300:
            return  # only what a saga that went well was told
        self.answers[endpoint_key(method, path)] = answer
        seen = self.recorded
        if path.endswith(CREATES):
            seen.ubrn = _first(rb'"id":"(\d{12})"', answer.body)
            if found := _NHS_IN_BODY.search(body):
                seen.nhs_number = found.group(1)
        elif path.endswith("/Binary"):
            seen.binary = answer.headers.get("Location", "").removeprefix("Binary/").encode()
        elif path.endswith("/Appointment"):
            seen.appointment = _first(rb'"id":"([^"]+)"', answer.body)

    async def replay(self, request: web.Request, body: bytes) -> web.Response:
        if self.latency:
            await asyncio.sleep(self.latency)
        answer = self.answers.get(endpoint_key(request.method, request.path))
        if answer is None:
            return web.json_response(
                {"resourceType": "OperationOutcome", "issue": [{"code": "not-found"}]},
                status=404,
                content_type="application/fhir+json",
            )
        seen = self.recorded
        swaps: list[tuple[bytes, bytes]] = []
        path = request.path
        ubrn: bytes | None = None
        if path.endswith(CREATES):
            ubrn = str(next(self.ubrns)).encode()
            found = _NHS_IN_BODY.search(body)
            self.patients[ubrn] = found.group(1) if found else seen.nhs_number
        elif match := _UBRN_IN_PATH.search(path):
            ubrn = match.group(1).encode()
        elif path.endswith("/Appointment") and (match_body := _UBRN_IN_BODY.search(body)):
            ubrn = match_body.group(1)
            new_id = str(next(self.appointments)).encode()
            swaps.append((b'"id":"' + seen.appointment + b'"', b'"id":"' + new_id + b'"'))
        if ubrn is not None:
            swaps += [(seen.ubrn, ubrn), (seen.nhs_number, self.patients.get(ubrn, b""))]
        if path.endswith("/Binary"):
            swaps.append((seen.binary, str(uuid.uuid4()).encode()))
        elif binary := _BINARY_IN_BODY.search(body):
            swaps.append((seen.binary, binary.group(1)))
        out, headers = answer.body, dict(answer.headers)
        for old, new in swaps:
            if old and new:
                out = out.replace(old, new)
                headers = {k: v.replace(old.decode(), new.decode()) for k, v in headers.items()}
        return web.Response(status=answer.status, headers=headers, body=out)


STUB = web.AppKey("stub", Stub)


async def _ers(request: web.Request) -> web.Response:
    stub = request.app[STUB]
    body = await request.read()
    correlation_id = request.headers.get("X-Correlation-ID")
    stub.calls.append((correlation_id, time.time()))
    response = await (stub.replay if stub.replaying else stub.record)(request, body)
    if correlation_id is not None:
        response.headers["X-Correlation-ID"] = correlation_id
    return response


async def _admin(request: web.Request) -> web.Response:
    stub = request.app[STUB]
    action = request.match_info["action"]
    if action == "health":
        return web.json_response({"status": "ok", "replaying": stub.replaying})
    if action == "requests":
        return web.json_response([{"correlation_id": c, "at": at} for c, at in stub.calls])
    if action == "reset":
        stub.calls.clear()
        stub.patients.clear()
        return web.json_response({})
    if action == "replay":
        stub.replaying = True
        return web.json_response({"endpoints": sorted(stub.answers)})
    if action == "latency":
        stub.latency = float((await request.json())["seconds"])
        return web.json_response({"seconds": stub.latency})
    raise web.HTTPNotFound()


def create_app(upstream: str) -> web.Application:
    app = web.Application(client_max_size=100 * 1024 * 1024)
    stub = Stub(upstream.rstrip("/"))
    app[STUB] = stub

    async def session(app: web.Application) -> AsyncIterator[None]:
        stub.http = aiohttp.ClientSession()
        yield
        await stub.http.close()

    app.cleanup_ctx.append(session)
    app.router.add_route("*", r"/{kind:_sandbox|_stub}/{action}", _admin)
    app.router.add_route("*", BASE + "/{tail:.*}", _ers)
    return app


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--upstream", required=True, help="the sandbox to record from")
    args = parser.parse_args()
    web.run_app(
        create_app(args.upstream),
        host=args.host,
        port=args.port,
        access_log=None,
        print=None,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
