"""client_lib and DPoP (RFC 9449) against a real `tokendealer serve` that requires server nonces: TokenClient
and AsyncTokenClient with `dpop_key`, TokenAuth and HttpxTokenAuth, TokenVerifier's binding checks, and the
Flask and FastAPI glue; a stolen token, a replayed proof, or a proof for another URL or method is refused."""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Iterator
from typing import Any

import httpx
import jwt
import pytest
import redis
import requests
from cryptography.hazmat.primitives.asymmetric import ec
from fastapi import Depends, FastAPI
from fastapi.testclient import TestClient
from flask import Flask, g, jsonify
from werkzeug.serving import make_server

from client_lib import (
    AsyncTokenClient,
    AsyncTokenVerifier,
    HttpxTokenAuth,
    InvalidToken,
    TokenAuth,
    TokenClient,
    TokenRequestError,
    TokenVerifier,
    require_token,
    require_token_async,
)
from client_lib.core.dpop import DPoPKey
from client_lib.exceptions import BoundTokenAsBearer, InvalidDPoPProof, UseDPoPNonce

from .conftest import REDIS_URL, LiveServer, free_port, run_cli, server_env

pytestmark = pytest.mark.live

AUDIENCE = "https://billing.example"
RS_NONCE_SECRET = b"n" * 32


@pytest.fixture(scope="module")
def server(tmp_path_factory) -> Iterator[dict[str, Any]]:
    """A live TokenDealer (two workers) with TOKENDEALER_DPOP_NONCE on, and two clients, one that must use DPoP."""
    tmp = tmp_path_factory.mktemp("dpop")
    port = free_port()
    env = server_env(tmp, TOKENDEALER_ISSUER=f"http://127.0.0.1:{port}", TOKENDEALER_DPOP_NONCE="on")
    assert run_cli("init", env=env).returncode == 0
    secrets = {}
    for name, extra in (("caller", []), ("strict", ["--require-dpop"])):
        out = run_cli("client", "create", name, "--scope", "invoices:read", "--audience", AUDIENCE, *extra, env=env)
        assert out.returncode == 0, out.stderr
        secrets[name] = json.loads(out.stdout)["client_secret"]
    live = LiveServer(env, workers=2, port=port).start()
    yield {"issuer": live.url, "secrets": secrets}
    live.stop()


def serve(app: Flask) -> tuple[str, Any]:
    http_server = make_server("127.0.0.1", 0, app, threaded=True)
    threading.Thread(target=http_server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    return f"http://127.0.0.1:{http_server.server_port}", http_server


@pytest.fixture(scope="module")
def service(server) -> Iterator[dict[str, Any]]:
    """A Flask service protected by require_token, and a second one that also requires DPoP nonces."""
    made = {}
    for name, options in (("plain", {}), ("nonce", {"dpop_nonce_secret": RS_NONCE_SECRET})):
        verifier = TokenVerifier(server["issuer"], AUDIENCE, **options)
        app = Flask(name)
        calls: list[str] = []

        @app.route("/invoices", methods=["GET", "POST"])
        @require_token(verifier, scopes=["invoices:read"])
        def invoices(calls: list[str] = calls) -> Any:
            calls.append("ok")
            return jsonify(g.token_claims)

        @app.after_request
        def count(response: Any, calls: list[str] = calls) -> Any:
            calls.append(str(response.status_code))
            return response

        url, http_server = serve(app)
        made[name] = {"url": url, "server": http_server, "calls": calls, "verifier": verifier}
    yield made
    for entry in made.values():
        entry["server"].shutdown()


def client(server, name: str = "caller", **kwargs: Any) -> TokenClient:
    return TokenClient(server["issuer"], name, server["secrets"][name], dpop_key=kwargs.pop("dpop_key", True), **kwargs)


def challenge_error(response: requests.Response) -> str:
    header = response.headers["WWW-Authenticate"]
    assert header.startswith("DPoP ") and 'algs="ES256' in header, header
    return header.split('error="', 1)[1].split('"', 1)[0]


# ---- TokenClient -------------------------------------------------------------------------------------------


def test_token_client_gets_a_bound_token_through_the_nonce_challenge(server):
    dpop_client = client(server)
    token = dpop_client.get_token(audience=AUDIENCE)
    assert jwt.decode(token, options={"verify_signature": False})["cnf"] == {"jkt": dpop_client.dpop.jkt}
    assert dpop_client.get_token(audience=AUDIENCE) == token  # cached
    assert dpop_client.fetch_token_response(audience=AUDIENCE)["token_type"] == "DPoP"  # the remembered nonce: no retry needed


def test_dpop_and_bearer_tokens_are_cached_apart(server):
    plain = TokenClient(server["issuer"], "caller", server["secrets"]["caller"])
    assert plain.fetch_token_response(audience=AUDIENCE)["token_type"] == "Bearer"
    bound = client(server)
    assert bound.cache is not plain.cache
    bound.get_token(audience=AUDIENCE)
    assert bound.cache.usable(("DPoP", AUDIENCE, None), 0) and bound.cache.usable((AUDIENCE, None), 0) is None


def test_require_dpop_client_needs_a_key(server):
    with pytest.raises(TokenRequestError) as refused:
        TokenClient(server["issuer"], "strict", server["secrets"]["strict"]).get_token(audience=AUDIENCE)
    assert refused.value.error == "invalid_dpop_proof"
    assert client(server, "strict").get_token(audience=AUDIENCE)


def test_pem_key_is_accepted(server):
    key = ec.generate_private_key(ec.SECP256R1())
    dpop_client = client(server, dpop_key=key)
    claims = jwt.decode(dpop_client.get_token(audience=AUDIENCE), options={"verify_signature": False})
    assert claims["cnf"]["jkt"] == DPoPKey(key, dpop_client.clock).jkt


# ---- TokenAuth to a require_token service, and what a thief can do ------------------------------------------


def test_token_auth_calls_the_protected_service(server, service):
    auth = TokenAuth(client(server), audience=AUDIENCE)
    response = requests.get(service["plain"]["url"] + "/invoices?page=2#x", auth=auth, timeout=10)
    assert response.status_code == 200, response.text
    assert response.json()["cnf"]["jkt"] == auth.client.dpop.jkt
    again = requests.post(service["plain"]["url"] + "/invoices", data=b"x", auth=auth, timeout=10)
    assert again.status_code == 200  # a fresh proof each time: never a replay


def test_token_auth_retries_once_on_a_resource_nonce(server, service):
    calls = service["nonce"]["calls"]
    calls.clear()
    response = requests.get(service["nonce"]["url"] + "/invoices", auth=TokenAuth(client(server), audience=AUDIENCE), timeout=10)
    assert response.status_code == 200, response.text
    assert calls == ["401", "ok", "200"]
    assert response.history[0].headers["WWW-Authenticate"].startswith('DPoP error="use_dpop_nonce"')


def test_a_stolen_token_is_useless_without_the_key(server, service):
    owner = client(server)
    token = owner.get_token(audience=AUDIENCE)
    url = service["plain"]["url"] + "/invoices"
    as_bearer = requests.get(url, headers={"Authorization": f"Bearer {token}"}, timeout=10)
    assert as_bearer.status_code == 401 and challenge_error(as_bearer) == "invalid_token"
    thief = DPoPKey(True, owner.clock)
    with_other_key = requests.get(url, headers={"Authorization": f"DPoP {token}", "DPoP": thief.proof("GET", url, token)}, timeout=10)
    assert with_other_key.status_code == 401 and challenge_error(with_other_key) == "invalid_dpop_proof"
    no_proof = requests.get(url, headers={"Authorization": f"DPoP {token}"}, timeout=10)
    assert no_proof.status_code == 401 and challenge_error(no_proof) == "invalid_dpop_proof"


@pytest.mark.parametrize("method, proof_method, proof_path", [("GET", "POST", "/invoices"), ("GET", "GET", "/elsewhere")])
def test_a_proof_for_another_method_or_url_is_refused(server, service, method, proof_method, proof_path):
    owner = client(server)
    token = owner.get_token(audience=AUDIENCE)
    base = service["plain"]["url"]
    proof = owner.dpop.proof(proof_method, base + proof_path, token)
    response = requests.request(method, base + "/invoices", headers={"Authorization": f"DPoP {token}", "DPoP": proof}, timeout=10)
    assert response.status_code == 401 and challenge_error(response) == "invalid_dpop_proof"


def test_a_replayed_proof_is_refused(server, service):
    owner = client(server)
    token = owner.get_token(audience=AUDIENCE)
    url = service["plain"]["url"] + "/invoices"
    headers = {"Authorization": f"DPoP {token}", "DPoP": owner.dpop.proof("GET", url, token)}
    assert requests.get(url, headers=headers, timeout=10).status_code == 200
    replay = requests.get(url, headers=headers, timeout=10)
    assert replay.status_code == 401 and challenge_error(replay) == "invalid_dpop_proof"


# ---- TokenVerifier directly -----------------------------------------------------------------------------


def test_verifier_binding_rules(server):
    owner = client(server)
    token = owner.get_token(audience=AUDIENCE)
    verifier = TokenVerifier(server["issuer"], AUDIENCE)
    url = "https://api.example/invoices"
    claims = verifier.verify(token, dpop_proof=owner.dpop.proof("GET", url, token), method="GET", url=url + "?q=1")
    assert claims["cnf"]["jkt"] == owner.dpop.jkt
    with pytest.raises(BoundTokenAsBearer):
        verifier.verify(token)
    with pytest.raises(InvalidDPoPProof, match="ath"):
        verifier.verify(token, dpop_proof=owner.dpop.proof("GET", url, "another-token"), method="GET", url=url)
    with pytest.raises(InvalidDPoPProof, match="required"):
        verifier.verify(token, scheme="DPoP")
    with pytest.raises(TypeError):
        verifier.verify(token, dpop_proof=owner.dpop.proof("GET", url, token))
    plain = TokenClient(server["issuer"], "caller", server["secrets"]["caller"]).get_token(audience=AUDIENCE)
    assert verifier.verify(plain)["sub"] == "caller"
    with pytest.raises(InvalidToken, match="not DPoP-bound"):
        verifier.verify(plain, dpop_proof=owner.dpop.proof("GET", url, plain), method="GET", url=url)
    nonce_verifier = TokenVerifier(server["issuer"], AUDIENCE, dpop_nonce_secret=RS_NONCE_SECRET)
    with pytest.raises(UseDPoPNonce) as asked:
        nonce_verifier.verify(token, dpop_proof=owner.dpop.proof("GET", url, token), method="GET", url=url)
    owner.dpop.remember_nonce(url, asked.value.nonce)
    assert nonce_verifier.verify(token, dpop_proof=owner.dpop.proof("GET", url, token), method="GET", url=url)


@pytest.fixture
def redis_url():
    """The machine's Redis (database 15); the test fails, never skips, when it is not running."""
    redis.Redis.from_url(REDIS_URL).ping()
    return REDIS_URL


def test_two_verifiers_sharing_redis_refuse_a_replay(server, redis_url):
    owner = client(server)
    token = owner.get_token(audience=AUDIENCE)
    url = "https://api.example/invoices"
    first, second = (TokenVerifier(server["issuer"], AUDIENCE, dpop_replay=redis_url) for _ in range(2))
    proof = owner.dpop.proof("GET", url, token)
    assert first.verify(token, dpop_proof=proof, method="GET", url=url)
    with pytest.raises(InvalidDPoPProof, match="already used"):
        second.verify(token, dpop_proof=proof, method="GET", url=url)
    memory_only = TokenVerifier(server["issuer"], AUDIENCE)
    assert memory_only.verify(token, dpop_proof=proof, method="GET", url=url)  # another process's memory: not shared


# ---- httpx, async, FastAPI -------------------------------------------------------------------------------


def test_httpx_auth_sync_with_resource_nonce(server, service):
    with httpx.Client(auth=HttpxTokenAuth(client(server), audience=AUDIENCE)) as http:
        response = http.get(service["nonce"]["url"] + "/invoices")
    assert response.status_code == 200, response.text


def test_async_client_httpx_auth_and_async_verifier(server, service):
    async def run() -> tuple[int, dict[str, Any]]:
        async_client = AsyncTokenClient(server["issuer"], "caller", server["secrets"]["caller"], dpop_key=True)
        async with httpx.AsyncClient(auth=HttpxTokenAuth(async_client, audience=AUDIENCE)) as http:
            response = await http.get(service["nonce"]["url"] + "/invoices")
        token = await async_client.get_token(audience=AUDIENCE)
        verifier = AsyncTokenVerifier(server["issuer"], AUDIENCE)
        url = "https://api.example/x"
        claims = await verifier.verify(token, dpop_proof=async_client.dpop.proof("PUT", url, token), method="PUT", url=url)
        try:
            await verifier.verify(token)
        except BoundTokenAsBearer:
            pass
        else:
            raise AssertionError("a bound token was accepted as a bearer token")
        await verifier.aclose()
        await async_client.aclose()
        return response.status_code, claims

    status, claims = asyncio.run(run())
    assert status == 200 and claims["cnf"]["jkt"]


def test_fastapi_dependency(server):
    verifier = AsyncTokenVerifier(server["issuer"], AUDIENCE)
    app = FastAPI()

    @app.get("/invoices")
    async def invoices(claims: dict = Depends(require_token_async(verifier, scopes=["invoices:read"]))) -> dict:
        return claims

    owner = client(server)
    with TestClient(app, base_url="http://testserver") as http:
        http.auth = HttpxTokenAuth(owner, audience=AUDIENCE)
        assert http.get("/invoices").status_code == 200
        token = owner.get_token(audience=AUDIENCE)
        refused = http.get("/invoices", headers={"Authorization": f"Bearer {token}"}, auth=None)
        assert refused.status_code == 401 and refused.headers["WWW-Authenticate"].startswith('DPoP error="invalid_token"')
        other = owner.dpop.proof("GET", "http://testserver/other", token)
        wrong_url = http.get("/invoices", headers={"Authorization": f"DPoP {token}", "DPoP": other}, auth=None)
        assert wrong_url.status_code == 401 and 'error="invalid_dpop_proof"' in wrong_url.headers["WWW-Authenticate"]
