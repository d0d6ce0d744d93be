"""Client registry, secret hashing and rotation, and configuration validation."""

from __future__ import annotations

import time

import pytest
import sqlalchemy as sa

from tokendealer import db
from tokendealer.app import create_app
from tokendealer.clients import ClientError
from tokendealer.config import Config, ConfigError

from .conftest import AUDIENCE, basic, both_databases, initialise, make_config

GRANT = {"grant_type": "client_credentials"}


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request):
    """These tests run on SQLite and on PostgreSQL."""
    return both_databases(request)


def test_secret_is_long_random_and_stored_only_hashed(registry, make_client):
    cid, secret = make_client()
    assert len(secret) >= 43  # 256 bits, base64url
    with registry.engine.connect() as conn:
        row = conn.execute(sa.select(db.clients)).first()._mapping
    assert secret not in str(dict(row))
    assert row["secret_hash"] == registry.hasher.hash(secret)


def test_client_name_rules(registry):
    for bad in ("", "-leading", "has space", "x" * 65, "semi;colon", "ünïcode"):
        with pytest.raises(ClientError):
            registry.create(bad, scopes=["a"], audiences=[AUDIENCE])
    registry.create("A.b_c-9", scopes=["a"], audiences=[AUDIENCE])


def test_duplicate_client_is_refused(registry, make_client):
    make_client()
    with pytest.raises(ClientError, match="already exists"):
        make_client()


@pytest.mark.parametrize(
    "kwargs",
    [
        {"audiences": []},
        {"default_scopes": ["other"]},
        {"default_audience": "https://not-allowed"},
        {"token_ttl": 0},
        {"token_ttl": 10**9},
        {"claims": {"iss": "x"}},
        {"scopes": ['bad"scope']},
        {"tls_subject": "CN=svc", "tls_san": "spiffe://td/svc"},
        {"tls_subject": "  "},
        {"tls_san": "bad\nvalue"},
    ],
)
def test_invalid_client_fields(registry, kwargs):
    args = {"scopes": ["read"], "audiences": [AUDIENCE], **kwargs}
    with pytest.raises(ClientError):
        registry.create("svc", **args)


def test_certificate_and_dpop_settings_are_stored(registry, make_client):
    client, secret = registry.create("mtls", scopes=["read"], audiences=[AUDIENCE], tls_subject="CN=mtls,O=Example")
    assert secret is None and client.auth_method == "tls_client_auth"
    assert registry.require("mtls").tls_subject == "CN=mtls,O=Example"
    updated = registry.update("mtls", tls_subject=None, tls_san="spiffe://example.org/mtls", require_dpop=True)
    assert (updated.tls_subject, updated.tls_san, updated.require_dpop) == (None, "spiffe://example.org/mtls", True)
    assert registry.require("mtls").public_view()["require_dpop"] is True
    cid, _ = make_client()
    with pytest.raises(ClientError, match="cannot take a certificate identity"):
        registry.update(cid, tls_subject="CN=other")


def test_update_replaces_lists(registry, make_client):
    cid, _ = make_client()
    updated = registry.update(cid, scopes=["one", "two"], audiences=["https://x"])
    assert updated.scopes == ("one", "two")
    assert updated.audiences == ("https://x",)


def test_rotate_secret_grace(http, registry, make_client, clock):
    cid, old = make_client()
    _, new = registry.rotate_secret(cid, grace=60)
    assert http.post("/oauth/token", data=GRANT, headers=basic(cid, old)).status_code == 200
    assert http.post("/oauth/token", data=GRANT, headers=basic(cid, new)).status_code == 200
    clock.advance(61)
    assert http.post("/oauth/token", data=GRANT, headers=basic(cid, old)).status_code == 401
    assert http.post("/oauth/token", data=GRANT, headers=basic(cid, new)).status_code == 200


def test_rotate_secret_without_grace_revokes_old_at_once(http, registry, make_client):
    cid, old = make_client()
    _, new = registry.rotate_secret(cid)
    assert http.post("/oauth/token", data=GRANT, headers=basic(cid, old)).status_code == 401
    assert http.post("/oauth/token", data=GRANT, headers=basic(cid, new)).status_code == 200


def test_client_changes_take_effect_within_cache_window(tmp_path):
    """A disabled client is refused by an already-running app once its cached record is stale."""

    config = make_config(tmp_path, client_cache_seconds=0.2)
    initialise(config)
    app = create_app(config)
    other = create_app(config)  # another process's view of the same database
    _, secret = other.extensions["tokendealer"].clients.create("svc", scopes=["read"], audiences=[AUDIENCE])
    http = app.test_client()
    assert http.post("/oauth/token", data=GRANT, headers=basic("svc", secret)).status_code == 200
    other.extensions["tokendealer"].clients.set_enabled("svc", False)
    time.sleep(0.3)
    assert http.post("/oauth/token", data=GRANT, headers=basic("svc", secret)).status_code == 401


def test_config_defaults():
    config = Config.load(environ={})
    assert config.issuer == "http://localhost:5000"
    assert config.token_ttl == 3600 and config.max_token_ttl == 86400
    assert config.database_url == "sqlite:///./var/tokendealer.db"
    assert config.auth_failure_limit == "10/minute"


@pytest.mark.parametrize(
    ("env", "names"),
    [
        ({"TOKENDEALER_TOKEN_TTL": "-5"}, "TOKENDEALER_TOKEN_TTL"),
        ({"TOKENDEALER_TOKEN_TTL": "abc"}, "TOKENDEALER_TOKEN_TTL"),
        ({"TOKENDEALER_TOKEN_TTL": "100000"}, "TOKENDEALER_TOKEN_TTL"),
        ({"TOKENDEALER_ISSUER": "ftp://x"}, "TOKENDEALER_ISSUER"),
        ({"TOKENDEALER_ISSUER": "not a url"}, "TOKENDEALER_ISSUER"),
        ({"TOKENDEALER_DATABASE_URL": "nonsense"}, "TOKENDEALER_DATABASE_URL"),
        ({"TOKENDEALER_DATABASE_URL": "mysql://x/y"}, "TOKENDEALER_DATABASE_URL"),
        ({"TOKENDEALER_AUTH_FAILURE_LIMIT": "lots"}, "TOKENDEALER_AUTH_FAILURE_LIMIT"),
        ({"TOKENDEALER_KEYRING": "database"}, "TOKENDEALER_KEY_ENCRYPTION_KEY"),
        ({"TOKENDEALER_KEYS_DIR": "/etc/hostname"}, "TOKENDEALER_KEYS_DIR"),
    ],
)
def test_bad_config_names_the_variable(env, names):
    with pytest.raises(ConfigError, match=names):
        Config.load(environ=env)


def test_config_file(tmp_path):
    path = tmp_path / "td.toml"
    path.write_text('issuer = "https://auth.example.com"\nTOKENDEALER_TOKEN_TTL = 60\n')
    config = Config.load(environ={"TOKENDEALER_MAX_TOKEN_TTL": "120"}, config_file=path)
    assert config.issuer == "https://auth.example.com"
    assert config.token_ttl == 60 and config.max_token_ttl == 120


def test_config_file_errors(tmp_path):
    with pytest.raises(ConfigError, match="cannot read"):
        Config.load(environ={}, config_file=tmp_path / "missing.toml")
    (tmp_path / "bad.toml").write_text("this is = = not toml")
    with pytest.raises(ConfigError, match="not valid TOML"):
        Config.load(environ={}, config_file=tmp_path / "bad.toml")
    (tmp_path / "unknown.toml").write_text("colour = 'blue'")
    with pytest.raises(ConfigError, match="unknown setting"):
        Config.load(environ={}, config_file=tmp_path / "unknown.toml")


def test_audit_log_in_a_missing_directory_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="TOKENDEALER_AUDIT_LOG"):
        Config.load(environ={"TOKENDEALER_AUDIT_LOG": str(tmp_path / "nope" / "audit.log")})


def test_refresh_rereads_used_cached_clients_in_bulk(registry):
    """What a worker's refresh thread does: the cached clients asked for lately are read again in bulk,
    and a change (here a disable) is seen before their entries would have expired."""
    registry.cache_seconds = 60
    registry.create("one", scopes=["a"], audiences=["https://x"])
    registry.create("two", scopes=["a"], audiences=["https://x"])
    assert registry.get("one").enabled and registry.get("two").enabled
    with registry.engine.begin() as conn:
        conn.execute(db.clients.update().where(db.clients.c.client_id.in_(["one", "two"])).values(enabled=False))
    assert registry.get("one").enabled  # cached
    assert registry.refresh_cached() == 2
    assert not registry.get("one").enabled and not registry.get("two").enabled
