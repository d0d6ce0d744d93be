"""A small Flask service whose /invoices endpoint needs a TokenDealer token with scope invoices:read.

TOKENDEALER_URL=http://localhost:5000 SERVICE_AUDIENCE=https://billing python examples/service.py
"""

from __future__ import annotations

import os

from flask import Flask, g, jsonify

from client_lib import TokenVerifier, require_token


def create_service(issuer: str, audience: str, **verifier_options) -> Flask:
    verifier = TokenVerifier(issuer=issuer, audience=audience, **verifier_options)
    app = Flask("billing")

    @app.get("/invoices")
    @require_token(verifier, scopes=["invoices:read"])
    def invoices():
        return jsonify(caller=g.token_claims["client_id"], invoices=[{"id": 1, "total": "12.50"}])

    return app


if __name__ == "__main__":
    service = create_service(
        os.environ.get("TOKENDEALER_URL", "http://localhost:5000"), os.environ.get("SERVICE_AUDIENCE", "https://billing")
    )
    service.run(port=int(os.environ.get("PORT", "8001")))
