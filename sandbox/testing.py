"""Helpers for tests: run the sandbox on a loopback port in a background thread, and drive its
admin API."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import httpx
from aiohttp import web

from sandbox.app import create_app
from sandbox.fhir import BASE_PATH

STARTUP_TIMEOUT_SECONDS = 10.0


@dataclass(frozen=True)
class SandboxHandle:
    root_url: str  # e.g. http://127.0.0.1:41234
    base_url: str  # e.g. http://127.0.0.1:41234/referrals/FHIR
    app: web.Application


class _ServerThread(threading.Thread):
    def __init__(self, app: web.Application, host: str, port: int) -> None:
        super().__init__(name="ers-sandbox", daemon=True)
        self.app = app
        self.host = host
        self.port = port
        self.loop = asyncio.new_event_loop()
        self.bound_port: int | None = None
        self.error: BaseException | None = None
        self.ready = threading.Event()

    def run(self) -> None:
        asyncio.set_event_loop(self.loop)
        runner = web.AppRunner(self.app, access_log=None)
        try:
            self.loop.run_until_complete(runner.setup())
            site = web.TCPSite(runner, self.host, self.port)
            self.loop.run_until_complete(site.start())
            self.bound_port = int(runner.addresses[0][1])
        except BaseException as exc:
            self.error = exc
            self.ready.set()
            self.loop.run_until_complete(runner.cleanup())
            self.loop.close()
            return
        self.ready.set()
        try:
            self.loop.run_forever()
        finally:
            self.loop.run_until_complete(runner.cleanup())
            self.loop.run_until_complete(self.loop.shutdown_default_executor())
            self.loop.close()

    def stop(self) -> None:
        if self.loop.is_running():
            self.loop.call_soon_threadsafe(self.loop.stop)
        self.join(timeout=STARTUP_TIMEOUT_SECONDS)


def _wait_healthy(root_url: str) -> None:
    deadline = time.monotonic() + STARTUP_TIMEOUT_SECONDS
    with httpx.Client(timeout=1.0) as client:
        while True:
            try:
                if client.get(f"{root_url}/_sandbox/health").status_code == 200:
                    return
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"e-RS sandbox at {root_url} did not become healthy")
            time.sleep(0.02)


@contextmanager
def running_sandbox(
    host: str = "127.0.0.1", port: int = 0, **app_options: Any
) -> Iterator[SandboxHandle]:
    """Serve a fresh sandbox (port 0 = any free port) for the duration of the block."""
    app = create_app(**app_options)
    server = _ServerThread(app, host, port)
    server.start()
    server.ready.wait(STARTUP_TIMEOUT_SECONDS)
    if server.error is not None:
        raise RuntimeError(f"e-RS sandbox failed to start on {host}:{port}") from server.error
    if server.bound_port is None:
        server.stop()
        raise RuntimeError("e-RS sandbox did not start in time")
    url_host = f"[{host}]" if ":" in host else host
    root_url = f"http://{url_host}:{server.bound_port}"
    try:
        _wait_healthy(root_url)
        yield SandboxHandle(root_url=root_url, base_url=root_url + BASE_PATH, app=app)
    finally:
        server.stop()


class SandboxAdmin:
    """Async client for the sandbox's /_sandbox admin API."""

    def __init__(self, root_url: str, *, timeout: float = 10.0) -> None:
        self._client = httpx.AsyncClient(base_url=f"{root_url}/_sandbox", timeout=timeout)

    async def __aenter__(self) -> SandboxAdmin:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._client.aclose()

    async def _json(self, method: str, path: str, body: Any = None) -> Any:
        response = await self._client.request(method, path, json=body)
        response.raise_for_status()
        return response.json()

    async def reset(self) -> None:
        await self._json("POST", "/reset")

    async def referrals(self) -> list[dict[str, Any]]:
        found: list[dict[str, Any]] = await self._json("GET", "/referrals")
        return found

    async def referral(self, ubrn: str) -> dict[str, Any]:
        found: dict[str, Any] = await self._json("GET", f"/referrals/{ubrn}")
        return found

    async def slots(self, service_id: str) -> list[dict[str, Any]]:
        found: list[dict[str, Any]] = await self._json("GET", f"/slots/{service_id}")
        return found

    async def set_slots(self, service_id: str, slots: list[dict[str, str]]) -> list[dict[str, Any]]:
        found: list[dict[str, Any]] = await self._json(
            "PUT", f"/slots/{service_id}", {"slots": slots}
        )
        return found

    async def put_service(self, service_id: str, service: dict[str, Any]) -> dict[str, Any]:
        """Add or replace a service (data/catalogue.json's form)."""
        found: dict[str, Any] = await self._json("PUT", f"/services/{service_id}", service)
        return found

    async def services(self) -> list[dict[str, Any]]:
        found: list[dict[str, Any]] = await self._json("GET", "/services")
        return found

    async def put_referral(self, ubrn: str, referral: dict[str, Any]) -> dict[str, Any]:
        """A referral with a chosen UBRN, version and state (data/seed.json's form)."""
        found: dict[str, Any] = await self._json("PUT", f"/referrals/{ubrn}", referral)
        return found

    async def add_binary(self, binary: dict[str, Any]) -> dict[str, Any]:
        found: dict[str, Any] = await self._json("POST", "/binaries", binary)
        return found

    async def binaries(self) -> list[dict[str, Any]]:
        found: list[dict[str, Any]] = await self._json("GET", "/binaries")
        return found

    async def requests(self) -> list[dict[str, Any]]:
        found: list[dict[str, Any]] = await self._json("GET", "/requests")
        return found

    async def add_fault(
        self,
        endpoint: str,
        status: int | None,
        *,
        times: int = 1,
        retry_after: int | None = None,
        delay_seconds: float = 0,
        after_effect: bool = False,
        code: str | None = None,
        drop: bool = False,
        effects: int = 1,
    ) -> dict[str, Any]:
        """Queue an injected answer; `code` overrides the e-RS error code chosen for `status`."""
        fault: dict[str, Any] = await self._json(
            "POST",
            "/faults",
            {
                "endpoint": endpoint,
                "status": status,
                "times": times,
                "retry_after": retry_after,
                "delay_seconds": delay_seconds,
                "after_effect": after_effect,
                "code": code,
                "drop": drop,
                "effects": effects,
            },
        )
        return fault

    async def faults(self) -> list[dict[str, Any]]:
        """The faults still queued (one is gone once its last use has been taken)."""
        found: list[dict[str, Any]] = await self._json("GET", "/faults")
        return found

    async def clear_faults(self) -> None:
        await self._json("DELETE", "/faults")

    async def set_budget(self, per_second: int | None) -> dict[str, Any]:
        """The application-wide rate limit the sandbox enforces (None: off)."""
        budget: dict[str, Any] = await self._json("PUT", "/budget", {"per_second": per_second})
        return budget

    async def budget(self) -> dict[str, Any]:
        found: dict[str, Any] = await self._json("GET", "/budget")
        return found
