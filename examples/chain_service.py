"""Calls on behalf of a caller (RFC 8693), Flask: A calls B's /orders; B calls C's /invoices *for A*.

B trades A's token (meant for B) for one meant for C, narrowed to invoices:read: C sees `sub` = svc-a (whose
request it serves) and `act.sub` = svc-b (who is calling), and accepts it only through svc-b. README:
"Calls on behalf of a caller" has the commands; each service is one process:

    TOKENDEALER_URL=http://127.0.0.1:5000 granian --interface wsgi --factory --port 8003 examples.chain_service:service_c
    TOKENDEALER_URL=http://127.0.0.1:5000 TOKENDEALER_CLIENT_ID=svc-b TOKENDEALER_CLIENT_SECRET=... \
        C_URL=http://127.0.0.1:8003 granian --interface wsgi --factory --port 8002 examples.chain_service:service_b
"""

from __future__ import annotations

import os

import requests
from flask import Flask, g, jsonify, request

from client_lib import TokenAuth, TokenClient, TokenVerifier, actors, require_token

B_AUDIENCE = "https://b.example"
C_AUDIENCE = "https://c.example"


def create_b(issuer: str, client: TokenClient, c_url: str) -> Flask:
    """B: takes direct calls only (`no_actor`), and calls C on behalf of its caller."""
    verifier = TokenVerifier(issuer=issuer, audience=B_AUDIENCE)
    to_c = TokenAuth(client, audience=C_AUDIENCE, scope="invoices:read", origin=c_url)
    app = Flask("service-b")

    @app.get("/orders")
    @require_token(verifier, scopes=["orders:read"], no_actor=True)
    def orders():
        incoming = request.headers["Authorization"].partition(" ")[2]
        answer = requests.get(f"{c_url}/invoices", auth=to_c.on_behalf_of(incoming), timeout=5)
        answer.raise_for_status()
        return jsonify(caller=g.token_claims["sub"], orders=[{"id": 7, "invoice": 1}], invoices=answer.json())

    return app


def create_c(issuer: str) -> Flask:
    """C: serves callers only through B (`actor`), and shows whose request it serves and who calls."""
    verifier = TokenVerifier(issuer=issuer, audience=C_AUDIENCE)
    app = Flask("service-c")

    @app.get("/invoices")
    @require_token(verifier, scopes=["invoices:read"], actor="svc-b")
    def invoices():
        claims = g.token_claims
        return jsonify(sub=claims["sub"], act=claims["act"], actors=actors(claims), invoices=[{"id": 1, "total": "12.50"}])

    return app


def service_b() -> Flask:
    """B from TOKENDEALER_URL, TOKENDEALER_CLIENT_ID, TOKENDEALER_CLIENT_SECRET and C_URL."""
    return create_b(os.environ["TOKENDEALER_URL"], TokenClient.from_env(), os.environ["C_URL"])


def service_c() -> Flask:
    """C from TOKENDEALER_URL."""
    return create_c(os.environ["TOKENDEALER_URL"])
