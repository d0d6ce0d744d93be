"""Abuse and faults: failed-authentication limits, request-rate limits, proxies, database faults, audit log."""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import time

import jwt
import pytest
import requests
from cryptography.hazmat.primitives.asymmetric import ec

from client_lib.jose import public_jwk
from tokendealer.app import create_app

from .conftest import AUDIENCE, basic, initialise, make_config, run_cli, server_env

GRANT = {"grant_type": "client_credentials"}


def post(http, creds, address="10.0.0.1", **headers):
    return http.post("/oauth/token", data=GRANT, headers={**basic(*creds), **headers}, environ_base={"REMOTE_ADDR": address})


def test_failures_past_the_limit_get_429_and_valid_credentials_still_pass(http, make_client):
    cid, secret = make_client()
    for _ in range(10):
        assert post(http, (cid, "wrong")).status_code == 401
    refused = post(http, (cid, "wrong"))
    assert refused.status_code == 429
    assert refused.get_json()["error"] == "slow_down"
    assert 1 <= int(refused.headers["Retry-After"]) <= 61
    # Valid credentials are never refused: the right secret passes, from the attacker's address and from any other.
    assert post(http, (cid, secret)).status_code == 200
    assert post(http, (cid, secret), address="10.9.9.9").status_code == 200
    assert post(http, (cid, "wrong"), address="10.9.9.9").status_code == 429


def test_good_client_not_locked_out_by_anothers_failures(http, make_client):
    good = make_client("good")
    make_client("victim")
    for _ in range(12):
        post(http, ("victim", "wrong"))
    assert post(http, good).status_code == 200


def test_unknown_client_ids_are_limited_too(http):
    for _ in range(10):
        assert post(http, ("ghost", "x")).status_code == 401
    assert post(http, ("ghost", "x")).status_code == 429


def test_failures_limited_per_address(tmp_path, clock):
    config = make_config(tmp_path, auth_failure_limit_per_address="5/minute")
    initialise(config, clock)
    app = create_app(config, clock=clock)
    _, secret = app.extensions["tokendealer"].clients.create("svc", scopes=["read"], audiences=[AUDIENCE])
    http = app.test_client()
    for i in range(5):
        assert post(http, (f"guess{i}", "x"), address="10.0.0.7").status_code == 401
    assert post(http, ("guess9", "x"), address="10.0.0.7").status_code == 429
    # A valid client behind the same address (a NAT gateway, a Kubernetes node) is not refused.
    assert post(http, ("svc", secret), address="10.0.0.7").status_code == 200
    assert post(http, ("guess9", "x"), address="10.0.0.8").status_code == 401


def test_request_rate_limit_off_by_default(http, make_client):
    creds = make_client()
    assert all(post(http, creds).status_code == 200 for _ in range(30))


def test_request_rate_limit_per_client(tmp_path):
    config = make_config(tmp_path, ratelimit="5/minute")
    initialise(config)
    app = create_app(config)
    store = app.extensions["tokendealer"].clients
    _, secret = store.create("svc", scopes=["read"], audiences=[AUDIENCE])
    _, other = store.create("other", scopes=["read"], audiences=[AUDIENCE])
    http = app.test_client()
    statuses = [post(http, ("svc", secret), address=f"10.0.1.{i}").status_code for i in range(6)]
    assert statuses == [200] * 5 + [429]
    refused = post(http, ("svc", secret), address="10.0.2.1")
    assert refused.status_code == 429
    assert refused.get_json()["error"] == "slow_down"
    assert int(refused.headers["Retry-After"]) >= 1
    assert post(http, ("other", other), address="10.0.3.1").status_code == 200


def test_request_rate_limit_per_client_counts_no_one_elses_failures(tmp_path):
    """SPEC §7: with TOKENDEALER_RATELIMIT, requests merely *claiming* a client id (wrong secret, from any
    address) used up that client's request budget, so a stranger could deny it its tokens."""
    config = make_config(tmp_path, ratelimit="5/minute")
    initialise(config)
    app = create_app(config)
    _, secret = app.extensions["tokendealer"].clients.create("svc", scopes=["read"], audiences=[AUDIENCE])
    http = app.test_client()
    assert {post(http, ("svc", "guess"), address=f"10.0.5.{i}").status_code for i in range(6)} <= {401, 429}
    assert post(http, ("svc", secret), address="10.0.6.1").status_code == 200
    # Requests naming no client (as the jwt-bearer grant's) shared one "anonymous" bucket that junk could fill.
    junk = [http.post("/oauth/token", data=GRANT, environ_base={"REMOTE_ADDR": f"10.0.7.{i}"}).status_code for i in range(6)]
    assert junk == [401] * 6


def test_request_rate_limit_per_address(tmp_path):
    config = make_config(tmp_path, ratelimit="3/minute")
    initialise(config)
    app = create_app(config)
    store = app.extensions["tokendealer"].clients
    creds = [(name, store.create(name, scopes=["read"], audiences=[AUDIENCE])[1]) for name in ("a", "b", "c", "d")]
    http = app.test_client()
    assert [post(http, c, address="10.0.4.4").status_code for c in creds] == [200, 200, 200, 429]


def test_forwarded_for_ignored_without_trusted_proxy(http, make_client):
    cid, _ = make_client()
    for i in range(10):
        post(http, (cid, "wrong"), address="10.0.0.1", **{"X-Forwarded-For": f"192.0.2.{i}"})
    # Every failure counted against the real peer address and the client id.
    assert post(http, (cid, "wrong"), address="10.0.0.1", **{"X-Forwarded-For": "192.0.2.99"}).status_code == 429


def test_forwarded_for_used_with_trusted_proxy(tmp_path):
    config = make_config(tmp_path, trusted_proxies=1, auth_failure_limit_per_address="3/minute")
    initialise(config)
    app = create_app(config)
    http = app.test_client()
    for i in range(3):
        post(http, (f"x{i}", "y"), address="10.0.0.1", **{"X-Forwarded-For": "198.51.100.1"})
    assert post(http, ("x9", "y"), address="10.0.0.1", **{"X-Forwarded-For": "198.51.100.1"}).status_code == 429
    assert post(http, ("x9", "y"), address="10.0.0.1", **{"X-Forwarded-For": "198.51.100.2"}).status_code == 401


def test_too_many_parameters(http, make_client):
    cid, secret = make_client()
    response = http.post("/oauth/token", data={**GRANT, **{f"p{i}": "1" for i in range(40)}}, headers=basic(cid, secret))
    assert response.status_code == 400
    assert response.get_json()["error"] == "invalid_request"


def test_database_fault_is_503_then_recovers(tmp_path, clock):
    """The database file disappears (a directory stands in its place): 503, then recovery when it returns."""
    config = make_config(tmp_path, client_cache_seconds=0)  # every request reads the client from the database
    initialise(config, clock)
    app = create_app(config, clock=clock)
    services, http = app.extensions["tokendealer"], app.test_client()
    cid, secret = "svc", services.clients.create("svc", scopes=["read"], audiences=[AUDIENCE])[1]
    assert post(http, (cid, secret)).status_code == 200
    path = config.database_url.removeprefix("sqlite:///")
    services.engine.dispose()  # pooled connections would keep the old inode open
    shutil.move(path, path + ".away")
    os.mkdir(path)
    broken = post(http, (cid, secret))
    assert broken.status_code == 503
    assert broken.get_json()["error"] == "temporarily_unavailable"
    assert "Retry-After" in broken.headers
    ready = http.get("/readyz")
    assert ready.status_code == 503 and ready.get_json()["problems"][0].startswith("database")
    os.rmdir(path)
    shutil.move(path + ".away", path)
    assert post(http, (cid, secret)).status_code == 200
    assert http.get("/readyz").status_code == 200


def test_audit_log_lines(http, make_client, config):
    cid, secret = make_client()
    token = post(http, (cid, secret)).get_json()["access_token"]
    post(http, (cid, "wrong"))
    http.post("/oauth/revoke", data={"token": token}, headers=basic(cid, secret))
    http.application.extensions["tokendealer"].audit.close()
    events = [json.loads(line) for line in open(config.audit_log)]
    issued = next(e for e in events if e["event"] == "token.issued")
    assert issued["client_id"] == cid and issued["jti"] and issued["audience"] == [AUDIENCE] and issued["scope"] == "read write"
    assert issued["remote_addr"] == "10.0.0.1" and issued["outcome"] == "issued" and issued["time"]
    refused = next(e for e in events if e["event"] == "token.refused")
    assert refused["error"] == "invalid_client" and refused["client_id"] == cid
    assert any(e["event"] == "token.revoked" for e in events)
    text = open(config.audit_log).read()
    assert secret not in text and token not in text and "wrong" not in text


@pytest.mark.slow
def test_cli_changes_are_audited(tmp_path):
    env = server_env(tmp_path)
    run_cli("init", env=env)
    created = run_cli("client", "create", "svc", "--scope", "a", "--audience", AUDIENCE, env=env)
    secret = json.loads(created.stdout)["client_secret"]
    run_cli("client", "disable", "svc", env=env)
    run_cli("client", "rotate-secret", "svc", env=env)
    run_cli("keys", "rotate", env=env)
    events = [json.loads(line) for line in (tmp_path / "audit.log").read_text().splitlines()]
    names = [e["event"] for e in events]
    for expected in ("client.created", "client.disabled", "client.secret_rotated", "keys.rotated"):
        assert expected in names
    assert secret not in (tmp_path / "audit.log").read_text()


def test_request_id_header(http):
    assert len(http.get("/healthz").headers["X-Request-ID"]) == 32
    assert http.get("/healthz", headers={"X-Request-ID": "abc-123"}).headers["X-Request-ID"] == "abc-123"
    assert http.get("/healthz", headers={"X-Request-ID": "bad id <script>"}).headers["X-Request-ID"] != "bad id <script>"


@pytest.mark.parametrize("path", ["/oauth/token", "/oauth/introspect", "/oauth/revoke", "/verify_token"])
def test_binary_and_huge_input_never_5xx(http, path):
    for body, ctype in [
        (bytes(range(256)) * 10, "application/x-www-form-urlencoded"),
        (b"\xff\xfe" * 1000, "application/json"),
        (b"x" * 70000, "text/plain"),
    ]:
        response = http.post(path, data=body, content_type=ctype)
        assert 400 <= response.status_code < 500, (path, ctype, response.status_code)


def test_metrics_under_the_production_server(live_factory):
    server = live_factory(workers=2)
    created = run_cli("client", "create", "svc", "--scope", "read", "--audience", AUDIENCE, env=server.env)
    secret = json.loads(created.stdout)["client_secret"]
    for _ in range(10):
        assert requests.post(server.url + "/oauth/token", data=GRANT, auth=("svc", secret), timeout=5).status_code == 200
    # 25 failures over 2 workers: at least one worker passes its limit of 10 and answers 429.
    statuses = [requests.post(server.url + "/oauth/token", data=GRANT, auth=("svc", "wrong"), timeout=5).status_code for _ in range(25)]
    assert 429 in statuses
    # Each worker publishes its counts for the others' scrapes twice a second (bounded generously: a loaded CI
    # machine can starve that thread for a while).
    deadline = time.monotonic() + 10
    settled = (
        'tokendealer_tokens_issued_total{client_id="svc"} 10.0',
        'tokendealer_request_duration_seconds_count{endpoint="/oauth/token"} 35.0',
    )
    while not all(line in (text := requests.get(server.url + "/metrics", timeout=5).text) for line in settled):
        assert time.monotonic() < deadline, text
        time.sleep(0.2)
    refused_401 = f'tokendealer_tokens_refused_total{{client_id="",error="invalid_client"}} {statuses.count(401)}.0'
    refused_429 = f'tokendealer_tokens_refused_total{{client_id="",error="slow_down"}} {statuses.count(429)}.0'
    assert refused_401 in text and refused_429 in text
    assert f'tokendealer_rate_limit_refusals_total{{endpoint="/oauth/token"}} {statuses.count(429)}.0' in text
    assert 'tokendealer_request_duration_seconds_count{endpoint="/oauth/token"} 35.0' in text
    for name in (
        "tokendealer_seconds_since_last_rotation",
        "tokendealer_active_key_age_seconds",
        "tokendealer_keyring_reload_failures",
        "tokendealer_rate_limit_refusals",
    ):
        assert name in text


@pytest.mark.slow
def test_locked_database_is_503_for_writes_and_tokens_still_issue(http, make_client, config, services):
    """Another process holds SQLite's write lock: revocation (a write) answers 503 after the busy timeout,
    while token issuance (reads only) goes on; both recover when the lock is released."""
    cid, secret = make_client()
    token = post(http, (cid, secret)).get_json()["access_token"]
    path = config.database_url.removeprefix("sqlite:///")
    holder = sqlite3.connect(path, timeout=1, isolation_level=None)
    holder.execute("BEGIN EXCLUSIVE")
    try:
        assert post(http, (cid, secret)).status_code == 200
        locked = http.post("/oauth/revoke", data={"token": token}, headers=basic(cid, secret))
        assert locked.status_code == 503
        assert locked.get_json()["error"] == "temporarily_unavailable"
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    assert http.post("/oauth/revoke", data={"token": token}, headers=basic(cid, secret)).status_code == 200


def test_outage_during_authentication_is_not_counted_as_a_failure(tmp_path):
    """A 503 while checking an assertion (replay cache unreachable) must not count toward the lockout."""
    config = make_config(tmp_path, replay_cache="redis://127.0.0.1:1/0", auth_failure_limit="2/minute")
    initialise(config)
    app = create_app(config)
    key = ec.generate_private_key(ec.SECP256R1())
    jwk = public_jwk(key.public_key(), "ES256")
    app.extensions["tokendealer"].clients.create("keysvc", scopes=["read"], audiences=[AUDIENCE], jwks={"keys": [jwk]})
    http = app.test_client()
    for i in range(4):
        now = int(time.time())
        claims = {"iss": "keysvc", "sub": "keysvc", "aud": "http://localhost:5000/oauth/token", "exp": now + 60, "jti": f"j{i}"}
        form = {
            **GRANT,
            "client_assertion_type": "urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
            "client_assertion": jwt.encode(claims, key, algorithm="ES256"),
        }
        assert http.post("/oauth/token", data=form).status_code == 503  # never 429
    events = [json.loads(line) for line in open(config.audit_log)]
    assert {e["error"] for e in events if e["event"] == "token.refused"} == {"temporarily_unavailable"}
