"""The fault campaign: private PostgreSQL and Redis servers, the faults themselves, and the ledger of changes
acknowledged before each fault that must all be there after it (tests/test_faults.py, benchmarks/faults.py).

Nothing here touches the machine's shared PostgreSQL (5432) or Redis (6379): each fault that needs one starts
its own on a free loopback port in a temporary directory, and removes it afterwards.
"""

from __future__ import annotations

import contextlib
import glob
import json
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jwt
from cryptography.hazmat.primitives.asymmetric import ec

from client_lib.jose import public_jwk
from tokendealer import db
from tokendealer.app import create_app
from tokendealer.clients import ClientStore, SecretHasher
from tokendealer.config import Config
from tokendealer.keystores import FileKeyStore, make_key_store

from .conftest import LiveServer, free_port, run_cli, server_env
from .token_load import (
    Connection,
    FaultRow,
    InProcessConnection,
    TokenLoad,
    Window,
    basic_header,
    summarise,
)

AUDIENCE = "https://api.example.com"
KEK = secrets.token_urlsafe(32)
ACCESS_LINE = re.compile(r'"(GET|POST|PUT|PATCH|DELETE|HEAD) /')
ERROR_LINE = re.compile(r"ERROR|Error\b|Error:|crash")
ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"


class MissingTool(RuntimeError):
    """A binary a fault needs is not installed: the fault fails, it is never skipped."""


@dataclass
class Timing:
    """How long each phase lasts (seconds) and how hard the load pushes."""

    before: float = 1.5
    fault: float = 1.5
    after: float = 2.5
    threads: int = 3
    rate: float = 30.0  # per thread, requests a second


# ---- private servers -----------------------------------------------------------------------------------


def postgres_bin(name: str) -> str:
    """`name` from the newest /usr/lib/postgresql/*/bin."""
    found = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"), key=lambda p: [int(n) for n in re.findall(r"\d+", Path(p).parts[-3])])
    if not found:
        raise MissingTool(f"{name} not found under /usr/lib/postgresql/*/bin (apt-get install postgresql)")
    return found[-1]


class PostgresCluster:
    """A throw-away PostgreSQL cluster (trust auth, loopback, its own port and socket directory), run as the
    `postgres` user when this process is root."""

    def __init__(self) -> None:
        self.initdb, self.pg_ctl = postgres_bin("initdb"), postgres_bin("pg_ctl")
        self.port = free_port()
        self.directory = Path(tempfile.mkdtemp(prefix="td-faults-pg-"))
        self.data = self.directory / "data"
        self.url = f"postgresql://postgres@127.0.0.1:{self.port}/postgres"
        if os.geteuid() == 0:
            shutil.chown(self.directory, "postgres", "postgres")
            self._prefix = ["runuser", "-u", "postgres", "--"]
        else:
            self._prefix = []

    def _run(self, *args: str, timeout: float = 60) -> None:
        result = subprocess.run([*self._prefix, *args], capture_output=True, text=True, timeout=timeout)
        if result.returncode != 0:
            raise RuntimeError(f"{' '.join(args[:2])} failed: {result.stderr.strip()[-500:]}")

    def create(self) -> PostgresCluster:
        self._run(self.initdb, "-D", str(self.data), "-A", "trust", "-U", "postgres", "--no-sync", "-E", "UTF8")
        return self.start()

    def start(self) -> PostgresCluster:
        options = f"-p {self.port} -k {self.directory} -c listen_addresses=127.0.0.1"
        self._run(self.pg_ctl, "-D", str(self.data), "-l", str(self.directory / "postgres.out"), "-o", options, "-w", "-t", "60", "start")
        return self

    def stop(self, mode: str = "fast") -> None:
        self._run(self.pg_ctl, "-D", str(self.data), "-m", mode, "-w", "-t", "60", "stop")

    def destroy(self) -> None:
        with contextlib.suppress(Exception):
            self.stop("immediate")
        shutil.rmtree(self.directory, ignore_errors=True)


class RedisServer:
    """A throw-away redis-server on a free loopback port, persisting to an append-only file as the replay
    cache requires (README: Redis for the replay cache must survive a restart)."""

    def __init__(self) -> None:
        self.binary = shutil.which("redis-server")
        if not self.binary:
            raise MissingTool("redis-server not found (apt-get install redis-server)")
        self.port = free_port()
        self.directory = Path(tempfile.mkdtemp(prefix="td-faults-redis-"))
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.process: subprocess.Popen | None = None

    def start(self) -> RedisServer:
        self.process = subprocess.Popen(
            [
                self.binary,
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "yes",
                "--appendfsync",
                "always",
                "--dir",
                str(self.directory),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", self.port), timeout=1) as sock:
                sock.sendall(b"PING\r\n")
                if sock.recv(16).startswith(b"+PONG"):
                    return self
            time.sleep(0.05)
        raise RuntimeError("redis-server did not answer PING")

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(10)

    def destroy(self) -> None:
        self.stop()
        shutil.rmtree(self.directory, ignore_errors=True)


def children(pid: int) -> list[int]:
    """granian's workers under `tokendealer serve` `pid`: the children of its child, granian's master."""
    return [worker for master in _children(pid) for worker in _children(master)]


def _children(pid: int) -> list[int]:
    out = subprocess.run(["ps", "-o", "pid=", "--ppid", str(pid)], capture_output=True, text=True).stdout
    return [int(p) for p in out.split()]


# ---- the server under test and its clients ------------------------------------------------------------


class Stack:
    """`tokendealer serve` on loopback in `directory`, with a load client and the ledger's clients registered."""

    def __init__(self, directory: Path, workers: int = 2, **extra: str):
        self.directory = directory
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.env = server_env(
            directory,
            TOKENDEALER_ISSUER=self.url,
            TOKENDEALER_KEYRING_RELOAD_INTERVAL="0.5",
            TOKENDEALER_CLIENT_CACHE_SECONDS="1",
            **extra,
        )
        self.config = Config.load(environ=self.env)
        result = run_cli("init", env=self.env)
        if result.returncode != 0:
            raise RuntimeError(f"tokendealer init failed: {result.stderr.strip()}")
        self.engine = db.make_engine(self.config.database_url)
        self.store = make_key_store(self.config, engine=self.engine)
        self.clients = ClientStore(self.engine, SecretHasher(self.store.pepper()))
        self.client_id, self.secret = "load", self.clients.create("load", scopes=["read"], audiences=[AUDIENCE])[1]
        self.workers = workers
        self.server: LiveServer | None = None

    def start(self) -> Stack:
        self.server = LiveServer(self.env, workers=self.workers, port=self.port).start()
        return self

    def connect(self) -> Connection:
        return Connection(self.url)

    def close(self) -> None:
        if self.server:
            self.server.stop()
        self.engine.dispose()

    def log_excerpt(self, lines: int = 8) -> list[str]:
        """The server's last error lines (log records at ERROR, exception lines), access-log lines left out."""
        if not self.server:
            return []
        text = self.server.log().splitlines()
        return [line for line in text if ERROR_LINE.search(line) and not ACCESS_LINE.search(line)][-lines:]


# ---- the ledger: changes acknowledged before a fault, checked after it ---------------------------------


def token_form(**extra: str) -> str:
    return "&".join(f"{k}={v}" for k, v in {"grant_type": "client_credentials", **extra}.items())


@dataclass
class Ledger:
    """Revocation, client create/disable/rotate-secret, a key rotation and a used private_key_jwt assertion, each
    acknowledged (committed, or answered 200) before the fault; `check` reports any that the fault lost."""

    clients: ClientStore
    store: Any
    connect: Callable[[], Any]
    token_endpoint: str
    load_id: str
    load_secret: str
    entries: dict[str, Any] = field(default_factory=dict)

    def register(self) -> None:
        """Clients the ledger changes later, registered before the server starts."""
        tag = secrets.token_hex(3)
        self.entries["off"] = (f"led-off-{tag}", self.clients.create(f"led-off-{tag}", scopes=["read"], audiences=[AUDIENCE])[1])
        self.entries["rot"] = (f"led-rot-{tag}", self.clients.create(f"led-rot-{tag}", scopes=["read"], audiences=[AUDIENCE])[1])
        key = ec.generate_private_key(ec.SECP256R1())
        jwk = public_jwk(key.public_key(), "ES256")
        self.clients.create(f"led-key-{tag}", scopes=["read"], audiences=[AUDIENCE], jwks={"keys": [jwk]})
        self.entries["key"] = (f"led-key-{tag}", key, jwk["kid"])

    def prepare(self) -> None:
        """Make every change and wait for its acknowledgement."""
        conn = self.connect()
        load_auth = {"Authorization": basic_header(self.load_id, self.load_secret)}
        token = conn.request("POST", "/oauth/token", token_form(), load_auth).json()["access_token"]
        revoked = conn.request("POST", "/oauth/revoke", f"token={token}", load_auth)
        assert revoked.status == 200, f"revocation not acknowledged: {revoked.status} {revoked.body[:200]!r}"
        self.entries["revoked"] = token
        tag = secrets.token_hex(3)
        self.entries["new"] = (f"led-new-{tag}", self.clients.create(f"led-new-{tag}", scopes=["read"], audiences=[AUDIENCE])[1])
        off_id, _ = self.entries["off"]
        self.clients.set_enabled(off_id, False)
        rot_id, old = self.entries["rot"]
        self.entries["rot"] = (rot_id, old, self.clients.rotate_secret(rot_id)[1])
        self.entries["active_kid"] = self.store.rotate().active.kid
        form = self.assertion_form(lifetime=300)
        used = conn.request("POST", "/oauth/token", form)
        assert used.status == 200, f"assertion not accepted before the fault: {used.status} {used.body[:200]!r}"
        self.entries["assertion"] = form
        conn.close()

    def assertion_form(self, lifetime: int) -> str:
        """A token request authenticated by a fresh private_key_jwt assertion of the ledger's key client."""
        key_id, key, kid = self.entries["key"]
        now = int(time.time())
        claims = {
            "iss": key_id,
            "sub": key_id,
            "aud": self.token_endpoint,
            "iat": now,
            "exp": now + lifetime,
            "jti": secrets.token_urlsafe(16),
        }
        assertion = jwt.encode(claims, key, algorithm="ES256", headers={"kid": kid})
        return token_form(client_assertion_type=ASSERTION_TYPE, client_assertion=assertion)

    def check(self, settle: float = 4.0) -> list[str]:
        """What the fault lost. The replay is tried once (a replay that gets through records the jti again);
        the rest is re-checked until `settle` seconds pass, as caches and keyring reloads converge."""
        conn = self.connect()
        try:
            replay = conn.request("POST", "/oauth/token", self.entries["assertion"]).status
        except OSError as exc:
            return [f"unverifiable: the server does not answer ({exc.__class__.__name__})"]
        finally:
            conn.close()
        replay_lost = []
        if replay != 401:
            replay_lost = [f"replay-cache entry (the assertion used before the fault was answered {replay} when replayed)"]
        deadline = time.monotonic() + settle
        while True:
            lost = self._lost()
            if not lost or time.monotonic() >= deadline:
                return replay_lost + lost
            time.sleep(0.3)

    def _lost(self) -> list[str]:
        conn = self.connect()
        lost = []
        try:
            load_auth = {"Authorization": basic_header(self.load_id, self.load_secret)}
            seen = conn.request("POST", "/oauth/introspect", f"token={self.entries['revoked']}", load_auth)
            if seen.status != 200 or seen.json().get("active") is not False:
                lost.append(f"revocation (introspect answered {seen.status} {seen.body[:80]!r})")
            new_id, new_secret = self.entries["new"]
            got = conn.request("POST", "/oauth/token", token_form(), {"Authorization": basic_header(new_id, new_secret)})
            if got.status != 200:
                lost.append(f"client created ({got.status})")
            off_id, off_secret = self.entries["off"]
            got = conn.request("POST", "/oauth/token", token_form(), {"Authorization": basic_header(off_id, off_secret)})
            if got.status != 401:
                lost.append(f"client disabled (its secret got {got.status})")
            rot_id, old, new = self.entries["rot"]
            got_new = conn.request("POST", "/oauth/token", token_form(), {"Authorization": basic_header(rot_id, new)})
            got_old = conn.request("POST", "/oauth/token", token_form(), {"Authorization": basic_header(rot_id, old)})
            if got_new.status != 200 or got_old.status != 401:
                lost.append(f"secret rotated (new secret {got_new.status}, old secret {got_old.status})")
            got = conn.request("POST", "/oauth/token", token_form(), load_auth)
            kid = jwt.get_unverified_header(got.json()["access_token"])["kid"] if got.status == 200 else None
            if kid != self.entries["active_kid"]:
                lost.append(f"key rotation (token signed by {kid}, not the rotated-in key)")
        except (OSError, ValueError, KeyError) as exc:
            lost.append(f"unverifiable: {exc.__class__.__name__}")
        finally:
            conn.close()
        return lost


def stack_ledger(stack: Stack) -> Ledger:
    ledger = Ledger(stack.clients, stack.store, stack.connect, stack.url + "/oauth/token", stack.client_id, stack.secret)
    ledger.register()
    return ledger


# ---- running one fault ---------------------------------------------------------------------------------


def run_fault(name: str, stack: Stack, ledger: Ledger, timing: Timing, inject: Callable[[Timing], tuple[Window, list[str]]]) -> FaultRow:
    """Load before, through and after `inject` (which returns the fault's window and notes); then the ledger."""
    bound = timing.before + timing.fault + timing.after + 60
    load = TokenLoad(
        stack.url, stack.client_id, stack.secret, threads=timing.threads, rate=timing.rate, max_seconds=bound, max_requests=100_000
    )
    with load:
        time.sleep(timing.before / 2)
        ledger.prepare()
        time.sleep(timing.before / 2)
        window, notes = inject(timing)
        time.sleep(timing.after)
    lost = ledger.check()
    row = summarise(name, load.answers, window, lost, notes)
    if row.refusals or row.lost:
        row.log_excerpt = stack.log_excerpt()
    return row


def worker_kill(directory: Path, timing: Timing) -> FaultRow:
    """SIGKILL one granian worker mid-load; the fault lasts until granian has a replacement."""
    stack = Stack(directory)
    ledger = stack_ledger(stack)
    stack.start()
    try:

        def inject(t: Timing) -> tuple[Window, list[str]]:
            before = children(stack.server.process.pid)
            victim = before[-1]
            window = Window(time.monotonic())
            window.kills.append(window.start)
            os.kill(victim, signal.SIGKILL)
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:
                now = children(stack.server.process.pid)
                if victim not in now and len(now) >= len(before):
                    break
                time.sleep(0.02)
            respawned = time.monotonic() - window.start
            # The fault lasts until the new worker serves: at least half a second, so requests fall inside it.
            time.sleep(max(0.0, 0.5 - respawned))
            window.end = time.monotonic()
            fresh = sorted(set(children(stack.server.process.pid)) - set(before))
            return window, [f"workers {before}, killed {victim}, respawned as {fresh or 'nothing'} after {respawned:.2f}s"]

        return run_fault("worker SIGKILL", stack, ledger, timing, inject)
    finally:
        stack.close()


def postgres_restart(directory: Path, timing: Timing) -> FaultRow:
    """Stop a private PostgreSQL with `-m immediate` (a crash: recovery replays the WAL), keep it down for
    `timing.fault`, start it again. 503 + Retry-After is the right answer while it is down."""
    cluster = PostgresCluster().create()
    stack = None
    try:
        stack = Stack(directory, TOKENDEALER_DATABASE_URL=cluster.url, TOKENDEALER_KEYRING="database", TOKENDEALER_KEY_ENCRYPTION_KEY=KEK)
        ledger = stack_ledger(stack)
        stack.start()

        def inject(t: Timing) -> tuple[Window, list[str]]:
            window = Window(time.monotonic(), unavailable=True)
            cluster.stop("immediate")
            time.sleep(t.fault)
            cluster.start()
            window.end = time.monotonic()
            return window, [f"PostgreSQL {Path(cluster.pg_ctl).parts[-3]} on :{cluster.port}, stopped -m immediate, database keyring"]

        return run_fault("PostgreSQL restart", stack, ledger, timing, inject)
    finally:
        if stack:
            stack.close()
        cluster.destroy()


def redis_restart(directory: Path, timing: Timing) -> FaultRow:
    """Stop the private Redis holding the failure counters and the replay cache, start it again: its
    append-only file brings the replay entries back."""
    redis = RedisServer().start()
    stack = None
    try:
        stack = Stack(directory, TOKENDEALER_RATELIMIT_STORAGE=redis.url, TOKENDEALER_REPLAY_CACHE=redis.url)
        ledger = stack_ledger(stack)
        stack.start()

        def inject(t: Timing) -> tuple[Window, list[str]]:
            window = Window(time.monotonic())
            redis.stop()
            time.sleep(t.fault)
            redis.start()
            window.end = time.monotonic()
            return window, [f"redis-server on :{redis.port} with an append-only file (--appendonly yes --appendfsync always)"]

        return run_fault("Redis stop/start", stack, ledger, timing, inject)
    finally:
        if stack:
            stack.close()
        redis.destroy()


@contextlib.contextmanager
def small_tmpfs(size: str = "512k") -> Iterator[Path]:
    """A loopback tmpfs of `size`, unmounted afterwards (needs root)."""
    if os.geteuid() != 0:
        raise MissingTool("mounting a tmpfs for the disk-full fault needs root")
    mountpoint = Path(tempfile.mkdtemp(prefix="td-faults-fs-"))
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size},mode=0700", "tmpfs", str(mountpoint)], check=True)
    try:
        yield mountpoint
    finally:
        subprocess.run(["umount", "-l", str(mountpoint)], check=False)
        mountpoint.rmdir()


def fill(directory: Path) -> Path:
    """Fill the file system of `directory` until it refuses another byte; returns the filler file."""
    filler = directory / "filler"
    with open(filler, "wb", buffering=0) as out:
        chunk = b"\0" * 65536
        while True:
            try:
                if out.write(chunk) == 0:
                    break
            except OSError:
                if len(chunk) == 1:
                    break
                chunk = chunk[: len(chunk) // 2]
    return filler


def audit_lines(path: Path) -> tuple[int, int]:
    """(whole JSON lines, broken lines) in an audit log."""
    good = bad = 0
    for line in path.read_bytes().split(b"\n"):
        if not line:
            continue
        try:
            json.loads(line)
            good += 1
        except ValueError:
            bad += 1
    return good, bad


def audit_disk_full(directory: Path, timing: Timing) -> FaultRow:
    """The audit log's file system full for `timing.fault`: valid token requests must keep succeeding."""
    with small_tmpfs() as mountpoint:
        audit = mountpoint / "audit.log"
        stack = Stack(directory, TOKENDEALER_AUDIT_LOG=str(audit))
        try:
            ledger = stack_ledger(stack)
            stack.start()

            def inject(t: Timing) -> tuple[Window, list[str]]:
                lines_before, _ = audit_lines(audit)
                window = Window(time.monotonic())
                filler = fill(mountpoint)
                lines_full, _ = audit_lines(audit)
                time.sleep(t.fault)
                lines_end, broken = audit_lines(audit)
                filler.unlink()
                window.end = time.monotonic()
                written["while full"] = lines_end - lines_full
                return window, [
                    f"audit lines written while full: {lines_end - lines_full} (before: {lines_before}); broken lines: {broken}"
                ]

            written: dict[str, int] = {}
            row = run_fault("audit-log disk full", stack, ledger, timing, inject)
            row.notes.append(f"about {max(0, row.sent_during - written['while full'])} token requests during the fault left no audit line")
            good, broken = audit_lines(audit)
            row.notes.append(f"audit log afterwards: {good} lines, {broken} broken; token requests sent in all: {row.sent_total}")
            return row
        finally:
            stack.close()


def keyring_unreadable(directory: Path, timing: Timing, kill_worker: bool = False) -> FaultRow:
    """Move the keyring directory away (root ignores permission bits) and leave an empty, mode-000 directory in
    its place for `timing.fault`; the server must keep signing with the last good keyring. With `kill_worker`,
    a worker is also SIGKILLed while the keyring is away: its replacement has no last good keyring, so it may
    answer 503 + Retry-After until the keyring is back, but the other worker must keep signing and the
    server must come back."""
    stack = Stack(directory)
    keys = Path(stack.config.keys_dir)
    away = keys.with_name(keys.name + ".away")
    try:
        ledger = stack_ledger(stack)
        stack.start()

        def inject(t: Timing) -> tuple[Window, list[str]]:
            window = Window(time.monotonic(), unavailable=kill_worker)
            os.rename(keys, away)
            keys.mkdir(mode=0)
            notes = ["keys/ renamed away and an empty mode-000 keys/ put in its place, then put back"]
            if kill_worker:
                time.sleep(0.2)
                before = children(stack.server.process.pid)
                window.kills.append(time.monotonic())
                os.kill(before[-1], signal.SIGKILL)
                notes.append(f"worker {before[-1]} of {before} SIGKILLed 0.2 s into the fault")
            time.sleep(t.fault / 2)
            probe = stack.connect()
            try:
                ready = probe.request("GET", "/readyz")
                notes.append(f"/readyz mid-fault: {ready.status} {ready.body.decode(errors='replace')[:160]}")
            except OSError as exc:
                notes.append(f"/readyz mid-fault: no answer ({exc.__class__.__name__})")
            finally:
                probe.close()
            time.sleep(t.fault / 2)
            keys.rmdir()
            os.rename(away, keys)
            window.end = time.monotonic()
            log = stack.server.log()
            notes.append(f"'keyring reload failed' logged {log.count('keyring reload failed')} times")
            if stack.server.process.poll() is not None:
                notes.append(f"`tokendealer serve` exited (status {stack.server.process.returncode}) during the fault")
            if "crash loop" in log:
                notes.append("granian: 'Worker crash loop detected, exiting'")
            return window, notes

        name = "keyring unreadable + worker SIGKILL" if kill_worker else "keyring unreadable"
        return run_fault(name, stack, ledger, timing, inject)
    finally:
        if away.exists():
            shutil.rmtree(keys, ignore_errors=True)
            os.rename(away, keys)
        stack.close()


def keyring_unreadable_worker_kill(directory: Path, timing: Timing) -> FaultRow:
    """Faults 1 and 5 together: a worker dies while the keyring directory is unreadable."""
    return keyring_unreadable(directory, timing, kill_worker=True)


# ---- the clock jump, in-process through the app factory's injected clock -------------------------------


class JumpingClock:
    """The wall clock plus an offset the fault changes."""

    def __init__(self) -> None:
        self.offset = 0.0

    def __call__(self) -> float:
        return time.time() + self.offset


def verdict(conn: InProcessConnection, token: str) -> str:
    """What /verify_token says of a token now: 'ok' or its stated reason."""
    reply = conn.request(
        "POST", "/verify_token", json.dumps({"access_token": token, "audience": AUDIENCE}), {"Content-Type": "application/json"}
    )
    return "ok" if reply.status == 200 else reply.json().get("error_description", f"{reply.status}")


def clock_jump(directory: Path, timing: Timing, jump: float = 300.0, redis_url: str | None = None) -> FaultRow:
    """One worker's clock jumps +5 min then -5 min under load while a second worker keeps true time (both
    in-process, sharing the SQLite database and keyring, and with `redis_url` a Redis replay cache). Tokens
    issued during each jump are verified afterwards by both workers; the ledger is checked on both; an
    assertion used on the jumped worker must stay used for as long as the true clock could accept it."""
    shared = {"replay_cache": redis_url, "ratelimit_storage": redis_url} if redis_url else {}
    config = Config.load(
        environ={},
        issuer="http://localhost:5000",
        keys_dir=str(directory / "keys"),
        database_url=f"sqlite:///{directory / 'var' / 'tokendealer.db'}",
        audit_log=str(directory / "audit.log"),
        client_cache_seconds=1,
        keyring_reload_interval=0.5,
        **shared,
    )
    store = FileKeyStore(config.keys_dir)
    store.init()
    engine = db.make_engine(config.database_url)
    db.upgrade_schema(engine)
    clock = JumpingClock()
    jumping, steady = create_app(config, clock=clock), create_app(config)
    registry = steady.extensions["tokendealer"].clients
    _, secret = registry.create("load", scopes=["read"], audiences=[AUDIENCE])
    _, short_secret = registry.create("short", scopes=["read"], audiences=[AUDIENCE], token_ttl=120)
    ledger = Ledger(registry, store, lambda: InProcessConnection(jumping), config.token_endpoint, "load", secret)
    ledger.register()
    short_auth = {"Authorization": basic_header("short", short_secret)}
    tokens: dict[str, list[str]] = {"+": [], "-": []}
    notes: list[str] = []
    try:
        probe = InProcessConnection(steady)
        short_token = probe.request("POST", "/oauth/token", token_form(), short_auth).json()["access_token"]
        assert probe.request("POST", "/oauth/revoke", f"token={short_token}", short_auth).status == 200
        short_assertion = ledger.assertion_form(lifetime=60)
        assert probe.request("POST", "/oauth/token", short_assertion).status == 200
        load = TokenLoad(
            "",
            "load",
            secret,
            threads=timing.threads,
            rate=timing.rate,
            max_seconds=timing.before + 2 * timing.fault + timing.after + 60,
            connect=lambda: InProcessConnection(jumping),
        )
        with load:
            time.sleep(timing.before / 2)
            ledger.prepare()
            time.sleep(timing.before / 2)
            window = Window(time.monotonic())
            side = InProcessConnection(jumping)
            for sign in (1, -1):
                clock.offset = sign * jump
                key = "+" if sign > 0 else "-"
                for auth in ({"Authorization": basic_header("load", secret)}, short_auth):
                    reply = side.request("POST", "/oauth/token", token_form(), auth)
                    if reply.status == 200:
                        tokens[key].append(reply.json()["access_token"])
                # A revocation and a private_key_jwt request during the jump, as any client may send them.
                fresh = side.request("POST", "/oauth/token", token_form(), short_auth).json()["access_token"]
                side.request("POST", "/oauth/revoke", f"token={fresh}", short_auth)
                side.request("POST", "/oauth/token", ledger.assertion_form(lifetime=900))
                if sign > 0:
                    # Valid for 2-3 s more by the jumped clock (with leeway; `now` is truncated to the second), for
                    # about 4.5 min by the true one; replayed on the true-time worker over 5 s later.
                    near = ledger.assertion_form(lifetime=int(jump) - config.leeway + 3)
                    notes.append(
                        f"an assertion with {int(jump) - config.leeway + 3} s to live, used on the jumped worker: "
                        f"{side.request('POST', '/oauth/token', near).status}"
                    )
                    near_used_at = time.monotonic()
                time.sleep(timing.fault)
                clock.offset = 0.0
                time.sleep(timing.fault / 3)
            window.end = time.monotonic()
            time.sleep(timing.after)
        lost = ledger.check()
        revived = []
        for app_name, app in (("steady worker", steady), ("jumped worker", jumping)):
            conn = InProcessConnection(app)
            seen = conn.request("POST", "/oauth/introspect", f"token={short_token}", short_auth).json()
            if seen.get("active") is not False:
                revived.append(app_name)
            for key, label in (("+", f"+{jump / 60:.0f} min"), ("-", f"-{jump / 60:.0f} min")):
                said = [verdict(conn, t) for t in tokens[key]]
                notes.append(f"tokens issued at {label} (load, 120 s client) on the {app_name} afterwards: {said}")
        replayed_near = InProcessConnection(steady).request("POST", "/oauth/token", near)
        if replayed_near.status != 401:
            lost.append(
                f"replay-cache entry of an assertion used on the jumped worker: replayed on the true-time worker "
                f"{time.monotonic() - near_used_at:.0f} s later, answered {replayed_near.status}"
            )
        replayed = InProcessConnection(steady).request("POST", "/oauth/token", short_assertion)
        if replayed.status != 401:
            lost.append(f"replay-cache entry of a 60 s assertion used before the jump: replayed afterwards, answered {replayed.status}")
        if revived:
            lost.append(f"revocation of a 120 s token acknowledged before the jump: active again afterwards on the {' and '.join(revived)}")
        cache = "Redis" if redis_url else "database"
        row = summarise(f"clock ±{jump / 60:.0f} min, {cache} replay cache (in-process)", load.answers, window, lost, notes)
        return row
    finally:
        for app in (jumping, steady):
            app.extensions["tokendealer"].audit.close()
            app.extensions["tokendealer"].engine.dispose()
        engine.dispose()


def clock_jump_redis(directory: Path, timing: Timing) -> FaultRow:
    """The clock jump with the replay cache and failure counters in a private Redis."""
    redis = RedisServer().start()
    try:
        return clock_jump(directory, timing, redis_url=redis.url)
    finally:
        redis.destroy()


FAULTS: dict[str, Callable[[Path, Timing], FaultRow]] = {
    "worker-kill": worker_kill,
    "postgres-restart": postgres_restart,
    "redis-restart": redis_restart,
    "audit-disk-full": audit_disk_full,
    "keyring-unreadable": keyring_unreadable,
    "keyring-unreadable-worker-kill": keyring_unreadable_worker_kill,
    "clock-jump": clock_jump,
    "clock-jump-redis": clock_jump_redis,
}
