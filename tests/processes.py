"""The worker as a real process (`python -m worker.ops.cli run`), for crash and shutdown tests."""

from __future__ import annotations

import asyncio
import os
import signal
import sys

from worker.ops.settings import Settings


def worker_env(settings: Settings, **extra: str) -> dict[str, str]:
    return {
        **os.environ,
        "AMQP_URL": settings.amqp_url.get_secret_value(),
        "TOPOLOGY_PREFIX": settings.topology_prefix,
        "ERS_BASE_URL": settings.ers_base_url,
        "LETTERS_DIR": str(settings.letters_dir),
        "SAGA_STORE": settings.saga_store,
        "SAGA_STORE_PATH": str(settings.saga_store_path),
        "POSTGRES_DSN": settings.postgres_dsn.get_secret_value(),
        "POSTGRES_SCHEMA": settings.postgres_schema,
        "SAGA_LEASE_SECONDS": str(settings.saga_lease_seconds),
        "RECONCILE_HORIZON_SECONDS": str(settings.reconcile_horizon_seconds),
        "PATIENT_KEY_SECRET": settings.patient_key_secret.get_secret_value(),
        "RETRY_DELAYS_SECONDS": settings.retry_delays_seconds,
        "ERS_RETRY_INITIAL_SECONDS": str(settings.ers_retry_initial_seconds),
        "ERS_RETRY_MAX_SECONDS": str(settings.ers_retry_max_seconds),
        "ERS_RATE_LIMIT_PER_SECOND": str(settings.ers_rate_limit_per_second),
        "WORKER_CONCURRENCY": str(settings.concurrency),
        "AMQP_PREFETCH": str(settings.prefetch),
        "LOG_LEVEL": "INFO",
        "METRICS_PORT": str(settings.metrics_port),
        "METRICS_HOST": settings.metrics_host,
        **extra,
    }


class WorkerProcess:
    def __init__(self, process: asyncio.subprocess.Process) -> None:
        self.process = process

    @classmethod
    async def start(cls, settings: Settings, **extra: str) -> WorkerProcess:
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "worker.ops.cli",
            "run",
            env=worker_env(settings, **extra),
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE,
        )
        return cls(process)

    async def killed(self, timeout: float = 30.0) -> int:
        """Wait for the process to die by itself (a failpoint); returns its exit status."""
        await asyncio.wait_for(self.process.wait(), timeout)
        return self.process.returncode or 0

    async def stderr_tail(self, chars: int = 3000) -> str:
        """The end of what a process that has exited wrote to stderr: why it ended."""
        assert self.process.stderr is not None
        return (await self.process.stderr.read()).decode()[-chars:]

    async def stop(self, timeout: float = 30.0) -> tuple[int, str]:
        """SIGTERM, then wait for the drain; returns (exit status, stderr)."""
        if self.process.returncode is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            _, stderr = await asyncio.wait_for(self.process.communicate(), timeout)
        finally:
            if self.process.returncode is None:
                self.process.kill()
                await self.process.wait()
        return self.process.returncode or 0, (stderr or b"").decode()

    async def kill(self) -> None:
        if self.process.returncode is None:
            self.process.kill()
            await self.process.wait()
