"""Composition root: build every part of the worker from one Settings object."""

from __future__ import annotations

import logging
import os
import socket
import sys
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx
from yarl import URL

from worker.ers.budget import CallBudget
from worker.ers.client import ErsClient, RetryPolicy
from worker.ers.keys import KeyProblem, SigningKeys, load_keys, public_jwks
from worker.ers.token_exchange import TokenCache, TokenExchanger, token_url_for
from worker.ers.transport import AiohttpWire
from worker.fhir.build import specialty_system
from worker.messaging.handler import Durability, RequestHandler
from worker.messaging.id_tokens import IdTokenProvider
from worker.messaging.tokens import MessageHeaderTokenProvider, StaticTokenProvider
from worker.observability.logs import JsonFormatter
from worker.observability.metrics import Metrics
from worker.ops.failpoints import Failpoints
from worker.ops.failure import OperatorError
from worker.ops.settings import Settings
from worker.saga.context import SagaOptions
from worker.saga.policy import PARK_REASONS
from worker.saga.ports import TokenProvider
from worker.saga.reference_data import ReferenceData
from worker.saga.retry import RetrySchedule
from worker.saga.store import SagaStore
from worker.store.letters import FileLetterStore
from worker.store.postgres import PostgresSagaStore
from worker.store.sqlite import SqliteSagaStore


def build_wire(settings: Settings) -> AiohttpWire:
    """The one place the HTTP transport for e-RS is chosen and sized."""
    return AiohttpWire(
        max_connections=settings.concurrency * 2,
        timeout_seconds=settings.ers_timeout_seconds,
        connect_timeout_seconds=10.0,
    )


def build_token_http_client(settings: Settings) -> httpx.AsyncClient:
    """HTTP for the API platform's token endpoint. Exchanges are rare (one per clinician
    per ~10 minutes) and safe to repeat, so httpx's own transport serves; it honours the
    environment's proxy and CA settings as the e-RS wire does."""
    return httpx.AsyncClient(
        timeout=httpx.Timeout(settings.ers_timeout_seconds, connect=10.0),
        follow_redirects=False,
    )


def build_token_provider(
    settings: Settings, exchanger: TokenExchanger | None = None
) -> TokenProvider:
    if settings.ers_token_provider == "static":
        if settings.ers_static_token is None:
            raise ValueError("ERS_TOKEN_PROVIDER=static needs ERS_STATIC_TOKEN")
        return StaticTokenProvider(settings.ers_static_token)
    if settings.ers_token_provider == "message-id-token":
        if exchanger is None:
            raise ValueError("ERS_TOKEN_PROVIDER=message-id-token needs the token exchange")
        return IdTokenProvider(exchanger)
    return MessageHeaderTokenProvider()


def signing_keys(settings: Settings) -> SigningKeys:
    """The application's keys (``worker.ers.keys``); ``KeyProblem`` names what is wrong."""
    return load_keys(
        directory=settings.apim_private_key_dir,
        pem=settings.apim_private_key,
        kid=settings.apim_key_id,
    )


def published_jwks(settings: Settings) -> dict[str, Any]:
    """What ``ers-worker jwks`` prints: the public JWKS of every configured key."""
    return public_jwks(
        directory=settings.apim_private_key_dir,
        pem=settings.apim_private_key,
        kid=settings.apim_key_id or None,
    )


def token_exchanger(
    settings: Settings,
    http: httpx.AsyncClient,
    budget: CallBudget,
    retry: RetryPolicy,
    metrics: Metrics,
) -> TokenExchanger | None:
    """The exchange of ERS_TOKEN_PROVIDER=message-id-token; None in the other modes."""
    if settings.ers_token_provider != "message-id-token":
        return None
    if not settings.apim_api_key:
        raise KeyProblem("APIM_API_KEY is not set: ERS_TOKEN_PROVIDER=message-id-token needs it")
    return TokenExchanger(
        http,
        token_url=settings.apim_token_url or token_url_for(settings.ers_base_url),
        api_key=settings.apim_api_key,
        keys=signing_keys(settings),
        cache=TokenCache(settings.apim_token_margin_seconds),
        budget=budget,
        retry=retry,
        metrics=metrics,
    )


def replica_name(settings: Settings) -> str:
    """This process's owner name in the saga store: the stable replica name (or the host
    and pid) and a nonce. The nonce keeps two live processes that share a name (an
    `ers-worker run` started inside a running pod, say) from holding each other's leases:
    the one whose leases the other freed at start gets LeaseLost before it sends more."""
    stem = settings.replica_name or f"{socket.gethostname()}-{os.getpid()}"
    return f"{stem}/{uuid.uuid4().hex[:8]}"


async def open_store(
    settings: Settings, *, release_leases: bool = True, owner: str | None = None
) -> SagaStore:
    """The configured saga store. Only the worker itself releases leases (operator tools
    open the store beside a running worker and must not)."""
    store: SagaStore
    if settings.saga_store == "postgres":
        store = await _open_postgres(settings, max_size=settings.concurrency + 2)
        if not release_leases or not settings.replica_name or owner is None:
            return store
        # A stable name is this replica's alone: whoever held leases under it before this
        # process started is dead, so its sagas resume here at once.
        released = await store.release_leases_of(settings.replica_name)
    else:
        store = await SqliteSagaStore.open(settings.saga_store_path)
        if not release_leases:
            return store
        # SQLite serves one replica: whoever held a lease before this process started is dead.
        released = await store.release_all_leases()
    if released:
        logging.getLogger("worker").info(
            "released leases of a previous run", extra={"sagas": released}
        )
    return store


async def operator_store(settings: Settings, *, read_only: bool) -> SagaStore:
    """The saga store as the operator tools open it, beside a running worker: no lease is
    released, no schema or table is created, and ``read_only`` needs nothing but read access
    (a read-only PostgreSQL login, a store file the operator may only read)."""
    if settings.saga_store == "sqlite":
        path = settings.saga_store_path
        if not path.is_file():
            raise OperatorError(
                f"there is no saga store at {path}: check SAGA_STORE_PATH (and SAGA_STORE; "
                "the worker creates the file when it starts)."
            )
        return await SqliteSagaStore.open(path, read_only=read_only)
    return await _open_postgres(settings, max_size=2, migrate=False, read_only=read_only)


async def _open_postgres(
    settings: Settings, *, max_size: int, migrate: bool = True, read_only: bool = False
) -> PostgresSagaStore:
    dsn = settings.postgres_dsn.get_secret_value()
    try:
        return await PostgresSagaStore.open(
            dsn,
            schema=settings.postgres_schema,
            max_size=max_size,
            migrate=migrate,
            read_only=read_only,
        )
    except (OSError, TimeoutError) as exc:  # refused, no route, name unknown: the network
        where = URL(dsn)
        raise OperatorError(
            f"PostgreSQL is not reachable at {where.host}:{where.port or 5432}: start it (or "
            "set POSTGRES_DSN), then run again."
        ) from exc


@asynccontextmanager
async def request_handler(settings: Settings) -> AsyncIterator[RequestHandler]:
    owner = replica_name(settings)
    store = await open_store(settings, owner=owner)
    try:
        async with _handler(settings, store, owner) as handler:
            yield handler
    finally:
        await store.close()


@asynccontextmanager
async def _handler(
    settings: Settings, store: SagaStore, owner: str
) -> AsyncIterator[RequestHandler]:
    failpoints = Failpoints(settings.failpoints)  # test-only crash points; none by default
    metrics = Metrics(park_reasons=PARK_REASONS)
    budget = call_budget(settings, metrics)
    async with build_wire(settings) as wire, build_token_http_client(settings) as http, budget:
        retry = RetryPolicy(
            max_attempts=settings.ers_max_attempts,
            initial_wait=settings.ers_retry_initial_seconds,
            max_wait=settings.ers_retry_max_seconds,
        )
        ers = ErsClient(
            wire,
            base_url=settings.ers_base_url,
            budget=budget,
            retry=retry,
            booking_timeout_seconds=settings.ers_booking_timeout_seconds,
            metrics=metrics,
            failpoints=failpoints,
        )
        yield RequestHandler(
            ers=ers,
            tokens=build_token_provider(
                settings, token_exchanger(settings, http, budget, retry, metrics)
            ),
            letters=FileLetterStore(settings.letters_dir, settings.letters_retention_days),
            reference=ReferenceData(settings.reference_data_ttl_seconds),
            options=SagaOptions(
                specialty_cs=specialty_system(settings.code_system_base_url),
                triage_route=settings.ers_triage_route,
                slot_page_size=settings.slot_page_size,
                max_slot_pages=settings.slot_max_pages,
                max_booking_attempts=settings.booking_max_attempts,
                create_horizon_seconds=settings.reconcile_horizon_seconds,
                create_window_seconds=settings.reconcile_window_seconds,
                clock_skew_seconds=settings.ers_clock_skew_seconds,
                holiday_region=settings.bank_holiday_region,
            ),
            durability=Durability(
                store=store,
                owner=owner,
                lease_seconds=settings.saga_lease_seconds,
                patient_key_secret=settings.patient_key_secret.get_secret_value().encode(),
                retry=RetrySchedule(settings.retry_delays, settings.retry_budget_seconds),
                failpoints=failpoints,
            ),
            metrics=metrics,
        )


def call_budget(settings: Settings, metrics: Metrics) -> CallBudget:
    """The e-RS budget of this replica: shared through Redis when configured. Without it,
    a replica on SQLite is the only one and spends the whole budget; on PostgreSQL there may
    be others, so each spends its share of the most replicas that may run."""
    redis = settings.rate_limit_redis_url
    alone = redis is None and settings.saga_store == "sqlite"
    return CallBudget(
        settings.ers_rate_limit_per_second,
        metrics=metrics,
        key=f"ers-worker:{settings.topology_prefix}:ers-budget",
        redis_url=redis.get_secret_value() if redis is not None else None,
        local_share=1 if alone else settings.ers_rate_limit_max_replicas,
    )


def configure_logging(level: str) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter())
    logging.basicConfig(level=level.upper(), handlers=[handler], force=True)
    guard_library_loggers()


# At DEBUG, aio-pika and aiormq log whole messages (headers with the access token, bodies with
# NHS numbers) and httpcore logs request headers (the bearer token): never below these levels.
# httpx logs each request line at INFO; our own call records say what matters.
_LIBRARY_FLOORS = {
    "aio_pika": logging.INFO,
    "aiormq": logging.INFO,
    "httpcore": logging.INFO,
    "httpx": logging.WARNING,
}


def guard_library_loggers() -> None:
    for name, floor in _LIBRARY_FLOORS.items():
        library = logging.getLogger(name)
        library.setLevel(max(floor, library.getEffectiveLevel()))
