"""Choose the production WSGI server by measurement: gunicorn sync, gunicorn gthread, granian (WSGI).

    .venv/bin/python benchmarks/servers.py [--seconds 10] [--rounds 2]

Each candidate serves the same TokenDealer app (same keys, same database) on loopback; wrk runs the same
client-credentials load at 16 and 64 connections, candidates alternating, and the median is printed, with
the largest worker RSS after the last load (the memory side of the choice).
"""

from __future__ import annotations

import argparse
import os
import statistics

from harness import BIN, Server, Setup, basic_header, check_token, fmt, free_port, granian_command, token_body, wrk

WORKERS = (os.cpu_count() or 1) * 2


def candidates(port: int) -> dict[str, list[str]]:
    bind = f"127.0.0.1:{port}"
    factory = "tokendealer.app:create_app()"
    return {
        "gunicorn-sync": [BIN / "gunicorn", "-w", str(WORKERS), "-k", "sync", "-b", bind, factory],
        "gunicorn-gthread": [BIN / "gunicorn", "-w", str(os.cpu_count() or 1), "-k", "gthread", "--threads", "4", "-b", bind, factory],
        "granian-wsgi": [
            BIN / "granian",
            "--interface",
            "wsgi",
            "--workers",
            str(os.cpu_count() or 1),
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--factory",
            "tokendealer.app:create_app",
        ],
        "granian-wsgi-2x": [
            BIN / "granian",
            "--interface",
            "wsgi",
            "--workers",
            str(WORKERS),
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--factory",
            "tokendealer.app:create_app",
        ],
        "granian-wsgi-1x-bt1": granian_command(port, "tokendealer.app:create_app", os.cpu_count() or 1),
        "granian-wsgi-2x-bt1": granian_command(port, "tokendealer.app:create_app", WORKERS),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--connections", type=int, nargs="+", default=[16, 64])
    args = parser.parse_args()
    port = free_port()
    setup = Setup.create(port)
    auth, body = basic_header(setup.client_id, setup.client_secret), token_body()
    results: dict[tuple[str, int], list[dict]] = {}
    rss: dict[str, list[float]] = {}
    try:
        for _ in range(args.rounds):
            for name, command in candidates(port).items():
                with Server(command, port, env=setup.env) as server:
                    check_token(server.url + "/oauth/token", auth, body)
                    for connections in args.connections:
                        results.setdefault((name, connections), []).append(
                            wrk(server.url + "/oauth/token", auth, body, connections, args.seconds)
                        )
                    rss.setdefault(name, []).append(max(server.rss_mb()))
    finally:
        setup.cleanup()
    print(f"token endpoint, {os.cpu_count()} cores, {args.rounds} rounds of {args.seconds} s, median of rounds")
    for (name, connections), runs in sorted(results.items(), key=lambda kv: (kv[0][1], kv[0][0])):
        median = {k: statistics.median(r[k] for r in runs) for k in runs[0]}
        print(f"c{connections:<3} {name:<18} {fmt(median)}")
    for name, sizes in rss.items():
        print(f"{name:<22} largest worker RSS {statistics.median(sizes):.1f} MB")


if __name__ == "__main__":
    main()
