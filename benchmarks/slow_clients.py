"""Slow clients against the normal token load: `tokendealer serve` with its defaults (10 s body deadline).

    .venv/bin/python benchmarks/slow_clients.py [--slow 500] [--seconds 10] [--connections 64] [--rounds 2]

Each round runs wrk's token load twice, alternating: alone, and while `--slow` connections each send a token
request's headers (Content-Length: 1000) and then trickle the body one byte per second (a connection the
server closes is opened again, so the count holds for the whole run). Meanwhile /healthz is asked every
50 ms on its own connection. Prints the load's req/s and p99 with and without (medians of the rounds, and
the ratios), /healthz latency during the slow phase, and what the server did to the slow connections: the
answer each got (408, or a reset) and how long after its headers.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import threading
import time

import requests
from harness import BIN, Server, Setup, basic_header, check_token, fmt, free_port, token_body, wrk

HEADERS = (
    b"POST /oauth/token HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/x-www-form-urlencoded\r\n"
    b"Authorization: %s\r\nContent-Length: 1000\r\n\r\n"
)


class SlowClients:
    """`count` connections trickling bodies on an event loop in a thread, until `stop()`."""

    def __init__(self, port: int, authorization: str, count: int):
        self.port, self.headers, self.count = port, HEADERS % authorization.encode(), count
        self.outcomes: list[tuple[str, float]] = []  # (answer, seconds from headers to close)
        self.stopping = False
        self.thread = threading.Thread(target=lambda: asyncio.run(self._main()))

    def start(self) -> None:
        self.thread.start()

    def stop(self) -> None:
        self.stopping = True
        self.thread.join(30)

    async def _main(self) -> None:
        await asyncio.gather(*(self._one() for _ in range(self.count)))

    async def _one(self) -> None:
        while not self.stopping:
            try:
                reader, writer = await asyncio.open_connection("127.0.0.1", self.port)
            except OSError:
                await asyncio.sleep(0.1)
                continue
            writer.write(self.headers)
            sent_at = time.monotonic()
            answer = await self._trickle(reader, writer)
            if answer is not None:
                self.outcomes.append((answer, time.monotonic() - sent_at))
            writer.close()

    async def _trickle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> str | None:
        """One byte a second until the server answers or closes; None when stopped first."""
        for _ in range(1000):
            if self.stopping:
                return None
            try:
                line = await asyncio.wait_for(reader.readline(), 1.0)
                return line.split(b"\r\n")[0].decode(errors="replace") or "closed"
            except TimeoutError:
                pass
            except ConnectionError:
                return "reset"
            try:
                writer.write(b"a")
                await writer.drain()
            except ConnectionError:
                return "reset"
        return "never closed"


def probe(url: str, stop: threading.Event, latencies: list[float]) -> None:
    """GET /healthz every 50 ms on one keep-alive connection; a failure counts as 5 s."""
    with requests.Session() as session:
        while not stop.is_set():
            started = time.monotonic()
            try:
                ok = session.get(url + "/healthz", timeout=5).status_code == 200
            except requests.RequestException:
                ok = False
            latencies.append(time.monotonic() - started if ok else 5.0)
            stop.wait(0.05)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--slow", type=int, default=500)
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    port = free_port()
    setup = Setup.create(port)
    auth, body = basic_header(setup.client_id, setup.client_secret), token_body()
    alone: list[dict] = []
    slowed: list[dict] = []
    latencies: list[float] = []
    quiet_latencies: list[float] = []
    outcomes: list[tuple[str, float]] = []
    try:
        with Server([BIN / "tokendealer", "serve", "--port", str(port)], port, env=setup.env) as server:
            url = server.url + "/oauth/token"
            check_token(url, auth, body)
            for _ in range(args.rounds):
                stop = threading.Event()
                prober = threading.Thread(target=probe, args=(server.url, stop, quiet_latencies))
                prober.start()
                alone.append(wrk(url, auth, body, args.connections, args.seconds))
                stop.set()
                prober.join()
                slow = SlowClients(port, auth, args.slow)
                stop = threading.Event()
                prober = threading.Thread(target=probe, args=(server.url, stop, latencies))
                slow.start()
                time.sleep(1.0)  # the slow connections are open and trickling
                prober.start()
                slowed.append(wrk(url, auth, body, args.connections, args.seconds))
                # Let the first wave reach the body deadline (10 s) before stopping.
                time.sleep(max(0.0, 12.0 - args.seconds))
                stop.set()
                prober.join()
                slow.stop()
                outcomes += slow.outcomes
    finally:
        setup.cleanup()
    median = {k: statistics.median(r[k] for r in alone) for k in alone[0]}
    with_slow = {k: statistics.median(r[k] for r in slowed) for k in slowed[0]}
    print(f"{args.rounds} alternating rounds of {args.seconds} s, {args.connections} connections, medians")
    print(f"without slow clients:        {fmt(median)}")
    print(f"with {args.slow} slow clients:    {fmt(with_slow)}")
    print(f"req/s kept: {with_slow['rps'] / median['rps']:.2f}x   p99 with/without: {with_slow['p99_ms'] / median['p99_ms']:.2f}x")
    for phase, measured in (("the load alone", quiet_latencies), ("the load and the slow clients", latencies)):
        ordered = sorted(measured)
        print(
            f"/healthz during {phase}: {len(ordered)} probes, median {statistics.median(ordered) * 1000:.1f} ms, "
            f"p99 {ordered[int(len(ordered) * 0.99) - 1] * 1000:.1f} ms, max {ordered[-1] * 1000:.1f} ms, "
            f"over 100 ms: {sum(1 for v in ordered if v > 0.1)}"
        )
    answers: dict[str, list[float]] = {}
    for answer, seconds in outcomes:
        answers.setdefault(answer, []).append(seconds)
    for answer, times in sorted(answers.items()):
        spread = f"{min(times):.2f}-{max(times):.2f} s, median {statistics.median(times):.2f} s"
        print(f"slow connections answered {answer!r}: {len(times)}, after {spread}")


if __name__ == "__main__":
    main()
