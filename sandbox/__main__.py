"""`python -m sandbox` / `ers-sandbox`: serve the e-RS sandbox until SIGINT or SIGTERM."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import signal
from pathlib import Path
from typing import Any

from aiohttp import web

from sandbox.app import create_app
from sandbox.fhir import BASE_PATH
from sandbox.oauth import PLATFORM


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="ers-sandbox", description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8765, help="0 picks a free port")
    parser.add_argument(
        "--public-base-url",
        default=None,
        help="e-RS base URL to report, when clients reach the sandbox through a proxy",
    )
    parser.add_argument(
        "--rate-limit",
        type=int,
        default=None,
        metavar="N",
        help="enforce an application-wide limit of N requests in any second, answering 429 "
        "with Retry-After beyond it, as e-RS does (default: no limit)",
    )
    parser.add_argument(
        "--app-api-key",
        default=None,
        help="register an application with the sandbox's API platform (with --app-jwks): "
        "e-RS endpoints then take only access tokens from its /oauth2/token",
    )
    parser.add_argument(
        "--app-jwks", default=None, metavar="FILE", help="the application's public JWKS"
    )
    parser.add_argument("--log-level", default="INFO")
    return parser.parse_args(argv)


def _read_jwks(path: str) -> dict[str, Any]:
    jwks: dict[str, Any] = json.loads(Path(path).read_text())
    return jwks


async def _serve(args: argparse.Namespace) -> None:
    app = create_app(public_base_url=args.public_base_url, rate_limit=args.rate_limit)
    if args.app_api_key and args.app_jwks:
        app[PLATFORM].register(args.app_api_key, _read_jwks(args.app_jwks))
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, args.host, args.port)
    await site.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    port = runner.addresses[0][1]
    host = f"[{args.host}]" if ":" in args.host else args.host
    print(
        f"e-RS sandbox serving {args.public_base_url or f'http://{host}:{port}{BASE_PATH}'}",
        flush=True,
    )
    try:
        await stop.wait()
    finally:
        await runner.cleanup()


def main(argv: list[str] | None = None) -> None:
    args = _parse_args(argv)
    logging.basicConfig(
        level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s %(message)s"
    )
    asyncio.run(_serve(args))


if __name__ == "__main__":
    main()
