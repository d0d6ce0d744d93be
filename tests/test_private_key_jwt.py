"""private_key_jwt (RFC 7523), introspection (RFC 7662) and revocation (RFC 7009)."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import jwt
import pytest
import requests
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

from client_lib import RevokedToken, TokenClient, TokenVerifier
from client_lib.jose import public_jwk
from tokendealer import db
from tokendealer.clients import ClientError

from .conftest import AUDIENCE, basic, both_databases, fetch_token, run_cli

TOKEN_URL = "http://localhost:5000/oauth/token"
ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request):
    """These tests run on SQLite and on PostgreSQL."""
    return both_databases(request)


def _b64(data) -> str:
    return base64.urlsafe_b64encode(json.dumps(data).encode()).rstrip(b"=").decode()


@pytest.fixture
def key_client(registry):
    """A key-authenticated client 'keysvc' with an EC P-256 key; returns (private key, kid)."""
    key = ec.generate_private_key(ec.SECP256R1())
    jwk = public_jwk(key.public_key(), "ES256")
    client, secret = registry.create("keysvc", scopes=["read"], audiences=[AUDIENCE], jwks={"keys": [jwk]})
    assert secret is None and client.auth_method == "private_key_jwt"
    return key, jwk["kid"]


def assertion(key, kid, clock, alg="ES256", **overrides) -> str:
    now = int(clock.now)
    claims = {"iss": "keysvc", "sub": "keysvc", "aud": TOKEN_URL, "iat": now, "exp": now + 60, "jti": secrets.token_urlsafe(16)}
    claims.update(overrides)
    claims = {k: v for k, v in claims.items() if v is not None}
    return jwt.encode(claims, key, algorithm=alg, headers={"kid": kid} if kid else None)


def post_assertion(http, value: str, **form):
    return http.post(
        "/oauth/token",
        data={"grant_type": "client_credentials", "client_assertion_type": ASSERTION_TYPE, "client_assertion": value, **form},
    )


def test_valid_assertion_gets_a_token(http, key_client, clock):
    key, kid = key_client
    response = post_assertion(http, assertion(key, kid, clock))
    assert response.status_code == 200, response.get_json()
    claims = jwt.decode(response.get_json()["access_token"], options={"verify_signature": False})
    assert claims["client_id"] == "keysvc"


def test_assertion_without_kid_and_with_issuer_audience(http, key_client, clock):
    key, _ = key_client
    assert post_assertion(http, assertion(key, None, clock, aud="http://localhost:5000")).status_code == 200


def test_replayed_jti_is_refused(http, key_client, clock):
    key, kid = key_client
    value = assertion(key, kid, clock)
    assert post_assertion(http, value).status_code == 200
    response = post_assertion(http, value)
    assert response.status_code == 401
    assert response.get_json() == {"error": "invalid_client", "error_description": "client_assertion jti was already used"}


@pytest.mark.parametrize(
    ("overrides", "reason"),
    [
        ({"aud": "https://elsewhere/token"}, "aud"),
        ({"exp": 1_800_000_000 - 120}, "expired"),
        ({"exp": 1_800_000_000 + 3600 + 600}, "ahead"),
        ({"iat": 1_800_000_000 + 600}, "future"),
        ({"jti": None}, "jti"),
        ({"exp": None}, "exp"),
        ({"sub": "other"}, None),
    ],
)
def test_bad_assertion_claims(http, key_client, clock, overrides, reason):
    key, kid = key_client
    response = post_assertion(http, assertion(key, kid, clock, **overrides))
    assert response.status_code == 401
    body = response.get_json()
    assert body["error"] == "invalid_client"
    if reason:
        assert reason in body["error_description"]


def test_signed_by_unregistered_key(http, key_client, clock):
    _, kid = key_client
    response = post_assertion(http, assertion(ec.generate_private_key(ec.SECP256R1()), kid, clock))
    assert response.status_code == 401
    assert "signature" in response.get_json()["error_description"]


def test_unknown_kid(http, key_client, clock):
    key, _ = key_client
    response = post_assertion(http, assertion(key, "other-kid", clock))
    assert response.status_code == 401
    assert "not signed by a key registered" in response.get_json()["error_description"]


def test_alg_none(http, key_client, clock):
    _, kid = key_client
    now = int(clock.now)
    claims = {"iss": "keysvc", "sub": "keysvc", "aud": TOKEN_URL, "exp": now + 60, "jti": "abc"}
    response = post_assertion(http, f"{_b64({'alg': 'none', 'kid': kid})}.{_b64(claims)}.")
    assert response.status_code == 401
    assert "'none'" in response.get_json()["error_description"]


def test_hs256_with_the_public_key_as_secret(http, key_client, clock):
    key, kid = key_client
    pem = key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    now = int(clock.now)
    signing_input = (
        f"{_b64({'alg': 'HS256', 'kid': kid})}.{_b64({'iss': 'keysvc', 'sub': 'keysvc', 'aud': TOKEN_URL, 'exp': now + 60, 'jti': 'x1'})}"
    )
    signature = base64.urlsafe_b64encode(hmac.new(pem, signing_input.encode(), hashlib.sha256).digest()).rstrip(b"=").decode()
    response = post_assertion(http, f"{signing_input}.{signature}")
    assert response.status_code == 401
    assert response.get_json()["error"] == "invalid_client"


def test_assertion_for_a_claiming_b(http, registry, key_client, clock):
    """Client A's key signs an assertion naming client B: B's keys do not verify it."""
    key, kid = key_client
    other = ec.generate_private_key(ec.SECP256R1())
    registry.create("bsvc", scopes=["read"], audiences=[AUDIENCE], jwks={"keys": [public_jwk(other.public_key(), "ES256")]})
    response = post_assertion(http, assertion(key, kid, clock, iss="bsvc", sub="bsvc"))
    assert response.status_code == 401
    mixed = post_assertion(http, assertion(key, kid, clock, iss="keysvc", sub="bsvc"))
    assert mixed.status_code == 401


def test_client_id_param_must_match_assertion(http, key_client, clock):
    key, kid = key_client
    response = post_assertion(http, assertion(key, kid, clock), client_id="someone-else")
    assert response.status_code == 401


def test_wrong_assertion_type(http, key_client, clock):
    key, kid = key_client
    response = http.post(
        "/oauth/token",
        data={"grant_type": "client_credentials", "client_assertion_type": "urn:other", "client_assertion": assertion(key, kid, clock)},
    )
    assert response.status_code == 400
    assert response.get_json()["error"] == "invalid_request"


def test_secret_client_cannot_use_assertions_and_key_client_has_no_secret(http, registry, make_client, key_client, clock):
    cid, secret = make_client()
    key, kid = key_client
    response = post_assertion(http, assertion(key, kid, clock, iss=cid, sub=cid))
    assert response.status_code == 401
    assert http.post("/oauth/token", data={"grant_type": "client_credentials"}, headers=basic("keysvc", "anything")).status_code == 401


@pytest.mark.parametrize(
    ("make_key", "alg"),
    [
        (lambda: rsa.generate_private_key(65537, 2048), "RS256"),
        (lambda: rsa.generate_private_key(65537, 2048), "PS256"),
        (ed25519.Ed25519PrivateKey.generate, "EdDSA"),
    ],
)
def test_other_key_types(http, registry, clock, make_key, alg):
    key = make_key()
    jwk = public_jwk(key.public_key(), alg)
    registry.create("keysvc", scopes=["read"], audiences=[AUDIENCE], jwks={"keys": [jwk]})
    assert post_assertion(http, assertion(key, jwk["kid"], clock, alg=alg)).status_code == 200


@pytest.mark.parametrize(
    "jwks",
    [
        {"keys": []},
        {"keys": [{"kty": "oct", "k": "c2VjcmV0"}]},
        {"keys": [{"kty": "EC", "crv": "P-256", "x": "a", "y": "b", "d": "private"}]},
        {"nokeys": 1},
        [],
    ],
)
def test_unusable_jwks_are_refused_at_registration(registry, jwks):
    with pytest.raises(ClientError):
        registry.create("keysvc", scopes=["read"], audiences=[AUDIENCE], jwks=jwks)


def test_replay_cache_entries_expire(services, clock):
    replay = services.authenticator.assertions.replay
    assert replay.first_use("c", "j1", clock.now + 10)
    assert not replay.first_use("c", "j1", clock.now + 10)
    clock.advance(11)
    assert not replay.first_use("c", "j1", clock.now + 10)  # kept through the purge grace
    clock.advance(db.PURGE_GRACE)
    assert replay.first_use("c", "j2", clock.now + 10)  # purges expired entries
    assert replay.first_use("c", "j1", clock.now + 10)


# ---- introspection ----------------------------------------------------------------------------------


@pytest.fixture
def issued(http, make_client):
    cid, secret = make_client()
    other_id, other_secret = make_client("other")
    token = fetch_token(http, cid, secret)["access_token"]
    return {"cid": cid, "secret": secret, "token": token, "other": (other_id, other_secret)}


def introspect(http, token, creds):
    return http.post("/oauth/introspect", data={"token": token}, headers=basic(*creds))


def test_introspection_active(http, issued):
    response = introspect(http, issued["token"], issued["other"])
    assert response.status_code == 200
    body = response.get_json()
    assert body["active"] is True
    assert body["client_id"] == "svc" and body["scope"] == "read write" and body["token_type"] == "Bearer"
    assert response.headers["Cache-Control"] == "no-store"


def test_introspection_with_private_key_jwt(http, issued, key_client, clock):
    key, kid = key_client
    response = http.post(
        "/oauth/introspect",
        data={
            "token": issued["token"],
            "client_assertion_type": ASSERTION_TYPE,
            "client_assertion": assertion(key, kid, clock, aud="http://localhost:5000/oauth/introspect"),
        },
    )
    assert response.get_json()["active"] is True


def test_introspection_with_client_secret_post(http, issued):
    other_id, other_secret = issued["other"]
    response = http.post("/oauth/introspect", data={"token": issued["token"], "client_id": other_id, "client_secret": other_secret})
    assert response.get_json()["active"] is True


def test_introspection_inactive_cases(http, issued, services, registry, clock):
    creds = issued["other"]
    header, payload, signature = issued["token"].split(".")
    claims = json.loads(base64.urlsafe_b64decode(payload + "=="))
    assert introspect(http, f"{header}.{_b64({**claims, 'scope': 'admin'})}.{signature}", creds).get_json() == {"active": False}
    assert introspect(http, "garbage", creds).get_json() == {"active": False}
    key = services.keys.current().active
    foreign = key.sign(json.dumps({**claims, "iss": "https://other-issuer"}).encode())
    assert introspect(http, foreign, creds).get_json() == {"active": False}
    registry.set_enabled("svc", False)
    assert introspect(http, issued["token"], creds).get_json() == {"active": False}
    registry.set_enabled("svc", True)
    assert introspect(http, issued["token"], creds).get_json()["active"] is True
    clock.advance(3600 + 31)
    assert introspect(http, issued["token"], creds).get_json() == {"active": False}


def test_introspection_requires_authentication(http, issued):
    response = http.post("/oauth/introspect", data={"token": issued["token"]})
    assert response.status_code == 401
    assert response.get_json()["error"] == "invalid_client"
    assert introspect(http, issued["token"], ("other", "wrong")).status_code == 401


def test_introspection_requires_token(http, issued):
    response = http.post("/oauth/introspect", data={}, headers=basic(*issued["other"]))
    assert response.status_code == 400


# ---- revocation ---------------------------------------------------------------------------------------


def test_revoke_own_token(http, issued):
    response = http.post("/oauth/revoke", data={"token": issued["token"]}, headers=basic(issued["cid"], issued["secret"]))
    assert response.status_code == 200
    assert introspect(http, issued["token"], issued["other"]).get_json() == {"active": False}
    verify = http.post("/verify_token", json={"access_token": issued["token"], "audience": AUDIENCE})
    assert verify.status_code == 400 and "revoked" in verify.get_json()["error_description"]


def test_revoking_another_clients_token_changes_nothing(http, issued):
    response = http.post("/oauth/revoke", data={"token": issued["token"]}, headers=basic(*issued["other"]))
    assert response.status_code == 200
    assert introspect(http, issued["token"], issued["other"]).get_json()["active"] is True


def test_revoke_unknown_token_is_200(http, issued):
    response = http.post(
        "/oauth/revoke", data={"token": "not-a-token", "token_type_hint": "access_token"}, headers=basic(issued["cid"], issued["secret"])
    )
    assert response.status_code == 200


def test_revoke_requires_authentication(http, issued):
    assert http.post("/oauth/revoke", data={"token": issued["token"]}).status_code == 401


def test_revocation_is_idempotent(http, issued):
    for _ in range(2):
        assert (
            http.post("/oauth/revoke", data={"token": issued["token"]}, headers=basic(issued["cid"], issued["secret"])).status_code == 200
        )


def test_disabled_client_tokens_fail_verify_token(http, issued, registry):
    registry.set_enabled("svc", False)
    response = http.post("/verify_token", json={"access_token": issued["token"], "audience": AUDIENCE})
    assert response.status_code == 400 and "disabled" in response.get_json()["error_description"]


# ---- client_lib against a live server -----------------------------------------------------------------


def test_client_lib_private_key_and_introspection_live(live_factory, tmp_path):
    server = live_factory(workers=2)
    key = ec.generate_private_key(ec.SECP256R1())
    pem_path = tmp_path / "svc.pem"
    pem_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    jwks = run_cli("client", "jwks", str(pem_path), env=server.env)
    assert jwks.returncode == 0, jwks.stderr
    (tmp_path / "svc.jwks.json").write_text(jwks.stdout)
    created = run_cli(
        "client", "create", "keysvc", "--scope", "read", "--audience", AUDIENCE, "--jwks", str(tmp_path / "svc.jwks.json"), env=server.env
    )
    assert created.returncode == 0, created.stderr
    assert "client_secret" not in json.loads(created.stdout)
    kid = json.loads(jwks.stdout)["keys"][0]["kid"]

    client = TokenClient(server.url, "keysvc", private_key=str(pem_path), key_id=kid)
    token = client.get_token(audience=AUDIENCE)
    verifier = TokenVerifier(server.url, AUDIENCE, introspect=True, introspection_client=client)
    assert verifier.verify(token)["client_id"] == "keysvc"

    fields, _ = client.client_auth(server.url + "/oauth/revoke")
    assert requests.post(server.url + "/oauth/revoke", data={"token": token, **fields}, timeout=5).status_code == 200
    time.sleep(0.01)
    fresh_verifier = TokenVerifier(server.url, AUDIENCE, introspect=True, introspection_client=client)
    with pytest.raises(RevokedToken):
        fresh_verifier.verify(token)

    cli_token = run_cli(
        "token", "--client-id", "keysvc", "--private-key", str(pem_path), "--key-id", kid, "--audience", AUDIENCE, env=server.env
    )
    assert cli_token.returncode == 0, cli_token.stderr


def test_jwks_uri_client(http, registry, clock):
    """Keys fetched from the client's jwks_uri (loopback), refetched when a new kid appears."""
    first, second = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    published = {"keys": [public_jwk(first.public_key(), "ES256")]}
    hits = []

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args):
            pass

        def do_GET(self):
            hits.append(self.path)
            body = json.dumps(published).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    try:
        registry.create("keysvc", scopes=["read"], audiences=[AUDIENCE], jwks_uri=f"http://127.0.0.1:{server.server_address[1]}/jwks")
        kid1 = published["keys"][0]["kid"]
        assert post_assertion(http, assertion(first, kid1, clock)).status_code == 200
        assert post_assertion(http, assertion(first, kid1, clock)).status_code == 200
        assert len(hits) == 1  # cached
        published["keys"].append(public_jwk(second.public_key(), "ES256"))
        assert post_assertion(http, assertion(second, published["keys"][1]["kid"], clock)).status_code == 200
        assert len(hits) == 2  # unknown kid: one refetch
    finally:
        server.shutdown()


def test_assertion_with_jws_extensions_or_an_algorithm_outside_the_table_is_refused(http, key_client, registry, clock):
    """The strict rules of client_lib.jose: `crit` is refused, and an RSA key verifies RS256/RS512/PS256 only."""
    key, kid = key_client
    now = int(clock.now)
    claims = {"iss": "keysvc", "sub": "keysvc", "aud": TOKEN_URL, "iat": now, "exp": now + 60, "jti": secrets.token_urlsafe(16)}
    crit = jwt.encode(claims, key, algorithm="ES256", headers={"kid": kid, "crit": ["exp"], "exp": now + 60})
    response = post_assertion(http, crit)
    assert response.status_code == 401 and "extensions" in response.get_json()["error_description"]
    rsa_key = rsa.generate_private_key(65537, 2048)
    registry.create("rsasvc", scopes=["read"], audiences=[AUDIENCE], jwks={"keys": [{**public_jwk(rsa_key.public_key(), "RS256")}]})
    rs384 = jwt.encode({**claims, "iss": "rsasvc", "sub": "rsasvc"}, rsa_key, algorithm="RS384")
    response = post_assertion(http, rs384)
    assert response.status_code == 401 and "'RS384' is not accepted" in response.get_json()["error_description"]
