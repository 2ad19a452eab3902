"""``ers-worker``: the production entry point, the local demo and the operator tools.

ers-worker run                  consume referral requests until SIGTERM/SIGINT, then drain
ers-worker demo                 what `make run` does: sandbox + worker + the sample requests
ers-worker submit FILE...       publish referral requests (--wait for their outcomes)
ers-worker status REQUEST_ID    a saga's step, history and outcome, from the saga store
ers-worker dead-letters list|show|replay|drop   parked messages (looking changes nothing)
ers-worker schemas [--write]    the JSON Schemas and the AsyncAPI document
ers-worker definitions          the RabbitMQ definitions (deploy/rabbitmq/definitions.json)
ers-worker env                  every setting with its default (deploy/worker.env.example)
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import signal
import sys
from pathlib import Path

import orjson

from worker.messaging.consumer import Worker
from worker.messaging.topology import Names, definitions
from worker.ops.app import configure_logging, request_handler
from worker.ops.failure import OperatorError
from worker.ops.settings import Settings, env_example, load_settings

log = logging.getLogger("worker")
TOKEN_ENV = "ERS_ACCESS_TOKEN"


async def serve(settings: Settings) -> int:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    async with request_handler(settings) as handler:
        worker = Worker(settings, handler)
        starting = asyncio.create_task(worker.start())
        asked_to_stop = asyncio.create_task(stop.wait())
        await asyncio.wait({starting, asked_to_stop}, return_when=asyncio.FIRST_COMPLETED)
        if not starting.done():  # stopped while still waiting for the broker
            starting.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await starting
            await worker.stop(grace_seconds=0)
            return 0
        asked_to_stop.cancel()
        starting.result()  # a failure to start is raised here
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


def _print_json(value: object) -> None:
    print(orjson.dumps(value, option=orjson.OPT_INDENT_2, default=str).decode())


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ers-worker", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("run", help="consume referral requests until SIGTERM/SIGINT")
    demo = sub.add_parser("demo", help="run the bundled sandbox, the worker and the samples")
    demo.add_argument("samples", nargs="*", help="request files (default: samples/*.json)")
    demo.add_argument("--timeout", type=float, default=60.0, help="seconds to wait for outcomes")
    submit = sub.add_parser("submit", help="publish referral request files")
    submit.add_argument("files", nargs="+", type=Path)
    submit.add_argument("--wait", action="store_true", help="wait for and print the outcomes")
    submit.add_argument("--timeout", type=float, default=120.0)
    status = sub.add_parser("status", help="a saga's state, history and outcome")
    status.add_argument("request_id")
    dead = sub.add_parser("dead-letters", help="parked messages")
    dead_sub = dead.add_subparsers(dest="action", required=True)
    listing = dead_sub.add_parser(
        "list", help="reason, step, attempts and age of each parked message (a page at a time)"
    )
    listing.add_argument("--offset", type=int, default=0, help="skip this many (default 0)")
    listing.add_argument("--limit", type=int, default=1000, help="show at most this many")
    show = dead_sub.add_parser("show", help="one parked message, attachments and NHS number masked")
    show.add_argument("message_id")
    again = dead_sub.add_parser("replay", help="send parked messages back to the work queue")
    again.add_argument("message_ids", nargs="+")
    again.add_argument(
        "--reopen",
        action="store_true",
        help="make their finished sagas resumable (after a person fixed the cause)",
    )
    gone = dead_sub.add_parser("drop", help="remove parked messages a person has settled")
    gone.add_argument("message_ids", nargs="+")
    schemas = sub.add_parser("schemas", help="print the JSON Schemas and the AsyncAPI document")
    schemas.add_argument("--write", action="store_true", help="write them under schemas/")
    sub.add_parser("definitions", help="print the RabbitMQ definitions of the topology")
    sub.add_parser("env", help="print every setting with its default, as an env file")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "schemas":
        return _schemas(write=args.write)
    if args.command == "env":
        print(env_example(), end="")
        return 0
    try:
        settings = load_settings(demo=args.command == "demo")
    except OperatorError as error:
        print(f"ers-worker: {error}", file=sys.stderr)
        return error.exit_code
    if args.command == "definitions":
        document = definitions(
            Names(settings.topology_prefix),
            delivery_limit=settings.delivery_limit,
            delays=settings.retry_delays,
        )
        _print_json(document)
        return 0
    if args.command == "demo":
        from worker.ops.demo import run_demo

        # The demo's output is its table; logs only when asked for with LOG_LEVEL.
        configure_logging(os.environ.get("LOG_LEVEL", "ERROR"))
        return asyncio.run(run_demo(settings, args.samples, args.timeout))
    if args.command == "run":
        configure_logging(settings.log_level)
        return asyncio.run(serve(settings))
    configure_logging(os.environ.get("LOG_LEVEL", "WARNING"))
    return asyncio.run(_operate(settings, args))


async def _operate(settings: Settings, args: argparse.Namespace) -> int:
    from worker.ops import dead_letters
    from worker.ops import tools as ops

    token = os.environ.get(TOKEN_ENV)
    if args.command == "submit":
        results = await ops.submit(
            settings, args.files, token=token, wait=args.wait, timeout=args.timeout
        )
        for result in results:
            outcome = result.get("outcome")
            if outcome is None and args.wait:
                print(f"{result['file']}: no outcome within {args.timeout:.0f}s")
            elif outcome is None:
                print(f"{result['file']}: published ({result['correlation_id']})")
            else:
                print(
                    f"{result['file']}: {outcome['status']} {outcome.get('path') or '-'} "
                    f"UBRN {outcome.get('ubrn') or '-'}"
                    + (f" error {outcome['error']['code']}" if outcome.get("error") else "")
                )
        return 1 if args.wait and any(r.get("outcome") is None for r in results) else 0
    if args.command == "status":
        saga = await ops.saga_status(settings, args.request_id)
        if saga is None:
            print(f"no saga with request id {args.request_id}", file=sys.stderr)
            return 1
        print("\n".join(ops.describe(saga)))
        if saga.outcome:
            print("outcome:")
            _print_json(orjson.loads(saga.outcome))
        return 0
    if args.action == "list":
        page = await dead_letters.look(settings, offset=args.offset, limit=args.limit)
        for parked in page.parked:
            _print_json(parked.summary())
        shown_to = page.offset + len(page.parked)
        if shown_to < page.total:
            print(
                f"showed {len(page.parked)} of {page.total} parked messages; for more: "
                f"--offset {shown_to}",
                file=sys.stderr,
            )
        return 0
    if args.action == "show":
        found = await dead_letters.show(settings, args.message_id)
        if found is None:
            print(f"no parked message {args.message_id}", file=sys.stderr)
            return 1
        parked, body = found
        _print_json(
            {**parked.summary(), "headers": parked.headers, "body": ops.redacted_body(body)}
        )
        return 0
    if args.action == "drop":
        dropped = await dead_letters.drop(settings, set(args.message_ids))
        for message_id in dropped:
            print(f"dropped {message_id}")
        for message_id in sorted(set(args.message_ids) - set(dropped)):
            print(f"no parked message {message_id}", file=sys.stderr)
        return 0 if len(dropped) == len(set(args.message_ids)) else 1
    replayed = await dead_letters.replay(
        settings, set(args.message_ids), token=token, reopen=args.reopen
    )
    for message_id in replayed:
        print(f"replayed {message_id}")
    missing = set(args.message_ids) - set(replayed)
    for message_id in sorted(missing):
        print(f"no parked message {message_id}", file=sys.stderr)
    if not token:
        print(
            f"note: no {TOKEN_ENV} given: the worker will ask the requester to re-authenticate",
            file=sys.stderr,
        )
    return 1 if missing else 0


def _schemas(*, write: bool) -> int:
    from schemas import export

    documents = export.render_all()
    try:
        from worker.messaging import asyncapi  # written alongside; optional until it lands
    except ImportError:
        asyncapi = None  # type: ignore[assignment]
    if write:
        code = export.main()
        if asyncapi is not None:
            asyncapi.main()
        return code
    for name, text in documents.items():
        print(f"# schemas/{name}")
        print(text.decode(), end="")
    if asyncapi is not None:
        print("# schemas/asyncapi.json")
        _print_json(asyncapi.build())
    return 0


if __name__ == "__main__":
    sys.exit(main())
