"""``ers-worker``: the production entry point and the local demo.

ers-worker run       consume referral requests until SIGTERM/SIGINT, then drain and exit 0
ers-worker demo      what `make run` does: sandbox + worker + the sample requests
ers-worker schemas   write the JSON Schema files of the message contracts
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import sys

import orjson

from worker.app import configure_logging, request_handler
from worker.consumer import Worker
from worker.settings import Settings, env_example
from worker.topology import Names, definitions

log = logging.getLogger("worker")


async def serve(settings: Settings) -> int:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    async with request_handler(settings) as handler:
        worker = Worker(settings, handler)
        await worker.start()
        stopped = asyncio.create_task(stop.wait())
        failed = asyncio.create_task(worker.failed.wait())
        await asyncio.wait({stopped, failed}, return_when=asyncio.FIRST_COMPLETED)
        stopped.cancel()
        failed.cancel()
        log.info("stopping", extra={"in_flight": worker.in_flight})
        await worker.stop()
    if worker.failed.is_set():
        log.error("exiting: not consuming after a reconnect")
        return 3
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="ers-worker", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("run", help="consume referral requests until SIGTERM/SIGINT")
    demo = sub.add_parser("demo", help="run the bundled sandbox, the worker and the samples")
    demo.add_argument("samples", nargs="*", help="request files (default: samples/*.json)")
    demo.add_argument("--timeout", type=float, default=60.0, help="seconds to wait for outcomes")
    sub.add_parser("schemas", help="write the JSON Schema files under schemas/")
    sub.add_parser("definitions", help="print the RabbitMQ definitions of the topology")
    sub.add_parser("env", help="print every setting with its default, as an env file")
    args = parser.parse_args(argv)

    if args.command == "schemas":
        from schemas.export import main as export

        return export()
    if args.command == "env":
        print(env_example(), end="")
        return 0
    settings = Settings()
    if args.command == "definitions":
        document = definitions(
            Names(settings.topology_prefix),
            delivery_limit=settings.delivery_limit,
            delays=settings.retry_delays,
        )
        print(orjson.dumps(document, option=orjson.OPT_INDENT_2).decode())
        return 0
    if args.command == "demo":
        # The demo's output is its table; logs only when asked for with LOG_LEVEL.
        configure_logging(os.environ.get("LOG_LEVEL", "ERROR"))
        from worker.demo import run_demo

        return asyncio.run(run_demo(settings, args.samples, args.timeout))
    configure_logging(settings.log_level)
    return asyncio.run(serve(settings))


if __name__ == "__main__":
    sys.exit(main())
