"""RFC 6750 bearer tokens at a protected service, framework-free: reading the header, answering a refusal."""

from __future__ import annotations

from collections.abc import Iterable

from .exceptions import InvalidToken, KeySetUnavailable


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
