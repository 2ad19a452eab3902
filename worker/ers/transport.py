"""httpx's API over aiohttp's connection pool, with failures named as safety needs them.

Measured on this machine (docs/performance.md): httpcore's pool walks every connection for
each request and each answer, so its CPU per call grows with concurrency; aiohttp's does
not. The client (``worker.ers.client``) keeps httpx's API, so its unit tests still run on
``httpx.MockTransport``.

Why not the ``httpx-aiohttp`` package: it maps every ``aiohttp.ClientConnectionError``
to ``httpx.ConnectTimeout``, a connection dropped *after* the request went out included.
``worker.ers.classify`` reads ConnectError and ConnectTimeout as "surely not sent", so a
create whose answer was lost would be sent again: a duplicate referral. Here only what
aiohttp raises before a byte is written is a connect failure:

- ``ClientConnectorError`` (refused, unreachable, TLS handshake) -> ``httpx.ConnectError``;
- ``ConnectionTimeoutError`` (no pooled or new connection in time) -> ``httpx.ConnectTimeout``;
- any other timeout -> ``httpx.ReadTimeout``; any other client error, or a ``ValueError``
  from aiohttp, -> ``httpx.ReadError``: the request may have reached e-RS, and the client
  treats its effect as unknown (checked, never repeated blindly). A header that could not
  be sent is refused before this point (``worker.messaging.tokens``: TOKEN_MALFORMED).
"""

from __future__ import annotations

from typing import Any

import aiohttp
import httpx
import yarl


class AiohttpTransport(httpx.AsyncBaseTransport):
    def __init__(self, *, max_connections: int, keepalive_seconds: float = 15.0) -> None:
        self._limit = max_connections
        self._keepalive = keepalive_seconds
        self._session: aiohttp.ClientSession | None = None

    def _client(self) -> aiohttp.ClientSession:
        # Made on first use, inside the running loop (aiohttp binds its session to it).
        if self._session is None:
            connector = aiohttp.TCPConnector(
                limit=self._limit, keepalive_timeout=self._keepalive, ttl_dns_cache=300
            )
            # No cookie jar: one session serves every clinician's calls, and a cookie one
            # user's answer set must never travel on another user's request.
            self._session = aiohttp.ClientSession(
                connector=connector,
                auto_decompress=False,
                trust_env=True,
                cookie_jar=aiohttp.DummyCookieJar(),
            )
        return self._session

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        timeout: dict[str, Any] = request.extensions.get("timeout", {})
        try:
            async with self._client().request(
                request.method,
                # As httpx encoded it: yarl would otherwise re-quote the query.
                yarl.URL(str(request.url), encoded=True),
                headers=request.headers.multi_items(),
                data=request.content or None,
                allow_redirects=False,
                compress=False,
                # httpx sets what the call needs; aiohttp would add application/octet-stream
                # to a POST without a body (A019), which e-RS does not expect.
                skip_auto_headers=("Content-Type",),
                timeout=aiohttp.ClientTimeout(
                    total=None,
                    connect=timeout.get("pool"),
                    sock_connect=timeout.get("connect"),
                    sock_read=timeout.get("read"),
                ),
            ) as response:
                content = await response.read()
                return httpx.Response(
                    status_code=response.status,
                    # Set-Cookie withheld from httpx too, which would keep it for every user.
                    headers=[h for h in response.raw_headers if h[0].lower() != b"set-cookie"],
                    content=content,
                    request=request,
                )
        except aiohttp.ClientConnectorError as exc:
            raise httpx.ConnectError(type(exc).__name__, request=request) from exc
        except aiohttp.ConnectionTimeoutError as exc:
            raise httpx.ConnectTimeout(type(exc).__name__, request=request) from exc
        except TimeoutError as exc:  # aiohttp's socket timeouts are TimeoutErrors too
            raise httpx.ReadTimeout(type(exc).__name__, request=request) from exc
        except (aiohttp.ClientError, ValueError) as exc:
            raise httpx.ReadError(type(exc).__name__, request=request) from exc

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None
