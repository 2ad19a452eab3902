"""Memory that one large message costs at intake: the worker's parse of it, in a fresh process.

    python -m bench.intake_memory [--megabytes 92] [--attachments 14]

Builds the valid DBS sample with ``--attachments`` files sharing ``--megabytes`` of base64
(each under e-RS' 5 MiB, so only the whole is too big), then reports the process's resident
set before ``parse_request`` and its peak after, with the result. A measurement, not a test:
run it on two commits to compare (issue 11: 68 MB -> 436 MB for 92 MB before the size limit).
"""

from __future__ import annotations

import argparse
import base64
import os
import subprocess
import sys
import tempfile

import orjson

from samples import DIR as SAMPLES
from worker.messaging.intake import Rejection, parse_request

_MIB = 1024 * 1024


def _status_mib(field: str) -> float:
    with open(f"/proc/{os.getpid()}/status") as status:
        for line in status:
            if line.startswith(f"{field}:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def _rss_mib() -> float:
    return _status_mib("VmRSS")


def _peak_mib() -> float:
    # VmHWM, not ru_maxrss: that survives exec, so it would hold the parent's building peak.
    return _status_mib("VmHWM")


def build(megabytes: float, attachments: int) -> bytes:
    request = orjson.loads((SAMPLES / "01-dbs-booked.json").read_bytes())
    each = int(megabytes * _MIB / attachments) // 4 * 3  # raw bytes per file
    content = base64.b64encode(b"%PDF-1.7 referral letter " * (each // 25 + 1))[: each // 3 * 4]
    request["attachments"] = [
        {
            "file_name": f"letter-{i}.txt",
            "media_type": "text/plain",
            "description": "Referral letter",
            "content": content.decode("ascii"),
        }
        for i in range(attachments)
    ]
    return orjson.dumps(request)


def measure(path: str) -> None:
    """In a fresh process: read the body (as the consumer holds it), then parse it."""
    fd = os.open(path, os.O_RDONLY)
    try:  # one read of the exact size: one allocation, as the consumer's body is
        body = os.read(fd, os.fstat(fd).st_size)
    finally:
        os.close(fd)
    before, peak_before = _rss_mib(), _peak_mib()
    result = parse_request(body)
    after, peak = _rss_mib(), _peak_mib()
    verdict = (
        "rejected: " + "; ".join(f"{p.field}: {p.problem}" for p in result.problems[:2])
        if isinstance(result, Rejection)
        else "accepted"
    )
    print(f"body {len(body) / _MIB:.1f} MiB: {verdict}")
    print(
        f"RSS with the body read {before:.0f} MiB (peak {peak_before:.0f}); after the parse "
        f"{after:.0f} MiB, peak {peak:.0f} MiB"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--megabytes", type=float, default=92.0)
    parser.add_argument("--attachments", type=int, default=14)
    parser.add_argument("--measure", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.measure:
        measure(args.measure)
        return 0
    with tempfile.NamedTemporaryFile(suffix=".json") as file:
        file.write(build(args.megabytes, args.attachments))
        file.flush()
        print(f"{args.attachments} attachments")
        script = os.path.abspath(__file__)
        return subprocess.run([sys.executable, script, "--measure", file.name]).returncode


if __name__ == "__main__":
    sys.exit(main())
