"""Flask integration: `require_token` protects a view with a TokenVerifier (RFC 6750 answers).

Needs the `flask` extra.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable
from typing import Any

from flask import Response, g, jsonify, request

from .bearer import bearer_token, challenge
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
    `no_actor` ask for, as `TokenVerifier.verify`); claims in `flask.g.token_claims`.

    A certificate-bound token (RFC 8705 §3) needs the caller's client certificate: from `client_cert_header`
    (RFC 9440 `Client-Cert` or nginx's URL-encoded PEM; name it only behind a proxy that overwrites it), else
    from the WSGI server's TLS layer (`SSL_CLIENT_CERT`, as mod_wsgi sets it)."""
    scopes = list(scopes or [])
    no_actor = no_actor if isinstance(no_actor, (bool, str)) else tuple(no_actor)

    def decorator(view: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(view)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            token = bearer_token(request.headers.get("Authorization"))
            try:
                if token is None:
                    raise InvalidToken("a bearer token is required")
                header = request.headers.get(client_cert_header) if client_cert_header else None
                client_cert = from_request(header, None if client_cert_header else request.environ.get("SSL_CLIENT_CERT"))
                g.token_claims = verifier.verify(token, scopes, actor=actor, no_actor=no_actor, client_cert=client_cert)
            except InvalidToken as exc:
                status, headers, body = challenge(exc, scopes)
                response: Response = jsonify(body)
                response.status_code = status
                response.headers.update(headers)
                return response
            return view(*args, **kwargs)

        return wrapper

    return decorator
