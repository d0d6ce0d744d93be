"""client_lib and token exchange (RFC 8693): TokenClient.exchange (both shells), TokenAuth/HttpxTokenAuth
.on_behalf_of, the actor chain of verified claims and require_token's actor rules (Flask and FastAPI)."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import jwt
import pytest
import requests
from fastapi import Depends, FastAPI
from flask import Flask, g, jsonify

from client_lib import (
    ActorNotAllowed,
    AsyncTokenClient,
    AsyncTokenVerifier,
    HttpxTokenAuth,
    TokenAuth,
    TokenClient,
    TokenRequestError,
    TokenVerifier,
    actors,
    require_token,
    require_token_async,
)
from client_lib.core.tokens import TokenCache, exchange_form, exchange_key
from client_lib.core.verification import check_actors

from .conftest import FakeClock, all_at_once, run_cli

B, C = "https://b.example", "https://c.example"


# ---- the I/O-free core ------------------------------------------------------------------------------------


def unsigned(claims: dict, signature: str = "c2ln") -> str:
    return jwt.encode(claims, "k" * 32, algorithm="HS256").rsplit(".", 1)[0] + "." + signature


def test_exchange_key_is_the_jti_bound_to_the_whole_token():
    token = unsigned({"jti": "j1"})
    forged = unsigned({"jti": "j1"}, signature="b3RoZXI")  # the same jti, another token
    assert exchange_key(token, C, "s")[1] == "j1"
    assert exchange_key(token, C, "s") == exchange_key(token, C, "s")
    assert exchange_key(token, C, "s") != exchange_key(forged, C, "s")
    assert exchange_key(token, C, "s") != exchange_key(token, C, "t") != exchange_key(token, B, "t")
    assert exchange_key("not a jwt", C, None)[1] is None
    assert exchange_key(token, C, "s")[0] != C  # never mistaken for a client-credentials key (audience, scope)


def test_exchange_form_asks_for_an_access_token():
    form = exchange_form("T", C, "invoices:read")
    assert form == {
        "grant_type": "urn:ietf:params:oauth:grant-type:token-exchange",
        "subject_token": "T",
        "subject_token_type": "urn:ietf:params:oauth:token-type:access_token",
        "requested_token_type": "urn:ietf:params:oauth:token-type:access_token",
        "audience": C,
        "scope": "invoices:read",
    }
    with pytest.raises(ValueError):
        exchange_form("", C, None)


def test_actors_and_the_actor_rules():
    direct = {"sub": "svc-a"}
    via_b = {"sub": "svc-a", "act": {"sub": "svc-b"}}
    via_c_b = {"sub": "svc-a", "act": {"sub": "svc-c", "act": {"sub": "svc-b"}}}
    assert actors(direct) == [] and actors(via_b) == ["svc-b"] and actors(via_c_b) == ["svc-c", "svc-b"]
    assert actors({"act": "not an object"}) == [] and actors({"act": {"sub": 3}}) == []
    check_actors(via_b, "svc-b", False)
    check_actors(direct, None, True)
    check_actors(via_c_b, "svc-c", "svc-x")
    for claims, actor, no_actor in [
        (direct, "svc-b", False),  # an actor is required and there is none
        (via_c_b, "svc-b", False),  # svc-b is in the chain but not the current actor
        (via_b, None, True),  # direct calls only
        (via_c_b, None, "svc-b"),  # svc-b anywhere in the chain
        (via_c_b, None, ["svc-x", "svc-b"]),
    ]:
        with pytest.raises(ActorNotAllowed) as refused:
            check_actors(claims, actor, no_actor)
        assert (refused.value.status, refused.value.error) == (403, "insufficient_scope")


def test_token_cache_is_bounded_expired_entries_first():
    cache = TokenCache(size=3)
    response = {"access_token": "t", "expires_in": 100}
    cache.store(("old", None), response, requested_at=0)  # expired at 100
    cache.store(("a", None), response, requested_at=90)
    cache.store(("b", None), response, requested_at=90)
    cache.store(("c", None), response, requested_at=150)
    assert [cache.usable((k, None), 150) for k in ("old", "a", "b", "c")] == [None, "t", "t", "t"]
    cache.store(("d", None), response, requested_at=150)  # full of live tokens: the oldest goes
    assert [cache.usable((k, None), 150) for k in ("a", "b", "c", "d")] == [None, "t", "t", "t"]


# ---- against a live server ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def chain(stack):
    """svc-a (may call B and C directly), svc-b (serves B, exchanges for C), on the module's live server."""
    out = {}
    for name, options in {
        "svc-a": ["--scope", "orders:read invoices:read", "--audience", B, "--audience", C],
        "svc-b": ["--audience", C, "--serves", B, "--exchange-audience", C],
    }.items():
        created = run_cli("client", "create", name, *options, env=stack["env"])
        assert created.returncode == 0, created.stderr
        out[name] = json.loads(created.stdout)["client_secret"]
    return out


def client_of(stack, chain, name: str, cls=TokenClient, **kwargs):
    return cls(stack["issuer"], name, chain[name], sleep=(lambda _s: None) if cls is TokenClient else _no_sleep, **kwargs)


async def _no_sleep(_seconds: float) -> None:
    return None


def claims_of(token: str) -> dict:
    return jwt.decode(token, options={"verify_signature": False})


def test_exchange_is_cached_per_subject_audience_and_scope(stack, chain, proxy):
    a, b = client_of(stack, chain, "svc-a"), client_of(stack, chain, "svc-b")
    first_subject = a.get_token(B, "orders:read invoices:read")
    second_subject = a.fetch_token_response(B, "orders:read invoices:read")["access_token"]
    proxy.reset()
    tokens = all_at_once(20, lambda: b.exchange(first_subject, audience=C, scope="invoices:read"))
    assert len(set(tokens)) == 1 and proxy.count("/oauth/token") == 1  # one exchange in flight per key
    claims = claims_of(tokens[0])
    assert (claims["sub"], claims["act"], claims["aud"], claims["scope"]) == ("svc-a", {"sub": "svc-b"}, C, "invoices:read")
    assert b.exchange(first_subject, audience=C, scope="invoices:read") == tokens[0]
    assert proxy.count("/oauth/token") == 1
    b.exchange(first_subject, audience=C)  # another scope
    b.exchange(second_subject, audience=C, scope="invoices:read")  # another subject token
    assert proxy.count("/oauth/token") == 3
    b.invalidate(tokens[0])
    assert b.exchange(first_subject, audience=C, scope="invoices:read") != tokens[0]


def test_exchange_refusals_carry_the_server_error_and_are_not_retried(stack, chain, proxy):
    a, b = client_of(stack, chain, "svc-a"), client_of(stack, chain, "svc-b")
    subject = a.get_token(B, "orders:read")
    proxy.reset()
    with pytest.raises(TokenRequestError) as refused:
        b.exchange(subject, audience="https://elsewhere.example")
    assert refused.value.error == "invalid_target"
    with pytest.raises(TokenRequestError) as refused:
        b.exchange(subject, audience=C, scope="invoices:read")
    assert refused.value.error == "invalid_scope"
    with pytest.raises(TokenRequestError) as refused:
        b.exchange(a.get_token(C, "orders:read"), audience=C)  # meant for C, not for B
    assert refused.value.error == "invalid_grant"
    assert proxy.count("/oauth/token") == 4  # three refusals, one grant for A, no retries


@pytest.mark.anyio
@pytest.mark.parametrize("anyio_backend", ["asyncio"])
async def test_async_exchange_is_cached_and_single_flight(stack, chain, proxy, anyio_backend):
    subject = client_of(stack, chain, "svc-a").get_token(B, "invoices:read")
    b = client_of(stack, chain, "svc-b", cls=AsyncTokenClient)
    proxy.reset()
    tokens = await asyncio.gather(*(b.exchange(subject, audience=C, scope="invoices:read") for _ in range(30)))
    assert len(set(tokens)) == 1 and proxy.count("/oauth/token") == 1
    assert await b.exchange(subject, audience=C, scope="invoices:read") == tokens[0]
    assert claims_of(tokens[0])["act"] == {"sub": "svc-b"}
    with pytest.raises(TokenRequestError) as refused:
        await b.exchange(subject, audience=B)
    assert refused.value.error == "invalid_target"
    await b.aclose()


class Recorder:
    """A loopback origin recording the Authorization header of each request."""

    def __init__(self) -> None:
        seen = self.seen = []

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_GET(self):
                seen.append(self.headers.get("Authorization"))
                self.send_response(200)
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"{}")

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def origins():
    pair = Recorder(), Recorder()
    yield pair
    for recorder in pair:
        recorder.close()


def test_token_auth_on_behalf_of_sends_the_exchanged_token_to_its_origin_only(stack, chain, origins):
    c_origin, elsewhere = origins
    subject = client_of(stack, chain, "svc-a").get_token(B, "invoices:read")
    b = client_of(stack, chain, "svc-b")
    to_c = TokenAuth(b, audience=C, scope="invoices:read", origin=c_origin.url)
    requests.get(c_origin.url + "/invoices", auth=to_c.on_behalf_of(subject), timeout=5)
    requests.get(elsewhere.url + "/invoices", auth=to_c.on_behalf_of(subject), timeout=5)
    sent = c_origin.seen[0].removeprefix("Bearer ")
    claims = claims_of(sent)
    assert (claims["sub"], claims["act"], claims["aud"]) == ("svc-a", {"sub": "svc-b"}, C)
    assert elsewhere.seen == [None]
    # Unpinned: the first request of either the auth or a derived one pins both.
    unpinned = TokenAuth(b, audience=C)
    requests.get(c_origin.url + "/x", auth=unpinned.on_behalf_of(subject), timeout=5)
    requests.get(elsewhere.url + "/x", auth=unpinned, timeout=5)
    assert elsewhere.seen == [None, None]


def test_httpx_auth_on_behalf_of_sync_and_async(stack, chain, origins):
    c_origin, elsewhere = origins
    subject = client_of(stack, chain, "svc-a").get_token(B, "invoices:read")
    auth = HttpxTokenAuth(client_of(stack, chain, "svc-b"), audience=C, origin=c_origin.url).on_behalf_of(subject)
    with httpx.Client(auth=auth) as http:
        http.get(c_origin.url + "/x")
        http.get(elsewhere.url + "/x")
    assert claims_of(c_origin.seen[0][7:])["act"] == {"sub": "svc-b"}

    async def run() -> None:
        client = client_of(stack, chain, "svc-b", cls=AsyncTokenClient)
        async_auth = HttpxTokenAuth(client, audience=C, origin=c_origin.url).on_behalf_of(subject)
        async with httpx.AsyncClient(auth=async_auth) as http:
            await http.get(c_origin.url + "/y")
            await http.get(elsewhere.url + "/y")
        await client.aclose()

    asyncio.run(run())
    assert claims_of(c_origin.seen[1][7:])["sub"] == "svc-a"
    assert elsewhere.seen == [None, None]


@pytest.fixture
def tokens_for_c(stack, chain):
    a = client_of(stack, chain, "svc-a")
    direct = a.get_token(C, "invoices:read")
    via_b = client_of(stack, chain, "svc-b").exchange(a.get_token(B, "invoices:read"), audience=C)
    return {"direct": direct, "via_b": via_b}


def test_verifier_claims_expose_the_actor_chain(stack, tokens_for_c):
    verifier = TokenVerifier(issuer=stack["issuer"], audience=C)
    assert actors(verifier.verify(tokens_for_c["via_b"])) == ["svc-b"]
    assert actors(verifier.verify(tokens_for_c["direct"])) == []
    verifier.verify(tokens_for_c["via_b"], actor="svc-b")
    with pytest.raises(ActorNotAllowed):
        verifier.verify(tokens_for_c["via_b"], no_actor=True)


# Each endpoint's rule, and the status each kind of token gets there.
RULES = {
    "/via-b": ({"actor": "svc-b"}, {"direct": 403, "via_b": 200}),
    "/via-x": ({"actor": "svc-x"}, {"direct": 403, "via_b": 403}),
    "/direct": ({"no_actor": True}, {"direct": 200, "via_b": 403}),
    "/not-b": ({"no_actor": "svc-b"}, {"direct": 200, "via_b": 403}),
    "/any": ({}, {"direct": 200, "via_b": 200}),
}


def test_flask_require_token_actor_rules(stack, tokens_for_c):
    verifier = TokenVerifier(issuer=stack["issuer"], audience=C)
    app = Flask("c")
    for path, (rule, _) in RULES.items():
        app.add_url_rule(
            path, path, require_token(verifier, scopes=["invoices:read"], **rule)(lambda: jsonify(actors=actors(g.token_claims)))
        )
    http = app.test_client()
    for path, (_, expected) in RULES.items():
        for kind, status in expected.items():
            response = http.get(path, headers={"Authorization": f"Bearer {tokens_for_c[kind]}"})
            assert response.status_code == status, (path, kind)
            if status == 403:
                assert 'error="insufficient_scope"' in response.headers["WWW-Authenticate"]


def test_fastapi_require_token_async_actor_rules(stack, tokens_for_c):
    async def run() -> None:
        verifier = AsyncTokenVerifier(issuer=stack["issuer"], audience=C)
        app = FastAPI()
        for path, (rule, _) in RULES.items():
            dependency = require_token_async(verifier, scopes=["invoices:read"], **rule)

            async def endpoint(claims: dict = Depends(dependency)) -> dict:
                return {"actors": actors(claims)}

            app.get(path)(endpoint)
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://c.test") as http:
            for path, (_, expected) in RULES.items():
                for kind, status in expected.items():
                    response = await http.get(path, headers={"Authorization": f"Bearer {tokens_for_c[kind]}"})
                    assert response.status_code == status, (path, kind)
        await verifier.aclose()

    asyncio.run(run())


def test_cached_exchange_never_outlives_its_subject(stack, chain):
    """The server caps the exchanged token's exp at the subject's; the cache holds it no longer than expires_in."""
    clock = FakeClock(time.time())
    a, b = client_of(stack, chain, "svc-a"), client_of(stack, chain, "svc-b", clock=clock)
    subject = a.get_token(B, "invoices:read")
    exchanged = b.exchange(subject, audience=C)
    key = exchange_key(subject, C, None)
    clock.now = claims_of(subject)["exp"] - 1
    assert b.cache.usable(key, clock()) == exchanged
    clock.now = claims_of(subject)["exp"] + 1
    assert b.cache.usable(key, clock()) is None
