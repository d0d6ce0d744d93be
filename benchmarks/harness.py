"""Shared benchmark plumbing: a throw-away TokenDealer set-up, servers on loopback, and wrk runs.

Every load is bounded: wrk runs for a fixed duration against 127.0.0.1 only.
"""

from __future__ import annotations

import base64
import http.client
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import requests

HERE = Path(__file__).resolve().parent
BIN = Path(sys.executable).parent
AUDIENCE = "https://api.example.com"
SCOPE = "read"
_RESULT_RE = re.compile(r"RESULT (.*)")
# For apps other than TokenDealer: granian's access log with the fields of the one `tokendealer serve` writes.
ACCESS_LOG_FORMAT = '%(addr)s "%(method)s %(path)s %(protocol)s" %(status)d %(dt_ms).3fms'
TOKENDEALER_FACTORY = "tokendealer.serving:worker_app"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class Setup:
    """A keyring, a SQLite database and one client in a temporary directory."""

    directory: Path
    env: dict[str, str]
    client_id: str
    client_secret: str

    @classmethod
    def create(cls, port: int, alg: str = "ES256") -> Setup:
        directory = Path(tempfile.mkdtemp(prefix="td-bench-"))
        env = {k: v for k, v in os.environ.items() if not k.startswith("TOKENDEALER_")}
        env.update(
            TOKENDEALER_ISSUER=f"http://127.0.0.1:{port}",
            TOKENDEALER_KEYS_DIR=str(directory / "keys"),
            TOKENDEALER_DATABASE_URL=f"sqlite:///{directory / 'tokendealer.db'}",
            TOKENDEALER_AUDIT_LOG=str(directory / "audit.log"),
        )
        subprocess.run([BIN / "tokendealer", "init", "--alg", alg], env=env, check=True, capture_output=True)
        out = subprocess.run(
            [BIN / "tokendealer", "client", "create", "bench", "--scope", SCOPE, "--audience", AUDIENCE],
            env=env,
            check=True,
            capture_output=True,
            text=True,
        )
        return cls(directory, env, "bench", json.loads(out.stdout)["client_secret"])

    def cleanup(self) -> None:
        shutil.rmtree(self.directory, ignore_errors=True)


class Server:
    """A server process on a loopback port, waited on until it answers `ready_path`."""

    def __init__(
        self, command: list[str], port: int, env: dict[str, str] | None = None, ready_path: str = "/healthz", cwd: str | None = None
    ):
        self.command = command
        self.port = port
        self.url = f"http://127.0.0.1:{port}"
        self.env = env
        self.ready_path = ready_path
        self.cwd = cwd
        self.process: subprocess.Popen | None = None

    def __enter__(self) -> Server:
        # Every server in its own session, as `tokendealer serve` puts its granian master: Linux's scheduler
        # (autogroup, on by default) then shares the cores between the server and wrk alike for every peer.
        # A server left in this script's session would share wrk's group and get more of the machine than one
        # in its own (seen here: the token floor 13,400 req/s in this session, 12,000 in its own).
        self.process = subprocess.Popen(
            self.command, env=self.env, cwd=self.cwd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
        )
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"server exited: {' '.join(map(str, self.command))}")
            try:
                requests.get(self.url + self.ready_path, timeout=1)
                return self
            except requests.RequestException:
                time.sleep(0.2)
        raise RuntimeError("server did not start")

    def __exit__(self, *exc: object) -> None:
        if self.process and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(5)

    def worker_pids(self) -> list[int]:
        """The server's worker processes: its descendants that have no children of their own (under
        `tokendealer serve`, the supervisor's granian master's workers)."""
        leaves, parents = [], [self.process.pid]
        while parents:
            pid = parents.pop()
            children = child_pids(pid)
            if children:
                parents.extend(children)
            elif pid != self.process.pid:
                leaves.append(pid)
        return leaves

    def loaded(self, run: Callable[..., dict[str, float]], *args: Any, **kwargs: Any) -> dict[str, float]:
        """`run(*args, **kwargs)`'s wrk result, with the server's own CPU time per request it served (`cpu_us`, all
        its processes): what the requests cost the server, steadier than req/s when other work (wrk too) shares the cores."""
        before = self.cpu_seconds()
        result = run(*args, **kwargs)
        result["cpu_us"] = (self.cpu_seconds() - before) / max(1.0, result["requests"]) * 1e6
        return result

    def cpu_seconds(self) -> float:
        """CPU time (user and system) used so far by the server and every process under it."""
        pids, total = [self.process.pid], 0.0
        while pids:
            pid = pids.pop()
            pids.extend(child_pids(pid))
            try:
                fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue  # gone meanwhile
            total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
        return total

    def rss_mb(self) -> list[float]:
        """Resident memory of each child process (the workers), in MB."""
        return [worker_memory(pid)["rss"] for pid in self.worker_pids()]


def checkout_env(env: dict[str, str], checkout: str) -> tuple[dict[str, str], str]:
    """The environment and working folder that make this venv's `tokendealer serve` run `checkout`'s code: granian's
    processes run `python -c`, whose first import path is the current folder, so PYTHONPATH alone is not enough."""
    folder = os.path.abspath(checkout)
    return {**env, "PYTHONPATH": folder}, folder


def child_pids(pid: int) -> list[int]:
    out = subprocess.run(["ps", "-o", "pid=", "--ppid", str(pid)], capture_output=True, text=True).stdout
    return [int(child) for child in out.split()]


def worker_memory(pid: int) -> dict[str, float]:
    """A process's memory in MB from /proc: RSS (shared pages counted in full), PSS (shared pages split among
    the processes mapping them) and USS (pages only this process maps: what stopping it would free)."""
    fields: dict[str, int] = {}
    with open(f"/proc/{pid}/smaps_rollup") as rollup:
        for line in rollup.readlines()[1:]:
            name, value = line.split(":", 1)
            fields[name] = int(value.split()[0])
    uss = fields["Private_Clean"] + fields["Private_Dirty"]
    return {"rss": fields["Rss"] / 1024, "pss": fields["Pss"] / 1024, "uss": uss / 1024}


def granian_command(
    port: int, factory: str, workers: int, blocking_threads: int | None = 1, access_log: bool = True, interface: str = "wsgi"
) -> list[str]:
    """granian serving the WSGI `factory` with one blocking thread per worker (the WSGI settings `tokendealer
    serve` used before its RSGI edge); `blocking_threads=None` leaves granian's default. TOKENDEALER_FACTORY
    writes its own access log (as `serve` does); any other app gets granian's unless `access_log` is off."""
    threads = ["--blocking-threads", str(blocking_threads)] if blocking_threads else []
    logged = access_log and factory != TOKENDEALER_FACTORY
    access = ["--access-log", "--access-log-fmt", ACCESS_LOG_FORMAT] if logged else []
    return [
        *(str(BIN / "granian"), "--interface", interface, "--workers", str(workers), *threads),
        *("--host", "127.0.0.1", "--port", str(port), *access),
        *("--factory", factory),
    ]


def drive_to(url: str, authorization: str, body: str, target: int, done: int) -> int:
    """Run bounded wrk bursts (16 connections, 2 s each, at most 100) until `target` requests are served in all."""
    for _ in range(100):
        if done >= target:
            break
        done += int(wrk(url, authorization, body, 16, 2)["requests"])
    return done


def basic_header(client_id: str, secret: str) -> str:
    return "Basic " + base64.b64encode(f"{client_id}:{secret}".encode()).decode()


def wrk(
    url: str,
    authorization: str,
    body: str,
    connections: int,
    seconds: int = 10,
    threads: int = 2,
    script: str | None = None,
    extra_env: dict[str, str] | None = None,
) -> dict[str, float]:
    """One bounded wrk run with token.lua (or `script`); returns requests/s, latency percentiles and failure counts."""
    env = {**os.environ, "WRK_AUTHORIZATION": authorization, "WRK_BODY": body, **(extra_env or {})}
    out = subprocess.run(
        [
            "wrk",
            f"-t{threads}",
            f"-c{connections}",
            f"-d{seconds}s",
            "--timeout",
            "5s",
            "-s",
            script or os.environ.get("WRK_SCRIPT", str(HERE / "token.lua")),
            url,
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=seconds + 60,
    ).stdout
    if os.environ.get("WRK_SCRIPT"):
        print(out)
    match = _RESULT_RE.search(out)
    if not match:
        raise RuntimeError(f"wrk printed no result:\n{out}")
    return {k: float(v) for k, v in (item.split("=") for item in match.group(1).split())}


def http_load(port: int, next_request: Callable[[], tuple[dict[str, str], str] | None], seconds: float, threads: int) -> dict[str, float]:
    """Requests/s of `threads` keep-alive connections POSTing to /oauth/token for `seconds`, or until
    `next_request` (headers, body) returns None: for loads wrk cannot make, where every request must differ
    (a new DPoP proof, a new workload token). The requests are made before the run, so the driver's own work
    is the same for every kind."""
    lock = threading.Lock()
    counts = {"ok": 0, "other": 0}
    deadline = time.monotonic() + seconds

    def run() -> None:
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        ok = other = 0
        while time.monotonic() < deadline:
            with lock:
                request = next_request()
            if request is None:
                break
            headers, body = request
            connection.request("POST", "/oauth/token", body, {"Content-Type": "application/x-www-form-urlencoded", **headers})
            response = connection.getresponse()
            response.read()
            ok, other = (ok + 1, other) if response.status == 200 else (ok, other + 1)
        connection.close()
        with lock:
            counts["ok"] += ok
            counts["other"] += other

    started = time.monotonic()
    workers = [threading.Thread(target=run) for _ in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(seconds + 30)
    elapsed = time.monotonic() - started
    return {"rps": counts["ok"] / elapsed, "requests": counts["ok"] + counts["other"], "non_200": counts["other"]}


def token_body(audience: str = AUDIENCE, scope: str = SCOPE) -> str:
    return f"grant_type=client_credentials&audience={requests.utils.quote(audience, safe='')}&scope={scope}"


def check_token(url: str, authorization: str, body: str) -> None:
    """One real request first: a benchmark of error answers would be worthless."""
    response = requests.post(
        url, data=body, headers={"Authorization": authorization, "Content-Type": "application/x-www-form-urlencoded"}, timeout=5
    )
    if response.status_code != 200 or "access_token" not in response.json():
        raise RuntimeError(f"{url} did not issue a token: {response.status_code} {response.text[:200]}")


def fmt(result: dict[str, float]) -> str:
    return (
        f"{result['rps']:8.0f} req/s  p50 {result['p50_ms']:6.2f} ms  p90 {result['p90_ms']:6.2f} ms  "
        f"p99 {result['p99_ms']:6.2f} ms  non-200 {int(result['non200'])}  socket errors {int(result['errors'])}"
    )
