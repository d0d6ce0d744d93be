"""The fault table: each fault of tests/test_faults.py, run longer under bounded token load, as markdown.

    .venv/bin/python benchmarks/faults.py [--before 3] [--fault 5] [--after 5] [--threads 3] [--rate 30] [--only NAME ...]

Per fault: requests sent during it, their answers by status, connection errors (in-flight requests of a
killed worker), valid-credential refusals (an HTTP 4xx/5xx answer to valid credentials, or none at all; a
503 with Retry-After while the database or keyring is really down is counted apart), data lost (revocations, client
create/disable/rotate-secret, a key rotation and a used assertion, all acknowledged before the fault and
checked after it), and recovery from the fault's end to the first 200 and to steady 200s.

Needs root (the disk-full fault mounts a small tmpfs), PostgreSQL binaries under /usr/lib/postgresql/*/bin
and redis-server; private servers on free loopback ports, never the shared 5432 or 6379. Load goes to
127.0.0.1 only and every loop is bounded in count and time.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
from tests.fault_injection import FAULTS, Timing  # noqa: E402
from tests.token_load import TABLE_HEADER, FaultRow  # noqa: E402


def revision() -> str:
    out = subprocess.run(["git", "-C", str(HERE), "log", "-1", "--format=%h %s"], capture_output=True, text=True).stdout.strip()
    return out or "unknown"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--before", type=float, default=3.0, help="seconds of load before each fault")
    parser.add_argument("--fault", type=float, default=5.0, help="seconds each fault lasts (where it has a duration)")
    parser.add_argument("--after", type=float, default=5.0, help="seconds of load after each fault")
    parser.add_argument("--threads", type=int, default=3)
    parser.add_argument("--rate", type=float, default=30.0, help="requests a second per thread")
    parser.add_argument("--only", nargs="*", choices=list(FAULTS), default=list(FAULTS))
    args = parser.parse_args()
    timing = Timing(before=args.before, fault=args.fault, after=args.after, threads=args.threads, rate=args.rate)
    rows: list[FaultRow] = []
    failed: list[str] = []
    started = time.monotonic()
    for name in args.only:
        with tempfile.TemporaryDirectory(prefix=f"td-faults-{name}-") as directory:
            print(f"running {name} ...", file=sys.stderr, flush=True)
            try:
                rows.append(FAULTS[name](Path(directory), timing))
            except Exception:
                failed.append(f"{name}: {traceback.format_exc(limit=3)}")
    print(
        f"Fault table, {revision()}; load {args.threads} threads x {args.rate:g} req/s, {args.before:g} s before, "
        f"faults {args.fault:g} s, {args.after:g} s after; {time.monotonic() - started:.0f} s in all.\n"
    )
    print(TABLE_HEADER)
    for row in rows:
        print(row.markdown())
    for row in rows:
        if row.refusal_samples or row.lost or row.log_excerpt:
            print(f"\n{row.fault}: refusals {row.refusal_samples}; lost {row.lost}")
            for line in row.log_excerpt:
                print(f"    {line}")
    for failure in failed:
        print(f"\nFAULT RUN FAILED {failure}")
    sys.exit(1 if failed or any(r.refusals or r.lost for r in rows) else 0)


if __name__ == "__main__":
    main()
