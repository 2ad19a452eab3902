"""e-RS calls over aiohttp's connection pool, with failures named as safety needs them.

Measured on this machine (docs/performance.md): httpcore's pool walks every connection for
each request and each answer, so its CPU per call grows with concurrency; aiohttp's does
not. httpx's request and response models on top of aiohttp still cost ~2 ms of CPU per DBS
referral (building an ``httpx.Request``, its URL, headers and streams, then a response), so
the client (``worker.ers.client``) talks to this ``Wire`` directly: a method, an encoded URL,
headers and a body out; a status, headers and the decoded body back. Unit tests of the
client put a fake ``Wire`` in its place (the one seam), over ``httpx.MockTransport``.

Failures keep httpx's names, which ``worker.ers.classify`` reads as the one home of "was it
sent?". Why not the ``httpx-aiohttp`` package: it maps every ``aiohttp.ClientConnectionError``
to ``httpx.ConnectTimeout``, a connection dropped *after* the request went out included.
``classify`` reads ConnectError and ConnectTimeout as "surely not sent", so a create whose
answer was lost would be sent again: a duplicate referral. Here only what aiohttp raises
before a byte is written is a connect failure:

- ``ClientConnectorError`` (refused, unreachable, TLS handshake) -> ``httpx.ConnectError``;
- ``ConnectionTimeoutError`` (no pooled or new connection in time) -> ``httpx.ConnectTimeout``;
- any other timeout -> ``httpx.ReadTimeout``; any other client error, or a ``ValueError``
  from aiohttp, -> ``httpx.ReadError``: the request may have reached e-RS, and the client
  treats its effect as unknown (checked, never repeated blindly). A header that could not
  be sent is refused before this point (``worker.messaging.tokens``: TOKEN_MALFORMED).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from contextvars import ContextVar
from dataclasses import dataclass
from types import TracebackType
from typing import Protocol, Self

import aiohttp
import httpx
import yarl
from aiohttp.helpers import get_env_proxy_for_url

Ready = Callable[[], Awaitable[None]]

# The ``ready`` of the call this task is sending, for ``_Connector`` to await: aiohttp gives
# a connector the request, not the caller's arguments.
_READY: ContextVar[Ready | None] = ContextVar("ers_wire_ready", default=None)

USER_AGENT = "ers-worker"


@dataclass(frozen=True, slots=True)
class Answer:
    """An HTTP answer as the client reads it: headers looked up case-insensitively."""

    status: int
    headers: Mapping[str, str]
    content: bytes

    @property
    def is_success(self) -> bool:
        return 200 <= self.status < 300


class Wire(Protocol):
    """Where e-RS calls go: ``AiohttpWire``, or a fake in the client's unit tests."""

    async def send(
        self,
        method: str,
        url: str,
        headers: Mapping[str, str],
        body: bytes | None,
        *,
        timeout: float | None = None,
        ready: Ready | None = None,
    ) -> Answer:
        """Send one request (``url`` already encoded, its query included); ``timeout``, if
        given, bounds every phase of this call instead of the wire's defaults; ``ready``, if
        given, is awaited once the call has its connection, before a byte of it is written
        (the budget's ``Permit.at_the_wire``), outside the connect timeout. Failures raise
        ``httpx.TransportError`` kinds, named as this module's docstring says."""
        ...

    async def aclose(self) -> None: ...


class _Connector(aiohttp.TCPConnector):
    """aiohttp's pool, awaiting the call's ``ready`` between getting a connection (pooled or
    new) and writing the request on it. aiohttp also connects again for a GET that found its
    pooled connection closed; ``ready`` is awaited then too, before that second write."""

    async def connect(
        self,
        req: aiohttp.ClientRequest,
        traces: list[aiohttp.tracing.Trace],
        timeout: aiohttp.ClientTimeout,
    ) -> aiohttp.connector.Connection:
        ready = _READY.get()
        while True:
            conn = await super().connect(req, traces, timeout)
            if ready is None:
                return conn
            try:
                await ready()
            except BaseException:
                conn.release()  # nothing was written on it: back to the pool
                raise
            if conn.protocol is not None and conn.protocol.is_connected():
                return conn
            # e-RS closed it while the call waited (a fresh permit, a 429's pause): writing
            # on it would fail as if the call might have gone, so take another.
            conn.close()


class AiohttpWire:
    def __init__(
        self,
        *,
        max_connections: int,
        timeout_seconds: float,
        connect_timeout_seconds: float,
        pool_timeout_seconds: float | None = None,
        keepalive_seconds: float = 15.0,
    ) -> None:
        self._limit = max_connections
        self._keepalive = keepalive_seconds
        # ``connect``: waiting for a pooled or new connection (httpx's pool timeout);
        # ``sock_connect``: the TCP/TLS connect; ``sock_read``: each wait for answer bytes.
        self._default = aiohttp.ClientTimeout(
            total=None,
            connect=timeout_seconds if pool_timeout_seconds is None else pool_timeout_seconds,
            sock_connect=connect_timeout_seconds,
            sock_read=timeout_seconds,
        )
        self._session: aiohttp.ClientSession | None = None
        # (scheme, host) -> the proxy the environment names for it, looked up once.
        self._proxies: dict[
            tuple[str, str | None], tuple[yarl.URL | None, aiohttp.BasicAuth | None]
        ] = {}

    def _proxy(self, url: yarl.URL) -> tuple[yarl.URL | None, aiohttp.BasicAuth | None]:
        """HTTP(S)_PROXY and NO_PROXY as aiohttp's ``trust_env`` reads them, but once per
        origin: with ``trust_env`` aiohttp looks them up (and reads ~/.netrc) on a thread
        for every request, two thread hops per e-RS call (~16 per DBS referral)."""
        key = (url.scheme, url.host)
        if key not in self._proxies:
            try:
                self._proxies[key] = get_env_proxy_for_url(url)
            except LookupError:
                self._proxies[key] = (None, None)
        return self._proxies[key]

    def _timeout(self, seconds: float | None) -> aiohttp.ClientTimeout:
        if seconds is None:
            return self._default
        return aiohttp.ClientTimeout(
            total=None, connect=seconds, sock_connect=seconds, sock_read=seconds
        )

    def _client(self) -> aiohttp.ClientSession:
        # Made on first use, inside the running loop (aiohttp binds its session to it).
        if self._session is None:
            connector = _Connector(
                limit=self._limit, keepalive_timeout=self._keepalive, ttl_dns_cache=300
            )
            # No cookie jar: one session serves every clinician's calls, and a cookie one
            # user's answer set must never travel on another user's request.
            self._session = aiohttp.ClientSession(
                connector=connector,
                trust_env=False,  # the proxy: ``_proxy``
                cookie_jar=aiohttp.DummyCookieJar(),
                headers={"User-Agent": USER_AGENT},
            )
        return self._session

    async def send(
        self,
        method: str,
        url: str,
        headers: Mapping[str, str],
        body: bytes | None,
        *,
        timeout: float | None = None,
        ready: Ready | None = None,
    ) -> Answer:
        # As the client encoded it: yarl would otherwise re-quote the query.
        target = yarl.URL(url, encoded=True)
        proxy, proxy_auth = self._proxy(target)
        reset = _READY.set(ready)
        try:
            async with self._client().request(
                method,
                target,
                proxy=proxy,
                proxy_auth=proxy_auth,
                headers=headers,
                data=body or None,
                allow_redirects=False,
                compress=False,
                # The client sets what the call needs; aiohttp would add
                # application/octet-stream to a POST without a body (A019), which e-RS does
                # not expect.
                skip_auto_headers=("Content-Type",),
                timeout=self._timeout(timeout),
            ) as response:
                content = await response.read()  # gzip or deflate decoded by aiohttp
                return Answer(response.status, response.headers, content)
        except aiohttp.ClientConnectorError as exc:
            raise httpx.ConnectError(type(exc).__name__) from exc
        except aiohttp.ConnectionTimeoutError as exc:
            raise httpx.ConnectTimeout(type(exc).__name__) from exc
        except TimeoutError as exc:  # aiohttp's socket timeouts are TimeoutErrors too
            raise httpx.ReadTimeout(type(exc).__name__) from exc
        except (aiohttp.ClientError, ValueError) as exc:
            raise httpx.ReadError(type(exc).__name__) from exc
        finally:
            _READY.reset(reset)

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None
