"""A py-spy flame graph of one `tokendealer serve` worker under the token load (production defaults).

    .venv/bin/python benchmarks/profile_token.py [--seconds 10] [--connections 64] [--out benchmarks/flamegraph-token.svg] [--format raw]

py-spy (the bench extra) samples the first worker at 250 Hz while wrk runs and writes the SVG (or, with
--format raw, the collapsed stacks) to --out.
"""

from __future__ import annotations

import argparse
import subprocess
import threading

from harness import BIN, HERE, Server, Setup, basic_header, check_token, fmt, free_port, token_body, wrk


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--out", default=str(HERE / "flamegraph-token.svg"))
    parser.add_argument("--format", default="flamegraph", choices=["flamegraph", "raw", "speedscope"])
    args = parser.parse_args()
    port = free_port()
    setup = Setup.create(port)
    auth, body = basic_header(setup.client_id, setup.client_secret), token_body()
    try:
        with Server([BIN / "tokendealer", "serve", "--port", str(port)], port, env=setup.env) as server:
            check_token(server.url + "/oauth/token", auth, body)
            worker = server.worker_pids()[0]
            result: dict = {}
            url = server.url + "/oauth/token"
            load = threading.Thread(target=lambda: result.update(wrk(url, auth, body, args.connections, args.seconds)))
            load.start()
            command = [BIN / "py-spy", "record", "--pid", str(worker), "--rate", "250", "--duration", str(args.seconds - 2)]
            command += ["--format", args.format, "--output", args.out, "--nonblocking", *(["--threads"] if args.format == "raw" else [])]
            subprocess.run(command, check=True, timeout=args.seconds + 60)
            load.join()
            print(fmt(result))
            print(f"flame graph of worker {worker}: {args.out}")
    finally:
        setup.cleanup()


if __name__ == "__main__":
    main()
