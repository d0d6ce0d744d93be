"""client_lib against a real TokenDealer (gunicorn on loopback), with a fault-injecting proxy in front."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets
import threading
import time

import jwt
import pytest
import requests
from cryptography.hazmat.primitives import serialization
from werkzeug.serving import make_server

import client_lib.core.verification as verification_module
from client_lib import (
    DisallowedAlgorithm,
    ExpiredToken,
    InsufficientScope,
    InvalidSignature,
    InvalidToken,
    MalformedToken,
    TokenAuth,
    TokenClient,
    TokenEndpointUnavailable,
    TokenRequestError,
    TokenVerifier,
    UnknownKey,
    WrongAudience,
    WrongIssuer,
    WrongTokenType,
)
from examples.caller import list_invoices
from examples.service import create_service

from .conftest import BILLING, FakeClock, all_at_once, free_port, run_cli

AUDIENCE = BILLING


def make_client(stack, name="caller", **kwargs) -> TokenClient:
    kwargs.setdefault("sleep", lambda _s: None)
    return TokenClient(stack["issuer"], name, stack["secrets"][name], **kwargs)


# ---- TokenClient ----------------------------------------------------------------------------------


def test_fetch_and_cache_hit(stack, proxy):
    client = make_client(stack)
    first = client.get_token(audience=AUDIENCE, scope="invoices:read")
    second = client.get_token(audience=AUDIENCE, scope="invoices:read")
    assert first == second
    assert proxy.count("/oauth/token") == 1
    assert jwt.decode(first, options={"verify_signature": False})["scope"] == "invoices:read"
    other = client.get_token(audience=AUDIENCE, scope="invoices:write")
    assert other != first and proxy.count("/oauth/token") == 2


def test_refresh_ahead_of_expiry(stack, proxy):
    clock = FakeClock(time.time())
    client = make_client(stack, clock=clock)
    first = client.get_token(audience=AUDIENCE)
    clock.advance(1799)  # stale at min(exp - 5 min, issued + lifetime / 2) = +1800 s
    assert client.get_token(audience=AUDIENCE) == first
    clock.advance(2)
    second = client.get_token(audience=AUDIENCE)
    assert second != first
    assert proxy.count("/oauth/token") == 2


def test_fifty_threads_cause_one_request(stack, proxy):
    client = make_client(stack)
    tokens = all_at_once(50, lambda: client.get_token(audience=AUDIENCE))
    assert len(tokens) == 50 and len(set(tokens)) == 1
    assert proxy.count("/oauth/token") == 1


def test_stale_token_refreshed_once_while_others_get_the_old_one(stack, proxy):
    clock = FakeClock(time.time())
    client = make_client(stack, clock=clock)
    first = client.get_token(audience=AUDIENCE)
    clock.advance(1801)
    proxy.counts.clear()
    results = all_at_once(20, lambda: client.get_token(audience=AUDIENCE))
    assert proxy.count("/oauth/token") == 1
    assert set(results) <= {first, client.get_token(audience=AUDIENCE)}


def test_server_down_serves_cached_token_until_expiry(stack, proxy):
    clock = FakeClock(time.time())
    client = make_client(stack, clock=clock, retries=2)
    token = client.get_token(audience=AUDIENCE)
    proxy.fail_token = 10**6  # the token endpoint is down from now on
    clock.advance(1801)  # stale: the refresh fails, the still-valid token is served
    assert client.get_token(audience=AUDIENCE) == token
    clock.advance(1800)  # expired
    with pytest.raises(TokenEndpointUnavailable, match="503"):
        client.get_token(audience=AUDIENCE)


def test_5xx_then_success_is_retried(stack, proxy):
    sleeps: list[float] = []
    client = make_client(stack, sleep=sleeps.append)
    proxy.fail_token = 2
    assert client.get_token(audience=AUDIENCE)
    assert proxy.count("/oauth/token") == 3
    assert len(sleeps) == 2


def test_invalid_client_is_not_retried(stack, proxy):
    client = TokenClient(stack["issuer"], "caller", "wrong-secret", sleep=lambda _s: None)
    with pytest.raises(TokenRequestError) as info:
        client.get_token(audience=AUDIENCE)
    assert info.value.error == "invalid_client"
    assert info.value.status == 401
    assert proxy.count("/oauth/token") == 1


def test_4xx_carries_the_server_error(stack, proxy):
    client = make_client(stack)
    with pytest.raises(TokenRequestError) as info:
        client.get_token(audience=AUDIENCE, scope="admin")
    assert info.value.error == "invalid_scope"
    assert info.value.error_description


def test_unreachable_server_is_a_clear_error():
    client = TokenClient(
        f"http://127.0.0.1:{free_port()}",
        "x",
        "y",
        token_endpoint=f"http://127.0.0.1:{free_port()}/oauth/token",
        retries=1,
        sleep=lambda _s: None,
    )
    with pytest.raises(TokenEndpointUnavailable, match="failed: connection refused"):
        client.get_token()


def test_from_env(stack, monkeypatch):
    monkeypatch.setenv("TOKENDEALER_URL", stack["issuer"])
    monkeypatch.setenv("TOKENDEALER_CLIENT_ID", "caller")
    monkeypatch.setenv("TOKENDEALER_CLIENT_SECRET", stack["secrets"]["caller"])
    assert TokenClient.from_env().get_token(audience=AUDIENCE)
    monkeypatch.delenv("TOKENDEALER_CLIENT_SECRET")
    with pytest.raises(ValueError, match="TOKENDEALER_CLIENT_SECRET"):
        TokenClient.from_env()


# ---- TokenVerifier ------------------------------------------------------------------------------


@pytest.fixture
def token(stack):
    return make_client(stack).get_token(audience=AUDIENCE, scope="invoices:read")


def active_private_key(stack):
    manifest = json.loads((stack["keys"] / "manifest.json").read_text())
    kid = next(k["kid"] for k in manifest["keys"] if k["state"] == "active")
    key = serialization.load_pem_private_key((stack["keys"] / f"{kid}.pem").read_bytes(), None)
    return kid, key


def forge(stack, claims_update=None, header_update=None, drop=()) -> str:
    kid, key = active_private_key(stack)
    now = int(time.time())
    claims = {
        "iss": stack["issuer"],
        "sub": "caller",
        "client_id": "caller",
        "aud": AUDIENCE,
        "iat": now,
        "nbf": now,
        "exp": now + 600,
        "jti": secrets.token_urlsafe(16),
        "scope": "invoices:read",
    }
    claims.update(claims_update or {})
    for name in drop:
        claims.pop(name)
    headers = {"kid": kid, "typ": "at+jwt", **(header_update or {})}
    return jwt.encode(claims, key, algorithm="ES256", headers=headers)


def _b64(data) -> str:
    return base64.urlsafe_b64encode(json.dumps(data).encode()).rstrip(b"=").decode()


def test_verify_valid_token(stack, token):
    claims = TokenVerifier(stack["issuer"], AUDIENCE).verify(token, scopes=["invoices:read"])
    assert claims["client_id"] == "caller"


def test_each_invalid_token_kind_raises_its_exception(stack, token):
    verifier = TokenVerifier(stack["issuer"], AUDIENCE)
    header, payload, signature = token.split(".")
    tampered_claims = json.loads(base64.urlsafe_b64decode(payload + "=="))
    tampered_claims["scope"] = "admin"
    kid, key = active_private_key(stack)
    pem = key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    hs_input = f"{_b64({'alg': 'HS256', 'typ': 'at+jwt', 'kid': kid})}.{payload}"
    hs_token = hs_input + "." + base64.urlsafe_b64encode(hmac.new(pem, hs_input.encode(), hashlib.sha256).digest()).rstrip(b"=").decode()
    cases = [
        (f"{header}.{_b64(tampered_claims)}.{signature}", InvalidSignature),
        (f"{_b64({'alg': 'none', 'typ': 'at+jwt', 'kid': kid})}.{payload}.", DisallowedAlgorithm),
        (hs_token, DisallowedAlgorithm),
        ("not-a-jwt", MalformedToken),
        ("a.b.c", MalformedToken),
        (forge(stack, header_update={"typ": "JWT"}), WrongTokenType),
        (forge(stack, header_update={"typ": None}), WrongTokenType),
        (forge(stack, {"exp": int(time.time()) - 120}), ExpiredToken),
        (forge(stack, {"aud": "https://other"}), WrongAudience),
        (forge(stack, {"iss": "https://evil"}), WrongIssuer),
        (forge(stack, header_update={"kid": "nope"}), UnknownKey),
        (forge(stack, drop=("jti",)), InvalidToken),
        (forge(stack, drop=("client_id",)), InvalidToken),
    ]
    for bad, expected in cases:
        with pytest.raises(expected):
            verifier.verify(bad)
    with pytest.raises(InsufficientScope):
        verifier.verify(token, scopes=["invoices:write"])


def test_typ_must_be_exactly_at_jwt(stack):
    """RFC 9068 §4: typ is "at+jwt" or "application/at+jwt", exactly, as the server requires."""
    verifier = TokenVerifier(stack["issuer"], AUDIENCE)
    for typ in ("at+jwt", "application/at+jwt"):
        assert verifier.verify(forge(stack, header_update={"typ": typ}))["client_id"] == "caller"
    for typ in ("AT+JWT", "At+Jwt", "APPLICATION/AT+JWT", "at+jwt ", "jwt", "application/jwt", ""):
        with pytest.raises(WrongTokenType):
            verifier.verify(forge(stack, header_update={"typ": typ}))


def test_expiry_with_injected_clock_and_leeway(stack, token):
    clock = FakeClock(time.time())
    verifier = TokenVerifier(stack["issuer"], AUDIENCE, clock=clock, leeway=30)
    verifier.verify(token)
    clock.advance(3600 + 20)
    verifier.verify(token)  # within leeway, from the verified cache
    clock.advance(20)
    with pytest.raises(ExpiredToken):
        verifier.verify(token)


def test_jwks_down_still_verifies_with_cached_keys(stack, proxy, token):
    clock = FakeClock(time.time())
    verifier = TokenVerifier(stack["issuer"], AUDIENCE, clock=clock)
    verifier.verify(token)
    proxy.jwks_down = True
    clock.advance(400)  # the JWKS max-age (300 s) passed: the refresh fails, cached keys stay
    other = make_client(stack).get_token(audience=AUDIENCE, scope="invoices:write")
    assert verifier.verify(other)["scope"] == "invoices:write"
    assert proxy.count("/.well-known/jwks.json") >= 2
    assert verifier.jwks.keys


def test_staged_rotation_needs_no_extra_fetch(stack, proxy, token):
    verifier = TokenVerifier(stack["issuer"], AUDIENCE)
    verifier.verify(token)
    fetches = verifier.fetch_count
    assert run_cli("keys", "rotate", env=stack["env"]).returncode == 0  # the server sees the new manifest at once
    new = make_client(stack).get_token(audience=AUDIENCE)
    assert jwt.get_unverified_header(new)["kid"] != jwt.get_unverified_header(token)["kid"]
    verifier.verify(new)
    assert verifier.fetch_count == fetches  # the new signing key was already in the cached JWKS


def test_emergency_rotation_costs_one_fetch_and_drops_the_old_key(stack, proxy, token):
    verifier = TokenVerifier(stack["issuer"], AUDIENCE)
    verifier.verify(token)
    fetches = verifier.fetch_count
    assert run_cli("keys", "rotate", "--now", env=stack["env"]).returncode == 0
    new = make_client(stack).get_token(audience=AUDIENCE)
    verifier.verify(new)
    assert verifier.fetch_count == fetches + 1
    with pytest.raises(UnknownKey):
        verifier.verify(token)  # the verified cache was dropped with the withdrawn key


def test_random_kid_flood_costs_one_fetch_per_cooldown(stack, proxy, token):
    clock = FakeClock(time.time())
    verifier = TokenVerifier(stack["issuer"], AUDIENCE, clock=clock, cooldown=30)
    verifier.verify(token)
    before = proxy.count("/.well-known/jwks.json")
    for _ in range(1000):
        with pytest.raises(UnknownKey):
            verifier.verify(forge(stack, header_update={"kid": secrets.token_urlsafe(8)}))
    assert proxy.count("/.well-known/jwks.json") - before <= 1
    clock.advance(31)
    for _ in range(100):
        with pytest.raises(UnknownKey):
            verifier.verify(forge(stack, header_update={"kid": secrets.token_urlsafe(8)}))
    assert proxy.count("/.well-known/jwks.json") - before <= 2


def test_verified_cache_skips_the_crypto(stack, token, monkeypatch):
    calls = []
    real = verification_module.verify_signature
    monkeypatch.setattr(verification_module, "verify_signature", lambda *a: calls.append(1) or real(*a))
    verifier = TokenVerifier(stack["issuer"], AUDIENCE)
    for _ in range(100):
        verifier.verify(token, scopes=["invoices:read"])
    assert len(calls) == 1


def test_verify_returns_a_copy(stack, token):
    verifier = TokenVerifier(stack["issuer"], AUDIENCE)
    verifier.verify(token)["aud"] = "mutated"
    assert verifier.verify(token)["aud"] == AUDIENCE


# ---- TokenAuth, require_token and the examples ---------------------------------------------------


@pytest.fixture
def serve_example(stack):
    servers = []

    def _serve(audience: str = AUDIENCE) -> str:
        server = make_server("127.0.0.1", 0, create_service(stack["issuer"], audience), threaded=True)
        threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
        servers.append(server)
        return f"http://127.0.0.1:{server.server_port}"

    yield _serve
    for server in servers:
        server.shutdown()


@pytest.fixture
def service(serve_example):
    return serve_example()


def test_example_caller_and_service(stack, service):
    result = list_invoices(service, make_client(stack), audience=AUDIENCE)
    assert result["caller"] == "caller"


def test_require_token_answers(stack, service):
    missing = requests.get(service + "/invoices", timeout=5)
    assert missing.status_code == 401
    assert missing.headers["WWW-Authenticate"].startswith("Bearer, DPoP algs=")  # RFC 6750 §3.1: no error code
    bad = requests.get(service + "/invoices", headers={"Authorization": "Bearer garbage"}, timeout=5)
    assert bad.status_code == 401 and 'error="invalid_token"' in bad.headers["WWW-Authenticate"]
    reader = make_client(stack, "reader").get_token(audience=AUDIENCE)
    forbidden = requests.get(service + "/invoices", headers={"Authorization": f"Bearer {reader}"}, timeout=5)
    assert forbidden.status_code == 403
    assert 'error="insufficient_scope"' in forbidden.headers["WWW-Authenticate"]
    assert 'scope="invoices:read"' in forbidden.headers["WWW-Authenticate"]


def test_token_auth_retries_once_on_invalid_token(stack, service, proxy):
    client = make_client(stack)
    client.cache.store((AUDIENCE, "invoices:read"), {"access_token": "stale.bad.token", "expires_in": 600}, time.time())
    response = requests.get(service + "/invoices", auth=TokenAuth(client, audience=AUDIENCE, scope="invoices:read"), timeout=5)
    assert response.status_code == 200
    assert len(response.history) == 1 and response.history[0].status_code == 401
    assert proxy.count("/oauth/token") == 1


def test_token_auth_does_not_retry_a_stream(stack, service):
    client = make_client(stack)
    client.cache.store((AUDIENCE, "invoices:read"), {"access_token": "stale.bad.token", "expires_in": 600}, time.time())
    response = requests.get(
        service + "/invoices", data=iter([b"a", b"b"]), auth=TokenAuth(client, audience=AUDIENCE, scope="invoices:read"), timeout=5
    )
    assert response.status_code == 401


def test_token_auth_does_not_loop(stack, serve_example, proxy):
    """A service that refuses every token (it expects another audience) gets exactly one retry."""
    elsewhere = serve_example("https://elsewhere")
    response = requests.get(
        elsewhere + "/invoices", auth=TokenAuth(make_client(stack), audience=AUDIENCE, scope="invoices:read"), timeout=5
    )
    assert response.status_code == 401
    assert len(response.history) == 1
    assert proxy.count("/oauth/token") == 2


def test_cli_token_command_uses_client_lib(stack):
    result = run_cli(
        "token",
        "--client-id",
        "caller",
        "--audience",
        AUDIENCE,
        "--json",
        env={**stack["env"], "TOKENDEALER_CLIENT_SECRET": stack["secrets"]["caller"]},
    )
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["token_type"] == "Bearer"


def test_stopped_server_cached_token_until_expiry(live_factory):
    """The server really stops: the cached token is served until it expires, then a clear error."""
    server = live_factory(workers=1)
    created = run_cli("client", "create", "svc", "--audience", AUDIENCE, env=server.env)
    secret = json.loads(created.stdout)["client_secret"]
    clock = FakeClock(time.time())
    client = TokenClient(server.url, "svc", secret, clock=clock, retries=2, sleep=lambda _s: None)
    token = client.get_token(audience=AUDIENCE)
    server.stop()
    clock.advance(1801)
    assert client.get_token(audience=AUDIENCE) == token
    clock.advance(1800)
    with pytest.raises(TokenEndpointUnavailable, match="failed: connection refused"):
        client.get_token(audience=AUDIENCE)
