"""The bare pipeline: the least any RabbitMQ -> e-RS -> RabbitMQ process must do, as a floor
for the worker's CPU per message.

    python -m bench.bare [--requests 200] [--concurrency 50] [--calls 8]

aio-pika consumes each request (prefetch = concurrency), makes `calls` aiohttp POSTs to the
sandbox one after another, publishes one result with publisher confirms and acks. No saga,
store, retries, validation or metrics: whatever the worker spends beyond this is its own.

It is measured exactly as bench/throughput.py measures the worker (its `drive`: same requester,
same distinct-patient bodies, same process-CPU clock), so the two figures compare like for
like; the requester's small cost is in both.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import uuid
from typing import Any

import aio_pika
import aiohttp
import orjson
from aio_pika.abc import AbstractIncomingMessage

from bench.throughput import ROOT, SAMPLE, drive, free_port, start_sandbox
from worker.messaging.headers import REQUEST_ROUTING_KEY
from worker.messaging.topology import Names

# Issue 10: "a DBS referral with a letter costs 8 calls" (the suite measures it from the
# sandbox's request log and passes what it finds).
CALLS_PER_MESSAGE = 8
FHIR = "/referrals/FHIR"
SEARCH_PATH = f"{FHIR}/STU3/HealthcareService/$ers.searchHealthcareServicesForPatient"
_CS = "https://fhir.nhs.uk/STU3/CodeSystem/"
# A010 is a real e-RS POST the sandbox answers with 200 and a small Bundle, whatever the state,
# and it changes nothing but the caller's latest search: the same call can be repeated `calls`
# times per message. The headers are those every user-restricted e-RS call carries.
HEADERS = {
    "Authorization": "Bearer bench-token",
    "NHSD-End-User-Organisation-ODS": "R69",
    "NHSD-eRS-Business-Function": "REFERRING_CLINICIAN",
    "Content-Type": "application/fhir+json",
}


def search_body(root: str, nhs_number: str) -> bytes:
    """A010 Parameters for the DBS sample's search (the sandbox checks the SPECIALTY system
    against its own base URL, hence `root`)."""

    def coding(name: str, system: str, code: str) -> dict[str, Any]:
        return {"name": name, "valueCoding": {"system": system, "code": code}}

    criteria = [
        coding("priority", f"{_CS}eRS-Priority-1", "ROUTINE"),
        coding("specialty", f"{root}{FHIR}/STU3/CodeSystem/SPECIALTY", "CARDIOLOGY"),
        coding("clinicType", f"{_CS}eRS-ClinicType-1", "HEART_FAILURE"),
        {"name": "ageAndGenderAppropriate", "valueBoolean": True},
    ]
    return orjson.dumps(
        {
            "resourceType": "Parameters",
            "parameter": [
                coding("requestType", f"{_CS}eRS-RequestType-1", "APPOINTMENT_REQUEST"),
                coding("sortBy", f"{_CS}eRS-SortBy-1", "DISTANCE"),
                {
                    "name": "patient",
                    "valueIdentifier": {
                        "system": "http://fhir.nhs.net/Id/nhs-number",
                        "value": nhs_number,
                    },
                },
                {
                    "name": "searchCriteria",
                    "resource": {"resourceType": "Parameters", "parameter": criteria},
                },
            ],
        }
    )


async def run_bare(
    root: str,
    amqp_url: str,
    *,
    requests: int = 200,
    concurrency: int = 50,
    calls: int = CALLS_PER_MESSAGE,
    timeout: float | None = None,
) -> dict[str, Any]:
    """Run the bare pipeline against the sandbox at `root` (http://host:port) and return the
    same figures as bench.throughput.drive, plus what was run."""
    names = Names(f"bare-{uuid.uuid4().hex[:8]}")
    template = orjson.loads((ROOT / "samples" / SAMPLE["dbs"]).read_bytes())
    url = root + SEARCH_PATH
    connection = await aio_pika.connect(amqp_url)
    # The worker sizes its HTTP pool the same way (worker.ops.app.build_wire).
    connector = aiohttp.TCPConnector(limit=concurrency * 2)
    async with connection, aiohttp.ClientSession(connector=connector) as http:
        consuming = await connection.channel()
        await consuming.set_qos(prefetch_count=concurrency)
        # Results go out on a channel of their own in confirm mode, as the worker's do.
        publishing = await connection.channel(publisher_confirms=True)
        exchange = await consuming.declare_exchange(
            names.requests_exchange, aio_pika.ExchangeType.DIRECT, durable=True
        )
        # A quorum queue like the worker's, so the broker's side of both runs is the same.
        queue = await consuming.declare_queue(
            names.requests_queue, durable=True, arguments={"x-queue-type": "quorum"}
        )
        await queue.bind(exchange, routing_key=REQUEST_ROUTING_KEY)

        async def handle(message: AbstractIncomingMessage) -> None:
            status = "COMPLETED"
            try:
                request = orjson.loads(message.body)
                body = search_body(root, request["patient"]["nhs_number"])
                for _ in range(calls):
                    async with http.post(url, data=body, headers=HEADERS) as response:
                        # Any client has to read and parse what e-RS answers.
                        orjson.loads(await response.read())
                        if response.status != 200:
                            status = f"HTTP_{response.status}"
                            break
            except Exception as error:  # a result must still go out, or drive never ends
                status = f"ERROR_{type(error).__name__}"
            result = orjson.dumps({"event_type": "referral.outcome", "status": status})
            if message.reply_to:
                await publishing.default_exchange.publish(
                    aio_pika.Message(
                        result,
                        content_type="application/json",
                        delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
                        correlation_id=message.correlation_id,
                    ),
                    routing_key=message.reply_to,
                )
            await message.ack()

        tag = await queue.consume(handle)
        try:
            figures = await asyncio.wait_for(
                drive(amqp_url, names, template, requests, same_patient=False),
                timeout=timeout or max(60.0, requests * 0.5),
            )
        finally:
            await queue.cancel(tag)
            await consuming.queue_delete(names.requests_queue)
            await consuming.exchange_delete(names.requests_exchange)
    return {"pipeline": "bare", "concurrency": concurrency, "calls_per_message": calls, **figures}


async def _standalone(requests: int, concurrency: int, calls: int, amqp_url: str) -> dict[str, Any]:
    port = free_port()
    sandbox = await start_sandbox(port)
    try:
        return await run_bare(
            f"http://127.0.0.1:{port}",
            amqp_url,
            requests=requests,
            concurrency=concurrency,
            calls=calls,
        )
    finally:
        sandbox.terminate()
        await asyncio.wait_for(sandbox.wait(), timeout=10)


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--concurrency", type=int, default=50)
    parser.add_argument("--calls", type=int, default=CALLS_PER_MESSAGE)
    args = parser.parse_args()
    amqp_url = os.environ.get("AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/")
    figures = asyncio.run(_standalone(args.requests, args.concurrency, args.calls, amqp_url))
    for key, value in figures.items():
        print(f"{key:28} {value}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
