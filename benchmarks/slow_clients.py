"""Slow clients against the normal token load: `tokendealer serve` with its defaults (10 s body deadline).

    .venv/bin/python benchmarks/slow_clients.py [--slow 500] [--seconds 10] [--connections 64] [--rounds 2]

Each round runs wrk's token load twice, alternating: alone, and while `--slow` connections each send a token
request's headers (Content-Length: 1000) and then trickle the body one byte per second (a connection the
server closes is opened again, so the count holds for the whole run). Meanwhile /healthz is asked every
50 ms on its own connection. The slow connections (100 to a process) and the probe run in processes and
sessions of their own. Prints the load's req/s and p99 with and without (medians of the rounds, and the
ratios), /healthz latency during each phase, and what the server did to the slow connections: the answer
each got (408, or a reset) and how long after its headers.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import os
import statistics
import time
from collections.abc import Callable
from typing import Any

import requests
from harness import BIN, Server, Setup, basic_header, check_token, fmt, free_port, token_body, wrk

HEADERS = (
    b"POST /oauth/token HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/x-www-form-urlencoded\r\n"
    b"Authorization: %s\r\nContent-Length: 1000\r\n\r\n"
)


# The slow clients and the /healthz probe each run in a process and a session of their own, as they would on other
# machines: sharing this script's interpreter (and GIL), a burst of reconnections on the slow clients' loop delayed
# the probe's own timing, and sharing wrk's session, Linux's autogroup scheduler let wrk's two busy threads hold the
# core a woken probe needed (`harness.Server` gives each server its own session for the same reason).
SPAWN = multiprocessing.get_context("spawn")


# Connections per slow-client process: when the server answers a whole wave at once, one event loop notices the
# answers one after another (with 500 on one loop, the last noticed its 408 up to 0.8 s after it was sent).
PER_PROCESS = 100


class ClientProcesses:
    """Spawned processes, each in a session of its own, each running `target(*args, stopping, results)`: it works
    until `stopping` is set, then puts one list on `results`. `stop()` returns those lists joined."""

    def __init__(self, target: Callable[..., None], each_args: list[tuple[Any, ...]]):
        self.stopping = SPAWN.Event()
        self.results: Any = SPAWN.Queue()
        self.processes = [
            SPAWN.Process(target=_in_own_session, args=(target, *args, self.stopping, self.results), daemon=True) for args in each_args
        ]

    def start(self) -> None:
        for process in self.processes:
            process.start()

    def stop(self) -> list[Any]:
        self.stopping.set()
        found = [item for _ in self.processes for item in self.results.get(timeout=60)]
        for process in self.processes:
            process.join(30)
        return found


def _in_own_session(target: Callable[..., None], *args: Any) -> None:
    os.setsid()
    target(*args)


def slow_clients(port: int, authorization: str, count: int) -> ClientProcesses:
    """`count` connections trickling bodies, PER_PROCESS to a process; `stop()` gives each closed connection's
    (answer, seconds from its headers to the close)."""
    headers = HEADERS % authorization.encode()
    return ClientProcesses(_trickle_all, [(port, headers, min(PER_PROCESS, count - start)) for start in range(0, count, PER_PROCESS)])


def _trickle_all(port: int, headers: bytes, count: int, stopping: Any, results: Any) -> None:
    outcomes: list[tuple[str, float]] = []
    asyncio.run(_all(port, headers, count, stopping, outcomes))
    results.put(outcomes)


async def _all(port: int, headers: bytes, count: int, stopping: Any, outcomes: list[tuple[str, float]]) -> None:
    await asyncio.gather(*(_one(port, headers, stopping, outcomes) for _ in range(count)))


async def _one(port: int, headers: bytes, stopping: Any, outcomes: list[tuple[str, float]]) -> None:
    while not stopping.is_set():
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
        except OSError:
            await asyncio.sleep(0.1)
            continue
        writer.write(headers)
        sent_at = time.monotonic()
        answer = await _trickle(reader, writer, stopping)
        if answer is not None:
            outcomes.append((answer, time.monotonic() - sent_at))
        writer.close()


async def _trickle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, stopping: Any) -> str | None:
    """One byte a second until the server answers or closes; None when stopped first."""
    for _ in range(1000):
        if stopping.is_set():
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


def probe(url: str) -> ClientProcesses:
    """GET /healthz every 50 ms on one keep-alive connection; `stop()` gives each probe's seconds (a failure
    counts as 5 s)."""
    return ClientProcesses(_probe, [(url,)])


def _probe(url: str, stopping: Any, results: Any) -> None:
    latencies: list[float] = []
    with requests.Session() as session:
        while not stopping.is_set():
            started = time.monotonic()
            try:
                ok = session.get(url + "/healthz", timeout=5).status_code == 200
            except requests.RequestException:
                ok = False
            latencies.append(time.monotonic() - started if ok else 5.0)
            stopping.wait(0.05)
    results.put(latencies)


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
                prober = probe(server.url)
                prober.start()
                time.sleep(1.0)  # the probe's process has started
                alone.append(wrk(url, auth, body, args.connections, args.seconds))
                quiet_latencies += prober.stop()
                slow = slow_clients(port, auth, args.slow)
                prober = probe(server.url)
                slow.start()
                prober.start()
                time.sleep(2.0)  # both processes have started; the slow connections are open and trickling
                slowed.append(wrk(url, auth, body, args.connections, args.seconds))
                # Let the first wave reach the body deadline (10 s) before stopping.
                time.sleep(max(0.0, 12.0 - args.seconds))
                latencies += prober.stop()
                outcomes += slow.stop()
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
