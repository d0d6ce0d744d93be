"""Several instances sharing PostgreSQL and Redis: replay cache, limits, client changes, keyring."""

from __future__ import annotations

import json
import secrets
import threading
import time

import jwt
import pytest
import redis
import requests
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from client_lib.jose import public_jwk
from tokendealer import db
from tokendealer.app import create_app
from tokendealer.audit import AuditLog
from tokendealer.authentication import FailureThrottle
from tokendealer.errors import TooManyRequests
from tokendealer.keystores import make_key_store

from .conftest import AUDIENCE, REDIS_URL, LiveServer, basic, fetch_token, free_port, make_config, postgres_schema, run_cli, server_env

pytestmark = [pytest.mark.postgres, pytest.mark.redis, pytest.mark.live]

KEK = secrets.token_urlsafe(32)


@pytest.fixture
def redis_url():
    """The machine's Redis (database 15); the test fails, never skips, when it is not running."""
    redis.Redis.from_url(REDIS_URL).ping()
    return REDIS_URL


def two_apps(tmp_path, url, **settings):
    config = make_config(tmp_path, database_url=url, keyring="database", key_encryption_key=KEK, **settings)
    engine = db.make_engine(url)
    db.upgrade_schema(engine)
    make_key_store(config, engine=engine).init()
    engine.dispose()
    return create_app(config), create_app(config)


def test_assertion_replayed_to_another_instance_is_refused(tmp_path, redis_url):
    key = ec.generate_private_key(ec.SECP256R1())
    jwk = public_jwk(key.public_key(), "ES256")
    with postgres_schema() as url:
        a, b = two_apps(tmp_path, url, replay_cache=redis_url)
        a.extensions["tokendealer"].clients.create("keysvc", scopes=["read"], audiences=[AUDIENCE], jwks={"keys": [jwk]})
        now = int(time.time())
        claims = {
            "iss": "keysvc",
            "sub": "keysvc",
            "aud": "http://localhost:5000/oauth/token",
            "iat": now,
            "exp": now + 60,
            "jti": secrets.token_urlsafe(16),
        }
        assertion = jwt.encode(claims, key, algorithm="ES256", headers={"kid": jwk["kid"]})
        form = {
            "grant_type": "client_credentials",
            "client_assertion_type": "urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
            "client_assertion": assertion,
        }
        assert a.test_client().post("/oauth/token", data=form).status_code == 200
        replay = b.test_client().post("/oauth/token", data=form)
        assert replay.status_code == 401 and "already used" in replay.get_json()["error_description"]
        for app in (a, b):
            app.extensions["tokendealer"].engine.dispose()


def test_failure_limit_is_global_with_redis(tmp_path, redis_url):
    client_id = "svc-" + secrets.token_hex(4)
    with postgres_schema() as url:
        a, b = two_apps(tmp_path, url, ratelimit_storage=redis_url)
        _, secret = a.extensions["tokendealer"].clients.create(client_id, scopes=["read"], audiences=[AUDIENCE])
        grant = {"grant_type": "client_credentials"}
        for i in range(10):
            app = a if i % 2 else b
            assert app.test_client().post("/oauth/token", data=grant, headers=basic(client_id, "wrong")).status_code == 401
        assert a.test_client().post("/oauth/token", data=grant, headers=basic(client_id, "wrong")).status_code == 429
        assert b.test_client().post("/oauth/token", data=grant, headers=basic(client_id, "wrong")).status_code == 429
        assert b.test_client().post("/oauth/token", data=grant, headers=basic(client_id, secret)).status_code == 200
        for app in (a, b):
            app.extensions["tokendealer"].engine.dispose()


def test_limit_storage_down_refuses_no_valid_client(tmp_path):
    """The failure counters are only consulted for failed attempts: with Redis down valid credentials pass
    and failures are answered 401."""
    with postgres_schema() as url:
        a, _ = two_apps(tmp_path, url, ratelimit_storage="redis://127.0.0.1:1/0")
        _, secret = a.extensions["tokendealer"].clients.create("svc", scopes=["read"], audiences=[AUDIENCE])
        grant = {"grant_type": "client_credentials"}
        assert a.test_client().post("/oauth/token", data=grant, headers=basic("svc", secret)).status_code == 200
        assert a.test_client().post("/oauth/token", data=grant, headers=basic("svc", "wrong")).status_code == 401
        a.extensions["tokendealer"].engine.dispose()


def test_client_disabled_on_one_instance_is_refused_by_the_other(tmp_path):
    with postgres_schema() as url:
        a, b = two_apps(tmp_path, url, client_cache_seconds=1)
        _, secret = a.extensions["tokendealer"].clients.create("svc", scopes=["read"], audiences=[AUDIENCE])
        assert fetch_token(b.test_client(), "svc", secret)
        a.extensions["tokendealer"].clients.set_enabled("svc", False)
        time.sleep(1.2)
        grant = {"grant_type": "client_credentials"}
        assert b.test_client().post("/oauth/token", data=grant, headers=basic("svc", secret)).status_code == 401
        for app in (a, b):
            app.extensions["tokendealer"].engine.dispose()


def test_three_instances_behind_a_balancer(tmp_path, redis_url):
    """Three `tokendealer serve` on PostgreSQL + Redis with the database keyring: rotation mid-load with zero
    failed verifications, a client disabled through one instance refused by all within 5 s, an assertion
    used on one refused on another, and the per-client rate limit holding across instances."""
    with postgres_schema() as url:
        env = server_env(
            tmp_path,
            TOKENDEALER_DATABASE_URL=url,
            TOKENDEALER_KEYRING="database",
            TOKENDEALER_KEY_ENCRYPTION_KEY=KEK,
            TOKENDEALER_RATELIMIT_STORAGE=redis_url,
            TOKENDEALER_REPLAY_CACHE=redis_url,
            TOKENDEALER_ISSUER="https://auth.example.test",
            TOKENDEALER_KEYRING_RELOAD_INTERVAL="1",
            TOKENDEALER_JWKS_MAX_AGE="1",
        )
        assert run_cli("init", env=env).returncode == 0
        secret = json.loads(run_cli("client", "create", "svc", "--scope", "read", "--audience", AUDIENCE, env=env).stdout)["client_secret"]
        key = ec.generate_private_key(ec.SECP256R1())
        (tmp_path / "svc.pem").write_bytes(
            key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
        )
        jwks = run_cli("client", "jwks", str(tmp_path / "svc.pem"), env=env).stdout
        (tmp_path / "svc.jwks").write_text(jwks)
        assert (
            run_cli(
                "client", "create", "keysvc", "--scope", "read", "--audience", AUDIENCE, "--jwks", str(tmp_path / "svc.jwks"), env=env
            ).returncode
            == 0
        )
        limited_id = "lim-" + secrets.token_hex(4)
        limited_secret = json.loads(run_cli("client", "create", limited_id, "--audience", AUDIENCE, env=env).stdout)["client_secret"]

        servers = [LiveServer(env, workers=1, port=free_port()).start() for _ in range(3)]
        try:
            urls = [s.url for s in servers]
            keys_cache: dict[str, object] = {}
            lock = threading.Lock()

            def verify(token: str) -> None:
                kid = jwt.get_unverified_header(token)["kid"]
                with lock:
                    if kid not in keys_cache:  # a new kid: refresh the JWKS from any instance
                        for k in requests.get(urls[0] + "/.well-known/jwks.json", timeout=5).json()["keys"]:
                            keys_cache[k["kid"]] = jwt.PyJWK(k)
                    jwk_obj = keys_cache.get(kid)
                assert jwk_obj is not None, "token signed by a key no instance publishes"
                jwt.decode(token, jwk_obj.key, algorithms=["ES256"], audience=AUDIENCE, issuer="https://auth.example.test")

            failures: list[str] = []
            issued = [0]
            stop = threading.Event()

            def load() -> None:
                session = requests.Session()
                for i in range(5000):
                    if stop.is_set():
                        return
                    try:
                        r = session.post(
                            urls[i % 3] + "/oauth/token", data={"grant_type": "client_credentials"}, auth=("svc", secret), timeout=5
                        )
                        if r.status_code != 200:
                            failures.append(f"{r.status_code} {r.text[:80]}")
                            continue
                        verify(r.json()["access_token"])
                        issued[0] += 1
                    except Exception as exc:  # counted; none may happen
                        failures.append(repr(exc))

            threads = [threading.Thread(target=load) for _ in range(3)]
            for t in threads:
                t.start()
            time.sleep(3)
            assert run_cli("keys", "rotate", env=env).returncode == 0
            time.sleep(4)
            stop.set()
            for t in threads:
                t.join(30)
            assert failures == []
            assert issued[0] > 100
            new_active = next(r["kid"] for r in json.loads(run_cli("keys", "list", "--json", env=env).stdout) if r["state"] == "active")
            for u in urls:  # every instance signs with the new key
                token = requests.post(
                    u + "/oauth/token", data={"grant_type": "client_credentials"}, auth=("svc", secret), timeout=5
                ).json()["access_token"]
                assert jwt.get_unverified_header(token)["kid"] == new_active

            now = int(time.time())
            claims = {
                "iss": "keysvc",
                "sub": "keysvc",
                "aud": "https://auth.example.test/oauth/token",
                "iat": now,
                "exp": now + 60,
                "jti": secrets.token_urlsafe(16),
            }
            form = {
                "grant_type": "client_credentials",
                "client_assertion_type": "urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
                "client_assertion": jwt.encode(claims, key, algorithm="ES256"),
            }
            assert requests.post(urls[0] + "/oauth/token", data=form, timeout=5).status_code == 200
            assert requests.post(urls[1] + "/oauth/token", data=form, timeout=5).status_code == 401

            for i in range(10):
                requests.post(
                    urls[i % 3] + "/oauth/token", data={"grant_type": "client_credentials"}, auth=(limited_id, "wrong"), timeout=5
                )
            for u in urls:
                grant = {"grant_type": "client_credentials"}
                assert requests.post(u + "/oauth/token", data=grant, auth=(limited_id, "wrong"), timeout=5).status_code == 429
                assert requests.post(u + "/oauth/token", data=grant, auth=(limited_id, limited_secret), timeout=5).status_code == 200

            assert run_cli("client", "disable", "svc", env=env).returncode == 0
            disabled_at = time.monotonic()
            refused = set()
            while time.monotonic() - disabled_at < 5 and len(refused) < 3:
                for n, u in enumerate(urls):
                    r = requests.post(u + "/oauth/token", data={"grant_type": "client_credentials"}, auth=("svc", secret), timeout=5)
                    # Each refusal is a failed authentication, counted in Redis across the instances: once the ones
                    # that saw the change first have refused 10 times (the default limit), a later one answers 429.
                    if r.status_code in (401, 429):
                        refused.add(n)
                    else:
                        assert r.status_code == 200, r.text
                time.sleep(0.2)
            assert refused == {0, 1, 2}, "an instance still accepted a disabled client 5 s later"
        finally:
            for s in servers:
                s.stop()


def test_failures_counted_on_one_instance_throttle_the_other(redis_url, tmp_path):
    """With Redis the failure limit is one count across instances."""
    audit = AuditLog(str(tmp_path / "audit.log"))
    a = FailureThrottle(redis_url, "3/minute", "1000/minute", audit)
    b = FailureThrottle(redis_url, "3/minute", "1000/minute", audit)
    client_id = "throttle-" + secrets.token_hex(4)
    for _ in range(3):
        assert a.failed(client_id, "10.1.1.2") is None
    assert isinstance(b.failed(client_id, "10.1.1.1"), TooManyRequests)
