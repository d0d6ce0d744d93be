"""Information exposure and log injection (security review findings 8, 9 and 10)."""

from __future__ import annotations

import gc
import json
import os
import re
import socket
import stat
import time
import tracemalloc

import pytest

from tokendealer.app import create_app
from tokendealer.config import Config, ConfigError
from tokendealer.db import make_engine, upgrade_schema
from tokendealer.logs import AccessLog, LineBuffer

from .conftest import AUDIENCE, basic, fetch_token, make_config, run_cli


@pytest.mark.parametrize(("method", "path"), [("GET", "/healthz"), ("POST", "/oauth/token")])
def test_request_id_with_a_trailing_newline_is_not_echoed(http, method, path):
    # Set in the environ: werkzeug's test client itself refuses a header value with a newline.
    response = http.open(path, method=method, environ_overrides={"HTTP_X_REQUEST_ID": "abc\n"})
    assert response.headers["X-Request-ID"] != "abc\n"
    assert len(response.headers["X-Request-ID"]) == 32


# ---- finding 8: the access log escapes what the client controls ------------------------------------------

ACCESS_LINE_RE = re.compile(r'^127\.0\.0\.1 "([A-Z]+) (\S*) (HTTP/1\.[01])" (\d{3}) \d+\.\d{3}ms$')


def raw_request(server, request_line: bytes) -> bytes:
    """Send one request line as given (no client library normalises it) and return the raw answer."""
    with socket.create_connection(("127.0.0.1", server.port), timeout=5) as sock:
        sock.sendall(request_line + b"\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    return answer


def access_lines(server, count: int) -> list[str]:
    """The server's access lines, but for its readiness checks, once `count` of them have been written
    (they are buffered: written within a second)."""
    deadline = time.monotonic() + 5
    while True:
        lines = [line for line in server.log().splitlines() if line.startswith("127.0.0.1 ") and "/readyz" not in line]
        if len(lines) >= count or time.monotonic() > deadline:
            return lines
        time.sleep(0.05)


def test_access_log_escapes_control_characters_and_quotes(live_factory):
    server = live_factory(workers=1)
    forged = b"/x%0d%0a127.0.0.1%20%22GET%20/forged%20HTTP/1.1%22%20200%200.100ms"
    for target in (forged, b"/%1b[31mred%1b[0m", b"/a%22b%5c", b"/caf%C3%A9%C2%9B", b"/healthz?client_secret=hunter2"):
        assert raw_request(server, b"GET " + target + b" HTTP/1.1").startswith(b"HTTP/1.1 ")
    lines = access_lines(server, 5)
    assert len(lines) == 5, lines
    assert all(ACCESS_LINE_RE.match(line) for line in lines), lines
    paths = [ACCESS_LINE_RE.match(line).group(2) for line in lines]
    assert paths == [
        r"/x\x0d\x0a127.0.0.1\x20\x22GET\x20/forged\x20HTTP/1.1\x22\x20200\x200.100ms",
        r"/\x1b[31mred\x1b[0m",
        r"/a\x22b\x5c",
        r"/caf\xc3\xa9\xc2\x9b",
        "/healthz",
    ]
    log = server.log()
    assert "/forged" not in log.replace(paths[0], "")
    assert "\x1b" not in log and "hunter2" not in log


class _Discard:
    def append(self, line: bytes) -> None:
        pass


def test_access_log_remembers_no_long_request_lines():
    """Only short request lines are remembered: 256 requests for a 60 000-character path (granian takes
    URIs up to 64 KB) would otherwise hold ~30 MB per worker, control characters (escaped to four) more."""
    log = AccessLog(_Discard())  # type: ignore[arg-type]
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for i in range(300):
            log.record("10.0.0.1", "GET", f"/{i}" + "a" * 60000, "HTTP/1.1", 404, time.perf_counter())
        held = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert held < 4_000_000, f"{held / 1e6:.0f} MB held by access-log fields"


def test_access_lines_are_buffered_and_flushed_whole(tmp_path):
    """Lines go out in batches of whole lines within the flush interval, and all of them on flush()."""
    read_end, write_end = os.pipe()
    log = AccessLog(LineBuffer(write_end, max_bytes=1 << 20, interval=0.2))
    started = time.perf_counter()
    for _ in range(3):
        log.record("10.0.0.9", "GET", "/x\x1b", "HTTP/1.1", 500, started)
    time.sleep(0.6)  # the timer thread has written them
    os.set_blocking(read_end, False)
    written = os.read(read_end, 1 << 16)
    assert re.fullmatch(rb'(10\.0\.0\.9 "GET /x\\x1b HTTP/1\.1" 500 \d+\.\d{3}ms\n){3}', written)
    log.record("10.0.0.9", "GET", "/", "HTTP/1.1", 200, started)
    log.flush()
    assert os.read(read_end, 1 << 16).count(b"\n") == 1
    log.out.close()
    os.close(write_end)
    os.close(read_end)


# ---- finding 9: /metrics behind an address allow-list and an optional bearer token --------------------------

METRICS_TOKEN = "metrics-token-0123456789"


@pytest.fixture
def guarded_http(tmp_path, key_store):
    config = make_config(tmp_path, metrics_token=METRICS_TOKEN, metrics_allow="10.1.0.0/16, 127.0.0.1")
    app = create_app(config)
    yield app.test_client()
    app.extensions["tokendealer"].engine.dispose()


def scrape(http, address: str, **headers: str):
    return http.get("/metrics", environ_base={"REMOTE_ADDR": address}, headers=headers)


@pytest.mark.parametrize("address", ["127.0.0.1", "127.8.9.10", "::1", "::ffff:127.0.0.1"])
def test_metrics_default_allows_loopback_only(http, address):
    assert scrape(http, address).status_code == 200


@pytest.mark.parametrize("address", ["203.0.113.9", "10.0.0.1", "::2", "not-an-address"])
def test_metrics_default_refuses_other_addresses(http, make_client, address):
    make_client("secret-service")
    response = scrape(http, address)
    assert response.status_code == 403
    assert response.get_json()["error"] == "access_denied"
    assert b"secret-service" not in response.data


def test_metrics_token_is_required_when_set(guarded_http):
    missing = scrape(guarded_http, "10.1.2.3")
    assert missing.status_code == 401 and missing.get_json()["error"] == "invalid_token"
    assert missing.headers["WWW-Authenticate"].startswith("Bearer ")
    wrong = scrape(guarded_http, "10.1.2.3", Authorization="Bearer " + METRICS_TOKEN[:-1] + "x")
    assert wrong.status_code == 401 and "tokendealer_" not in wrong.text
    assert scrape(guarded_http, "10.1.2.3", Authorization="Basic " + METRICS_TOKEN).status_code == 401
    assert scrape(guarded_http, "10.1.2.3", Authorization="Bearer " + METRICS_TOKEN).status_code == 200
    assert scrape(guarded_http, "127.0.0.1", Authorization="bearer " + METRICS_TOKEN).status_code == 200
    # The token does not open the endpoint to addresses outside the list.
    assert scrape(guarded_http, "127.0.0.2", Authorization="Bearer " + METRICS_TOKEN).status_code == 403


@pytest.mark.parametrize(
    ("name", "value"),
    [("metrics_allow", "10.0.0.0/33"), ("metrics_allow", "localhost"), ("metrics_token", "short"), ("metrics_token", "has a space in it!")],
)
def test_metrics_settings_are_validated(name, value):
    with pytest.raises(ConfigError, match=f"^TOKENDEALER_{name.upper()} "):
        Config.load(environ={f"TOKENDEALER_{name.upper()}": value})


# ---- finding 9: /readyz names problems, the server log holds the detail ----------------------------------------


def test_readyz_does_not_echo_paths(http, services, config, caplog):
    (config.keys_dir / "manifest.json").write_text("{ not json")
    os.chmod(config.keys_dir / "manifest.json", 0o600)
    services.keys.current(check=True)
    response = http.get("/readyz")
    assert response.status_code == 503
    assert response.get_json()["problems"] == ["keyring: cannot be loaded; see the server log"]
    assert str(config.keys_dir) not in response.text
    assert any(str(config.keys_dir) in r.getMessage() for r in caplog.records)


def test_readyz_database_problem_is_generic(tmp_path, config, key_store, caplog):
    (tmp_path / "a-directory").mkdir()
    broken = make_config(tmp_path, database_url=f"sqlite:///{tmp_path / 'a-directory'}")
    response = create_app(broken).test_client().get("/readyz")
    assert response.status_code == 503
    assert response.get_json()["problems"] == ["database: does not answer; see the server log"]
    assert any("OperationalError" in r.getMessage() for r in caplog.records)


# ---- finding 9: discovery publishes only the public scopes ------------------------------------------------------


def test_discovery_publishes_no_scope_by_default(http, make_client):
    make_client("internal", scopes=("payroll:admin", "read"))
    assert http.get("/.well-known/oauth-authorization-server").get_json()["scopes_supported"] == []


def test_discovery_publishes_the_public_scopes(tmp_path, key_store):
    app = create_app(make_config(tmp_path, public_scopes="read  profile read"))
    app.extensions["tokendealer"].clients.create("internal", scopes=["payroll:admin", "read"], audiences=[AUDIENCE])
    for path in ("/.well-known/oauth-authorization-server", "/.well-known/openid-configuration"):
        assert app.test_client().get(path).get_json()["scopes_supported"] == ["read", "profile"]
    app.extensions["tokendealer"].engine.dispose()


def test_public_scopes_are_validated():
    with pytest.raises(ConfigError, match="^TOKENDEALER_PUBLIC_SCOPES "):
        Config.load(environ={"TOKENDEALER_PUBLIC_SCOPES": 'read "quoted"'})


# ---- finding 9: /verify_token, optionally authenticated, rate-limited per address ----------------------------


def verify(http, token: str, address: str = "127.0.0.1", headers: dict[str, str] | None = None, **fields: str):
    body = {"access_token": token, "audience": AUDIENCE, **fields}
    return http.post("/verify_token", json=body, headers=headers or {}, environ_base={"REMOTE_ADDR": address})


def test_verify_token_client_authentication_when_configured(tmp_path, key_store):
    app = create_app(make_config(tmp_path, verify_token_auth="true"))
    http = app.test_client()
    client, secret = app.extensions["tokendealer"].clients.create("svc", scopes=["read"], audiences=[AUDIENCE])
    token = fetch_token(http, "svc", secret)["access_token"]
    anonymous = verify(http, token)
    assert anonymous.status_code == 401 and anonymous.get_json()["error"] == "invalid_client"
    assert "client_id" not in anonymous.text
    assert verify(http, token, headers=basic("svc", "wrong")).status_code == 401
    assert verify(http, token, headers=basic("svc", secret)).get_json()["client_id"] == "svc"
    assert verify(http, token, client_id="svc", client_secret=secret).status_code == 200
    form = {"access_token": token, "audience": AUDIENCE, "client_id": "svc", "client_secret": secret}
    assert http.post("/verify_token", data=form).status_code == 200
    app.extensions["tokendealer"].engine.dispose()


def test_verify_token_is_open_by_default(http, make_client):
    cid, secret = make_client()
    token = fetch_token(http, cid, secret)["access_token"]
    assert verify(http, token).status_code == 200


def test_verify_token_rate_limit_per_address(tmp_path, key_store):
    app = create_app(make_config(tmp_path, verify_token_limit="3/minute"))
    http = app.test_client()
    assert [verify(http, "garbage", "10.0.0.1").status_code for _ in range(3)] == [400, 400, 400]
    refused = verify(http, "garbage", "10.0.0.1")
    assert refused.status_code == 429 and refused.get_json()["error"] == "slow_down"
    assert 1 <= int(refused.headers["Retry-After"]) <= 61
    assert verify(http, "garbage", "10.0.0.2").status_code == 400
    app.extensions["tokendealer"].engine.dispose()


def test_verify_token_rate_limit_is_on_by_default(http):
    assert Config.load(environ={}).verify_token_limit == "20/second"
    statuses = [verify(http, "garbage").status_code for _ in range(30)]
    assert 429 in statuses and set(statuses) == {400, 429}


def test_verify_token_rate_limit_can_be_turned_off(tmp_path, key_store):
    app = create_app(make_config(tmp_path, verify_token_limit="off"))
    assert {verify(app.test_client(), "garbage").status_code for _ in range(30)} == {400}
    app.extensions["tokendealer"].engine.dispose()
    with pytest.raises(ConfigError, match="^TOKENDEALER_VERIFY_TOKEN_LIMIT "):
        Config.load(environ={"TOKENDEALER_VERIFY_TOKEN_LIMIT": "lots"})


# ---- finding 9: the SQLite database is private to its owner ----------------------------------------------------


def test_sqlite_database_and_its_wal_are_created_0600(tmp_path):
    old_umask = os.umask(0o022)
    try:
        engine = make_engine(f"sqlite:///{tmp_path / 'new-dir' / 'td.db'}")
        upgrade_schema(engine)
        with engine.connect() as conn:
            conn.exec_driver_sql("SELECT count(*) FROM clients")
            files = sorted(p.name for p in (tmp_path / "new-dir").iterdir())
            modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in (tmp_path / "new-dir").iterdir()}
        engine.dispose()
    finally:
        os.umask(old_umask)
    assert files == ["td.db", "td.db-shm", "td.db-wal"]
    assert modes == {"td.db": 0o600, "td.db-shm": 0o600, "td.db-wal": 0o600}
    assert stat.S_IMODE((tmp_path / "new-dir").stat().st_mode) == 0o700


# ---- finding 9: `tokendealer token` keeps the secret out of argv --------------------------------------------------


def test_token_command_reads_the_secret_without_argv(live_factory, tmp_path):
    server = live_factory(workers=1)
    created = run_cli("client", "create", "svc", "--scope", "read", "--audience", AUDIENCE, env=server.env)
    secret = json.loads(created.stdout)["client_secret"]
    (tmp_path / "secret").write_text(secret + "\n")
    base = ("token", "--client-id", "svc", "--json")
    for args, env, stdin in [
        ((), {"TOKENDEALER_CLIENT_SECRET": secret}, None),
        (("--client-secret-file", str(tmp_path / "secret")), {}, None),
        (("--client-secret", "-"), {}, secret + "\n"),
    ]:
        result = run_cli(*base, *args, env={**server.env, **env}, input=stdin)
        assert result.returncode == 0, result.stderr
        assert result.stderr == "" and json.loads(result.stdout)["token_type"] == "Bearer"
    literal = run_cli(*base, "--client-secret", secret, env=server.env)
    assert literal.returncode == 0
    assert literal.stderr.count("\n") == 1 and literal.stderr.startswith("warning: --client-secret ")
    both = run_cli(*base, "--client-secret", "-", "--client-secret-file", str(tmp_path / "secret"), env=server.env, input=secret)
    assert both.returncode == 2
    missing = run_cli(*base, "--client-secret-file", str(tmp_path / "absent"), env=server.env)
    assert missing.returncode == 2 and "absent" in missing.stderr and "Traceback" not in missing.stderr


# ---- finding 9: serve warns about a plain-http issuer off loopback ------------------------------------------------


def test_serve_warns_about_a_plain_http_issuer_off_loopback(live_factory):
    server = live_factory(workers=1, TOKENDEALER_ISSUER="http://auth.example.com")
    warnings = [line for line in server.log().splitlines() if line.startswith("warning:")]
    assert len(warnings) == 1 and "http://auth.example.com" in warnings[0] and "https" in warnings[0]


@pytest.mark.parametrize(
    ("issuer", "warned"),
    [
        ("http://auth.example.com", True),
        ("http://10.0.0.5:5000", True),
        ("http://localhost:5000", False),
        ("http://127.0.0.1:8080", False),
        ("http://[::1]:5000", False),
        ("https://auth.example.com", False),
    ],
)
def test_plain_http_off_loopback(issuer, warned):
    assert Config.load(environ={}, issuer=issuer).plain_http_off_loopback is warned
