"""client_lib: fetch and cache TokenDealer access tokens, and verify them locally."""

from typing import Any

from .client import TokenAuth, TokenClient
from .exceptions import (
    DisallowedAlgorithm,
    DiscoveryError,
    ExpiredToken,
    ImmatureToken,
    InsufficientScope,
    InvalidSignature,
    InvalidToken,
    KeySetUnavailable,
    MalformedToken,
    MissingClaim,
    RevokedToken,
    TokenClientError,
    TokenEndpointUnavailable,
    TokenRequestError,
    UnknownKey,
    WrongAudience,
    WrongIssuer,
    WrongTokenType,
)
from .verifier import TokenVerifier

# The one version of both distributions (tokendealer-client and the tokendealer server), read by both builds.
__version__ = "1.0.0"

# The Flask, async and FastAPI parts need the `flask` / `httpx` / `fastapi` extras, so they load on first use.
_LAZY = {
    "AsyncTokenClient": "aio",
    "AsyncTokenVerifier": "aio",
    "HttpxTokenAuth": "httpx_auth",
    "require_token": "flask_auth",
    "require_token_async": "fastapi_auth",
}


def __getattr__(name: str) -> Any:
    """PEP 562: the optional parts, imported when first asked for."""
    if name in _LAZY:
        import importlib  # noqa: PLC0415

        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "AsyncTokenClient",
    "AsyncTokenVerifier",
    "HttpxTokenAuth",
    "require_token_async",
    "DisallowedAlgorithm",
    "DiscoveryError",
    "ExpiredToken",
    "ImmatureToken",
    "InsufficientScope",
    "InvalidSignature",
    "InvalidToken",
    "KeySetUnavailable",
    "MalformedToken",
    "MissingClaim",
    "RevokedToken",
    "TokenAuth",
    "TokenClient",
    "TokenClientError",
    "TokenEndpointUnavailable",
    "TokenRequestError",
    "TokenVerifier",
    "UnknownKey",
    "WrongAudience",
    "WrongIssuer",
    "WrongTokenType",
    "require_token",
]
