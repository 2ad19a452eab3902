"""The ``ers-worker`` command: the production entry point, the local demo and the operator tools.

ers-worker run                  consume referral requests until SIGTERM/SIGINT, then drain
ers-worker demo                 what `make run` does: sandbox + worker + the sample requests
ers-worker validate FILE...     check request files offline, with the worker's intake code
ers-worker submit FILE...       publish referral requests (--wait for their outcomes)
ers-worker jwks                 the public JWKS of the signing keys, to register with APIM
ers-worker status REQUEST_ID    a saga's step, history and outcome, from the saga store
ers-worker dead-letters list|show|replay|drop   parked messages (looking changes nothing)
ers-worker schemas [--write]    the JSON Schemas and the AsyncAPI document
ers-worker definitions          the RabbitMQ definitions (deploy/rabbitmq/definitions.json)
ers-worker env                  every setting with its default (deploy/worker.env.example)

Every subcommand shares one exit-code table (``worker.ops.exits``), says what is wrong and
what to do in one line on stderr when the cause is the operator's to fix, and (where it
prints data) takes ``--json`` for JSON Lines.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import signal
import sys
from argparse import ArgumentParser
from importlib import metadata
from pathlib import Path

import orjson

from worker.messaging.consumer import Worker
from worker.messaging.topology import Names, definitions
from worker.observability.logs import failure_fields
from worker.ops import exits, tools
from worker.ops import loop as event_loop
from worker.ops.app import configure_logging, published_jwks, request_handler
from worker.ops.failure import OperatorError
from worker.ops.settings import Settings, env_example, load_settings

log = logging.getLogger("worker")
TOKEN_ENV = tools.ACCESS_TOKEN_ENV
# Tokens come from the environment or a file, never from an argument: `ps` shows arguments.
TOKEN_SOURCES = f"""\
the user's token, from the environment or a file (never an argument, which ps shows):
  {tools.ACCESS_TOKEN_ENV}     an APIM access token, sent in x-ers-access-token
  {tools.ID_TOKEN_ENV}         a CIS2 ID token, sent in x-ers-id-token
                       (for ERS_TOKEN_PROVIDER=message-id-token)
  --id-token-file FILE the same, from a file; it wins over {tools.ID_TOKEN_ENV}"""


# The commands that touch no patient data (no request, saga or parked message): the shipped
# PATIENT_KEY_SECRET, which keys patients in the saga store, can expose no one through them,
# so they run without another (an operator printing the JWKS to register, or the broker's
# definitions, before the secret exists). `schemas`, `env` and `validate` (which checks
# request files offline and keys no patient) load no settings at all.
NO_PATIENT_DATA = frozenset({"jwks", "definitions"})


def _settings_for(command: str) -> Settings:
    """The settings of ``command``: the one place that says which commands need a real
    PATIENT_KEY_SECRET."""
    return load_settings(demo=command == "demo", patient_data=command not in NO_PATIENT_DATA)


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
        return exits.NOT_CONSUMING
    return exits.OK


def _run() -> int:
    """``ers-worker run``. A failure to start (settings, a store or broker it cannot use) is a
    JSON log line like every other; exit code 2 when the environment is at fault, else 1."""
    configure_logging("INFO")  # until the settings say otherwise: they may be what fails
    settings: Settings | None = None
    try:
        settings = _settings_for("run")
        configure_logging(settings.log_level)
        return event_loop.run(serve(settings), settings.event_loop)
    except Exception as exc:
        # The same one-line explanation the other subcommands print, as a JSON log line.
        known = exc if isinstance(exc, OperatorError) else exits.explain(exc, settings)
        why = str(known) if known is not None else None
        log.critical("exiting on an error", extra=failure_fields(exc, why))
        if known is not None or isinstance(exc, OSError):
            return exits.USAGE
        return exits.NOT_ALL


def _print_json(value: object) -> None:
    print(orjson.dumps(value, option=orjson.OPT_INDENT_2, default=str).decode())


def _print_line(value: object) -> None:
    """One JSON Lines record: one object, one line, for `jq` and scripts."""
    print(orjson.dumps(value, default=str).decode())


DESCRIPTION = (
    "Carries referral requests from RabbitMQ through the NHS e-Referral Service (e-RS).\n\n"
    "Settings come from the environment (`ers-worker env` lists them); the operator\n"
    "subcommands use the same broker and saga store as the worker."
)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ers-worker",
        description=DESCRIPTION,
        epilog=exits.TABLE,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    sub = parser.add_subparsers(title="commands", dest="command", required=True, metavar="COMMAND")
    as_json = argparse.ArgumentParser(add_help=False)
    as_json.add_argument(
        "--json", action="store_true", help="machine-readable output: one JSON object per line"
    )

    def command(name: str, text: str, *parents: argparse.ArgumentParser) -> ArgumentParser:
        return sub.add_parser(
            name,
            help=text,
            description=text[0].upper() + text[1:] + ".",
            epilog=exits.TABLE,
            parents=list(parents),
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )

    command("run", "consume referral requests until SIGTERM/SIGINT, then drain")
    demo = command("demo", "run the bundled sandbox, the worker and the sample requests")
    demo.add_argument(
        "samples", nargs="*", metavar="FILE", help="request files (default: samples/*.json)"
    )
    demo.add_argument(
        "--timeout", type=float, default=60.0, metavar="SECONDS",
        help="seconds to wait for every outcome (default 60)",
    )  # fmt: skip
    demo.add_argument(
        "--static-token",
        action="store_true",
        help="the quick path: one fixed access token for every request "
        "(ERS_TOKEN_PROVIDER=static) instead of a CIS2 ID token per request, exchanged at the "
        "sandbox's /oauth2/token with an ephemeral key (ERS_TOKEN_PROVIDER=message-id-token)",
    )
    validate = command(
        "validate", "check request files offline, with the intake code the worker runs", as_json
    )
    validate.add_argument("files", nargs="+", type=Path, metavar="FILE", help="request file(s)")
    submit = command("submit", "publish referral request files (all checked first)", as_json)
    submit.add_argument(
        "files", nargs="+", type=Path, metavar="FILE",
        help="request file(s); nothing is published unless every one is readable and valid",
    )  # fmt: skip
    submit.add_argument("--wait", action="store_true", help="wait for and print the outcomes")
    _id_token_file(submit)
    submit.epilog = f"{TOKEN_SOURCES}\n\n{exits.TABLE}"
    submit.add_argument(
        "--timeout", type=float, default=120.0, metavar="SECONDS",
        help="with --wait: seconds to wait for every outcome (default 120)",
    )  # fmt: skip
    status = command("status", "a saga's step, history and outcome, from the saga store", as_json)
    status.add_argument("request_id", metavar="REQUEST_ID", help="the request's request_id")
    dead = command("dead-letters", "parked messages (looking changes nothing)")
    dead_sub = dead.add_subparsers(title="actions", dest="action", required=True, metavar="ACTION")

    def action(name: str, text: str) -> ArgumentParser:
        return dead_sub.add_parser(
            name,
            help=text,
            description=text[0].upper() + text[1:] + ".",
            epilog=exits.TABLE,
            parents=[as_json],
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )

    listing = action(
        "list", "reason, step, attempts and age of each parked message (a page at a time)"
    )
    listing.add_argument("--offset", type=int, default=0, help="skip this many (default 0)")
    listing.add_argument("--limit", type=int, default=1000, help="show at most this many")
    show = action("show", "one parked message, attachments and NHS number masked")
    show.add_argument("message_id", metavar="MESSAGE_ID", help="as `dead-letters list` shows it")
    again = action("replay", "send parked messages back to the work queue")
    again.add_argument("message_ids", nargs="+", metavar="MESSAGE_ID", help="message(s) to replay")
    again.add_argument(
        "--reopen",
        action="store_true",
        help="make their finished sagas resumable (after a person fixed the cause)",
    )
    _id_token_file(again)
    again.epilog = (
        f"Parked messages carry no token: give the one to replay with.\n\n{TOKEN_SOURCES}"
        f"\n\n{exits.TABLE}"
    )
    gone = action("drop", "remove parked messages a person has settled")
    gone.add_argument("message_ids", nargs="+", metavar="MESSAGE_ID", help="message(s) to drop")
    schemas = command("schemas", "print the JSON Schemas and the AsyncAPI document", as_json)
    schemas.add_argument("--write", action="store_true", help="write them under schemas/")
    jwks = command(
        "jwks", "print the public JWKS of the signing keys, to register with the API platform"
    )
    jwks.description = (
        "Print the public JWKS (JSON) of every configured signing key, to register with the\n"
        "API platform for the application of APIM_API_KEY: each <kid>.pem in\n"
        "APIM_PRIVATE_KEY_DIR, and APIM_PRIVATE_KEY under the kid APIM_KEY_ID. Public members\n"
        "only (the modulus n and exponent e of each, with its kid): never private key\n"
        "material. During a rotation it holds the old and the new key (docs/security.md)."
    )
    command("definitions", "print the RabbitMQ definitions of the topology (JSON)")
    command("env", "print every setting with its default, as an env file")
    return parser


def _id_token_file(parser: ArgumentParser) -> None:
    parser.add_argument(
        "--id-token-file",
        type=Path,
        metavar="FILE",
        help="a file holding the clinician's CIS2 ID token, sent in x-ers-id-token (instead of "
        f"{tools.ID_TOKEN_ENV}; never a value on the command line, which ps would show)",
    )


def _version() -> str:
    try:
        return metadata.version("ers-worker")
    except metadata.PackageNotFoundError:  # run from a checkout that was never installed
        return "(not installed)"


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)  # a usage error exits 2, with argparse's message
    context = _Context()
    try:
        return _dispatch(args, context)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return exits.INTERRUPTED
    except BrokenPipeError:
        # The reader of stdout went away (`| head`): not all was delivered, and Python
        # must not complain again when it flushes stdout at exit.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return exits.NOT_ALL
    except Exception as exc:
        problem = exits.explain(exc, context.settings)
        if problem is None:
            raise  # a bug: its traceback is what a developer needs
        print(str(problem), file=sys.stderr)
        return problem.exit_code


class _Context:
    """What the entry point knows when a failure reaches it (to explain it)."""

    settings: Settings | None = None


def _dispatch(args: argparse.Namespace, context: _Context) -> int:
    if args.command == "schemas":
        return _schemas(write=args.write, as_json=args.json)
    if args.command == "env":
        print(env_example(), end="")
        return exits.OK
    if args.command == "validate":
        return _validate(args.files, as_json=args.json)
    if args.command == "run":
        return _run()
    # An invalid setting is an OperatorError: main() prints it as one line, exit code 2.
    settings = context.settings = _settings_for(args.command)
    if args.command == "jwks":
        # A KeyProblem (no key, unreadable, not RSA...) is one line, exit 2 (exits.explain).
        _print_json(published_jwks(settings))
        return exits.OK
    if args.command == "definitions":
        document = definitions(
            Names(settings.topology_prefix),
            delivery_limit=settings.delivery_limit,
            delays=settings.retry_delays,
        )
        _print_json(document)
        return exits.OK
    if args.command == "demo":
        from worker.ops.demo import run_demo

        # The demo's output is its table; logs only when asked for with LOG_LEVEL.
        configure_logging(os.environ.get("LOG_LEVEL", "ERROR"))
        _quiet_broker_client()
        return event_loop.run(
            run_demo(settings, args.samples, args.timeout, static_token=args.static_token),
            settings.event_loop,
        )
    configure_logging(os.environ.get("LOG_LEVEL", "WARNING"))
    _quiet_broker_client()
    return asyncio.run(_operate(settings, args))


def _quiet_broker_client() -> None:
    # The operator commands say in one line what a failed connection means; the AMQP
    # client's own log of it would only repeat it as a JSON record.
    for name in ("aio_pika", "aiormq"):
        logging.getLogger(name).setLevel(logging.CRITICAL)


def _validate(files: list[Path], *, as_json: bool) -> int:
    from worker.ops import tools as ops

    checked = ops.check_files(files)
    for request in checked:
        if as_json:
            _print_line(request.report())
        else:
            print("\n".join(_problem_lines(request)))
    return exits.NOT_ALL if any(r.problems for r in checked) else exits.OK


def _problem_lines(request: tools.Checked) -> list[str]:
    if not request.problems:
        return [f"{request.path}: valid (request_id {request.request_id})"]
    return [f"{request.path}: invalid: {p.field}: {p.problem}" for p in request.problems]


async def _operate(settings: Settings, args: argparse.Namespace) -> int:
    from worker.ops import dead_letters

    token = os.environ.get(TOKEN_ENV)
    # Only submit and replay send a token; it is read, and checked, before anything is sent.
    sends = args.command == "submit" or getattr(args, "action", None) == "replay"
    id_token = tools.id_token_from(args.id_token_file) if sends else None
    if args.command == "submit":
        return await _submit(settings, args, token, id_token)
    if args.command == "status":
        return await _status(settings, args)
    if args.action == "list":
        page = await dead_letters.look(settings, offset=args.offset, limit=args.limit)
        if not args.json:
            print(LIST_HEADER.rstrip())
        for parked in page.parked:
            summary = parked.summary()
            if args.json:
                _print_line(summary)
            else:
                print(LIST_ROW.format(**{k: "-" if v is None else v for k, v in summary.items()}))
        shown_to = page.offset + len(page.parked)
        if shown_to < page.total:
            print(
                f"showed {len(page.parked)} of {page.total} parked messages; for more: "
                f"--offset {shown_to}",
                file=sys.stderr,
            )
        return exits.OK
    if args.action == "show":
        found = await dead_letters.show(settings, args.message_id)
        if found is None:
            print(f"no parked message {args.message_id}", file=sys.stderr)
            return exits.NOT_ALL
        parked, body = found
        shown = {**parked.summary(), "headers": parked.headers, "body": tools.redacted_body(body)}
        (_print_line if args.json else _print_json)(shown)
        return exits.OK
    if args.action == "drop":
        asked = set(args.message_ids)
        dropped = await dead_letters.drop(settings, asked)
        _settled(args, "dropped", dropped, asked)
        return exits.OK if len(dropped) == len(asked) else exits.NOT_ALL
    asked = set(args.message_ids)
    replayed = await dead_letters.replay(
        settings, asked, token=token, id_token=id_token, reopen=args.reopen
    )
    _settled(args, "replayed", replayed, asked)
    if not token and not id_token:
        print(
            f"note: no {TOKEN_ENV}, {tools.ID_TOKEN_ENV} or --id-token-file given: the worker "
            "will ask the requester to re-authenticate",
            file=sys.stderr,
        )
    return exits.OK if len(replayed) == len(asked) else exits.NOT_ALL


LIST_HEADER = f"{'message id':<36}  {'request id':<30}  {'reason':<24}  {'step':<14}  attempts  age"
LIST_ROW = (
    "{message_id:<36}  {request_id:<30}  {reason:<24}  {step:<14}  {attempts:>8}  {age_seconds}s"
)


def _settled(args: argparse.Namespace, done: str, ids: list[str], asked: set[str]) -> None:
    missing = sorted(asked - set(ids))
    for message_id in ids:
        if args.json:
            _print_line({"message_id": message_id, "result": done})
        else:
            print(f"{done} {message_id}")
    for message_id in missing:
        if args.json:
            _print_line({"message_id": message_id, "result": "not_found"})
        print(f"no parked message {message_id}", file=sys.stderr)


async def _submit(
    settings: Settings, args: argparse.Namespace, token: str | None, id_token: str | None
) -> int:
    checked = tools.check_files(args.files)
    invalid = [r for r in checked if r.problems]
    if invalid:
        for request in invalid:
            print("\n".join(_problem_lines(request)), file=sys.stderr)
        print(
            f"nothing was published: {len(invalid)} of {len(checked)} files are invalid "
            "(fix the fields above; `ers-worker validate` checks them offline).",
            file=sys.stderr,
        )
        return exits.NOT_ALL
    results = await tools.submit(
        settings, checked, token=token, id_token=id_token, wait=args.wait, timeout=args.timeout
    )
    for result in results:
        if args.json:
            _print_line(result)
            continue
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
    if not args.wait:
        return exits.OK
    completed = [r for r in results if (r["outcome"] or {}).get("status") == "COMPLETED"]
    return exits.OK if len(completed) == len(results) else exits.NOT_ALL


async def _status(settings: Settings, args: argparse.Namespace) -> int:
    saga = await tools.saga_status(settings, args.request_id)
    if saga is None:
        print(f"no saga with request id {args.request_id}", file=sys.stderr)
        return exits.NOT_ALL
    if args.json:
        _print_line(tools.saga_json(saga))
        return exits.OK
    print("\n".join(tools.describe(saga)))
    if saga.outcome:
        print("outcome:")
        _print_json(orjson.loads(saga.outcome))
    return exits.OK


def _schemas(*, write: bool, as_json: bool) -> int:
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
    parsed: dict[str, object] = {name: orjson.loads(text) for name, text in documents.items()}
    if asyncapi is not None:
        parsed["asyncapi.json"] = asyncapi.build()
    for name, document in parsed.items():
        if as_json:
            _print_line({"path": f"schemas/{name}", "document": document})
        else:
            print(f"# schemas/{name}")
            _print_json(document)
    return exits.OK


if __name__ == "__main__":
    sys.exit(main())
