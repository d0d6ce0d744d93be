"""POST /oauth/token: RFC 6749 §4.4 with client_secret_basic / client_secret_post, scopes and audiences."""

from __future__ import annotations

import base64

import jwt
import pytest

from tokendealer import clients as clients_module
from tokendealer.app import create_app
from tokendealer.clients import ClientError

from .conftest import AUDIENCE, basic, decode_with_jwks, fetch_token, initialise, make_config

GRANT = {"grant_type": "client_credentials"}


def test_client_secret_basic_issues_a_token(http, make_client):
    cid, secret = make_client()
    response = http.post("/oauth/token", data=GRANT, headers=basic(cid, secret))
    assert response.status_code == 200
    body = response.get_json()
    assert body["token_type"] == "Bearer"
    assert body["expires_in"] == 3600
    assert body["scope"] == "read write"
    assert response.headers["Cache-Control"] == "no-store"
    assert response.headers["Pragma"] == "no-cache"
    assert response.mimetype == "application/json"


def test_client_secret_post_issues_a_token(http, make_client):
    cid, secret = make_client()
    response = http.post("/oauth/token", data={**GRANT, "client_id": cid, "client_secret": secret})
    assert response.status_code == 200
    assert response.get_json()["access_token"]


@pytest.mark.parametrize("name", ["svc.with-dots_and-dash", "a"])
def test_basic_credentials_are_form_decoded(http, registry, name, monkeypatch):
    """RFC 6749 §2.3.1: id and secret are form-urlencoded before base64; a secret with + / % : must work."""
    secret = "p+s/w%rd:with spaces&="
    monkeypatch.setattr(clients_module, "new_secret", lambda: secret)  # the server's generator, made to yield one
    registry.create(name, scopes=["read"], audiences=[AUDIENCE])
    assert http.post("/oauth/token", data=GRANT, headers=basic(name, secret)).status_code == 200
    raw_unencoded = base64.b64encode(f"{name}:{secret}".encode()).decode()
    # Without the form-encoding the '+' decodes to a space, so the raw secret is refused.
    assert http.post("/oauth/token", data=GRANT, headers={"Authorization": f"Basic {raw_unencoded}"}).status_code == 401


def test_wrong_secret_is_invalid_client_with_basic_challenge(http, make_client):
    cid, _ = make_client()
    response = http.post("/oauth/token", data=GRANT, headers=basic(cid, "wrong"))
    assert response.status_code == 401
    assert response.get_json()["error"] == "invalid_client"
    assert response.headers["WWW-Authenticate"].startswith("Basic")
    assert response.headers["Cache-Control"] == "no-store"


def test_wrong_secret_in_body_has_no_basic_challenge(http, make_client):
    cid, _ = make_client()
    response = http.post("/oauth/token", data={**GRANT, "client_id": cid, "client_secret": "wrong"})
    assert response.status_code == 401
    assert response.get_json()["error"] == "invalid_client"
    assert "WWW-Authenticate" not in response.headers


def test_unknown_client_is_invalid_client(http):
    response = http.post("/oauth/token", data=GRANT, headers=basic("nobody", "secret"))
    assert response.status_code == 401
    assert response.get_json()["error"] == "invalid_client"


def test_disabled_client_is_invalid_client(http, make_client, registry):
    cid, secret = make_client()
    registry.set_enabled(cid, False)
    response = http.post("/oauth/token", data=GRANT, headers=basic(cid, secret))
    assert response.status_code == 401
    assert response.get_json()["error"] == "invalid_client"


def test_no_authentication_is_invalid_client(http):
    response = http.post("/oauth/token", data=GRANT)
    assert response.status_code == 401
    assert response.get_json()["error"] == "invalid_client"


def test_basic_and_body_credentials_together_are_invalid_request(http, make_client):
    cid, secret = make_client()
    response = http.post("/oauth/token", data={**GRANT, "client_id": cid, "client_secret": secret}, headers=basic(cid, secret))
    assert response.status_code == 400
    assert response.get_json()["error"] == "invalid_request"


def test_malformed_basic_header_is_invalid_client(http):
    response = http.post("/oauth/token", data=GRANT, headers={"Authorization": "Basic %%%not-base64"})
    assert response.status_code == 401
    assert response.get_json()["error"] == "invalid_client"


def test_missing_grant_type_is_invalid_request(http, make_client):
    cid, secret = make_client()
    response = http.post("/oauth/token", data={"scope": "read"}, headers=basic(cid, secret))
    assert response.status_code == 400
    assert response.get_json()["error"] == "invalid_request"


@pytest.mark.parametrize("grant", ["password", "authorization_code", "urn:ietf:params:oauth:grant-type:saml2-bearer", "x"])
def test_unknown_grant_type_is_unsupported(http, make_client, grant):
    cid, secret = make_client()
    response = http.post("/oauth/token", data={"grant_type": grant}, headers=basic(cid, secret))
    assert response.status_code == 400
    assert response.get_json()["error"] == "unsupported_grant_type"


def test_repeated_parameter_is_invalid_request(http, make_client):
    cid, secret = make_client()
    response = http.post("/oauth/token", data={"grant_type": "client_credentials", "scope": ["read", "write"]}, headers=basic(cid, secret))
    assert response.status_code == 400
    assert response.get_json()["error"] == "invalid_request"


def test_scope_within_allowed(http, make_client):
    cid, secret = make_client()
    assert fetch_token(http, cid, secret, scope="read")["scope"] == "read"


def test_scope_outside_allowed_is_invalid_scope(http, make_client):
    cid, secret = make_client()
    response = http.post("/oauth/token", data={**GRANT, "scope": "read admin"}, headers=basic(cid, secret))
    assert response.status_code == 400
    assert response.get_json()["error"] == "invalid_scope"


def test_absent_scope_gives_all_allowed(http, make_client):
    cid, secret = make_client()
    assert fetch_token(http, cid, secret)["scope"] == "read write"


def test_absent_scope_gives_default_scopes(http, make_client):
    cid, secret = make_client(default_scopes=["read"])
    assert fetch_token(http, cid, secret)["scope"] == "read"
    assert fetch_token(http, cid, secret, scope="write")["scope"] == "write"


def test_audience_allowed(http, make_client, services):
    cid, secret = make_client(audiences=[AUDIENCE, "https://billing"])
    token = fetch_token(http, cid, secret, audience="https://billing")["access_token"]
    assert jwt.decode(token, options={"verify_signature": False})["aud"] == "https://billing"


def test_audience_disallowed_is_invalid_target(http, make_client):
    cid, secret = make_client()
    response = http.post("/oauth/token", data={**GRANT, "audience": "https://other"}, headers=basic(cid, secret))
    assert response.status_code == 400
    assert response.get_json()["error"] == "invalid_target"


def test_absent_audience_uses_the_only_one(http, make_client):
    cid, secret = make_client()
    token = fetch_token(http, cid, secret)["access_token"]
    assert jwt.decode(token, options={"verify_signature": False})["aud"] == AUDIENCE


def test_absent_audience_uses_default_audience(http, make_client):
    cid, secret = make_client(audiences=[AUDIENCE, "https://billing"], default_audience="https://billing")
    token = fetch_token(http, cid, secret)["access_token"]
    assert jwt.decode(token, options={"verify_signature": False})["aud"] == "https://billing"


def test_absent_audience_without_default_is_invalid_request(http, make_client):
    cid, secret = make_client(audiences=[AUDIENCE, "https://billing"])
    response = http.post("/oauth/token", data=GRANT, headers=basic(cid, secret))
    assert response.status_code == 400
    assert response.get_json()["error"] == "invalid_request"


def test_resource_repeated_gives_both_audiences(http, make_client):
    cid, secret = make_client(audiences=[AUDIENCE, "https://billing"])
    response = http.post(
        "/oauth/token",
        data={"grant_type": "client_credentials", "resource": [AUDIENCE, "https://billing"]},
        headers=basic(cid, secret),
    )
    assert response.status_code == 200
    claims = jwt.decode(response.get_json()["access_token"], options={"verify_signature": False})
    assert claims["aud"] == [AUDIENCE, "https://billing"]


def test_resource_not_allowed_is_invalid_target(http, make_client):
    cid, secret = make_client()
    response = http.post("/oauth/token", data={**GRANT, "resource": "https://elsewhere"}, headers=basic(cid, secret))
    assert response.status_code == 400
    assert response.get_json()["error"] == "invalid_target"


def test_resource_must_be_absolute_uri(http, make_client):
    cid, secret = make_client(audiences=["billing"])
    response = http.post("/oauth/token", data={**GRANT, "resource": "billing"}, headers=basic(cid, secret))
    assert response.status_code == 400
    assert response.get_json()["error"] == "invalid_target"


@pytest.mark.parametrize(
    "kwargs",
    [
        {"json": {"grant_type": "client_credentials"}},
        {"data": b"", "content_type": "application/x-www-form-urlencoded"},
        {"data": b""},
        {"data": bytes(range(256)) * 4, "content_type": "application/octet-stream"},
        {"data": bytes(range(256)) * 4, "content_type": "application/x-www-form-urlencoded"},
        {"data": "grant_type=client_credentials&" + "x=1&" * 200, "content_type": "application/x-www-form-urlencoded"},
        {"data": "grant_type=client_credentials&scope=" + "a" * 20000, "content_type": "application/x-www-form-urlencoded"},
        {"data": "%zz=%%&&==", "content_type": "application/x-www-form-urlencoded"},
        {"data": "<xml/>", "content_type": "text/xml"},
    ],
)
def test_bad_bodies_get_4xx_never_5xx(http, make_client, kwargs):
    cid, secret = make_client()
    response = http.post("/oauth/token", headers=basic(cid, secret), **kwargs)
    assert 400 <= response.status_code < 500
    assert response.mimetype == "application/json"
    assert response.get_json()["error"]


def test_oversized_body_is_413(http, make_client):
    cid, secret = make_client()
    response = http.post("/oauth/token", data={**GRANT, "pad": "x" * 100_000}, headers=basic(cid, secret))
    assert response.status_code == 413
    assert response.get_json()["error"] == "invalid_request"


def test_get_on_token_endpoint_is_405_json(http):
    response = http.get("/oauth/token")
    assert response.status_code == 405
    assert response.get_json()["error"] == "invalid_request"


def test_unknown_path_is_404_json(http):
    response = http.get("/nope")
    assert response.status_code == 404
    assert response.get_json()["error"] == "not_found"


def test_issued_token_claims_and_header(http, make_client, clock, config):
    cid, secret = make_client(claims={"tier": "gold"}, token_ttl=600)
    token = fetch_token(http, cid, secret, scope="read")["access_token"]
    jwks = http.get("/.well-known/jwks.json").get_json()
    header = jwt.get_unverified_header(token)
    assert header["typ"] == "at+jwt"
    assert header["alg"] == "ES256"
    active_kid = http.application.extensions["tokendealer"].keys.current().active.kid
    assert header["kid"] == active_kid
    claims = decode_with_jwks(token, jwks, AUDIENCE, config.issuer, verify_exp=False, verify_iat=False, verify_nbf=False)
    assert claims["iss"] == "http://localhost:5000"
    assert claims["sub"] == cid == claims["client_id"]
    assert claims["aud"] == AUDIENCE
    assert claims["iat"] == claims["nbf"] == int(clock.now)
    assert claims["exp"] == int(clock.now) + 600
    assert claims["scope"] == "read"
    assert claims["tier"] == "gold"
    assert len(base64.urlsafe_b64decode(claims["jti"] + "==")) >= 16


def test_token_verifies_with_real_clock_against_jwks(tmp_path):
    """The same checks with PyJWT's own clock (exp, iat, nbf verified)."""

    config = make_config(tmp_path)
    initialise(config)
    app = create_app(config)
    client, secret = app.extensions["tokendealer"].clients.create("svc", scopes=["read"], audiences=[AUDIENCE])
    http = app.test_client()
    token = fetch_token(http, "svc", secret)["access_token"]
    claims = decode_with_jwks(token, http.get("/.well-known/jwks.json").get_json(), AUDIENCE, config.issuer)
    assert claims["client_id"] == "svc"


def test_jti_is_unique(http, make_client):
    cid, secret = make_client()
    jtis = {jwt.decode(fetch_token(http, cid, secret)["access_token"], options={"verify_signature": False})["jti"] for _ in range(50)}
    assert len(jtis) == 50


def test_client_ttl_never_above_max(tmp_path, clock):

    config = make_config(tmp_path, token_ttl=100, max_token_ttl=200)
    initialise(config, clock)
    app = create_app(config, clock=clock)
    store = app.extensions["tokendealer"].clients
    _, secret = store.create("svc", scopes=["read"], audiences=[AUDIENCE])
    assert fetch_token(app.test_client(), "svc", secret)["expires_in"] == 100

    with pytest.raises(ClientError):
        store.update("svc", token_ttl=500)


@pytest.mark.parametrize("alg", ["RS256", "RS512", "PS256", "EdDSA"])
def test_other_algorithms_sign_and_verify(tmp_path, alg):

    config = make_config(tmp_path)
    initialise(config, alg=alg)
    app = create_app(config)
    _, secret = app.extensions["tokendealer"].clients.create("svc", scopes=["read"], audiences=[AUDIENCE])
    http = app.test_client()
    token = fetch_token(http, "svc", secret)["access_token"]
    assert jwt.get_unverified_header(token)["alg"] == alg
    decode_with_jwks(token, http.get("/.well-known/jwks.json").get_json(), AUDIENCE, config.issuer)


def test_fast_path_and_flask_path_answer_alike(tmp_path, make_client, http):
    """With request-rate limits on, /oauth/token goes through Flask; the answers must be the same."""
    cid, secret = make_client()
    (tmp_path / "other").mkdir()
    config = make_config(tmp_path / "other", ratelimit="1000/minute")
    initialise(config)
    flask_app = create_app(config)
    flask_app.extensions["tokendealer"].clients.create("svc", scopes=["read", "write"], audiences=[AUDIENCE])
    flask_http = flask_app.test_client()
    cases = [
        {"data": {"grant_type": "password"}},
        {"data": {"grant_type": "client_credentials"}},
        {"json": {"grant_type": "client_credentials"}},
        {"data": {"grant_type": "client_credentials", "scope": ["a", "b"]}},
        {"data": "x" * 70000, "content_type": "application/x-www-form-urlencoded"},
    ]
    for case in cases:
        fast = http.post("/oauth/token", **case)
        slow = flask_http.post("/oauth/token", **case)
        assert (fast.status_code, fast.get_json()["error"]) == (slow.status_code, slow.get_json()["error"]), case
        assert fast.headers.get("Cache-Control") == slow.headers.get("Cache-Control") == "no-store"
        assert "X-Request-ID" in fast.headers and "X-Request-ID" in slow.headers
