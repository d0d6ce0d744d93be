"""DPoP (RFC 9449) at the token endpoint: one test per §4.3 check, nonces, require_dpop, every grant,
introspection, discovery, OpenAPI, audit and metrics, and both HTTP paths (Flask views and the fast path)."""

from __future__ import annotations

import json
import secrets
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

from client_lib.core.dpop import DPoPKey, Nonces, htu
from client_lib.jose import jwk_thumbprint, sha256_b64url
from tokendealer.app import create_app
from tokendealer.config import ConfigError

from .conftest import AUDIENCE, basic, fetch_token, make_config
from .test_federation import JWT_BEARER, billing, federate, k8s

__all__ = ["billing", "federate", "k8s"]  # fixtures of the federation tests, for the JWT bearer grant

TOKEN_URL = "http://localhost:5000/oauth/token"
EXCHANGE = "urn:ietf:params:oauth:grant-type:token-exchange"
ACCESS_TOKEN = "urn:ietf:params:oauth:token-type:access_token"


def public(key: Any) -> dict[str, Any]:
    jwk = json.loads(jwt.algorithms.get_default_algorithms()[alg_of(key)].to_jwk(key.public_key()))
    return {k: v for k, v in jwk.items() if k in ("kty", "crv", "x", "y", "n", "e")}


def alg_of(key: Any) -> str:
    return {ec.EllipticCurvePrivateKey: "ES256", rsa.RSAPrivateKey: "PS256", ed25519.Ed25519PrivateKey: "EdDSA"}[
        next(t for t in (ec.EllipticCurvePrivateKey, rsa.RSAPrivateKey, ed25519.Ed25519PrivateKey) if isinstance(key, t))
    ]


def proof(key: Any, now: float, header: dict[str, Any] | None = None, alg: str | None = None, **claims: Any) -> str:
    """A DPoP proof for the token endpoint; `header` and `claims` override (None removes) the defaults."""
    body = {"jti": secrets.token_urlsafe(12), "htm": "POST", "htu": TOKEN_URL, "iat": int(now), **claims}
    body = {k: v for k, v in body.items() if v is not None}
    head = {"typ": "dpop+jwt", "jwk": public(key), **(header or {})}
    head = {k: v for k, v in head.items() if v is not None}
    return jwt.encode(body, key, algorithm=alg or alg_of(key), headers=head)


@pytest.fixture
def key():
    return ec.generate_private_key(ec.SECP256R1())


@pytest.fixture
def svc(make_client):
    return make_client("svc", scopes=("read",), audiences=(AUDIENCE,))


def token_request(http, svc, dpop: str | list[str] | None, **form: Any):
    headers = [(name, value) for name, value in basic(*svc).items()]
    for value in [dpop] if isinstance(dpop, str) else dpop or []:
        headers.append(("DPoP", value))
    return http.post("/oauth/token", data={"grant_type": "client_credentials", **form}, headers=headers)


def refused(response, error: str = "invalid_dpop_proof", says: str = "") -> None:
    body = response.get_json()
    assert response.status_code == 400, body
    assert body["error"] == error, body
    assert says in body.get("error_description", ""), body


# ---- issuing bound tokens ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "make_key",
    [
        lambda: ec.generate_private_key(ec.SECP256R1()),
        lambda: ed25519.Ed25519PrivateKey.generate(),
        lambda: rsa.generate_private_key(public_exponent=65537, key_size=2048),
    ],
    ids=["ES256", "EdDSA", "PS256"],
)
def test_a_valid_proof_binds_the_token_to_its_key(http, svc, clock, make_key):
    key = make_key()
    response = token_request(http, svc, proof(key, clock()))
    body = response.get_json()
    assert response.status_code == 200, body
    assert body["token_type"] == "DPoP"
    claims = jwt.decode(body["access_token"], options={"verify_signature": False})
    assert claims["cnf"] == {"jkt": jwk_thumbprint(public(key))}


def test_without_a_proof_the_token_stays_bearer(http, svc):
    body = token_request(http, svc, None).get_json()
    assert body["token_type"] == "Bearer"
    assert "cnf" not in jwt.decode(body["access_token"], options={"verify_signature": False})


def test_client_lib_key_makes_proofs_the_server_accepts(http, svc, clock):
    dpop_key = DPoPKey(True, clock)
    body = token_request(http, svc, dpop_key.proof("POST", TOKEN_URL + "?ignored=1#frag")).get_json()
    assert jwt.decode(body["access_token"], options={"verify_signature": False})["cnf"] == {"jkt": dpop_key.jkt}


# ---- RFC 9449 §4.3, one check each ------------------------------------------------------------------------


def test_4_3_1_two_dpop_headers_are_refused(http, svc, key, clock):
    refused(token_request(http, svc, [proof(key, clock()), proof(key, clock())]), says="exactly one DPoP header")


def test_4_3_2_a_proof_that_is_not_a_jwt_is_refused(http, svc):
    refused(token_request(http, svc, "not-a-jwt"), says="not a compact JWS")


@pytest.mark.parametrize("claim", ["jti", "htm", "htu", "iat"])
def test_4_3_3_each_required_claim_must_be_present(http, svc, key, clock, claim):
    refused(token_request(http, svc, proof(key, clock(), **{claim: None})), says=claim)


@pytest.mark.parametrize("typ", [None, "JWT", "at+jwt"])
def test_4_3_4_typ_must_be_dpop_jwt(http, svc, key, clock, typ):
    refused(token_request(http, svc, proof(key, clock(), header={"typ": typ})), says="typ")


def test_4_3_5_symmetric_and_none_algorithms_are_refused(http, svc, clock):
    claims = {"jti": "j1", "htm": "POST", "htu": TOKEN_URL, "iat": int(clock())}
    hmac_proof = jwt.encode(claims, "k" * 32, algorithm="HS256", headers={"typ": "dpop+jwt", "jwk": {"kty": "oct", "k": "a2s"}})
    refused(token_request(http, svc, hmac_proof), says="algorithm")
    none_proof = jwt.encode(claims, None, algorithm="none", headers={"typ": "dpop+jwt"})
    refused(token_request(http, svc, none_proof), says="algorithm")


def test_4_3_6_signature_must_verify_with_the_header_key(http, svc, key, clock):
    other = ec.generate_private_key(ec.SECP256R1())
    refused(token_request(http, svc, proof(other, clock(), header={"jwk": public(key)})), says="signature")
    refused(token_request(http, svc, proof(key, clock(), header={"jwk": None})), says="no jwk")


def test_4_3_7_a_jwk_with_private_members_is_refused(http, svc, key, clock):
    private = json.loads(jwt.algorithms.ECAlgorithm.to_jwk(key))
    refused(token_request(http, svc, proof(key, clock(), header={"jwk": private})), says="private")


def test_4_3_8_htm_must_be_post(http, svc, key, clock):
    refused(token_request(http, svc, proof(key, clock(), htm="GET")), says="htm")


@pytest.mark.parametrize(
    "url", ["http://localhost:5000/oauth/introspect", "https://localhost:5000/oauth/token", "http://evil.example/oauth/token", 7]
)
def test_4_3_9_htu_must_name_the_token_endpoint(http, svc, key, clock, url):
    refused(token_request(http, svc, proof(key, clock(), htu=url)), says="htu")


def test_4_3_9_htu_is_compared_without_query_fragment_and_default_port(http, svc, key, clock):
    assert token_request(http, svc, proof(key, clock(), htu="HTTP://LOCALHOST:5000/oauth/token?x=1#y")).status_code == 200
    assert htu("https://Example.COM:443") == "https://example.com/"


def test_4_3_10_nonce_flow(tmp_path, key_store, clock):
    app = create_app(make_config(tmp_path, dpop_nonce=True), clock=clock)
    http = app.test_client()
    svc = app.extensions["tokendealer"].clients.create("svc", scopes=["read"], audiences=[AUDIENCE])
    creds = (svc[0].client_id, svc[1])
    key = ec.generate_private_key(ec.SECP256R1())
    first = token_request(http, creds, proof(key, clock()))
    refused(first, "use_dpop_nonce")
    nonce = first.headers["DPoP-Nonce"]
    refused(token_request(http, creds, proof(key, clock(), nonce="made-up")), "use_dpop_nonce")
    assert token_request(http, creds, proof(key, clock(), nonce=nonce)).status_code == 200
    clock.advance(300)
    assert token_request(http, creds, proof(key, clock(), nonce=nonce)).status_code == 200  # the next window still takes it
    clock.advance(300)
    refused(token_request(http, creds, proof(key, clock(), nonce=nonce)), "use_dpop_nonce")
    app.extensions["tokendealer"].engine.dispose()


def test_nonces_are_stateless_and_keyed():
    a, b = Nonces(lambda: b"s" * 32), Nonces(lambda: b"t" * 32)
    assert Nonces(lambda: b"s" * 32).valid(a.current(1000.0), 1000.0)
    assert not b.valid(a.current(1000.0), 1000.0)
    assert not a.valid(a.current(1000.0), 1000.0 + 600)


@pytest.mark.parametrize("offset", [-61, 6])
def test_4_3_11_iat_outside_the_window_is_refused(http, svc, key, clock, offset):
    refused(token_request(http, svc, proof(key, clock() + offset)), says="iat")


def test_4_3_11_iat_inside_the_window_is_accepted(http, svc, key, clock):
    assert token_request(http, svc, proof(key, clock() - 59)).status_code == 200
    assert token_request(http, svc, proof(key, clock() + 5)).status_code == 200


def test_jti_is_single_use_and_bounded(http, svc, key, clock):
    once = proof(key, clock())
    assert token_request(http, svc, once).status_code == 200
    refused(token_request(http, svc, once), says="already used")
    refused(token_request(http, svc, proof(key, clock(), jti="x" * 257)), says="jti")


def test_a_proof_jti_never_meets_a_client_assertion_jti(services, clock):
    replay = services.authenticator.assertions.replay
    assert replay.first_use("svc", "same", clock() + 60)
    assert replay.first_use("dpop:" + "A" * 43, "same", clock() + 60)


def test_ath_is_not_needed_at_the_token_endpoint(http, svc, key, clock):
    assert token_request(http, svc, proof(key, clock(), ath=sha256_b64url("whatever"))).status_code == 200


# ---- who is refused, and how ------------------------------------------------------------------------------


def test_a_bad_proof_after_bad_credentials_is_invalid_client_and_costs_no_proof_check(http, key, clock, svc):
    response = token_request(http, (svc[0], "wrong"), "garbage")
    assert response.status_code == 401 and response.get_json()["error"] == "invalid_client"


def test_bad_proofs_never_throttle_the_client(http, svc, key, clock):
    for _ in range(15):  # past the default failed-authentication limit of 10/minute
        refused(token_request(http, svc, "garbage"))
    assert token_request(http, svc, proof(key, clock())).status_code == 200


def test_require_dpop_client_without_proof_is_refused(http, make_client, key, clock):
    creds = make_client("bound", scopes=("read",), audiences=(AUDIENCE,), require_dpop=True)
    refused(token_request(http, creds, None), says="must send a DPoP proof")
    assert token_request(http, creds, proof(key, clock())).get_json()["token_type"] == "DPoP"


def test_oversized_or_binary_dpop_header_is_a_4xx(http, svc):
    refused(token_request(http, svc, "a" * 9000), says="too long")
    refused(token_request(http, svc, "\x7f\x01.\x02.\x03"))


# ---- every grant ----------------------------------------------------------------------------------------------


def test_exchange_binds_to_the_actor_proof(http, registry, key, clock):
    b = "https://b.example"
    _, a_secret = registry.create("svc-a", scopes=["r"], audiences=[b])
    _, b_secret = registry.create(
        "svc-b", scopes=["own"], audiences=["https://d.example"], serves=[b], exchange_audiences=["https://c.example"]
    )
    subject = fetch_token(http, "svc-a", a_secret)["access_token"]
    form = {"grant_type": EXCHANGE, "subject_token": subject, "subject_token_type": ACCESS_TOKEN}
    actor_key = ec.generate_private_key(ec.SECP256R1())
    response = http.post("/oauth/token", data=form, headers={**basic("svc-b", b_secret), "DPoP": proof(actor_key, clock())})
    body = response.get_json()
    assert response.status_code == 200, body
    assert body["token_type"] == "DPoP"
    claims = jwt.decode(body["access_token"], options={"verify_signature": False})
    assert claims["cnf"] == {"jkt": jwk_thumbprint(public(actor_key))} and claims["act"] == {"sub": "svc-b"}


def test_jwt_bearer_grant_binds_too(http, billing, k8s, key, clock):
    form = {"grant_type": JWT_BEARER, "assertion": k8s.kubernetes_token(TOKEN_URL.removesuffix("/oauth/token"))}
    response = http.post("/oauth/token", data=form, headers={"DPoP": proof(key, clock())})
    body = response.get_json()
    assert response.status_code == 200, body
    assert body["token_type"] == "DPoP"
    assert jwt.decode(body["access_token"], options={"verify_signature": False})["cnf"] == {"jkt": jwk_thumbprint(public(key))}


def test_a_bad_proof_on_the_jwt_bearer_grant_is_not_a_failed_assertion(http, billing, k8s, clock):
    form = {"grant_type": JWT_BEARER, "assertion": k8s.kubernetes_token(TOKEN_URL.removesuffix("/oauth/token"))}
    refused(http.post("/oauth/token", data=form, headers={"DPoP": "garbage"}))


# ---- introspection, /verify_token, discovery, OpenAPI, audit, metrics ----------------------------------------


def test_introspection_returns_cnf_and_token_type(http, svc, key, clock):
    token = token_request(http, svc, proof(key, clock())).get_json()["access_token"]
    result = http.post("/oauth/introspect", data={"token": token}, headers=basic(*svc)).get_json()
    assert result["active"] is True and result["token_type"] == "DPoP"
    assert result["cnf"] == {"jkt": jwk_thumbprint(public(key))}
    plain = fetch_token(http, *svc)["access_token"]
    assert http.post("/oauth/introspect", data={"token": plain}, headers=basic(*svc)).get_json()["token_type"] == "Bearer"


def test_verify_token_still_answers_for_a_bound_token(http, svc, key, clock):
    token = token_request(http, svc, proof(key, clock())).get_json()["access_token"]
    response = http.post("/verify_token", json={"access_token": token, "audience": AUDIENCE})
    assert response.status_code == 200 and response.get_json()["cnf"]["jkt"]


def test_discovery_and_openapi_advertise_dpop(http):
    metadata = http.get("/.well-known/oauth-authorization-server").get_json()
    assert metadata["dpop_signing_alg_values_supported"] == ["ES256", "RS256", "RS512", "PS256", "EdDSA"]
    token_op = http.get("/openapi.json").get_json()["paths"]["/oauth/token"]["post"]
    assert token_op["parameters"][0]["name"] == "DPoP"
    assert "DPoP-Nonce" in token_op["responses"]["400"]["headers"]
    assert "invalid_dpop_proof" in token_op["responses"]["400"]["description"]


def test_audit_carries_the_jkt_never_the_proof_and_metrics_count(app, http, svc, key, clock, services, tmp_path):
    sent = proof(key, clock())
    token_request(http, svc, sent)
    services.audit.flush()
    lines = [json.loads(line) for line in (tmp_path / "audit.log").read_text().splitlines()]
    issued = [line for line in lines if line.get("event") == "token.issued"][-1]
    assert issued["jkt"] == jwk_thumbprint(public(key))
    assert sent not in (tmp_path / "audit.log").read_text()
    assert b'tokendealer_dpop_tokens_issued_total{client_id="svc"} 1.0' in services.metrics.render()


# ---- both HTTP paths, and configuration ----------------------------------------------------------------------


def test_flask_path_with_request_limits_also_binds(tmp_path, key_store, clock, key):
    app = create_app(make_config(tmp_path, ratelimit="1000/second"), clock=clock)
    svc = app.extensions["tokendealer"].clients.create("svc", scopes=["read"], audiences=[AUDIENCE])
    body = token_request(app.test_client(), (svc[0].client_id, svc[1]), proof(key, clock())).get_json()
    assert body["token_type"] == "DPoP"
    app.extensions["tokendealer"].engine.dispose()


@pytest.mark.parametrize("settings", [{"dpop_max_age": "0"}, {"dpop_max_age": "7200"}, {"dpop_max_skew": "-1"}, {"dpop_nonce": "maybe"}])
def test_bad_dpop_settings_stop_start_up(tmp_path, settings):
    with pytest.raises(ConfigError, match="TOKENDEALER_DPOP_"):
        make_config(tmp_path, **settings)


def test_pem_and_key_objects_make_the_same_thumbprint(clock, key):
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    assert DPoPKey(pem, clock).jkt == DPoPKey(key, clock).jkt == jwk_thumbprint(public(key))
