"""Flask integration: `require_token` protects a view with a TokenVerifier (RFC 6750 answers)."""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable
from typing import Any

from flask import Response, g, jsonify, request

from .exceptions import InvalidToken, KeySetUnavailable
from .verifier import TokenVerifier


def bearer_token(authorization: str | None) -> str | None:
    """The token of an `Authorization: Bearer` header (RFC 6750 §2.1), or None."""
    scheme, _, token = (authorization or "").partition(" ")
    token = token.strip()
    return token if scheme.lower() == "bearer" and token else None


def challenge(exc: InvalidToken, scopes: Iterable[str] | None) -> tuple[int, dict[str, str], dict[str, str]]:
    """Status, headers and JSON body answering a refused token (RFC 6750 §3); the description is the
    exception class's fixed text, so nothing from the token reaches the response."""
    if isinstance(exc, KeySetUnavailable):
        return 503, {"Retry-After": "5"}, {"error": "temporarily_unavailable", "error_description": exc.description}
    header = f'Bearer error="{exc.error}", error_description="{exc.description}"'
    if exc.error == "insufficient_scope" and scopes:
        header += f', scope="{" ".join(scopes)}"'
    return exc.status, {"WWW-Authenticate": header}, {"error": exc.error, "error_description": exc.description}


def require_token(
    verifier: TokenVerifier,
    scopes: Iterable[str] | None = None,
    *,
    actor: str | None = None,
    no_actor: bool | str | Iterable[str] = False,
) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Decorator: the view runs only with a valid token holding `scopes` (and the delegation chain `actor` /
    `no_actor` ask for, as `TokenVerifier.verify`); claims in `flask.g.token_claims`."""
    scopes = list(scopes or [])
    no_actor = no_actor if isinstance(no_actor, (bool, str)) else tuple(no_actor)

    def decorator(view: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(view)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            token = bearer_token(request.headers.get("Authorization"))
            try:
                if token is None:
                    raise InvalidToken("a bearer token is required")
                g.token_claims = verifier.verify(token, scopes, actor=actor, no_actor=no_actor)
            except InvalidToken as exc:
                status, headers, body = challenge(exc, scopes)
                response: Response = jsonify(body)
                response.status_code = status
                response.headers.update(headers)
                return response
            return view(*args, **kwargs)

        return wrapper

    return decorator
