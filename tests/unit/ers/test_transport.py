"""``worker.ers.transport``: the client's wire over aiohttp, against a real local HTTP server.

What matters most is what each failure is reported as: ``classify_transport`` sends a
state-changing call again only when the error says e-RS never saw it.
"""

from __future__ import annotations

import asyncio
import gzip
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field

import httpx
import pytest
from aiohttp import web

from worker.ers.classify import classify_transport
from worker.ers.transport import USER_AGENT, AiohttpWire
from worker.fhir.vocabulary import Endpoint
from worker.saga.errors import ErsOutcomeUnknown, ErsTransientError

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@dataclass
class Server:
    url: str
    seen: list[web.Request] = field(default_factory=list)
    bodies: list[bytes] = field(default_factory=list)
    handler: Handler | None = None


@pytest.fixture
async def server() -> AsyncIterator[Server]:
    srv = Server(url="")

    async def handle(request: web.Request) -> web.StreamResponse:
        srv.seen.append(request)
        srv.bodies.append(await request.read())
        assert srv.handler is not None
        return await srv.handler(request)

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handle)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    srv.url = f"http://127.0.0.1:{port}"
    try:
        yield srv
    finally:
        await runner.cleanup()


def client(max_connections: int = 10) -> AiohttpWire:
    return AiohttpWire(
        max_connections=max_connections, timeout_seconds=5.0, connect_timeout_seconds=1.0
    )


async def test_a_call_goes_and_comes_back_as_the_client_built_it(server: Server) -> None:
    async def answer(request: web.Request) -> web.Response:
        body = gzip.compress(b'{"resourceType": "ReferralRequest"}')
        return web.Response(
            status=201,
            body=body,
            headers={
                "Content-Type": "application/fhir+json",
                "Content-Encoding": "gzip",
                "ETag": 'W/"3"',
            },
        )

    server.handler = answer
    async with client() as http:
        response = await http.send(
            "POST",
            f"{server.url}/STU3/ReferralRequest/$ers.createReferral"
            "?schedule.actor%3AHealthcareService=11002&_count=20",
            {"X-Correlation-ID": "c-1", "Content-Type": "application/fhir+json"},
            b'{"a": 1}',
        )

    assert response.status == 201
    assert response.content == b'{"resourceType": "ReferralRequest"}'  # decoded
    assert response.headers["ETag"] == 'W/"3"'
    sent = server.seen[0]
    assert sent.method == "POST"
    assert sent.raw_path == (
        "/STU3/ReferralRequest/$ers.createReferral"
        "?schedule.actor%3AHealthcareService=11002&_count=20"
    )
    assert server.bodies[0] == b'{"a": 1}'
    assert sent.headers["X-Correlation-ID"] == "c-1"
    assert sent.headers["Content-Type"] == "application/fhir+json"
    # our own name, not aiohttp's
    assert sent.headers["User-Agent"] == USER_AGENT


async def test_a_post_without_a_body_gets_no_content_type_of_aiohttps(server: Server) -> None:
    async def answer(request: web.Request) -> web.Response:
        return web.Response(body=b"%PDF", headers={"Content-Type": "application/pdf"})

    server.handler = answer
    async with client() as http:
        response = await http.send(
            "POST", f"{server.url}/STU3/x/$ers.generatePatientLetter", {}, None
        )

    assert response.content == b"%PDF"
    assert "Content-Type" not in server.seen[0].headers


async def test_the_transport_keeps_no_cookie_jar(server: Server) -> None:
    # One wire serves every clinician: a cookie one user's answer set must not travel on.
    async def answer(request: web.Request) -> web.Response:
        response = web.Response(text="{}")
        response.set_cookie("affinity", "user-a")
        return response

    server.handler = answer
    async with client() as http:
        for path in ("a", "b"):
            await http.send("GET", f"{server.url}/STU3/{path}", {}, None)

    assert "Cookie" not in server.seen[1].headers


async def test_the_environments_proxy_carries_the_calls(
    server: Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    # As aiohttp's trust_env reads it, looked up once rather than on a thread per call.
    async def answer(request: web.Request) -> web.Response:
        return web.Response(text="{}")

    server.handler = answer
    for name in ("NO_PROXY", "no_proxy"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HTTP_PROXY", server.url)
    async with client() as http:
        for path in ("a", "b"):
            answered = await http.send("GET", f"http://ers.invalid/STU3/{path}", {}, None)
            assert answered.status == 200

    assert [request.host for request in server.seen] == ["ers.invalid", "ers.invalid"]
    assert [request.path for request in server.seen] == ["/STU3/a", "/STU3/b"]


async def test_a_refused_connection_is_a_call_never_sent() -> None:
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    async with client() as http:
        with pytest.raises(httpx.ConnectError) as caught:
            await http.send("POST", f"http://127.0.0.1:{port}/STU3/ReferralRequest", {}, None)

    assert type(classify_transport(Endpoint.A011, caught.value)) is ErsTransientError


async def test_waiting_too_long_for_a_pooled_connection_is_a_call_never_sent(
    server: Server,
) -> None:
    release = asyncio.Event()

    async def slow(request: web.Request) -> web.Response:
        await release.wait()
        return web.Response(text="{}")

    server.handler = slow
    http = AiohttpWire(
        max_connections=1,
        timeout_seconds=5.0,
        connect_timeout_seconds=1.0,
        pool_timeout_seconds=0.2,
    )
    async with http:
        first = asyncio.create_task(http.send("GET", f"{server.url}/STU3/slow", {}, None))
        await asyncio.sleep(0.1)
        with pytest.raises(httpx.ConnectTimeout) as caught:
            await http.send("POST", f"{server.url}/STU3/ReferralRequest", {}, None)
        release.set()
        await first

    assert len(server.seen) == 1  # the second call never reached the server
    assert type(classify_transport(Endpoint.A011, caught.value)) is ErsTransientError


async def test_a_connection_dropped_after_the_request_is_an_unknown_effect(
    server: Server,
) -> None:
    async def drop(request: web.Request) -> web.Response:
        assert request.transport is not None
        request.transport.close()  # the server acted, then the answer was lost
        raise web.HTTPInternalServerError

    server.handler = drop
    async with client() as http:
        with pytest.raises(httpx.ReadError) as caught:
            await http.send("POST", f"{server.url}/STU3/ReferralRequest", {}, b"{}")

    assert len(server.seen) == 1  # sent once: never retried behind the client's back
    assert type(classify_transport(Endpoint.A011, caught.value)) is ErsOutcomeUnknown


async def test_no_answer_in_time_is_a_read_timeout_and_an_unknown_effect(
    server: Server,
) -> None:
    async def silent(request: web.Request) -> web.Response:
        await asyncio.sleep(2)
        return web.Response(text="{}")

    server.handler = silent
    async with client() as http:
        with pytest.raises(httpx.ReadTimeout) as caught:
            await http.send("POST", f"{server.url}/STU3/Appointment", {}, None, timeout=0.2)

    assert type(classify_transport(Endpoint.A016, caught.value)) is ErsOutcomeUnknown


@pytest.mark.parametrize(
    "headers", [{"X-Bad": "a\r\nInjected: yes"}, {"X-Bad\n": "a"}, {"X-Bad": "a\x00"}]
)
async def test_a_header_that_cannot_be_sent_is_refused_before_anything_goes(
    server: Server, headers: dict[str, str]
) -> None:
    async with client() as http:
        with pytest.raises(httpx.ReadError) as caught:
            await http.send("POST", f"{server.url}/STU3/Binary", headers, None)

    assert server.seen == []
    # aiohttp's ValueError cannot say when it arose, so it counts as an unknown effect:
    # checked, never sent again blindly (a bad token is refused long before, TOKEN_MALFORMED).
    assert type(classify_transport(Endpoint.A020, caught.value)) is ErsOutcomeUnknown


# --- ``ready``: the budget's last word, once the call has its connection ---


async def empty_json(request: web.Request) -> web.Response:
    return web.Response(body=b"{}")


async def test_ready_is_awaited_with_the_connection_before_the_request_is_written(
    server: Server,
) -> None:
    server.handler = empty_json
    seen_when_ready: list[int] = []

    async def ready() -> None:
        seen_when_ready.append(len(server.seen))

    # One connection at most: the first call opens it, the second reuses it.
    async with client(max_connections=1) as http:
        for _ in range(2):
            response = await http.send("GET", f"{server.url}/STU3/x", {}, None, ready=ready)
            assert response.status == 200
    assert seen_when_ready == [0, 1]  # each time before the server had the request


async def test_ready_waits_outside_the_connect_timeout(server: Server) -> None:
    """Taking a fresh permit may take an interval or more: the call must not time out as if
    no connection could be had (a ConnectTimeout), nor hold the read timeout's clock."""

    server.handler = empty_json

    async def ready() -> None:
        await asyncio.sleep(0.5)  # a permit's wait, longer than every timeout of this wire

    wire = AiohttpWire(max_connections=1, timeout_seconds=0.2, connect_timeout_seconds=0.2)
    async with wire as http:
        response = await http.send("GET", f"{server.url}/STU3/x", {}, None, ready=ready)
    assert response.status == 200
    assert len(server.seen) == 1


async def test_a_ready_that_fails_sends_nothing_and_gives_the_connection_back(
    server: Server,
) -> None:
    server.handler = empty_json

    async def refuse() -> None:
        raise asyncio.CancelledError  # the saga cancelled while it waited for a permit

    async with client(max_connections=1) as http:
        await http.send("GET", f"{server.url}/STU3/x", {}, None)
        with pytest.raises(asyncio.CancelledError):
            await http.send("GET", f"{server.url}/STU3/x", {}, None, ready=refuse)
        assert len(server.seen) == 1
        # The one connection is back in the pool: a next call gets it, not a pool timeout.
        response = await http.send("GET", f"{server.url}/STU3/x", {}, None)
    assert response.status == 200
    assert len(server.seen) == 2


async def test_a_connection_closed_while_ready_waited_is_replaced_before_writing(
    server: Server,
) -> None:
    """e-RS may close an idle keep-alive connection while the call waits for a fresh permit
    (or a 429's pause): the call goes on another, where writing on the closed one would fail
    as a call that might have reached e-RS (an unknown effect, for a create)."""

    server.handler = empty_json
    readies = 0

    async def ready() -> None:
        nonlocal readies
        readies += 1
        if readies == 2:  # the second call, on the first call's pooled connection
            transport = server.seen[0].transport
            assert transport is not None
            transport.close()
            await asyncio.sleep(0.3)  # the permit's wait, in which the close arrives

    async with client(max_connections=1) as http:
        await http.send("GET", f"{server.url}/STU3/x", {}, None, ready=ready)
        response = await http.send("POST", f"{server.url}/STU3/y", {}, b"{}", ready=ready)
    assert response.status == 200
    assert [r.path for r in server.seen] == ["/STU3/x", "/STU3/y"]
    assert readies == 3  # once more, on the new connection
