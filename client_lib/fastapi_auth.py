"""FastAPI/Starlette integration: a dependency that verifies the bearer token and returns its claims.

    @app.get("/invoices")
    async def invoices(claims: dict = Depends(require_token_async(verifier, scopes=["invoices:read"]))): ...

401 with `WWW-Authenticate: Bearer …` for a missing or invalid token, 403 `insufficient_scope` for a
missing scope (RFC 6750 §3); a DPoP-bound token needs the DPoP scheme and a proof for the request's method and
URL, refusals then carry a `DPoP` challenge (RFC 9449 §7.1). It shows in the OpenAPI document as an HTTP
bearer security scheme.
Needs the `fastapi` extra.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from fastapi import Depends, HTTPException, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from .aio import AsyncTokenVerifier
from .bearer import Presented, challenge
from .exceptions import InvalidToken

_bearer = HTTPBearer(auto_error=False, description="A TokenDealer access token (RFC 9068)")


def require_token_async(
    verifier: AsyncTokenVerifier,
    scopes: Iterable[str] | None = None,
    *,
    actor: str | None = None,
    no_actor: bool | str | Iterable[str] = False,
) -> Callable[..., Any]:
    """A dependency returning the verified claims, or answering 401/403 as RFC 6750 says; `actor` / `no_actor`
    as `TokenVerifier.verify`."""
    scopes = list(scopes or [])
    no_actor = no_actor if isinstance(no_actor, (bool, str)) else tuple(no_actor)

    # The security scheme documents the header; the request itself is read for the DPoP scheme and proof.
    async def dependency(request: Request, _: HTTPAuthorizationCredentials | None = Depends(_bearer)) -> dict[str, Any]:
        scheme = "Bearer"
        try:
            presented = Presented.read(request.headers.get("Authorization"), request.headers.getlist("DPoP"))
            scheme = presented.scheme
            return await verifier.verify(
                presented.token,
                scopes,
                actor=actor,
                no_actor=no_actor,
                scheme=presented.scheme,
                dpop_proof=presented.dpop_proof,
                method=request.method,
                url=str(request.url),
            )
        except InvalidToken as exc:
            status, headers, body = challenge(exc, scopes, scheme)
            raise HTTPException(status_code=status, detail=body, headers=headers) from None

    return dependency
