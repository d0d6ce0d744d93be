"""Findings of the attacker's review: replay after expiry, the issuer's own clock, re-created
client ids, assertion audiences, and workers agreeing on the keyring after an emergency rotation."""

from __future__ import annotations

import json
import secrets
import time

import jwt
import pytest
import sqlalchemy as sa
from cryptography.hazmat.primitives.asymmetric import ec

from client_lib.jose import public_jwk
from tokendealer import db
from tokendealer.app import create_app
from tokendealer.audit import AuditLog
from tokendealer.db import make_engine, upgrade_schema
from tokendealer.keyring import STAT_INTERVAL
from tokendealer.keystores import make_key_store

from .conftest import AUDIENCE, basic, fetch_token, initialise, make_config

TOKEN_URL = "http://localhost:5000/oauth/token"
ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"


@pytest.fixture
def key_client(registry):
    key = ec.generate_private_key(ec.SECP256R1())
    jwk = public_jwk(key.public_key(), "ES256")
    registry.create("keysvc", scopes=["read"], audiences=[AUDIENCE], jwks={"keys": [jwk]})
    return key, jwk["kid"]


def assertion(key, kid, clock, **overrides) -> str:
    now = int(clock.now)
    claims = {"iss": "keysvc", "sub": "keysvc", "aud": TOKEN_URL, "iat": now, "exp": now + 60, "jti": secrets.token_urlsafe(16)}
    claims.update(overrides)
    return jwt.encode(claims, key, algorithm="ES256", headers={"kid": kid})


def post_assertion(http, value: str):
    form = {"grant_type": "client_credentials", "client_assertion_type": ASSERTION_TYPE, "client_assertion": value}
    return http.post("/oauth/token", data=form)


# ---- finding 2: an assertion is single-use for as long as it could be accepted (exp + leeway) ---------


def test_assertion_past_exp_within_leeway_is_accepted_once(http, key_client, clock):
    key, kid = key_client
    value = assertion(key, kid, clock, iat=int(clock.now) - 70, exp=int(clock.now) - 10)
    assert post_assertion(http, value).status_code == 200
    for _ in range(3):
        replay = post_assertion(http, value)
        assert replay.status_code == 401
        assert replay.get_json()["error_description"] == "client_assertion jti was already used"


def test_assertion_replayed_after_its_exp_is_refused(http, key_client, clock):
    key, kid = key_client
    value = assertion(key, kid, clock, exp=int(clock.now) + 3)
    assert post_assertion(http, value).status_code == 200
    clock.advance(5)  # exp has passed, the leeway has not: the replay cache must still hold the jti
    post_assertion(http, assertion(key, kid, clock))  # another request, which purges expired entries
    replay = post_assertion(http, value)
    assert replay.status_code == 401
    assert replay.get_json()["error_description"] == "client_assertion jti was already used"


def test_replay_cache_keeps_entries_until_exp_plus_leeway(services, clock):
    verifier = services.authenticator.assertions
    assert verifier.replay.first_use("c", "j1", verifier.replay_until(clock.now + 3))
    clock.advance(3 + verifier.leeway - 1)
    assert not verifier.replay.first_use("c", "j1", verifier.replay_until(clock.now + 3))


# ---- finding 10: private_key_jwt aud names this server and nothing else -----------------------------


@pytest.mark.parametrize(
    "aud",
    [
        [TOKEN_URL, "https://elsewhere.example"],
        ["https://elsewhere.example", "http://localhost:5000"],
        [],
        [TOKEN_URL, TOKEN_URL, "x"],
    ],
)
def test_assertion_audience_list_with_other_values_is_refused(http, key_client, clock, aud):
    key, kid = key_client
    response = post_assertion(http, assertion(key, kid, clock, aud=aud))
    assert response.status_code == 401
    assert "aud" in response.get_json()["error_description"]


@pytest.mark.parametrize("aud", [TOKEN_URL, "http://localhost:5000", [TOKEN_URL], ["http://localhost:5000"]])
def test_assertion_audience_naming_this_server_is_accepted(http, key_client, clock, aud):
    key, kid = key_client
    assert post_assertion(http, assertion(key, kid, clock, aud=aud)).status_code == 200


# ---- finding 4: the issuer judges its own tokens by its own clock -----------------------------------


@pytest.fixture
def issued(http, make_client):
    cid, secret = make_client()
    other = make_client("other")
    return cid, secret, fetch_token(http, cid, secret)["access_token"], other


def test_expired_token_is_inactive_at_once(http, issued, clock):
    _, _, token, other = issued
    clock.advance(3600 - 1)
    assert http.post("/oauth/introspect", data={"token": token}, headers=basic(*other)).get_json()["active"] is True
    assert http.post("/verify_token", json={"access_token": token, "audience": AUDIENCE}).status_code == 200
    clock.advance(1 + 2)  # 2 s past exp: well inside any leeway, but this server issued it
    assert http.post("/oauth/introspect", data={"token": token}, headers=basic(*other)).get_json() == {"active": False}
    refused = http.post("/verify_token", json={"access_token": token, "audience": AUDIENCE})
    assert refused.status_code == 400 and "expired" in refused.get_json()["error_description"]


def test_token_from_the_future_is_refused(http, services, make_client, clock):
    """The server's own tokens cannot come from its future; an iat ahead of its clock means a forged or
    misissued token."""
    cid, secret = make_client()
    clock.advance(5)
    token = fetch_token(http, cid, secret)["access_token"]
    clock.advance(-5)
    refused = http.post("/verify_token", json={"access_token": token, "audience": AUDIENCE})
    assert refused.status_code == 400


# ---- finding 5: a deleted and re-created client id does not revive the old client's tokens ----------


def test_recreated_client_id_does_not_revive_old_tokens(http, registry, make_client, clock):
    other = make_client("other")
    cid, secret = make_client("svc")
    token = fetch_token(http, cid, secret)["access_token"]
    registry.delete(cid)
    _, new_secret = make_client("svc")  # the same id, the same second
    assert http.post("/oauth/introspect", data={"token": token}, headers=basic(*other)).get_json() == {"active": False}
    refused = http.post("/verify_token", json={"access_token": token, "audience": AUDIENCE})
    assert refused.status_code == 400
    clock.advance(1)
    fresh = fetch_token(http, cid, new_secret)["access_token"]
    assert http.post("/oauth/introspect", data={"token": fresh}, headers=basic(*other)).get_json()["active"] is True
    assert http.post("/oauth/introspect", data={"token": token}, headers=basic(*other)).get_json() == {"active": False}


def test_recreated_client_after_some_time_still_refuses_old_tokens(http, registry, make_client, clock):
    other = make_client("other")
    cid, secret = make_client("svc")
    token = fetch_token(http, cid, secret)["access_token"]
    clock.advance(100)
    registry.delete(cid)
    clock.advance(100)
    make_client("svc")
    assert http.post("/oauth/introspect", data={"token": token}, headers=basic(*other)).get_json() == {"active": False}


# ---- finding 1: failed attempts by anyone never refuse valid credentials --------------------------


def post_secret(http, client_id, secret, address):
    return http.post(
        "/oauth/token", data={"grant_type": "client_credentials"}, headers=basic(client_id, secret), environ_base={"REMOTE_ADDR": address}
    )


def audit_events(services, config):
    services.audit.close()
    return [json.loads(line) for line in open(config.audit_log)]


def test_brute_force_from_many_addresses_refuses_no_valid_request(http, services, config, make_client, clock):
    cid, secret = make_client()
    valid, attacker = [], []
    for i in range(300):
        attacker.append(post_secret(http, cid, secrets.token_urlsafe(32), f"10.1.{i % 30}.1").status_code)
        if i % 10 == 0:
            valid.append(post_secret(http, cid, secret, f"10.1.{i % 30}.1").status_code)
            valid.append(post_secret(http, cid, secret, "10.2.0.1").status_code)
    assert set(valid) == {200}
    assert attacker[:10] == [401] * 10 and set(attacker[10:]) == {429}
    events = [e for e in audit_events(services, config) if e["event"] != "token.issued"]
    # Ten refusals below the limit, then one aggregated line for the period, not one per attempt.
    assert len(events) == 11
    assert events[-1]["event"] == "auth.throttled" and events[-1]["client_id"] == cid


@pytest.mark.slow  # waits on the real clock
def test_throttled_lines_carry_the_count_of_the_period_before(tmp_path):
    """The failure windows are the `limits` library's, on the real clock: a one-second window."""
    config = make_config(tmp_path, auth_failure_limit="3/second")
    initialise(config)
    app = create_app(config)
    http = app.test_client()
    statuses = [post_secret(http, "svc", "wrong", "10.3.0.1").status_code for _ in range(10)]
    time.sleep(1.1)
    statuses += [post_secret(http, "svc", "wrong", "10.3.0.1").status_code for _ in range(5)]
    assert statuses == [401] * 3 + [429] * 7 + [401] * 3 + [429] * 2
    throttled = [e for e in audit_events(app.extensions["tokendealer"], config) if e["event"] == "auth.throttled"]
    assert [e["refused_in_previous_period"] for e in throttled] == [0, 6]
    app.extensions["tokendealer"].engine.dispose()


def test_private_key_jwt_client_passes_while_its_id_is_throttled(http, key_client, clock):
    key, kid = key_client
    for _ in range(15):
        assert post_secret(http, "keysvc", "guess", "10.4.0.1").status_code in (401, 429)
    assert post_assertion(http, assertion(key, kid, clock)).status_code == 200


def test_each_worker_enforces_its_share_of_a_memory_limit(tmp_path, clock):
    config = make_config(tmp_path, auth_failure_limit="10/minute")
    initialise(config, clock)
    app = create_app(config, clock=clock, processes=2)
    try:
        http = app.test_client()
        statuses = [post_secret(http, "svc", "wrong", "10.5.0.1").status_code for _ in range(6)]
        assert statuses == [401] * 5 + [429]
    finally:
        app.extensions["tokendealer"].engine.dispose()


# ---- finding 11: no worker answers from an older keyring than another has used -------------------------


def two_workers(config):
    """Two apps on one keyring, as two worker processes of `tokendealer serve` are."""
    return create_app(config), create_app(config)


@pytest.mark.parametrize("keyring", ["file", "database"])
def test_workers_agree_right_after_an_emergency_rotation(tmp_path, keyring):
    settings = {"keyring_reload_interval": 60}  # the stale window, were it not checked
    if keyring == "database":
        settings.update(keyring="database", key_encryption_key=secrets.token_urlsafe(32))
    config = make_config(tmp_path, **settings)
    upgrade_schema(make_engine(config.database_url))
    make_key_store(config).init()
    a, b = two_workers(config)
    try:
        store = a.extensions["tokendealer"].store
        _, secret = a.extensions["tokendealer"].clients.create("svc", scopes=["read"], audiences=[AUDIENCE])
        old_token = fetch_token(b.test_client(), "svc", secret)["access_token"]  # b has loaded the old keyring
        old_jwks = b.test_client().get("/.well-known/jwks.json").get_json()
        store.rotate(emergency=True)
        a.extensions["tokendealer"].keys.current(check=True)  # a has seen the rotation (it signed with it)
        new_token = fetch_token(a.test_client(), "svc", secret)["access_token"]
        verified = b.test_client().post("/verify_token", json={"access_token": new_token, "audience": AUDIENCE})
        assert verified.status_code == 200, verified.get_json()
        withdrawn = b.test_client().post("/verify_token", json={"access_token": old_token, "audience": AUDIENCE})
        assert withdrawn.status_code == 400
        jwks = b.test_client().get("/.well-known/jwks.json").get_json()
        assert {k["kid"] for k in jwks["keys"]}.isdisjoint({k["kid"] for k in old_jwks["keys"]} - {k["kid"] for k in jwks["keys"]})
        assert jwt.get_unverified_header(new_token)["kid"] in {k["kid"] for k in jwks["keys"]}
        assert jwt.get_unverified_header(old_token)["kid"] not in {k["kid"] for k in jwks["keys"]}
        assert b.test_client().post("/oauth/introspect", data={"token": new_token}, headers=basic("svc", secret)).get_json()["active"]
    finally:
        for app in (a, b):
            app.extensions["tokendealer"].engine.dispose()


def test_file_keyring_signs_with_the_rotated_key_within_a_stat_interval(tmp_path):
    """Not after `keyring_reload_interval`: a file keyring's manifest is looked at every STAT_INTERVAL."""
    config = make_config(tmp_path, keyring_reload_interval=60)
    store = initialise(config)
    app = create_app(config)
    try:
        _, secret = app.extensions["tokendealer"].clients.create("svc", scopes=["read"], audiences=[AUDIENCE])
        fetch_token(app.test_client(), "svc", secret)
        active = store.rotate(emergency=True).active.kid
        time.sleep(STAT_INTERVAL)
        assert jwt.get_unverified_header(fetch_token(app.test_client(), "svc", secret)["access_token"])["kid"] == active
    finally:
        app.extensions["tokendealer"].engine.dispose()


# ---- fault campaign findings: an audit log that cannot be written, a worker started without its keyring ----


def test_audit_log_that_cannot_be_written_fails_no_request(tmp_path, clock):
    config = make_config(tmp_path, audit_log="/dev/full")  # every write: ENOSPC
    initialise(config, clock)
    app = create_app(config, clock=clock)
    services = app.extensions["tokendealer"]
    try:
        _, secret = services.clients.create("svc", scopes=["read"], audiences=[AUDIENCE])
        for _ in range(3):
            assert fetch_token(app.test_client(), "svc", secret)["access_token"]
        assert services.audit.pending == 3  # kept for when the log takes writes again
    finally:
        services.engine.dispose()


def test_audit_lines_waiting_are_bounded():
    audit = AuditLog("/dev/full", max_pending=2)
    for i in range(5):
        audit.emit("test.event", n=i)
    assert audit.pending == 2
    audit.close()


def test_worker_started_while_the_keyring_is_unreadable_answers_503_then_recovers(tmp_path, clock):
    config = make_config(tmp_path)
    initialise(config, clock)
    setup = create_app(config, clock=clock)
    _, secret = setup.extensions["tokendealer"].clients.create("svc", scopes=["read"], audiences=[AUDIENCE])
    setup.extensions["tokendealer"].engine.dispose()
    keys = tmp_path / "keys"
    keys.rename(tmp_path / "keys.away")
    app = create_app(config, clock=clock)  # a respawned worker: must start, not crash-loop
    try:
        http = app.test_client()
        refused = http.post("/oauth/token", data={"grant_type": "client_credentials"}, headers=basic("svc", secret))
        assert refused.status_code == 503 and "Retry-After" in refused.headers
        assert http.get("/readyz").status_code == 503
        (tmp_path / "keys.away").rename(keys)
        clock.advance(config.keyring_reload_interval + 1)
        assert fetch_token(http, "svc", secret)["access_token"]
    finally:
        app.extensions["tokendealer"].engine.dispose()


def test_replay_cache_purges_expired_entries_once_a_minute(services, clock):
    replay = services.authenticator.assertions.replay
    count = sa.select(sa.func.count()).select_from(db.used_assertions)
    replay.first_use("c", "old", clock.now + 1)
    clock.advance(db.PURGE_GRACE + 2)  # "old" may go now, at the next purge
    replay.first_use("c", "new-1", clock.now + 1)  # the first use after the minute purges
    with services.engine.connect() as conn:
        assert conn.execute(count).scalar() == 1
    replay.first_use("c", "newer", clock.now - db.PURGE_GRACE - 1)  # already past purging, but within the minute
    clock.advance(30)
    replay.first_use("c", "new-2", clock.now + 1)
    with services.engine.connect() as conn:
        assert conn.execute(count).scalar() == 3
    clock.advance(31)
    replay.first_use("c", "new-3", clock.now + 1)
    with services.engine.connect() as conn:
        assert conn.execute(count).scalar() == 3  # "newer" purged, new-1..3 kept
