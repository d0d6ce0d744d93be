"""Worker memory after 50,000 and 100,000 token requests: TokenDealer beside the floor of its library stack.

    .venv/bin/python benchmarks/memory.py [--requests 50000 100000]

Three servers, each with the worker settings of `tokendealer serve` (granian, one worker per core, one
blocking thread, access log on), driven by bounded wrk bursts (16 connections, 2 s each) on loopback:
- `tokendealer serve` with its default production settings;
- the stack floor (peers/stack_floor.py): Flask + SQLAlchemy Core on SQLite + PyJWT/cryptography issuing a
  real ES256 token, nothing of TokenDealer: what a worker of these libraries holds at least;
- the bare Flask endpoint (peers/bare_flask.py): Flask alone on granian, no database, no crypto.

Prints, per server and checkpoint, the largest worker's RSS, PSS and USS in MB (harness.worker_memory).
"""

from __future__ import annotations

import argparse
import os
import secrets

from harness import BIN, HERE, Server, Setup, basic_header, check_token, drive_to, free_port, granian_command, token_body, worker_memory

from tokendealer.serving import default_workers


def servers(port: int, setup: Setup) -> dict[str, tuple[list, dict[str, str], str]]:
    """name -> (command, environment, Authorization header)."""
    workers = default_workers()
    floor_secret = secrets.token_urlsafe(32)
    peers = {**os.environ, "PYTHONPATH": str(HERE / "peers")}
    return {
        "tokendealer serve": (
            [BIN / "tokendealer", "serve", "--port", str(port)],
            setup.env,
            basic_header(setup.client_id, setup.client_secret),
        ),
        "stack floor": (
            granian_command(port, "stack_floor:create_app", workers),
            {**peers, "FLOOR_DATABASE": str(setup.directory / "floor.db"), "FLOOR_SECRET": floor_secret},
            basic_header("bench", floor_secret),
        ),
        "bare flask": (granian_command(port, "bare_flask:create_app", workers), peers, basic_header("bench", "-")),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, nargs="+", default=[50_000, 100_000])
    args = parser.parse_args()
    port = free_port()
    setup = Setup.create(port)
    body = token_body()
    print(f"{os.cpu_count()} cores, {default_workers()} workers each; largest worker, MB")
    try:
        for name, (command, env, authorization) in servers(port, setup).items():
            with Server(command, port, env=env) as server:
                url = server.url + "/oauth/token"
                check_token(url, authorization, body)
                done = 0
                for target in args.requests:
                    done = drive_to(url, authorization, body, target, done)
                    sizes = [worker_memory(pid) for pid in server.worker_pids()]
                    largest = {kind: max(size[kind] for size in sizes) for kind in ("rss", "pss", "uss")}
                    print(
                        f"{name:<18} after {done:>7} requests: RSS {largest['rss']:5.1f}  PSS {largest['pss']:5.1f}  "
                        f"USS {largest['uss']:5.1f}",
                        flush=True,
                    )
    finally:
        setup.cleanup()


if __name__ == "__main__":
    main()
