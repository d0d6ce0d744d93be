"""Async client_lib (httpx, FastAPI) against a live TokenDealer behind the counting proxy."""

from __future__ import annotations

import asyncio
import json
import secrets
import time

import httpx
import jwt
import pytest
from cryptography.hazmat.primitives import serialization

from client_lib import (
    AsyncTokenClient,
    AsyncTokenVerifier,
    ExpiredToken,
    HttpxTokenAuth,
    InsufficientScope,
    TokenClient,
    TokenEndpointUnavailable,
    TokenRequestError,
    UnknownKey,
)
from examples.fastapi_service import create_service
from examples.httpx_caller import list_invoices
from examples.service import create_service as create_flask_service

from .conftest import BILLING, FakeClock

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend():
    return "asyncio"


async def no_sleep(_seconds: float) -> None:
    return None


def make_client(stack, name="caller", **kwargs) -> AsyncTokenClient:
    kwargs.setdefault("sleep", no_sleep)
    return AsyncTokenClient(stack["issuer"], name, stack["secrets"][name], **kwargs)


def forge_with_kid(stack, kid: str) -> str:
    manifest = json.loads((stack["keys"] / "manifest.json").read_text())
    active = next(k["kid"] for k in manifest["keys"] if k["state"] == "active")
    key = serialization.load_pem_private_key((stack["keys"] / f"{active}.pem").read_bytes(), None)
    now = int(time.time())
    claims = {
        "iss": stack["issuer"],
        "sub": "caller",
        "client_id": "caller",
        "aud": BILLING,
        "iat": now,
        "exp": now + 600,
        "jti": secrets.token_urlsafe(12),
    }
    return jwt.encode(claims, key, algorithm="ES256", headers={"kid": kid, "typ": "at+jwt"})


async def test_hundred_coroutines_one_request(stack, proxy):
    client = make_client(stack)
    tokens = await asyncio.gather(*(client.get_token(audience=BILLING) for _ in range(100)))
    assert len(set(tokens)) == 1
    assert proxy.count("/oauth/token") == 1
    assert await client.get_token(audience=BILLING) == tokens[0]
    assert proxy.count("/oauth/token") == 1
    await client.aclose()


async def test_async_refresh_ahead_and_expiry(stack, proxy):
    clock = FakeClock(time.time())
    client = make_client(stack, clock=clock, retries=1)
    first = await client.get_token(audience=BILLING)
    clock.advance(1801)
    proxy.fail_token = 10**6
    assert await client.get_token(audience=BILLING) == first  # stale, refresh failed, still valid
    clock.advance(1800)
    with pytest.raises(TokenEndpointUnavailable):
        await client.get_token(audience=BILLING)
    await client.aclose()


async def test_async_errors_and_retries(stack, proxy):
    client = make_client(stack)
    proxy.fail_token = 2
    assert await client.get_token(audience=BILLING)
    assert proxy.count("/oauth/token") == 3
    bad = AsyncTokenClient(stack["issuer"], "caller", "wrong", sleep=no_sleep)
    with pytest.raises(TokenRequestError) as info:
        await bad.get_token(audience=BILLING)
    assert info.value.error == "invalid_client" and proxy.count("/oauth/token") == 4
    await client.aclose()
    await bad.aclose()


async def test_async_verifier_and_scopes(stack):
    token = TokenClient(stack["issuer"], "caller", stack["secrets"]["caller"]).get_token(audience=BILLING, scope="invoices:read")
    clock = FakeClock(time.time())
    verifier = AsyncTokenVerifier(stack["issuer"], BILLING, clock=clock)
    assert (await verifier.verify(token, scopes=["invoices:read"]))["client_id"] == "caller"
    with pytest.raises(InsufficientScope):
        await verifier.verify(token, scopes=["invoices:write"])
    clock.advance(3600 + 31)
    with pytest.raises(ExpiredToken):
        await verifier.verify(token)
    await verifier.aclose()


async def test_async_jwks_down_keeps_cached_keys(stack, proxy):
    sync_client = TokenClient(stack["issuer"], "caller", stack["secrets"]["caller"])
    clock = FakeClock(time.time())
    verifier = AsyncTokenVerifier(stack["issuer"], BILLING, clock=clock)
    await verifier.verify(sync_client.get_token(audience=BILLING, scope="invoices:read"))
    proxy.jwks_down = True
    clock.advance(400)
    other = sync_client.get_token(audience=BILLING, scope="invoices:write")
    assert (await verifier.verify(other))["scope"] == "invoices:write"
    assert verifier.fetch_count >= 2
    await verifier.aclose()


async def test_async_random_kid_flood(stack, proxy):
    verifier = AsyncTokenVerifier(stack["issuer"], BILLING, cooldown=30)
    await verifier.verify(TokenClient(stack["issuer"], "caller", stack["secrets"]["caller"]).get_token(audience=BILLING))
    before = proxy.count("/.well-known/jwks.json")
    flood = [forge_with_kid(stack, secrets.token_urlsafe(8)) for _ in range(300)]
    results = await asyncio.gather(*(verifier.verify(t) for t in flood), return_exceptions=True)
    assert all(isinstance(r, UnknownKey) for r in results)
    assert proxy.count("/.well-known/jwks.json") - before <= 1
    await verifier.aclose()


async def test_event_loop_not_blocked_by_a_slow_cold_jwks(stack, proxy):
    token = TokenClient(stack["issuer"], "caller", stack["secrets"]["caller"]).get_token(audience=BILLING)
    proxy.jwks_delay = 1.0
    verifier = AsyncTokenVerifier(stack["issuer"], BILLING)
    gaps: list[float] = []
    done = asyncio.Event()

    async def ticker():
        last = time.perf_counter()
        while not done.is_set():
            await asyncio.sleep(0.01)
            now = time.perf_counter()
            gaps.append(now - last)
            last = now

    task = asyncio.create_task(ticker())
    claims = await verifier.verify(token)
    done.set()
    await task
    assert claims["client_id"] == "caller"
    assert len(gaps) > 50  # the ticker kept running through the 1 s fetch
    assert max(gaps) < 0.2
    await verifier.aclose()


async def test_httpx_auth_async_and_fastapi_example(stack, proxy):
    app = create_service(stack["issuer"], BILLING)
    transport = httpx.ASGITransport(app=app)
    result = await list_invoices("http://billing.test", make_client(stack), audience=BILLING, transport=transport)
    assert result["caller"] == "caller"

    async with httpx.AsyncClient(transport=transport, base_url="http://billing.test") as http:
        missing = await http.get("/invoices")
        assert missing.status_code == 401
        assert missing.headers["WWW-Authenticate"].startswith("Bearer, DPoP algs=")  # RFC 6750 §3.1: no error code
        bad = await http.get("/invoices", headers={"Authorization": "Bearer not.a.token"})
        assert bad.status_code == 401
        reader = await make_client(stack, "reader").get_token(audience=BILLING)
        forbidden = await http.get("/invoices", headers={"Authorization": f"Bearer {reader}"})
        assert forbidden.status_code == 403
        assert 'error="insufficient_scope"' in forbidden.headers["WWW-Authenticate"]
        schema = (await http.get("/openapi.json")).json()
    schemes = schema["components"]["securitySchemes"]
    assert any(s["type"] == "http" and s["scheme"] == "bearer" for s in schemes.values())
    assert schema["paths"]["/invoices"]["get"]["security"]


async def test_httpx_auth_retries_once_on_invalid_token(stack, proxy):
    app = create_service(stack["issuer"], BILLING)
    client = make_client(stack)
    client.cache.store((BILLING, "invoices:read"), {"access_token": "stale.bad.token", "expires_in": 600}, time.time())
    auth = HttpxTokenAuth(client, audience=BILLING, scope="invoices:read")
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://billing.test", auth=auth) as http:
        response = await http.get("/invoices")
    assert response.status_code == 200
    assert len(response.history) == 1 and response.history[0].status_code == 401
    assert proxy.count("/oauth/token") == 1


def test_httpx_auth_sync_flow(stack, proxy):
    """The same auth with httpx.Client and a sync TokenClient, against the Flask example over WSGI."""
    client = TokenClient(stack["issuer"], "caller", stack["secrets"]["caller"])
    client.cache.store((BILLING, "invoices:read"), {"access_token": "stale.bad.token", "expires_in": 600}, time.time())
    auth = HttpxTokenAuth(client, audience=BILLING, scope="invoices:read")
    transport = httpx.WSGITransport(app=create_flask_service(stack["issuer"], BILLING))
    with httpx.Client(transport=transport, base_url="http://billing.test", auth=auth) as http:
        response = http.get("/invoices")
    assert response.status_code == 200 and len(response.history) == 1
