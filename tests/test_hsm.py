"""The PKCS#11 keyring on SoftHSM2: keys that cannot leave the token, every algorithm, the token going away
or refusing the PIN (503 while signing, one line at start-up), and a live server signing through it."""

from __future__ import annotations

import json
import shutil

import jwt
import pkcs11
import pytest
import requests
import sqlalchemy as sa
from pkcs11 import Attribute, ObjectClass
from pkcs11.exceptions import AttributeSensitive

from tokendealer import db, hsm
from tokendealer.app import create_app
from tokendealer.keyring import ALGORITHMS

from .conftest import AUDIENCE, basic, decode_with_jwks, fetch_token, initialise, make_config, run_cli, server_env

MAX_LIFETIME = 86400 + 30


@pytest.fixture
def config(tmp_path, softhsm):
    return make_config(tmp_path, **softhsm.settings())


def token_objects(store, kid: str, object_class=None) -> list:
    attrs = {Attribute.ID: kid.encode()}
    if object_class is not None:
        attrs[Attribute.CLASS] = object_class
    with store.token.session() as pooled:
        return list(pooled.session.get_objects(attrs))


def test_private_keys_cannot_leave_the_token(key_store):
    kid = key_store.load().active.kid
    (private,) = token_objects(key_store, kid, ObjectClass.PRIVATE_KEY)
    assert private[Attribute.SENSITIVE] is True and private[Attribute.EXTRACTABLE] is False
    assert private[Attribute.NEVER_EXTRACTABLE] is True and private[Attribute.ALWAYS_SENSITIVE] is True
    with pytest.raises(AttributeSensitive):
        private[Attribute.VALUE]  # the EC private scalar


def test_the_database_holds_no_private_key(key_store, services):
    with services.engine.connect() as conn:
        assert [row.private_key for row in conn.execute(sa.select(db.signing_keys))] == [None, None]


@pytest.mark.parametrize("alg", ALGORITHMS)
def test_every_algorithm_signs_in_the_token_and_verifies(tmp_path, config, alg):
    initialise(config, alg=alg)
    app = create_app(config)
    services = app.extensions["tokendealer"]
    _, secret = services.clients.create("svc", scopes=["read"], audiences=[AUDIENCE])
    http = app.test_client()
    token = fetch_token(http, "svc", secret)["access_token"]
    assert jwt.get_unverified_header(token)["alg"] == alg
    claims = decode_with_jwks(token, http.get("/.well-known/jwks.json").get_json(), AUDIENCE, config.issuer)
    assert claims["client_id"] == "svc"
    services.engine.dispose()


def test_a_retired_key_is_destroyed_at_the_next_write_a_revoked_one_at_once(key_store, clock):
    first = key_store.load().active.kid
    key_store.rotate()
    assert token_objects(key_store, first), "kept for instances still on the previous keyring"
    key_store.rotate()
    assert token_objects(key_store, first) == []
    active = key_store.load().active.kid
    key_store.rotate(emergency=True)
    assert token_objects(key_store, active) == []


def test_a_failed_rotation_leaves_no_key_in_the_token(key_store, monkeypatch):
    created = []
    generate = hsm.Pkcs11Token.generate

    def recording(self, alg, now):
        record = generate(self, alg, now)
        created.append(record.kid)
        return record

    def crash(*_args, **_kwargs):
        raise KeyboardInterrupt("killed")

    monkeypatch.setattr(hsm.Pkcs11Token, "generate", recording)
    monkeypatch.setattr(hsm.Pkcs11KeyStore, "_write", crash)
    with pytest.raises(KeyboardInterrupt):
        key_store.rotate()
    assert len(created) == 2 and all(token_objects(key_store, kid) == [] for kid in created)


def test_token_removed_answers_503_then_recovers(http, services, make_client, softhsm, monkeypatch):
    monkeypatch.setattr(hsm, "RETRY_SECONDS", 0.0)
    cid, secret = make_client()
    fetch_token(http, cid, secret)
    away = softhsm.tokens.with_name("tokens-away")
    shutil.move(softhsm.tokens, away)
    try:
        for _ in range(2):
            response = http.post("/oauth/token", data={"grant_type": "client_credentials"}, headers=basic(cid, secret))
            assert response.status_code == 503
            assert response.get_json()["error"] == "temporarily_unavailable" and response.headers["Retry-After"]
    finally:
        shutil.move(away, softhsm.tokens)
    fetch_token(http, cid, secret)  # the next request opens a session and logs in again


def test_lost_sessions_are_opened_again_without_a_refusal(http, services, make_client, softhsm):
    cid, secret = make_client()
    fetch_token(http, cid, secret)
    pkcs11.lib(softhsm.module).reinitialize()  # every session of this process is gone behind the pool's back
    fetch_token(http, cid, secret)


def test_pin_refused_on_relogin_answers_503(http, services, make_client, monkeypatch):
    monkeypatch.setattr(hsm, "RETRY_SECONDS", 0.0)
    cid, secret = make_client()
    fetch_token(http, cid, secret)
    token = services.store.token
    _, generation = token._library.current()
    monkeypatch.setattr(token, "_pin", "wrong-pin")
    token._library.restart(generation)  # as after a session loss: every session is gone, log in again
    response = http.post("/oauth/token", data={"grant_type": "client_credentials"}, headers=basic(cid, secret))
    assert response.status_code == 503
    monkeypatch.undo()
    fetch_token(http, cid, secret)


@pytest.mark.slow
def test_wrong_pin_or_absent_token_stops_start_up_with_one_line(tmp_path, softhsm):
    env = server_env(tmp_path, **softhsm.env("td-pin"))
    assert run_cli("init", env=env).returncode == 0
    for bad, expected in ((softhsm.env("td-pin", pin="0000"), "refused the PIN"), (softhsm.env("no-such-token"), "not available")):
        result = run_cli("serve", "--port", "1", env={**env, **bad})
        assert result.returncode == 1
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and expected in lines[0] and "0000" not in lines[0], result.stderr


@pytest.mark.slow
def test_missing_module_or_pin_is_a_configuration_error(tmp_path, softhsm):
    env = server_env(tmp_path, **softhsm.env())
    for name, value, expected in (
        ("TOKENDEALER_PKCS11_MODULE", str(tmp_path / "nope.so"), "TOKENDEALER_PKCS11_MODULE"),
        ("TOKENDEALER_PKCS11_PIN", "", "TOKENDEALER_PKCS11_PIN"),
    ):
        result = run_cli("keys", "list", env={**env, name: value})
        assert result.returncode == 2 and expected in result.stderr


def test_live_server_issues_tokens_signed_in_the_token(live_factory, softhsm):
    server = live_factory(**softhsm.env("td-live"))
    created = run_cli("client", "create", "svc", "--scope", "read", "--audience", AUDIENCE, env=server.env)
    secret = json.loads(created.stdout)["client_secret"]
    tokens = []
    for _ in range(4):  # both workers, each with its own sessions opened after the fork
        response = requests.post(server.url + "/oauth/token", data={"grant_type": "client_credentials"}, auth=("svc", secret), timeout=10)
        assert response.status_code == 200, server.log()[-3000:]
        tokens.append(response.json()["access_token"])
    jwks = requests.get(server.url + "/.well-known/jwks.json", timeout=10).json()
    for token in tokens:
        assert decode_with_jwks(token, jwks, AUDIENCE, server.url)["sub"] == "svc"
    assert run_cli("keys", "rotate", env=server.env).returncode == 0
    jwks_after = requests.get(server.url + "/.well-known/jwks.json", timeout=10).json()
    assert {k["kid"] for k in jwks["keys"]} < {k["kid"] for k in jwks_after["keys"]}
