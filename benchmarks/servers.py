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

from harness import BIN, TOKENDEALER_FACTORY, Server, Setup, basic_header, check_token, fmt, free_port, granian_command, token_body, wrk

WORKERS = (os.cpu_count() or 1) * 2


def candidates(port: int) -> dict[str, list[str]]:
    """Every candidate writes an access log (to the harness's /dev/null), as `tokendealer serve` does."""
    bind = f"127.0.0.1:{port}"
    gunicorn = [BIN / "gunicorn", "-b", bind, "--access-logfile", "-", "tokendealer.app:create_app()"]
    factory = TOKENDEALER_FACTORY
    cores = os.cpu_count() or 1
    return {
        "gunicorn-sync": [*gunicorn, "-w", str(WORKERS), "-k", "sync"],
        "gunicorn-gthread": [*gunicorn, "-w", str(cores), "-k", "gthread", "--threads", "4"],
        "granian-wsgi": granian_command(port, factory, cores, blocking_threads=None),
        "granian-wsgi-2x": granian_command(port, factory, WORKERS, blocking_threads=None),
        "granian-wsgi-1x-bt1": granian_command(port, factory, cores),
        "granian-wsgi-2x-bt1": granian_command(port, factory, WORKERS),
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
