"""Calls on behalf of a caller (RFC 8693), FastAPI: the same chain as `chain_service.py`, async.

A calls B's /orders; B exchanges A's token for one meant for C and calls C's /invoices with it; C sees
`sub` = svc-a and `act.sub` = svc-b. Each service is one process (README: "Calls on behalf of a caller"):

    TOKENDEALER_URL=http://127.0.0.1:5000 granian --interface asgi --factory --port 8003 examples.fastapi_chain_service:service_c
    TOKENDEALER_URL=http://127.0.0.1:5000 TOKENDEALER_CLIENT_ID=svc-b TOKENDEALER_CLIENT_SECRET=... \
        C_URL=http://127.0.0.1:8003 granian --interface asgi --factory --port 8002 examples.fastapi_chain_service:service_b
"""

from __future__ import annotations

import os

import httpx
from fastapi import Depends, FastAPI, Request

from client_lib import AsyncTokenClient, AsyncTokenVerifier, HttpxTokenAuth, actors, require_token_async

B_AUDIENCE = "https://b.example"
C_AUDIENCE = "https://c.example"


def create_b(issuer: str, client: AsyncTokenClient, c_url: str) -> FastAPI:
    """B: takes direct calls only (`no_actor`), and calls C on behalf of its caller."""
    verifier = AsyncTokenVerifier(issuer=issuer, audience=B_AUDIENCE)
    to_c = HttpxTokenAuth(client, audience=C_AUDIENCE, scope="invoices:read", origin=c_url)
    app = FastAPI(title="service-b")

    @app.get("/orders")
    async def orders(
        request: Request, claims: dict = Depends(require_token_async(verifier, scopes=["orders:read"], no_actor=True))
    ) -> dict:
        incoming = request.headers["Authorization"].partition(" ")[2]
        async with httpx.AsyncClient(auth=to_c.on_behalf_of(incoming), timeout=5) as http:
            answer = await http.get(f"{c_url}/invoices")
        answer.raise_for_status()
        return {"caller": claims["sub"], "orders": [{"id": 7, "invoice": 1}], "invoices": answer.json()}

    return app


def create_c(issuer: str) -> FastAPI:
    """C: serves callers only through B (`actor`), and shows whose request it serves and who calls."""
    verifier = AsyncTokenVerifier(issuer=issuer, audience=C_AUDIENCE)
    app = FastAPI(title="service-c")

    @app.get("/invoices")
    async def invoices(claims: dict = Depends(require_token_async(verifier, scopes=["invoices:read"], actor="svc-b"))) -> dict:
        return {"sub": claims["sub"], "act": claims["act"], "actors": actors(claims), "invoices": [{"id": 1, "total": "12.50"}]}

    return app


def service_b() -> FastAPI:
    """B from TOKENDEALER_URL, TOKENDEALER_CLIENT_ID, TOKENDEALER_CLIENT_SECRET and C_URL."""
    env = os.environ
    client = AsyncTokenClient(env["TOKENDEALER_URL"], env["TOKENDEALER_CLIENT_ID"], env["TOKENDEALER_CLIENT_SECRET"])
    return create_b(env["TOKENDEALER_URL"], client, env["C_URL"])


def service_c() -> FastAPI:
    """C from TOKENDEALER_URL."""
    return create_c(os.environ["TOKENDEALER_URL"])
