"""RFC 7591 dynamic registration and RFC 7592 management, in-process: the initial access token and the
limits its claims carry, the §3.2.1 answer, the registration access token, and bad metadata."""

from __future__ import annotations

import json

import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from client_lib.jose import public_jwk

from .conftest import AUDIENCE, basic, fetch_token

ADMIN_AUDIENCE = "http://localhost:5000/admin"
OTHER = "https://other.example"
LIMITS = {
    "registration_audiences": [AUDIENCE, OTHER],
    "registration_scopes": ["orders:read", "orders:write"],
}


@pytest.fixture
def initial(http, registry):
    """An initial access token: scope tokendealer:register, for the admin audience, with registration limits."""
    _, secret = registry.create("pipeline", scopes=["tokendealer:register"], audiences=[ADMIN_AUDIENCE], claims=LIMITS)
    return fetch_token(http, "pipeline", secret)["access_token"]


def register(http, token, body):
    return http.post("/oauth/register", json=body, headers={"Authorization": f"Bearer {token}"})


def test_register_then_get_a_token(http, initial, config):
    answer = register(http, initial, {"client_name": "Orders", "scope": "orders:read", "audiences": [AUDIENCE]})
    assert answer.status_code == 201, answer.get_json()
    body = answer.get_json()
    assert body["client_id"].startswith("dcr-")
    assert body["client_secret_expires_at"] == 0
    assert isinstance(body["client_id_issued_at"], int)
    assert body["registration_client_uri"] == f"http://localhost:5000/oauth/register/{body['client_id']}"
    assert answer.headers["Location"] == body["registration_client_uri"]
    assert body["token_endpoint_auth_method"] == "client_secret_basic"
    assert body["grant_types"] == ["client_credentials"]
    assert body["client_name"] == "Orders"
    assert body["scope"] == "orders:read"
    token = fetch_token(http, body["client_id"], body["client_secret"])
    assert token["scope"] == "orders:read"
    audit = [json.loads(line) for line in open(config.audit_log)]
    created = [e for e in audit if e["event"] == "client.created" and e["client_id"] == body["client_id"]]
    assert created[0]["actor"] == "pipeline" and created[0]["via"] == "registration"


def test_rfc7592_read_update_delete(http, initial):
    body = register(http, initial, {"scope": "orders:read", "audiences": [AUDIENCE]}).get_json()
    uri = "/oauth/register/" + body["client_id"]
    auth = {"Authorization": f"Bearer {body['registration_access_token']}"}

    read = http.get(uri, headers=auth)
    assert read.status_code == 200
    assert "client_secret" not in read.get_json() and "registration_access_token" not in read.get_json()
    assert read.get_json()["scope"] == "orders:read"

    update = {"client_id": body["client_id"], "scope": "orders:read orders:write", "audiences": [AUDIENCE, OTHER]}
    updated = http.put(uri, json=update, headers=auth)
    assert updated.status_code == 200, updated.get_json()
    assert updated.get_json()["scope"] == "orders:read orders:write"
    beyond = http.put(uri, json={**update, "scope": "admin:all"}, headers=auth)
    assert beyond.status_code == 400 and beyond.get_json()["error"] == "invalid_client_metadata"

    assert http.get(uri, headers={"Authorization": "Bearer wrong"}).status_code == 401
    assert http.get(uri).headers["WWW-Authenticate"] == 'Bearer realm="tokendealer"'
    other = register(http, initial, {"audiences": [AUDIENCE]}).get_json()
    assert http.get(uri, headers={"Authorization": f"Bearer {other['registration_access_token']}"}).status_code == 401

    assert http.delete(uri, headers=auth).status_code == 204
    assert http.get(uri, headers=auth).status_code == 401
    refused = http.post("/oauth/token", data={"grant_type": "client_credentials"}, headers=basic(body["client_id"], body["client_secret"]))
    assert refused.status_code == 401


def test_private_key_jwt_registration_gets_no_secret(http, initial):
    jwks = {"keys": [public_jwk(ec.generate_private_key(ec.SECP256R1()).public_key(), "ES256")]}
    answer = register(http, initial, {"token_endpoint_auth_method": "private_key_jwt", "jwks": jwks, "audiences": [AUDIENCE]})
    assert answer.status_code == 201, answer.get_json()
    assert "client_secret" not in answer.get_json()
    assert answer.get_json()["jwks"]["keys"][0]["kid"] == jwks["keys"][0]["kid"]


@pytest.mark.parametrize(
    ("body", "text"),
    [
        ({"scope": "admin:all", "audiences": [AUDIENCE]}, "scope 'admin:all' is not allowed"),
        ({"audiences": ["https://elsewhere"]}, "audience 'https://elsewhere' is not allowed"),
        ({"audiences": []}, "audiences must be a non-empty list"),
        ({"grant_types": ["authorization_code"], "audiences": [AUDIENCE]}, 'only ["client_credentials"]'),
        ({"token_endpoint_auth_method": "none", "audiences": [AUDIENCE]}, "must be one of"),
        ({"token_endpoint_auth_method": "tls_client_auth", "tls_client_auth_subject_dn": "CN=x", "audiences": [AUDIENCE]}, "not allowed"),
        ({"token_endpoint_auth_method": "private_key_jwt", "audiences": [AUDIENCE]}, "exactly one of jwks and jwks_uri"),
        ({"jwks_uri": "https://keys.example", "audiences": [AUDIENCE]}, "for private_key_jwt"),
        ({"client_name": 7, "audiences": [AUDIENCE]}, "client_name"),
        ({"scope": ["orders:read"], "audiences": [AUDIENCE]}, "space-separated string"),
        ([1, 2], "JSON object"),
    ],
)
def test_bad_metadata_is_invalid_client_metadata(http, initial, body, text):
    answer = register(http, initial, body)
    assert answer.status_code == 400
    assert answer.get_json()["error"] == "invalid_client_metadata"
    assert text in answer.get_json()["error_description"]


def test_a_registrant_cannot_mint_a_client_that_manages_the_server(http, registry):
    """Even an initial access token whose limits list the admin audience and the management scopes registers
    no client with them."""
    limits = {"registration_audiences": [ADMIN_AUDIENCE, AUDIENCE], "registration_scopes": ["tokendealer:admin", "orders:read"]}
    _, secret = registry.create("careless", scopes=["tokendealer:register"], audiences=[ADMIN_AUDIENCE], claims=limits)
    token = fetch_token(http, "careless", secret)["access_token"]
    admin_scope = register(http, token, {"scope": "tokendealer:admin", "audiences": [AUDIENCE]})
    assert admin_scope.status_code == 400 and "manages this server" in admin_scope.get_json()["error_description"]
    admin_audience = register(http, token, {"scope": "orders:read", "audiences": [ADMIN_AUDIENCE]})
    assert admin_audience.status_code == 400 and "admin audience" in admin_audience.get_json()["error_description"]
    assert register(http, token, {"scope": "orders:read", "audiences": [AUDIENCE]}).status_code == 201


def test_dpop_bound_access_tokens_registers_a_client_that_must_send_proofs(http, initial, registry):
    """RFC 9449 §5.2 client metadata: `dpop_bound_access_tokens` true makes the client's plain requests fail."""
    body = register(http, initial, {"scope": "orders:read", "audiences": [AUDIENCE], "dpop_bound_access_tokens": True}).get_json()
    assert body["dpop_bound_access_tokens"] is True and registry.require(body["client_id"]).require_dpop is True
    plain = http.post("/oauth/token", data={"grant_type": "client_credentials"}, headers=basic(body["client_id"], body["client_secret"]))
    assert plain.status_code == 400 and plain.get_json()["error"] == "invalid_dpop_proof"
    assert register(http, initial, {"audiences": [AUDIENCE], "dpop_bound_access_tokens": "yes"}).status_code == 400
    assert register(http, initial, {"audiences": [AUDIENCE]}).get_json()["dpop_bound_access_tokens"] is False


def test_unknown_metadata_is_ignored(http, initial):
    """RFC 7591 §2: metadata the server does not understand is ignored, not echoed back."""
    answer = register(http, initial, {"audiences": [AUDIENCE], "logo_uri": "https://x/logo.png", "redirect_uris": []})
    assert answer.status_code == 201
    assert "logo_uri" not in answer.get_json()


def test_registration_needs_an_initial_access_token_with_the_register_scope(http, registry):
    assert http.post("/oauth/register", json={"audiences": [AUDIENCE]}).status_code == 401
    _, secret = registry.create("ops", scopes=["tokendealer:admin"], audiences=[ADMIN_AUDIENCE], claims=LIMITS)
    admin = fetch_token(http, "ops", secret)["access_token"]
    refused = register(http, admin, {"audiences": [AUDIENCE]})
    assert refused.status_code == 403
    assert 'error="insufficient_scope"' in refused.headers["WWW-Authenticate"]
    _, secret = registry.create("bare", scopes=["tokendealer:register"], audiences=[ADMIN_AUDIENCE])
    bare = fetch_token(http, "bare", secret)["access_token"]
    nothing = register(http, bare, {"audiences": [AUDIENCE]})
    assert nothing.status_code == 400
    assert "not allowed by the initial access token" in nothing.get_json()["error_description"]


def test_discovery_advertises_the_registration_endpoint(http):
    metadata = http.get("/.well-known/oauth-authorization-server").get_json()
    assert metadata["registration_endpoint"] == "http://localhost:5000/oauth/register"


def test_a_client_deleted_through_the_admin_api_loses_its_registration(http, initial, services):
    body = register(http, initial, {"audiences": [AUDIENCE]}).get_json()
    services.manage.delete_client("ops", "admin_api", body["client_id"])
    auth = {"Authorization": f"Bearer {body['registration_access_token']}"}
    assert http.get("/oauth/register/" + body["client_id"], headers=auth).status_code == 401


@pytest.fixture
def listener():
    """A loopback HTTP server standing for an internal service; yields (url, the paths it was asked for)."""
    import http.server  # noqa: PLC0415
    import threading  # noqa: PLC0415

    hits: list[str] = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 (http.server's name)
            hits.append(self.path)
            self.send_response(404)
            self.end_headers()

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}", hits
    server.shutdown()
    server.server_close()


def test_a_registrant_cannot_make_the_server_fetch_a_url_of_its_choosing(http, initial, listener, clock):
    """SSRF: a jwks_uri is fetched by the server; only an operator chooses where (SECURITY.md). A registrant
    naming an internal URL is refused, and the server never asks it for anything."""
    import secrets  # noqa: PLC0415

    import jwt  # noqa: PLC0415

    url, hits = listener
    for uri in (f"{url}/latest/meta-data", "https://169.254.169.254/keys"):
        body = {"token_endpoint_auth_method": "private_key_jwt", "jwks_uri": uri, "audiences": [AUDIENCE]}
        answer = register(http, initial, body)
        if answer.status_code == 201:  # the attack: authenticate, so the server fetches the registered URL
            client_id, now = answer.get_json()["client_id"], int(clock.now)
            claims = {"iss": client_id, "sub": client_id, "aud": "http://localhost:5000/oauth/token", "iat": now, "exp": now + 60}
            value = jwt.encode({**claims, "jti": secrets.token_urlsafe(8)}, ec.generate_private_key(ec.SECP256R1()), "ES256", {"kid": "k"})
            http.post(
                "/oauth/token",
                data={
                    "grant_type": "client_credentials",
                    "client_assertion_type": "urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
                    "client_assertion": value,
                },
            )
        assert answer.status_code == 400, answer.get_json()
        assert answer.get_json()["error"] == "invalid_client_metadata"
        assert "jwks_uri" in answer.get_json()["error_description"]
    assert hits == []


def test_a_jwks_uri_the_operator_allowed_is_registered(http, registry):
    claims = {**LIMITS, "registration_jwks_uris": ["https://keys.example/", "https://one.example/jwks.json"]}
    _, secret = registry.create("pipeline2", scopes=["tokendealer:register"], audiences=[ADMIN_AUDIENCE], claims=claims)
    token = fetch_token(http, "pipeline2", secret)["access_token"]
    for uri, status in [
        ("https://keys.example/team/jwks.json", 201),
        ("https://one.example/jwks.json", 201),
        ("https://one.example/jwks.json.evil", 400),
        ("https://keys.example.evil/jwks.json", 400),
        ("http://keys.example/team/jwks.json", 400),
    ]:
        body = {"token_endpoint_auth_method": "private_key_jwt", "jwks_uri": uri, "audiences": [AUDIENCE]}
        assert register(http, token, body).status_code == status, uri
