"""Keyring states, rotation, emergency rotation, prune, atomic writes and hot reload (injected clock).

The rotation tests run on the file keyring and on the PKCS#11 keyring (SoftHSM2); tests of the files
themselves (modes, crashes between writes, damaged PEMs) run on the file keyring only."""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys

import jwt
import pytest
from pkcs11 import Attribute

from tokendealer.db import make_engine, upgrade_schema
from tokendealer.keyring import STAT_INTERVAL, KeyringError, KeyringSource
from tokendealer.keystores import DatabaseKeyStore, FileKeyStore

from .conftest import AUDIENCE, TOKENDEALER, all_at_once, fetch_token, make_config, run_cli, server_env

MAX_LIFETIME = 86400 + 30
FILE_ONLY = pytest.mark.parametrize("config", ["file"], indirect=True)


@pytest.fixture(params=["file", "pkcs11"])
def config(request, tmp_path, database_url):
    """The file keyring, or the PKCS#11 keyring on SoftHSM2 (manifest in the test's database)."""
    if request.param == "pkcs11":
        return make_config(tmp_path, database_url=database_url, **request.getfixturevalue("softhsm").settings())
    return make_config(tmp_path, database_url=database_url)


def holds_private_key(store, config, kid: str) -> bool:
    """Whether the store still holds the private key of `kid` (a PEM file, or objects in the token)."""
    if config.keyring == "file":
        return (config.keys_dir / f"{kid}.pem").exists()
    with store.token.session() as pooled:
        return bool(list(pooled.session.get_objects({Attribute.ID: kid.encode()})))


def states(store: FileKeyStore) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for record in store.load().records:
        out.setdefault(record.state, []).append(record.kid)
    return out


def test_init_creates_active_and_next(key_store):
    s = states(key_store)
    assert len(s["active"]) == 1 and len(s["next"]) == 1
    assert key_store.init() is False  # idempotent


def test_rotate_promotes_next_and_retires_active(key_store, clock):
    before = states(key_store)
    clock.advance(100)
    key_store.rotate()
    after = states(key_store)
    assert after["active"] == before["next"]
    assert after["retired"] == before["active"]
    assert len(after["next"]) == 1 and after["next"] != before["next"]
    keyring = key_store.load()
    retired = keyring.record("retired")
    assert retired.retired_at == clock.now
    assert keyring.record("active").activated_at == clock.now


@FILE_ONLY
def test_retired_key_keeps_no_private_key(key_store, config):
    old_active = states(key_store)["active"][0]
    key_store.rotate()
    assert not (config.keys_dir / f"{old_active}.pem").exists()
    assert old_active in {r.kid for r in key_store.load().published(key_store.clock(), MAX_LIFETIME)}


def test_jwks_publishes_next_active_and_unexpired_retired(key_store, clock):
    key_store.rotate()
    keyring = key_store.load()
    assert {r.state for r in keyring.published(clock.now, MAX_LIFETIME)} == {"next", "active", "retired"}
    clock.advance(MAX_LIFETIME + 1)
    assert {r.state for r in key_store.load().published(clock.now, MAX_LIFETIME)} == {"next", "active"}


def test_new_signing_key_was_published_one_rotation_before(key_store, clock):
    published_before = {r.kid for r in key_store.load().published(clock.now, MAX_LIFETIME)}
    clock.advance(3600)
    key_store.rotate()
    assert key_store.load().active.kid in published_before


def test_rotate_alg_migrates_through_rotations(key_store):
    key_store.rotate(alg="RS256")
    keyring = key_store.load()
    assert keyring.active.alg == "ES256" and keyring.record("next").alg == "RS256"
    key_store.rotate()
    assert key_store.load().active.alg == "RS256"


def test_emergency_rotation_withdraws_active_at_once(key_store, clock, config):
    before = key_store.load()
    key_store.rotate(emergency=True)
    after = key_store.load()
    published = {r.kid for r in after.published(clock.now, MAX_LIFETIME)}
    assert before.active.kid not in published
    assert before.record("next").kid not in published
    assert after.active.kid not in {before.active.kid, before.record("next").kid}
    assert not holds_private_key(key_store, config, before.active.kid)
    assert not holds_private_key(key_store, config, before.record("next").kid)
    assert {r.state for r in after.records} == {"active", "next", "revoked"}


def test_emergency_rotation_stops_old_tokens_verifying(http, services, make_client):
    cid, secret = make_client()
    old_token = fetch_token(http, cid, secret)["access_token"]
    assert http.post("/verify_token", json={"access_token": old_token, "audience": AUDIENCE}).status_code == 200
    services.store.rotate(emergency=True)
    services.keys.current(check=True)
    response = http.post("/verify_token", json={"access_token": old_token, "audience": AUDIENCE})
    assert response.status_code == 400
    assert "withdrawn" in response.get_json()["error_description"]
    new_token = fetch_token(http, cid, secret)["access_token"]
    assert http.post("/verify_token", json={"access_token": new_token, "audience": AUDIENCE}).status_code == 200


def test_staged_rotation_keeps_old_tokens_verifying(http, services, make_client, clock):
    cid, secret = make_client()
    old_token = fetch_token(http, cid, secret)["access_token"]
    services.store.rotate()
    services.keys.current(check=True)
    assert http.post("/verify_token", json={"access_token": old_token, "audience": AUDIENCE}).status_code == 200
    new_token = fetch_token(http, cid, secret)["access_token"]
    assert new_token.split(".")[0] != old_token.split(".")[0]


def test_prune_only_expired_retired_keys(key_store, clock):
    key_store.rotate()
    retired = states(key_store)["retired"][0]
    clock.advance(MAX_LIFETIME - 1)
    assert key_store.prune(MAX_LIFETIME) == []
    clock.advance(2)
    assert [r.kid for r in key_store.prune(MAX_LIFETIME)] == [retired]
    s = states(key_store)
    assert "retired" not in s and len(s["active"]) == 1 and len(s["next"]) == 1


def test_prune_removes_revoked_keys(key_store):
    key_store.rotate(emergency=True)
    assert len(key_store.prune(MAX_LIFETIME)) == 2
    assert set(states(key_store)) == {"active", "next"}


def test_prune_never_touches_active_or_next(key_store, clock):
    clock.advance(10 * MAX_LIFETIME)
    assert key_store.prune(MAX_LIFETIME) == []


@FILE_ONLY
def test_group_readable_key_is_refused(key_store, config):
    pem = next(config.keys_dir.glob("*.pem"))
    os.chmod(pem, 0o644)
    with pytest.raises(KeyringError, match="readable by group or others"):
        key_store.load()


@FILE_ONLY
def test_crash_between_key_and_manifest_leaves_loadable_keyring(key_store, config, monkeypatch):
    before = states(key_store)

    def crash(*_args, **_kwargs):
        raise KeyboardInterrupt("killed")

    monkeypatch.setattr(FileKeyStore, "_write_manifest", crash)
    with pytest.raises(KeyboardInterrupt):
        key_store.rotate()
    monkeypatch.undo()
    assert len(list(config.keys_dir.glob("*.pem"))) == 4  # two orphans written before the crash
    assert states(key_store) == before
    key_store.rotate()  # the next rotation works and cleans the orphans
    assert len(list(config.keys_dir.glob("*.pem"))) == 2


@pytest.mark.slow
def test_crash_of_a_real_process_mid_rotation(tmp_path):
    """SIGKILL a `keys rotate` after it wrote the key files but before the manifest."""
    env = server_env(tmp_path)
    assert run_cli("init", env=env).returncode == 0
    manifest = (tmp_path / "keys" / "manifest.json").read_text()
    script = (
        "import os, signal\n"
        "from tokendealer.keystores import FileKeyStore\n"
        "FileKeyStore._write_manifest = lambda self, records: os.kill(os.getpid(), signal.SIGKILL)\n"
        f"FileKeyStore({str(tmp_path / 'keys')!r}).rotate()\n"
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, timeout=60)
    assert result.returncode == -9
    assert (tmp_path / "keys" / "manifest.json").read_text() == manifest
    listing = run_cli("keys", "list", "--json", env=env)
    assert listing.returncode == 0
    assert sorted(r["state"] for r in json.loads(listing.stdout)) == ["active", "next"]


@pytest.mark.slow
def test_two_concurrent_rotations_leave_a_consistent_keyring(tmp_path):
    env = server_env(tmp_path)
    assert run_cli("init", env=env).returncode == 0

    procs = [subprocess.Popen([TOKENDEALER, "keys", "rotate"], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE) for _ in range(2)]
    codes = [p.wait(60) for p in procs]
    assert codes == [0, 0]
    rows = json.loads(run_cli("keys", "list", "--json", env=env).stdout)
    assert [r["state"] for r in rows].count("active") == 1
    assert [r["state"] for r in rows].count("next") == 1
    assert [r["state"] for r in rows].count("retired") == 2
    assert len(list((tmp_path / "keys").glob("*.pem"))) == 2


@FILE_ONLY
def test_hot_reload_of_a_file_keyring_within_a_stat_interval_or_when_asked(key_store):
    """A file keyring's version is a stat of its manifest: looked at every STAT_INTERVAL seconds of use,
    and at once by `check=True` (the JWKS, verification)."""
    now = [100.0]
    source = KeyringSource(key_store, interval=5, monotonic=lambda: now[0])
    first = source.current().active.kid
    key_store.rotate()
    assert source.current().active.kid == first  # looked at less than STAT_INTERVAL ago
    now[0] += STAT_INTERVAL
    second = source.current().active.kid
    assert second != first
    key_store.rotate()
    assert source.current(check=True).active.kid != second
    assert source.current().active.kid == source.current(check=True).active.kid


def test_hot_reload_of_a_database_keyring_within_the_interval_or_when_asked(tmp_path):
    engine = make_engine(f"sqlite:///{tmp_path / 'db.sqlite'}")
    upgrade_schema(engine)
    store = DatabaseKeyStore(engine, secrets.token_bytes(32))
    store.init()
    now = [0.0]
    source = KeyringSource(store, interval=5, monotonic=lambda: now[0])
    first = source.current().active.kid
    store.rotate()
    assert source.current().active.kid == first  # not checked yet
    now[0] = 5.0
    second = source.current().active.kid
    assert second != first
    store.rotate()
    assert source.current(check=True).active.kid != second


@FILE_ONLY
def test_broken_keyring_keeps_last_good_and_readyz_reports(http, services, config, caplog, make_client):
    cid, secret = make_client()
    good = services.keys.current().active.kid
    (config.keys_dir / "manifest.json").write_text("{ not json")
    os.chmod(config.keys_dir / "manifest.json", 0o600)
    services.keys.current(check=True)
    services.keys.current(check=True)
    assert services.keys.current().active.kid == good
    assert sum("keyring reload failed" in r.message for r in caplog.records) == 1
    response = http.get("/readyz")
    assert response.status_code == 503
    assert response.get_json()["problems"] == ["keyring: cannot be loaded; see the server log"]
    assert any("malformed" in r.message for r in caplog.records)
    token = fetch_token(http, cid, secret)["access_token"]  # still signs with the last good key
    assert jwt.get_unverified_header(token)["kid"] == good


@FILE_ONLY
@pytest.mark.parametrize("damage", ["pem", "missing"])
def test_broken_key_file_keeps_last_good(services, config, damage):
    good = services.keys.current().active.kid
    services.store.rotate()
    new_active = services.store.load().active.kid
    path = config.keys_dir / f"{new_active}.pem"
    if damage == "pem":
        path.write_text("garbage")
    else:
        path.unlink()
    services.keys.current(check=True)
    assert services.keys.current().active.kid == good
    assert services.keys.error and new_active in services.keys.error


def test_first_load_is_seen_by_every_thread(key_store):
    """Threads racing on a fresh source all get the keyring (none sees None while another loads it)."""
    source = KeyringSource(key_store, interval=5)
    seen = all_at_once(16, source.current, timeout=10)
    assert len(seen) == 16 and all(k is not None and k.active for k in seen)
