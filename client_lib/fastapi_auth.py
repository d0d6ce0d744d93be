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

from collections.abc import Callable, Iterable, MutableMapping
from typing import Any

from fastapi import Depends, HTTPException, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from .aio import AsyncTokenVerifier
from .bearer import Presented, challenge
from .core.certificates import from_request
from .exceptions import InvalidToken

_bearer = HTTPBearer(auto_error=False, description="A TokenDealer access token (RFC 9068)")


def require_token_async(
    verifier: AsyncTokenVerifier,
    scopes: Iterable[str] | None = None,
    *,
    actor: str | None = None,
    no_actor: bool | str | Iterable[str] = False,
    client_cert_header: str | None = None,
) -> Callable[..., Any]:
    """A dependency returning the verified claims, or answering 401/403 as RFC 6750 says; `actor` / `no_actor`
    as `TokenVerifier.verify`. A certificate-bound token (RFC 8705 §3) needs the caller's certificate: from
    `client_cert_header` (as `require_token`), else from the ASGI TLS extension (`client_cert_chain`)."""
    scopes = list(scopes or [])
    no_actor = no_actor if isinstance(no_actor, (bool, str)) else tuple(no_actor)

    # The security scheme documents the header; the request itself is read for the DPoP scheme and proof.
    async def dependency(request: Request, _: HTTPAuthorizationCredentials | None = Depends(_bearer)) -> dict[str, Any]:
        scheme = "Bearer"
        try:
            presented = Presented.read(request.headers.get("Authorization"), request.headers.getlist("DPoP"))
            scheme = presented.scheme
            header = request.headers.get(client_cert_header) if client_cert_header else None
            client_cert = from_request(header, None if client_cert_header else _tls_leaf(request.scope))
            return await verifier.verify(
                presented.token,
                scopes,
                actor=actor,
                no_actor=no_actor,
                scheme=presented.scheme,
                dpop_proof=presented.dpop_proof,
                method=request.method,
                url=str(request.url),
                client_cert=client_cert,
            )
        except InvalidToken as exc:
            status, headers, body = challenge(exc, scopes, scheme)
            raise HTTPException(status_code=status, detail=body, headers=headers) from None

    return dependency


def _tls_leaf(scope: MutableMapping[str, Any]) -> str | None:
    """The client's certificate (PEM) from the ASGI TLS extension, when the server provides it."""
    chain = scope.get("extensions", {}).get("tls", {}).get("client_cert_chain")
    return chain[0] if isinstance(chain, (list, tuple)) and chain and isinstance(chain[0], str) else None
