"""A bounded brute force against one client id while that client (and a bystander on its address) ask for tokens.

    .venv/bin/python benchmarks/bruteforce.py [--seconds 30] [--per-minute 1000] [--sources 127.0.0.1 127.0.0.2 ...]

Wrong secrets at `--per-minute` in all, spread over the source addresses (127.0.0.1 is the client's own
address; 127.0.0.2... stand for other machines, bound on loopback), for `--seconds`, against a fresh
`tokendealer serve` with its default limits. Prints the valid requests sent and refused (SPEC §7: must be 0),
the attacker's answers by status (429 past the limit) and the audit lines the attack wrote (must stay bounded).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
from tests.brute_force import OWN_ADDRESS, brute_force  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=30.0, help="how long the attack lasts (at most 600)")
    parser.add_argument("--per-minute", type=int, default=1000, help="wrong secrets a minute, all sources together")
    parser.add_argument("--sources", nargs="+", default=[OWN_ADDRESS, "127.0.0.2", "127.0.0.3", "127.0.0.4", "127.0.0.5"])
    parser.add_argument("--valid-rate", type=float, default=5.0, help="valid requests a second, per legitimate client")
    args = parser.parse_args()
    if not all(source.startswith("127.") for source in args.sources):
        parser.error("--sources must be loopback addresses (127.x.y.z)")
    with tempfile.TemporaryDirectory(prefix="td-bruteforce-") as directory:
        result = brute_force(
            Path(directory),
            seconds=min(args.seconds, 600.0),
            per_minute=args.per_minute,
            sources=tuple(args.sources),
            valid_rate=args.valid_rate,
        )
    commit = subprocess.run(["git", "-C", str(HERE), "log", "-1", "--format=%h %s"], capture_output=True, text=True).stdout.strip()
    print(f"{commit}\n")
    print(result.markdown())
    sys.exit(1 if result.valid_refused or result.bystander_refused else 0)


if __name__ == "__main__":
    main()
