"""One sandbox server for the session; each test starts from a reset sandbox."""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import pytest

from sandbox.testing import SandboxAdmin, SandboxHandle


@pytest.fixture(scope="session")
def sandbox_server(sandbox: SandboxHandle) -> SandboxHandle:
    """The session's one sandbox (tests/conftest.py starts it)."""
    return sandbox


@pytest.fixture
async def admin(sandbox_server: SandboxHandle) -> AsyncIterator[SandboxAdmin]:
    async with SandboxAdmin(sandbox_server.root_url) as client:
        await client.reset()
        yield client


@pytest.fixture
async def ers(
    sandbox_server: SandboxHandle, admin: SandboxAdmin
) -> AsyncIterator[httpx.AsyncClient]:
    """An e-RS client on the sandbox base URL (after the reset `admin` performs)."""
    async with httpx.AsyncClient(base_url=sandbox_server.base_url, timeout=10.0) as client:
        yield client
