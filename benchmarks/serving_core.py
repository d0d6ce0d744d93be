"""Choosing the serving core: the same TokenDealer app under each candidate, for speed and for slow clients.

    .venv/bin/python benchmarks/serving_core.py [--seconds 8] [--rounds 2] [--stalled 50]

Candidates (granian, 2 workers):
- `tokendealer serve`: RSGI, the edge (tokendealer/edge.py) awaits each body with a deadline;
- WSGI with 1 blocking thread per worker (the previous `serve`): no body deadline;
- WSGI with 32 blocking threads per worker: a stalled body holds one thread of 32.
For each: wrk's token load at 64 connections (alternating rounds, medians), then `--stalled` connections
that send a token request's headers (Content-Length: 1000) and stop, and the /healthz latency while they
are open (a timeout counts as 5 s).
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import time

import requests
from harness import BIN, HERE, Server, Setup, basic_header, check_token, fmt, free_port, granian_command, token_body, wrk


def candidates(port: int, only: list[str] | None) -> dict[str, tuple[list[str], dict[str, str]]]:
    env = {"PYTHONPATH": f"{HERE / 'peers'}:{HERE.parent}", "WORKERS": "2"}
    edge = granian_command(port, "tokendealer.serving:worker_app", 2, blocking_threads=None, interface="rsgi")
    every = {
        "serve (RSGI edge)": ([str(BIN / "tokendealer"), "serve", "--port", str(port)], {}),
        "RSGI edge, asyncio loop": ([*edge, "--loop", "asyncio"], env),
        "RSGI edge, uvloop": ([*edge, "--loop", "uvloop"], env),
        "RSGI edge, uvloop, rust tasks": ([*edge, "--loop", "uvloop", "--task-impl", "rust"], env),
        "WSGI, 1 blocking thread": (granian_command(port, "tokendealer_wsgi:create_app", 2, blocking_threads=1), env),
        "WSGI, 32 blocking threads": (granian_command(port, "tokendealer_wsgi:create_app", 2, blocking_threads=32), env),
    }
    return {name: every[name] for name in only} if only else every


def stalled_health(url: str, port: int, stalled: int) -> list[float]:
    """/healthz latencies (5 probes) while `stalled` token requests wait for their bodies."""
    socks = []
    for _ in range(stalled):
        sock = socket.create_connection(("127.0.0.1", port))
        sock.sendall(
            b"POST /oauth/token HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: 1000\r\n\r\n"
        )
        socks.append(sock)
    time.sleep(0.3)
    latencies = []
    for _ in range(5):
        started = time.monotonic()
        try:
            ok = requests.get(url + "/healthz", timeout=5).status_code == 200
        except requests.RequestException:
            ok = False
        latencies.append(time.monotonic() - started if ok else 5.0)
    for sock in socks:
        sock.close()
    return latencies


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--stalled", type=int, default=50)
    parser.add_argument("--only", nargs="*", help="candidate names to run (default: all)")
    args = parser.parse_args()
    port = free_port()
    setup = Setup.create(port)
    auth, body = basic_header(setup.client_id, setup.client_secret), token_body()
    runs: dict[str, list[dict]] = {}
    health: dict[str, list[float]] = {}
    try:
        for _ in range(args.rounds):
            for name, (command, extra) in candidates(port, args.only).items():
                with Server(command, port, env={**setup.env, **extra}) as server:
                    check_token(server.url + "/oauth/token", auth, body)
                    runs.setdefault(name, []).append(wrk(server.url + "/oauth/token", auth, body, 64, args.seconds))
                    health.setdefault(name, []).extend(stalled_health(server.url, port, args.stalled))
    finally:
        setup.cleanup()
    print(f"{os.cpu_count()} cores, 64 connections, {args.seconds} s, {args.rounds} alternating rounds, medians")
    base = None
    for name, results in runs.items():
        median = {k: statistics.median(r[k] for r in results) for k in results[0]}
        base = base or median["rps"]
        worst = max(health[name])
        print(f"{name:<28} {fmt(median)}  ({median['rps'] / base:.2f}x)  /healthz with {args.stalled} stalled: worst {worst * 1000:.0f} ms")


if __name__ == "__main__":
    main()
