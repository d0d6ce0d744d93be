"""Shared fixtures: each test gets its own keys dir, SQLite file and injected clock."""

from __future__ import annotations

import base64
import contextlib
import json
import logging
import os
import re
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import quote_plus

import jwt
import pytest
import requests
import sqlalchemy as sa

from tokendealer import clients as clients_module
from tokendealer.app import create_app
from tokendealer.config import Config
from tokendealer.db import make_engine, upgrade_schema
from tokendealer.keyring import KeyStore
from tokendealer.keystores import make_key_store

AUDIENCE = "https://api.example.com"
TOKENDEALER = str(Path(sys.executable).with_name("tokendealer"))


# ---- tiers: `make test-fast` runs the tests that need none of these ------------------------------------

# Fixtures that start real servers or reach the machine's PostgreSQL and Redis, and the marker each implies.
TIER_FIXTURES = {"live_factory": "live", "stack": "live", "proxy": "live", "postgresql_url": "postgres", "redis_url": "redis"}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark tests by what they need, from their fixtures and their database parameter."""
    for item in items:
        for fixture, marker in TIER_FIXTURES.items():
            if fixture in getattr(item, "fixturenames", ()):
                item.add_marker(marker)
        callspec = getattr(item, "callspec", None)
        if callspec is not None and "postgresql" in callspec.id:
            item.add_marker("postgres")
        if callspec is not None and "pkcs11" in callspec.id or item.nodeid.startswith("tests/test_hsm.py"):
            item.add_marker("slow")  # SoftHSM: a real PKCS#11 module, slower than the file keyring


class FakeClock:
    """A wall clock the test moves by hand."""

    def __init__(self, start: float = 1_800_000_000.0):
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


def make_config(tmp_path: Path, **overrides: Any) -> Config:
    settings = {
        "issuer": "http://localhost:5000",
        "keys_dir": str(tmp_path / "keys"),
        "database_url": f"sqlite:///{tmp_path / 'var' / 'tokendealer.db'}",
        "audit_log": str(tmp_path / "audit.log"),
    }
    settings.update(overrides)
    return Config.load(environ={}, **settings)


# ---- databases: SQLite files, and a fresh schema per test on the machine's PostgreSQL --------------------

POSTGRES_URL = os.environ.get("TOKENDEALER_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test")
REDIS_URL = os.environ.get("TOKENDEALER_TEST_REDIS_URL", "redis://127.0.0.1:6379/15")


@contextlib.contextmanager
def postgres_schema() -> Iterator[str]:
    """A database URL whose search_path is a new, empty schema; dropped afterwards.

    PostgreSQL must be running: a test that needs it fails (never skips) when it is not.
    """
    name = "td_" + secrets.token_hex(6)
    admin = sa.create_engine(POSTGRES_URL.replace("postgresql://", "postgresql+psycopg://", 1))
    with admin.begin() as conn:
        conn.exec_driver_sql(f'CREATE SCHEMA "{name}"')
    try:
        yield f"{POSTGRES_URL}?options=-csearch_path%3D{name}"
    finally:
        with admin.begin() as conn:
            conn.exec_driver_sql(f'DROP SCHEMA "{name}" CASCADE')
        admin.dispose()


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'var' / 'tokendealer.db'}"


@pytest.fixture
def postgresql_url() -> Iterator[str]:
    with postgres_schema() as url:
        yield url


@pytest.fixture
def database_url(sqlite_url: str) -> str:
    """SQLite by default; modules that must run on both override it with BOTH_DATABASES."""
    return sqlite_url


def both_databases(request: pytest.FixtureRequest) -> str:
    """Body of a `database_url` fixture parametrised over SQLite and PostgreSQL."""
    return request.getfixturevalue(f"{request.param}_url")


@pytest.fixture
def config(tmp_path: Path, database_url: str) -> Config:
    return make_config(tmp_path, database_url=database_url)


_SQLITE_TEMPLATE: list[Path] = []


def upgraded_database(url: str) -> None:
    """Bring `url` to the current schema; a new SQLite file is copied from one migrated once per session."""
    path = url.removeprefix("sqlite:///") if url.startswith("sqlite:///") else None
    if path is None or Path(path).exists():
        upgrade_schema(make_engine(url))
        return
    if not _SQLITE_TEMPLATE:
        template = Path(tempfile.mkdtemp(prefix="tokendealer-schema-")) / "template.db"
        engine = make_engine(f"sqlite:///{template}")
        upgrade_schema(engine)
        engine.dispose()
        _SQLITE_TEMPLATE.append(template)
    Path(path).parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    shutil.copyfile(_SQLITE_TEMPLATE[0], path)
    os.chmod(path, 0o600)


def initialise(config: Config, clock: Callable[[], float] = time.time, alg: str = "ES256") -> KeyStore:
    """The schema and the keyring the configuration names (file by default)."""
    upgraded_database(config.database_url)
    store = make_key_store(config, clock)
    store.init(alg)
    return store


@pytest.fixture
def key_store(config: Config, clock: FakeClock) -> KeyStore:
    return initialise(config, clock)


# ---- tools the suite needs from Debian: installed when missing, failing loudly when they cannot be -----------


def debian_tool(command: str, package: str) -> str:
    """The path of `command`, installing Debian's `package` first when it is missing (CI runs as root)."""
    path = shutil.which(command)
    if path is None:
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        install = ["apt-get", "install", "-y", "-q", package]
        result = subprocess.run(install, capture_output=True, text=True, env=env)
        if result.returncode != 0:  # a fresh machine's package lists may be missing or stale
            subprocess.run(["apt-get", "update", "-q"], capture_output=True, env=env)
            result = subprocess.run(install, capture_output=True, text=True, env=env)
        path = shutil.which(command)
    if path is None:
        pytest.fail(f"{command} is missing and `apt-get install {package}` failed: {result.stderr.strip()[-500:]}", pytrace=False)
    return path


SOFTHSM_MODULES = ("/usr/lib/softhsm/libsofthsm2.so", "/usr/lib/x86_64-linux-gnu/softhsm/libsofthsm2.so")
HSM_PIN = "4711-" + secrets.token_hex(4)
# Tokens made before the PKCS#11 module is first loaded in this process: SoftHSM reads its slots at C_Initialize.
HSM_TOKENS = ("td-main", "td-pin", "td-live")


class SoftHsm:
    """SoftHSM2 with its own configuration and token directory under the test session's temporary folder."""

    def __init__(self, root: Path):
        util = debian_tool("softhsm2-util", "softhsm2")
        self.module = next((m for m in SOFTHSM_MODULES if Path(m).exists()), None)
        if self.module is None:
            pytest.fail(f"softhsm2 is installed but its module is not in {SOFTHSM_MODULES}", pytrace=False)
        self.tokens = root / "tokens"
        self.tokens.mkdir(parents=True)
        self.conf = root / "softhsm2.conf"
        self.conf.write_text(f"directories.tokendir = {self.tokens}\nobjectstore.backend = file\nlog.level = ERROR\n")
        os.environ["SOFTHSM2_CONF"] = str(self.conf)
        for label in HSM_TOKENS:
            subprocess.run(
                [util, "--init-token", "--free", "--label", label, "--pin", HSM_PIN, "--so-pin", "so-" + HSM_PIN],
                check=True,
                capture_output=True,
            )

    def settings(self, label: str = "td-main", pin: str = HSM_PIN) -> dict[str, str]:
        """Config overrides for TOKENDEALER_KEYRING=pkcs11 on token `label`."""
        return {"keyring": "pkcs11", "pkcs11_module": self.module, "pkcs11_token_label": label, "pkcs11_pin": pin}

    def env(self, label: str = "td-main", pin: str = HSM_PIN) -> dict[str, str]:
        return {"TOKENDEALER_" + k.upper(): v for k, v in self.settings(label, pin).items()}


@pytest.fixture(scope="session")
def softhsm(tmp_path_factory) -> SoftHsm:
    return SoftHsm(tmp_path_factory.mktemp("softhsm"))


@pytest.fixture
def app(config: Config, clock: FakeClock, key_store: KeyStore):
    application = create_app(config, clock=clock)
    yield application
    application.extensions["tokendealer"].audit.close()
    application.extensions["tokendealer"].engine.dispose()


@pytest.fixture
def services(app):
    return app.extensions["tokendealer"]


@pytest.fixture
def http(app):
    return app.test_client()


@pytest.fixture
def registry(services):
    return services.clients


@pytest.fixture
def make_client(registry) -> Callable[..., tuple[str, str]]:
    """Register a secret client; returns (client_id, client_secret)."""

    def _make(name: str = "svc", scopes=("read", "write"), audiences=(AUDIENCE,), **kwargs: Any) -> tuple[str, str]:
        client, secret = registry.create(name, scopes=scopes, audiences=audiences, **kwargs)
        return client.client_id, secret

    return _make


def basic(client_id: str, secret: str) -> dict[str, str]:

    raw = f"{quote_plus(client_id)}:{quote_plus(secret)}".encode()
    return {"Authorization": "Basic " + base64.b64encode(raw).decode()}


def fetch_token(http, client_id: str, secret: str, **form: Any) -> dict[str, Any]:
    response = http.post("/oauth/token", data={"grant_type": "client_credentials", **form}, headers=basic(client_id, secret))
    assert response.status_code == 200, response.get_json()
    return response.get_json()


def decode_with_jwks(token: str, jwks: dict[str, Any], audience: str, issuer: str, **options: Any) -> dict[str, Any]:
    """Verify a token with PyJWT against a JWK Set, strictly."""
    kid = jwt.get_unverified_header(token)["kid"]
    jwk = next(k for k in jwks["keys"] if k["kid"] == kid)
    key = jwt.PyJWK(jwk)
    return jwt.decode(
        token,
        key.key,
        algorithms=[jwk["alg"]],
        audience=audience,
        issuer=issuer,
        options={"require": ["exp", "iat", "nbf", "iss", "aud", "sub", "jti"], **options},
    )


# ---- live servers (`tokendealer serve` on loopback) ----------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Remote:
    """A loopback HTTP server whose behaviour the test sets: `answer(conn)`, called once the request was read,
    writes the whole answer (or none); the connection is closed after it."""

    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}/jwks"
        self.connections = 0
        self.answer = lambda conn: None
        self.closed = threading.Event()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while not self.closed.is_set():
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.connections += 1
            threading.Thread(target=self._handle, args=(conn,), daemon=True).start()

    def _handle(self, conn: socket.socket) -> None:
        try:
            conn.recv(65536)
            self.answer(conn)
        except OSError:
            pass
        finally:
            conn.close()

    def close(self) -> None:
        self.closed.set()
        self.sock.close()


@pytest.fixture
def remote() -> Iterator[Remote]:
    server = Remote()
    yield server
    server.close()


class LiveServer:
    """`tokendealer serve` (granian, the production server) in a subprocess on a free loopback port."""

    def __init__(self, env: dict[str, str], workers: int = 2, port: int | None = None, new_session: bool = False):
        self.new_session = new_session  # its own process group, for tests that signal the group
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.env = env
        self.workers = workers
        self.process: subprocess.Popen | None = None
        self.log_path = Path(env["TOKENDEALER_KEYS_DIR"]).parent / f"serve-{self.port}.log"

    def start(self) -> LiveServer:
        self._log = open(self.log_path, "wb")
        self.process = subprocess.Popen(
            [TOKENDEALER, "serve", "--host", "127.0.0.1", "--port", str(self.port), "--workers", str(self.workers)],
            env=self.env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=self.new_session,
        )
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"server exited: {self.log_path.read_text()[-2000:]}")
            try:
                if requests.get(self.url + "/readyz", timeout=1).status_code == 200:
                    return self
            except requests.RequestException:
                pass
            time.sleep(0.1)
        raise RuntimeError(f"server did not become ready: {self.log_path.read_text()[-2000:]}")

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)
        self._log.close()

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


def server_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TOKENDEALER_")}
    env.update(
        TOKENDEALER_KEYS_DIR=str(tmp_path / "keys"),
        TOKENDEALER_DATABASE_URL=f"sqlite:///{tmp_path / 'var' / 'tokendealer.db'}",
        TOKENDEALER_AUDIT_LOG=str(tmp_path / "audit.log"),
    )
    env.update(extra)
    return env


def all_at_once(count: int, call: Callable[[], Any], timeout: float = 30) -> list[Any]:
    """Run `call` in `count` threads released together by a barrier; their results, in finishing order."""
    barrier = threading.Barrier(count)
    results: list[Any] = []

    def worker() -> None:
        barrier.wait()
        results.append(call())

    threads = [threading.Thread(target=worker) for _ in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout)
    return results


def run_cli(*args: str, env: dict[str, str], input: str | None = None, timeout: float = 60) -> subprocess.CompletedProcess:
    result = subprocess.run([TOKENDEALER, *args], env=env, capture_output=True, text=True, input=input, timeout=timeout)
    try:
        secret = json.loads(result.stdout).get("client_secret") if result.stdout.startswith("{") else None
    except ValueError:
        secret = None
    if secret:
        ISSUED_SECRETS.add(secret)
    return result


# ---- a live server behind a counting, fault-injecting proxy (client_lib tests) -----------------------

BILLING = "https://billing"


class Proxy:
    """A loopback HTTP proxy to the live server that counts requests and can fail on demand."""

    def __init__(self, upstream: str):
        self.upstream = upstream
        self.counts: dict[str, int] = {}
        self.fail_token = 0  # answer the next N token requests with 503
        self.token_status: int | None = None
        self.jwks_down = False
        self.jwks_delay = 0.0  # seconds to wait before answering the JWKS
        self.lock = threading.Lock()
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def _relay(self, method: str) -> None:
                path = self.path.split("?")[0]
                with proxy.lock:
                    proxy.counts[path] = proxy.counts.get(path, 0) + 1
                    failing = path == "/oauth/token" and proxy.fail_token > 0
                    if failing:
                        proxy.fail_token -= 1
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                if failing:
                    return self._send(503, b'{"error":"temporarily_unavailable"}', {"Retry-After": "0"})
                if path == "/.well-known/jwks.json" and proxy.jwks_down:
                    return self._send(502, b"bad gateway", {})
                if path == "/.well-known/jwks.json" and proxy.jwks_delay:
                    time.sleep(proxy.jwks_delay)
                headers = {k: v for k, v in self.headers.items() if k.lower() not in ("host", "content-length")}
                upstream = requests.request(method, proxy.upstream + self.path, data=body, headers=headers, timeout=10)
                keep = {
                    k: v
                    for k, v in upstream.headers.items()
                    if k.lower() in ("content-type", "cache-control", "www-authenticate", "etag", "retry-after")
                }
                self._send(upstream.status_code, upstream.content, keep)

            def _send(self, status: int, body: bytes, headers: dict[str, str]) -> None:
                self.send_response(status)
                for k, v in headers.items():
                    self.send_header(k, v)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_GET(self):
                self._relay("GET")

            def do_POST(self):
                self._relay("POST")

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self.thread.start()

    def count(self, path: str) -> int:
        return self.counts.get(path, 0)

    def reset(self) -> None:
        self.counts.clear()
        self.fail_token = 0
        self.jwks_down = False
        self.jwks_delay = 0.0

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    """One live TokenDealer whose issuer is the proxy's URL, so every client_lib request goes through it."""
    tmp = tmp_path_factory.mktemp("clientlib")
    port = free_port()
    server = None
    proxy = Proxy(f"http://127.0.0.1:{port}")
    env = server_env(tmp, TOKENDEALER_ISSUER=proxy.url, TOKENDEALER_KEYRING_RELOAD_INTERVAL="0.5")
    assert run_cli("init", env=env).returncode == 0
    secrets_by_id = {}
    for name, scopes in (("caller", "invoices:read invoices:write"), ("reader", "other:read")):
        out = run_cli("client", "create", name, "--scope", scopes, "--audience", BILLING, env=env)
        secrets_by_id[name] = json.loads(out.stdout)["client_secret"]
    server = LiveServer(env, workers=2, port=port).start()
    yield {"proxy": proxy, "server": server, "env": env, "secrets": secrets_by_id, "issuer": proxy.url, "keys": tmp / "keys"}
    server.stop()
    proxy.close()


@pytest.fixture
def proxy(stack):
    stack["proxy"].reset()
    return stack["proxy"]


@pytest.fixture
def live_factory(tmp_path: Path) -> Iterator[Callable[..., LiveServer]]:
    """Start servers sharing tmp_path's keys and database; all are stopped after the test."""
    started: list[LiveServer] = []

    def _start(workers: int = 2, **extra: str) -> LiveServer:
        port = free_port()
        env = server_env(tmp_path, TOKENDEALER_ISSUER=extra.pop("TOKENDEALER_ISSUER", f"http://127.0.0.1:{port}"), **extra)
        if not (tmp_path / "keys" / "manifest.json").exists():
            result = run_cli("init", env=env)
            assert result.returncode == 0, result.stderr
        server = LiveServer(env, workers=workers, port=port).start()
        started.append(server)
        return server

    yield _start
    for server in started:
        server.stop()


# ---- no secret, token or assertion in any log the suite produces ------------------------------------

ISSUED_SECRETS: set[str] = set()
JWT_RE = re.compile(r"eyJ[A-Za-z0-9_-]{8,}\.eyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]*")


class _Collect(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self.lines.append(record.getMessage())
        except Exception:  # a record that cannot format is not a leak
            pass


@pytest.fixture(scope="session", autouse=True)
def no_credentials_in_logs(tmp_path_factory):
    """After the whole suite: every log line (in-process records, server logs, audit logs) is scanned for
    an issued client secret or anything shaped like a JWT (tokens and assertions)."""
    original = clients_module.new_secret

    def recording_secret() -> str:
        secret = original()
        ISSUED_SECRETS.add(secret)
        return secret

    clients_module.new_secret = recording_secret
    collector = _Collect()
    logging.getLogger().addHandler(collector)
    yield
    logging.getLogger().removeHandler(collector)
    clients_module.new_secret = original
    texts = list(collector.lines)
    for path in Path(tmp_path_factory.getbasetemp()).rglob("*.log"):
        texts.append(path.read_text(errors="replace"))
    leaks = [m.group(0)[:40] for text in texts for m in JWT_RE.finditer(text)]
    leaks += [s[:6] + "…" for s in ISSUED_SECRETS for text in texts if s in text]
    assert not leaks, f"credentials found in logs: {leaks[:5]}"
