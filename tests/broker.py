"""Broker-side actions for fault tests: drop a client's connections as a broker restart would."""

from __future__ import annotations

import asyncio
import re

_PID = re.compile(r"^(<[^>]+>)\t.*\{\"connection_name\",\"(?P<name>[^\"]*)\"\}", re.MULTILINE)


async def _rabbitmqctl(*args: str) -> str:
    process = await asyncio.create_subprocess_exec(
        "rabbitmqctl", *args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    stdout, stderr = await asyncio.wait_for(process.communicate(), timeout=60)
    if process.returncode:
        raise RuntimeError(f"rabbitmqctl {args[0]} failed: {stderr.decode()[-500:]}")
    return stdout.decode()


async def drop_connections(connection_name: str) -> int:
    """Force-close every connection whose client named itself ``connection_name``."""
    listing = await _rabbitmqctl(
        "list_connections", "pid", "client_properties", "--no-table-headers", "-q"
    )
    pids = [m.group(1) for m in _PID.finditer(listing) if m.group("name") == connection_name]
    for pid in pids:
        await _rabbitmqctl("close_connection", pid, "fault injection: connection dropped")
    return len(pids)
