"""/verify_token, JWKS, discovery, health and OpenAPI."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json

import jwt
import pytest
from cryptography.hazmat.primitives import serialization

from tokendealer.app import create_app

from .conftest import AUDIENCE, basic, fetch_token, initialise, make_config


def _verify(http, token, audience=AUDIENCE):
    return http.post("/verify_token", json={"access_token": token, "audience": audience})


@pytest.fixture
def token(http, make_client):
    cid, secret = make_client()
    return fetch_token(http, cid, secret)["access_token"]


def _b64(data: dict) -> str:
    return base64.urlsafe_b64encode(json.dumps(data).encode()).rstrip(b"=").decode()


def test_verify_token_returns_claims(http, token):
    response = _verify(http, token)
    assert response.status_code == 200
    assert response.get_json()["client_id"] == "svc"


def test_verify_token_accepts_the_original_form_body(http, token):
    response = http.post("/verify_token", data={"access_token": token, "audience": AUDIENCE})
    assert response.status_code == 200


def test_verify_token_expired(http, token, clock):
    clock.advance(3600 + 31)
    response = _verify(http, token)
    assert response.status_code == 400
    assert response.get_json()["error"] == "invalid_token"
    assert "expired" in response.get_json()["error_description"]


def test_verify_token_until_exp_by_the_servers_clock(http, token, clock):
    clock.advance(3600 - 1)
    assert _verify(http, token).status_code == 200
    clock.advance(1)
    assert _verify(http, token).status_code == 400


def test_verify_token_tampered(http, token):
    header, payload, signature = token.split(".")
    claims = json.loads(base64.urlsafe_b64decode(payload + "=="))
    claims["scope"] = "admin"
    response = _verify(http, f"{header}.{_b64(claims)}.{signature}")
    assert response.status_code == 400
    assert "signature" in response.get_json()["error_description"]


def test_verify_token_wrong_audience(http, token):
    response = _verify(http, token, "https://other")
    assert response.status_code == 400
    assert "audience" in response.get_json()["error_description"]


def test_verify_token_wrong_issuer(http, services, make_client, clock):
    """A token signed by our own key but naming another issuer is refused."""
    key = services.keys.current().active
    now = int(clock.now)
    claims = {"iss": "https://evil", "sub": "svc", "client_id": "svc", "aud": AUDIENCE, "iat": now, "exp": now + 60, "jti": "x" * 22}
    make_client()
    response = _verify(http, key.sign(json.dumps(claims).encode()))
    assert response.status_code == 400
    assert "issuer" in response.get_json()["error_description"]


def test_verify_token_alg_none(http, token):
    _, payload, _ = token.split(".")
    kid = jwt.get_unverified_header(token)["kid"]
    forged = f"{_b64({'alg': 'none', 'typ': 'at+jwt', 'kid': kid})}.{payload}."
    response = _verify(http, forged)
    assert response.status_code == 400
    assert response.get_json()["error"] == "invalid_token"


def test_verify_token_hs256_with_public_key_as_secret(http, token, services):
    """Algorithm confusion: HMAC keyed with the public key's PEM must not verify."""
    key = services.keys.current().active
    pem = key.private_key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    claims = jwt.decode(token, options={"verify_signature": False})

    signing_input = f"{_b64({'alg': 'HS256', 'typ': 'at+jwt', 'kid': key.kid})}.{_b64(claims)}"
    signature = base64.urlsafe_b64encode(hmac.new(pem, signing_input.encode(), hashlib.sha256).digest()).rstrip(b"=").decode()
    response = _verify(http, f"{signing_input}.{signature}")
    assert response.status_code == 400
    assert "HS256" in response.get_json()["error_description"]


def test_verify_token_unknown_kid(http, token):
    header, payload, signature = token.split(".")
    h = json.loads(base64.urlsafe_b64decode(header + "=="))
    h["kid"] = "unknown"
    response = _verify(http, f"{_b64(h)}.{payload}.{signature}")
    assert response.status_code == 400
    assert "unknown" in response.get_json()["error_description"]


def test_verify_token_wrong_typ(http, token, services):
    claims = jwt.decode(token, options={"verify_signature": False})
    key = services.keys.current().active
    forged = jwt.encode(claims, key.private_key, algorithm="ES256", headers={"kid": key.kid, "typ": "JWT"})
    response = _verify(http, forged)
    assert response.status_code == 400
    assert "typ" in response.get_json()["error_description"]


@pytest.mark.parametrize("body", [{}, {"access_token": "x"}, {"audience": AUDIENCE}, [], "str", {"access_token": 5, "audience": AUDIENCE}])
def test_verify_token_bad_requests(http, body):
    response = http.post("/verify_token", json=body)
    assert response.status_code == 400
    assert response.get_json()["error"] in ("invalid_request", "invalid_token")


def test_verify_token_garbage(http):
    response = _verify(http, "not.a.jwt")
    assert response.status_code == 400
    assert response.get_json()["error"] == "invalid_token"


def test_jwks_publishes_active_and_next(http, services):
    response = http.get("/.well-known/jwks.json")
    assert response.status_code == 200
    keyring = services.keys.current()
    kids = {k["kid"] for k in response.get_json()["keys"]}
    assert kids == {keyring.record("active").kid, keyring.record("next").kid}
    for key in response.get_json()["keys"]:
        assert key["use"] == "sig" and key["alg"] == "ES256" and key["kty"] == "EC"
        assert "d" not in key
    assert response.headers["Cache-Control"] == "public, max-age=300"


def test_jwks_etag_and_304(http):
    first = http.get("/.well-known/jwks.json")
    etag = first.headers["ETag"]
    second = http.get("/.well-known/jwks.json", headers={"If-None-Match": etag})
    assert second.status_code == 304
    assert second.headers["ETag"] == etag
    assert http.get("/.well-known/jwks.json", headers={"If-None-Match": '"other"'}).status_code == 200


@pytest.mark.parametrize("path", ["/.well-known/oauth-authorization-server", "/.well-known/openid-configuration"])
def test_discovery_fields(http, path, make_client):
    make_client()
    data = http.get(path).get_json()
    assert data["issuer"] == "http://localhost:5000"
    assert data["token_endpoint"] == "http://localhost:5000/oauth/token"
    assert data["jwks_uri"] == "http://localhost:5000/.well-known/jwks.json"
    assert data["introspection_endpoint"] == "http://localhost:5000/oauth/introspect"
    assert data["revocation_endpoint"] == "http://localhost:5000/oauth/revoke"
    assert {
        "client_credentials",
        "urn:ietf:params:oauth:grant-type:token-exchange",
        "urn:ietf:params:oauth:grant-type:jwt-bearer",
    } <= set(data["grant_types_supported"])
    assert data["response_types_supported"] == ["none"] and "authorization_endpoint" not in data
    for name in ("token_endpoint", "introspection_endpoint", "revocation_endpoint"):
        assert set(data[f"{name}_auth_methods_supported"]) == {"client_secret_basic", "client_secret_post", "private_key_jwt"}
    assert "ES256" in data["token_endpoint_auth_signing_alg_values_supported"]
    assert "none" not in data["token_endpoint_auth_signing_alg_values_supported"]
    assert data["scopes_supported"] == []  # only TOKENDEALER_PUBLIC_SCOPES are published


def test_discovery_for_issuer_with_path(tmp_path):

    config = make_config(tmp_path, issuer="https://auth.example.com/tenant")
    initialise(config)
    http = create_app(config).test_client()
    data = http.get("/.well-known/oauth-authorization-server/tenant").get_json()
    assert data["issuer"] == "https://auth.example.com/tenant"
    assert data["token_endpoint"] == "https://auth.example.com/tenant/oauth/token"


def test_healthz(http):
    response = http.get("/healthz")
    assert response.status_code == 200
    assert response.get_json() == {"status": "ok"}


def test_readyz_ok(http):
    assert http.get("/readyz").get_json() == {"status": "ok"}


def test_readyz_database_down(tmp_path, config, key_store):

    (tmp_path / "a-directory").mkdir()
    broken = config.__class__.load(environ={}, keys_dir=str(config.keys_dir), database_url=f"sqlite:///{tmp_path / 'a-directory'}")
    response = create_app(broken).test_client().get("/readyz")
    assert response.status_code == 503
    assert response.get_json()["problems"][0].startswith("database")


def test_token_endpoint_database_down_is_503(tmp_path, config, key_store):

    (tmp_path / "a-directory").mkdir()
    broken = config.__class__.load(environ={}, keys_dir=str(config.keys_dir), database_url=f"sqlite:///{tmp_path / 'a-directory'}")
    response = create_app(broken).test_client().post("/oauth/token", data={"grant_type": "client_credentials"}, headers=basic("a", "b"))
    assert response.status_code == 503
    assert response.get_json()["error"] == "temporarily_unavailable"


def test_openapi_lists_every_endpoint(http):
    doc = http.get("/openapi.json").get_json()
    assert doc["openapi"].startswith("3.")
    for path in (
        "/oauth/token",
        "/oauth/introspect",
        "/oauth/revoke",
        "/verify_token",
        "/.well-known/jwks.json",
        "/.well-known/oauth-authorization-server",
        "/.well-known/openid-configuration",
        "/healthz",
        "/readyz",
        "/metrics",
        "/openapi.json",
    ):
        assert path in doc["paths"], path


def test_verify_token_refuses_jws_extensions(http, token, services):
    """Only client_lib refused `crit` before client_lib.jose; now the server does too."""
    claims = jwt.decode(token, options={"verify_signature": False})
    key = services.keys.current().active
    forged = jwt.encode(claims, key.private_key, algorithm="ES256", headers={"kid": key.kid, "typ": "at+jwt", "crit": ["exp"], "exp": 1})
    response = _verify(http, forged)
    assert response.status_code == 400
    assert "extensions" in response.get_json()["error_description"]
