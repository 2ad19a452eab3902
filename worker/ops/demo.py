"""`make run`: the bundled e-RS sandbox, the worker, and the sample requests, end to end.

Starts the sandbox on a free loopback port, starts the worker in this process on a topology
of its own, publishes each sample with a reply queue, and prints one row per outcome.

Whose topology: the demo's worker would take any request waiting in the queues it consumes,
and its outcomes go out on the prefix's events exchange, so it runs only on a topology that
is its own:

- ``TOPOLOGY_PREFIX`` unset: the demo's prefix, ``ers-demo``, which nothing else uses. A
  leftover one is reused, unless a consumer is attached or requests wait in it.
- ``TOPOLOGY_PREFIX`` set: that prefix, only if no topology exists under it yet.

At exit the demo removes the topology, unless another process has started consuming from it
meanwhile (then it stays, and the demo says so).

Tokens: by default the demo shows the real flow (ERS_TOKEN_PROVIDER=message-id-token). It
makes an ephemeral RSA key, in memory only (never written to disk, gone with the process),
registers its JWKS as an application with the sandbox's API platform, has the sandbox's CIS2
issuer sign an ID token per sample for the sample's acting user, and publishes each request
with its ID token in x-ers-id-token; the worker exchanges each at the sandbox's /oauth2/token,
and e-RS calls then need the access tokens it issued. ``--static-token`` is the quick path:
ERS_TOKEN_PROVIDER=static, one made-up access token for every request, no exchange. The demo
prints how many tokens were exchanged, never a token.
"""

from __future__ import annotations

import asyncio
import logging
import sys
import uuid
from pathlib import Path

import aio_pika
import httpx
import orjson
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from pydantic import SecretStr
from yarl import URL

from sandbox.testing import running_sandbox
from worker.ers.keys import MIN_KEY_BITS, SigningKey, SigningKeys
from worker.messaging.consumer import Worker
from worker.messaging.publish import confirmed_channel, publish_request
from worker.messaging.topology import Names, remove
from worker.ops.app import request_handler
from worker.ops.failure import OperatorError
from worker.ops.samples import SAMPLES
from worker.ops.settings import Settings
from worker.saga.priority import MOST_URGENT_FIRST

DEMO_PREFIX = "ers-demo"
DEMO_TOKEN = "demo-user-token"  # --static-token: what ERS_STATIC_TOKEN is for the demo
DEMO_API_KEY = "ers-demo-application"
# The samples' acting user (their "user" field), for a request file that names none.
DEMO_USER: dict[str, object] = {
    "sds_user_id": "021600556514",
    "roles": [{"org_code": "R69", "business_function": "REFERRING_CLINICIAN"}],
}
ID_TOKEN_LIFETIME_SECONDS = 3600
COLUMNS = ("request id", "status", "path", "UBRN", "state", "letter")
WIDTHS = (30, 23, 15, 12, 20, 0)


def _where(url: str) -> str:
    parsed = URL(url)
    return f"{parsed.host}:{parsed.port}"


async def _broker_reachable(url: str) -> bool:
    aiormq_log = logging.getLogger("aiormq")
    level = aiormq_log.level
    aiormq_log.setLevel(logging.CRITICAL)  # our one line says it better than its traceback
    try:
        connection = await asyncio.wait_for(aio_pika.connect(url), timeout=5)
    except (OSError, TimeoutError, aio_pika.exceptions.AMQPError):
        return False
    finally:
        aiormq_log.setLevel(level)
    await connection.close()
    return True


def _load(paths: list[str]) -> list[tuple[str, bytes]]:
    files = paths or sorted(str(p) for p in SAMPLES.glob("*.json"))
    return [(Path(p).name, Path(p).read_bytes()) for p in files]


def _unique(body: bytes, run_id: str) -> bytes:
    """Give each run's requests their own ids: a request id is referred only once."""
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError:
        return body
    if isinstance(data, dict) and isinstance(data.get("request_id"), str):
        data["request_id"] = f"{data['request_id']}-{run_id}"
        return orjson.dumps(data)
    return body


def _row(outcome: dict[str, object], sample: str, letters_dir: Path) -> tuple[str, ...]:
    letter = outcome.get("letter")
    letter_name = (
        str(letters_dir / Path(str(letter["location"])).name) if isinstance(letter, dict) else "-"
    )
    return (
        str(outcome.get("request_id") or sample),
        str(outcome.get("status")),
        str(outcome.get("path") or "-"),
        str(outcome.get("ubrn") or "-"),
        str(outcome.get("referral_state") or "-"),
        letter_name,
    )


def _print_row(row: tuple[str, ...]) -> None:
    print(
        "  ".join(cell.ljust(w) for cell, w in zip(row, WIDTHS, strict=True)).rstrip(), flush=True
    )


def demo_prefix(settings: Settings) -> tuple[str, bool]:
    """The prefix the demo runs under, and whether the operator chose it."""
    if "topology_prefix" in settings.model_fields_set:
        return settings.topology_prefix, True
    return DEMO_PREFIX, False


def _consumed_queues(names: Names, delays: tuple[float, ...]) -> list[str]:
    # Every queue whose messages the demo's worker would take (the dead letters it only adds to).
    return [
        names.requests_queue,
        *(names.work_queue(p) for p in MOST_URGENT_FIRST),
        *(names.delay_queue(d) for d in delays),
    ]


async def _usage(url: str, queues: list[str]) -> tuple[bool, int, int]:
    """Whether the first queue exists, and the consumers and messages of those that do."""
    exists, consumers, messages = False, 0, 0
    connection = await aio_pika.connect(url)
    async with connection:
        for index, name in enumerate(queues):
            channel = await connection.channel()  # a passive miss closes its channel
            try:
                queue = await channel.declare_queue(name, passive=True)
            except aio_pika.exceptions.ChannelNotFoundEntity:
                continue
            exists = exists or index == 0
            consumers += queue.declaration_result.consumer_count or 0
            messages += queue.declaration_result.message_count or 0
            await channel.close()
    return exists, consumers, messages


async def _check_topology_is_ours(url: str, prefix: str, chosen: bool, queues: list[str]) -> None:
    exists, consumers, messages = await _usage(url, queues)
    if exists and chosen:
        raise OperatorError(
            f"a topology already exists under TOPOLOGY_PREFIX={prefix}: the demo runs only on "
            "one of its own (and removes it at exit); choose an unused prefix, or unset "
            f"TOPOLOGY_PREFIX for {DEMO_PREFIX}."
        )
    if consumers or messages:
        raise OperatorError(
            f"the {prefix} topology is in use ({consumers} consumers, {messages} requests "
            "waiting), and the demo's worker would take them: set TOPOLOGY_PREFIX to an "
            "unused prefix, or wait for the other run to end."
        )


async def run_demo(
    settings: Settings, sample_paths: list[str], timeout: float, *, static_token: bool = False
) -> int:
    url = settings.amqp_url.get_secret_value()
    if not await _broker_reachable(url):
        print(
            f"RabbitMQ is not reachable at {_where(url)}: start one with "
            "`rabbitmq-server -detached` (or set AMQP_URL), then run again.",
            file=sys.stderr,
        )
        return 2
    samples = _load(sample_paths)
    if not samples:
        print("no sample requests found (samples/*.json)", file=sys.stderr)
        return 2
    prefix, chosen = demo_prefix(settings)
    names = Names(prefix)
    queues = _consumed_queues(names, settings.retry_delays)
    await _check_topology_is_ours(url, prefix, chosen, queues)

    with running_sandbox() as sandbox:
        print(f"e-RS sandbox at {sandbox.base_url}; topology {prefix}")
        admin = httpx.AsyncClient(base_url=f"{sandbox.root_url}/_sandbox", timeout=10)
        async with admin:
            if static_token:
                tokens = _static_token()
                id_tokens: list[str | None] = [None for _ in samples]
            else:
                tokens = await _registered_application(admin)
                id_tokens = [await _id_token(admin, body) for _, body in samples]
            demo_settings = settings.model_copy(
                update={"ers_base_url": sandbox.base_url, "topology_prefix": prefix, **tokens}
            )
            async with request_handler(demo_settings) as handler:
                worker = Worker(demo_settings, handler)
                await worker.start()
                try:
                    rows = await _publish_and_collect(
                        url, names, samples, id_tokens, timeout, settings.letters_dir
                    )
                finally:
                    await worker.stop(grace_seconds=10)
                    await _remove_unless_used(url, names, queues, demo_settings.retry_delays)
            print(
                "tokens: one static access token for every request (ERS_TOKEN_PROVIDER=static)"
                if static_token
                else await _exchanged(admin, sandbox.root_url)
            )
    missing = [sample for (sample, _), row in zip(samples, rows, strict=True) if not row]
    if missing:
        print(f"no outcome within {timeout:.0f}s for: {', '.join(missing)}", file=sys.stderr)
        return 1
    print(f"{len(rows)} requests, {len(rows)} terminal outcomes")
    return 0


def _static_token() -> dict[str, object]:
    """The settings of the quick path (--static-token)."""
    return {"ers_token_provider": "static", "ers_static_token": SecretStr(DEMO_TOKEN)}


async def _registered_application(admin: httpx.AsyncClient) -> dict[str, object]:
    """An ephemeral key, its JWKS registered with the sandbox's API platform as an
    application's, and the settings that make the worker exchange ID tokens with it."""
    # In memory only, and 2048 bits (the least the worker takes) to keep `make run` quick:
    # a real application's key is 4096 bits, in a Secret (docs/security.md).
    key = rsa.generate_private_key(public_exponent=65537, key_size=MIN_KEY_BITS)
    kid = f"ers-demo-{uuid.uuid4().hex[:8]}"
    jwks = SigningKeys({kid: SigningKey(kid, key)}, kid).jwks()
    answer = await admin.post("/oauth/applications", json={"api_key": DEMO_API_KEY, "jwks": jwks})
    answer.raise_for_status()
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    return {
        "ers_token_provider": "message-id-token",
        "apim_api_key": DEMO_API_KEY,
        "apim_key_id": kid,
        "apim_private_key": SecretStr(pem.decode()),
        "apim_private_key_dir": None,  # the demo's key only, whatever the environment says
        "apim_token_url": "",  # the sandbox's /oauth2/token, next to its e-RS base URL
    }


def _acting_user(body: bytes) -> dict[str, object]:
    """The CIS2 user a request acts as (its ``user``), as the sandbox's issuer takes it."""
    try:
        user = orjson.loads(body).get("user")
    except (orjson.JSONDecodeError, AttributeError):
        user = None
    if not isinstance(user, dict) or not all(
        isinstance(user.get(k), str) for k in ("sds_user_id", "ods_code", "business_function")
    ):
        return DEMO_USER
    role = {"org_code": user["ods_code"], "business_function": user["business_function"]}
    return {"sds_user_id": user["sds_user_id"], "roles": [role]}


async def _id_token(admin: httpx.AsyncClient, body: bytes) -> str:
    """A CIS2 ID token from the sandbox's issuer for the request's acting user, as the
    clinical system holds one after the clinician signs in."""
    answer = await admin.post(
        "/cis2/id-token",
        json={**_acting_user(body), "lifetime_seconds": ID_TOKEN_LIFETIME_SECONDS},
    )
    answer.raise_for_status()
    token: str = answer.json()["id_token"]
    return token


async def _exchanged(admin: httpx.AsyncClient, root_url: str) -> str:
    """One line on the exchanges the sandbox's API platform answered (never a token)."""
    answer = await admin.get("/oauth/exchanges")
    answer.raise_for_status()
    exchanges = answer.json()["exchanges"]
    done = sum(1 for e in exchanges if e["status"] == 200)
    refused = len(exchanges) - done
    return (
        f"tokens: {done} CIS2 ID tokens exchanged for access tokens at {root_url}/oauth2/token"
        + (f", {refused} refused" if refused else "")
        + " (ERS_TOKEN_PROVIDER=message-id-token)"
    )


async def _remove_unless_used(
    url: str, names: Names, queues: list[str], delays: tuple[float, ...]
) -> None:
    # The demo's queues go with it (a later version never meets stale ones), unless someone
    # else started consuming from them while it ran: their topology is not ours to delete.
    _, consumers, _ = await _usage(url, queues)
    if consumers:
        print(
            f"kept the {names.prefix} topology: {consumers} other consumers use it",
            file=sys.stderr,
        )
        return
    await remove(url, names, delays=delays)


async def _publish_and_collect(
    url: str,
    names: Names,
    samples: list[tuple[str, bytes]],
    id_tokens: list[str | None],
    timeout: float,
    letters_dir: Path,
) -> list[tuple[str, ...]]:
    run_id = uuid.uuid4().hex[:8]
    connection = await aio_pika.connect(url)
    async with connection:
        channel = await confirmed_channel(connection)
        replies = await channel.declare_queue(exclusive=True, auto_delete=True)
        exchange = await channel.get_exchange(names.requests_exchange)
        by_correlation: dict[str, int] = {}
        for index, (_, body) in enumerate(samples):
            correlation_id = await publish_request(
                exchange,
                _unique(body, run_id),
                reply_to=replies.name,
                correlation_id=f"demo-{run_id}-{index}",
                id_token=id_tokens[index],
            )
            by_correlation[correlation_id] = index
        print(f"published {len(samples)} sample requests; outcomes as they arrive:\n")
        _print_row(COLUMNS)
        rows: list[tuple[str, ...]] = [() for _ in samples]
        pending = set(by_correlation)
        try:
            async with asyncio.timeout(timeout):
                async with replies.iterator() as messages:
                    async for message in messages:
                        await message.ack()
                        event = orjson.loads(message.body)
                        cid = message.correlation_id or ""
                        if event.get("event_type") == "referral.outcome" and cid in pending:
                            pending.discard(cid)
                            index = by_correlation[cid]
                            rows[index] = _row(event, samples[index][0], letters_dir)
                            _print_row(rows[index])
                            if not pending:
                                break
        except TimeoutError:
            pass
        print()
        return rows
