"""A FastAPI service whose /invoices endpoint needs a TokenDealer token with scope invoices:read.

pip install './client_lib[fastapi]' uvicorn
TOKENDEALER_URL=http://localhost:5000 uvicorn --factory examples.fastapi_service:from_env --port 8002
# or, with the server's granian and no uvicorn:
TOKENDEALER_URL=http://localhost:5000 granian --interface asgi --factory --port 8002 examples.fastapi_service:from_env
"""

from __future__ import annotations

import os

from fastapi import Depends, FastAPI

from client_lib import AsyncTokenVerifier, require_token_async


def create_service(issuer: str, audience: str) -> FastAPI:
    verifier = AsyncTokenVerifier(issuer=issuer, audience=audience)
    app = FastAPI(title="billing")

    @app.get("/invoices")
    async def invoices(claims: dict = Depends(require_token_async(verifier, scopes=["invoices:read"]))) -> dict:
        return {"caller": claims["client_id"], "invoices": [{"id": 1, "total": "12.50"}]}

    return app


def from_env() -> FastAPI:
    return create_service(os.environ.get("TOKENDEALER_URL", "http://localhost:5000"), os.environ.get("SERVICE_AUDIENCE", "https://billing"))
