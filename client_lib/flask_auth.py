"""Flask integration: `require_token` protects a view with a TokenVerifier (RFC 6750 answers).

Needs the `flask` extra.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable
from typing import Any

from flask import Response, g, jsonify, request

from .bearer import Presented, challenge
from .core.certificates import from_request
from .exceptions import InvalidToken
from .verifier import TokenVerifier


def require_token(
    verifier: TokenVerifier,
    scopes: Iterable[str] | None = None,
    *,
    actor: str | None = None,
    no_actor: bool | str | Iterable[str] = False,
    client_cert_header: str | None = None,
) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Decorator: the view runs only with a valid token holding `scopes` (and the delegation chain `actor` /
    `no_actor` ask for, as `TokenVerifier.verify`); claims in `flask.g.token_claims`. A DPoP-bound token needs
    the DPoP scheme and a proof for this request's method and URL (`request.url`: behind a proxy, set up
    ProxyFix so it is the URL the client called).

    A certificate-bound token (RFC 8705 §3) needs the caller's client certificate: from `client_cert_header`
    (RFC 9440 `Client-Cert` or nginx's URL-encoded PEM; name it only behind a proxy that overwrites it), else
    from the WSGI server's TLS layer (`SSL_CLIENT_CERT`, as mod_wsgi sets it)."""
    scopes = list(scopes or [])
    no_actor = no_actor if isinstance(no_actor, (bool, str)) else tuple(no_actor)

    def decorator(view: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(view)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            scheme = "Bearer"
            try:
                presented = Presented.read(request.headers.get("Authorization"), request.headers.getlist("DPoP"))
                scheme = presented.scheme
                header = request.headers.get(client_cert_header) if client_cert_header else None
                client_cert = from_request(header, None if client_cert_header else request.environ.get("SSL_CLIENT_CERT"))
                g.token_claims = verifier.verify(
                    presented.token,
                    scopes,
                    actor=actor,
                    no_actor=no_actor,
                    scheme=presented.scheme,
                    dpop_proof=presented.dpop_proof,
                    method=request.method,
                    url=request.url,
                    client_cert=client_cert,
                )
            except InvalidToken as exc:
                status, headers, body = challenge(exc, scopes, scheme)
                response: Response = jsonify(body)
                response.status_code = status
                response.headers.update(headers)
                return response
            return view(*args, **kwargs)

        return wrapper

    return decorator
