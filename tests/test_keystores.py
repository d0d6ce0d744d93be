"""The keyring rules on every store: the file keyring, the database keyring on SQLite and PostgreSQL, and the
PKCS#11 keyring (keys in SoftHSM2, manifest in SQLite)."""

from __future__ import annotations

import secrets
import threading

import pytest
import sqlalchemy as sa

from tokendealer import db
from tokendealer.app import create_app
from tokendealer.keyring import KeyringError, KeyringSource
from tokendealer.keystores import DatabaseKeyStore, FileKeyStore, make_key_store

from .conftest import AUDIENCE, fetch_token, make_config, postgres_schema

MAX_LIFETIME = 86400 + 30
KEK = secrets.token_urlsafe(32)


@pytest.fixture(params=["file", "database-sqlite", "database-postgresql", "pkcs11"])
def store(request, tmp_path, clock):
    if request.param == "file":
        yield FileKeyStore(tmp_path / "keys", clock=clock)
        return
    if request.param == "pkcs11":
        config = make_config(tmp_path, **request.getfixturevalue("softhsm").settings())
        engine = db.make_engine(config.database_url)
        db.upgrade_schema(engine)
        yield make_key_store(config, clock, engine)
        engine.dispose()
        return
    if request.param == "database-sqlite":
        url = f"sqlite:///{tmp_path / 'keys.db'}"
        engine = db.make_engine(url)
        db.upgrade_schema(engine)
        yield DatabaseKeyStore(engine, make_config(tmp_path, keyring="database", key_encryption_key=KEK).key_encryption_key_bytes(), clock)
        engine.dispose()
        return
    with postgres_schema() as url:
        engine = db.make_engine(url)
        db.upgrade_schema(engine)
        yield DatabaseKeyStore(engine, make_config(tmp_path, keyring="database", key_encryption_key=KEK).key_encryption_key_bytes(), clock)
        engine.dispose()


def states(store) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for record in store.load().records:
        out.setdefault(record.state, []).append(record.kid)
    return out


def test_init_is_idempotent(store):
    assert store.init() is True
    first = states(store)
    assert len(first["active"]) == 1 and len(first["next"]) == 1
    assert store.init() is False
    assert states(store) == first


def test_staged_rotation(store, clock):
    store.init()
    before = states(store)
    published_before = {r.kid for r in store.load().published(clock.now, MAX_LIFETIME)}
    clock.advance(3600)
    keyring = store.rotate()
    after = states(store)
    assert after["active"] == before["next"] and after["retired"] == before["active"]
    assert keyring.active.kid in published_before  # published one rotation before it signs
    assert keyring.active.sign(b"{}").count(".") == 2


def test_emergency_rotation_and_prune(store, clock):
    store.init()
    before = store.load()
    after = store.rotate(emergency=True)
    published = {r.kid for r in after.published(clock.now, MAX_LIFETIME)}
    assert before.active.kid not in published and before.record("next").kid not in published
    assert len(store.prune(MAX_LIFETIME)) == 2
    assert set(states(store)) == {"active", "next"}


def test_prune_waits_for_tokens_to_expire(store, clock):
    store.init()
    store.rotate()
    clock.advance(MAX_LIFETIME - 1)
    assert store.prune(MAX_LIFETIME) == []
    clock.advance(2)
    assert len(store.prune(MAX_LIFETIME)) == 1


def test_rotate_alg(store):
    store.init()
    store.rotate(alg="EdDSA")
    store.rotate()
    assert store.load().active.alg == "EdDSA"


def test_rotation_needs_a_keyring(store):
    with pytest.raises(KeyringError, match="init"):
        store.rotate()


def test_hot_reload_sees_every_rotation(store):
    store.init()
    now = [0.0]
    source = KeyringSource(store, interval=2, monotonic=lambda: now[0])
    first = source.current().active.kid
    store.rotate()
    now[0] = 2.0
    assert source.current().active.kid != first


def test_concurrent_rotations_stay_consistent(store):
    store.init()
    errors = []

    def rotate():
        try:
            store.rotate()
        except Exception as exc:  # a refusal would be acceptable, an inconsistent keyring is not
            errors.append(exc)

    threads = [threading.Thread(target=rotate) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    s = states(store)
    assert len(s["active"]) == 1 and len(s["next"]) == 1
    assert len(s.get("retired", [])) == 4 - len(errors)


def test_database_keyring_encrypts_private_keys(tmp_path, clock):
    engine = db.make_engine(f"sqlite:///{tmp_path / 'k.db'}")
    db.upgrade_schema(engine)
    store = DatabaseKeyStore(engine, make_config(tmp_path, keyring="database", key_encryption_key=KEK).key_encryption_key_bytes(), clock)
    store.init()
    with engine.connect() as conn:
        blobs = [row.private_key for row in conn.execute(sa.select(db.signing_keys))]
    assert all(blob and b"PRIVATE KEY" not in blob for blob in blobs)
    store.rotate()
    with engine.connect() as conn:
        retired = conn.execute(sa.select(db.signing_keys).where(db.signing_keys.c.state == "retired")).first()
    assert retired.private_key is None
    wrong = DatabaseKeyStore(
        engine, make_config(tmp_path, keyring="database", key_encryption_key=secrets.token_urlsafe(32)).key_encryption_key_bytes(), clock
    )
    with pytest.raises(KeyringError, match="does not decrypt"):
        wrong.load()


def test_database_keyring_rotation_rolls_back_on_crash(tmp_path, clock, monkeypatch):
    engine = db.make_engine(f"sqlite:///{tmp_path / 'k.db'}")
    db.upgrade_schema(engine)
    store = DatabaseKeyStore(engine, make_config(tmp_path, keyring="database", key_encryption_key=KEK).key_encryption_key_bytes(), clock)
    store.init()
    before = states(store)

    def crash(*_args, **_kwargs):
        raise KeyboardInterrupt("killed")

    monkeypatch.setattr(DatabaseKeyStore, "_write", crash)
    with pytest.raises(KeyboardInterrupt):
        store.rotate()
    monkeypatch.undo()
    assert states(store) == before


@pytest.mark.postgres
def test_server_with_database_keyring_on_postgresql(tmp_path, clock):
    with postgres_schema() as url:
        config = make_config(tmp_path, database_url=url, keyring="database", key_encryption_key=KEK)
        engine = db.make_engine(url)
        db.upgrade_schema(engine)
        make_key_store(config, clock, engine).init()
        app = create_app(config, clock=clock)
        services = app.extensions["tokendealer"]
        _, secret = services.clients.create("svc", scopes=["read"], audiences=[AUDIENCE])
        http = app.test_client()
        token = fetch_token(http, "svc", secret)["access_token"]
        assert http.post("/verify_token", json={"access_token": token, "audience": AUDIENCE}).status_code == 200
        assert http.get("/readyz").status_code == 200
        services.engine.dispose()
        engine.dispose()
