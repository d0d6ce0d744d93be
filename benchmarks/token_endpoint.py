"""The token endpoint of `tokendealer serve` with its default production settings, on loopback.

    .venv/bin/python benchmarks/token_endpoint.py [--seconds 10] [--connections 16 64]

Prints req/s, p50/p90/p99 latency and the count of non-200 answers (must be 0) for each connection count.
Worker memory after 50,000 and 100,000 requests: memory.py.
"""

from __future__ import annotations

import argparse

from harness import BIN, Server, Setup, basic_header, check_token, fmt, free_port, token_body, wrk


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--connections", type=int, nargs="+", default=[16, 64])
    args = parser.parse_args()
    port = free_port()
    setup = Setup.create(port)
    auth, body = basic_header(setup.client_id, setup.client_secret), token_body()
    try:
        with Server([BIN / "tokendealer", "serve", "--port", str(port)], port, env=setup.env) as server:
            check_token(server.url + "/oauth/token", auth, body)
            for connections in args.connections:
                result = wrk(server.url + "/oauth/token", auth, body, connections, args.seconds)
                print(f"c{connections:<3} tokendealer serve  {fmt(result)}", flush=True)
    finally:
        setup.cleanup()


if __name__ == "__main__":
    main()
